//! mlxsup, the supervisor: the command line, the supervision core, and the daemon. It never links MLX: everything that runs MLX runs in a worker process.
//!
//! Layers, each importing only from those below it:
//! - the core, which knows no command: [`plan`] (with [`compute`] and [`budget`]),
//!   [`supervise`] and [`classify`], [`calibration`], [`import`], [`images`], and small
//!   helpers ([`exit`], [`fault`], [`model_dir`], [`rt`]);
//! - the daemon and its HTTP front ([`daemon`]), on the core;
//! - the commands ([`cli`]), on both.

pub mod budget;
pub mod calibration;
pub mod classify;
pub mod cli;
pub mod compute;
pub mod daemon;
pub mod exit;
pub mod fault;
pub mod images;
pub mod import;
pub mod model_dir;
pub mod plan;
pub mod rt;
pub mod supervise;
