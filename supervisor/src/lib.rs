//! mlxsup, the supervisor: the command line, the supervision core, and the daemon. It never links MLX: everything that runs MLX runs in a worker process.

pub mod args;
pub mod budget;
pub mod calibrate;
pub mod calibration;
pub mod classify;
pub mod client;
pub mod compute;
pub mod daemon;
pub mod demo;
pub mod exit;
pub mod images;
pub mod import;
pub mod info;
pub mod inspect;
pub mod make_model;
pub mod output;
pub mod plan;
pub mod prompt;
pub mod real_checkpoint;
pub mod rt;
pub mod run;
pub mod service;
pub mod supervise;
