//! The commands of `mlxsup`, on the core and the daemon (nothing below imports them):
//! their arguments, what each does, and how it reports ([`output`]).

pub mod args;
pub mod calibrate;
pub mod client;
pub mod demo;
pub mod import;
pub mod info;
pub mod inspect;
pub mod make_model;
pub mod output;
pub mod prompt;
pub mod real_checkpoint;
pub mod run;
pub mod service;
