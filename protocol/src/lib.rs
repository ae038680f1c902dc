//! The mlxsup wire protocol: every message that crosses a process boundary, its framing,
//! the version handshake, and a small async client/server helper.
//!
//! Supervisor, worker and third-party clients depend on this crate and on nothing else of
//! each other. Frames are a 4-byte big-endian length followed by a body ([`frame`]); the
//! first message each way is a postcard [`Hello`] ([`handshake`]), whose enum variant
//! stays at discriminant 0 forever so that any two versions can at least tell each other
//! apart. After the hellos both sides speak the negotiated version (same major, the lower
//! minor): each writes only what that minor knows and reads what it lacks as defaults
//! ([`wire`], which also says how to add a field or a variant). docs/PROTOCOL.md
//! describes the control protocol for clients in other languages.

pub mod bytes;
pub mod client;
pub mod compute;
pub mod control;
pub mod daemon_client;
pub mod error;
pub mod estimate;
pub mod failure;
pub mod fault;
pub mod frame;
pub mod handshake;
pub mod message;
pub mod version;
pub mod wire;

pub use bytes::ByteCount;
pub use compute::{ComputeDtype, ComputePolicy};
pub use error::ProtocolError;
pub use failure::{Failure, FailureKind, MemoryEvidence, Phase, Remedy, Stage};
pub use fault::{Fault, FaultAction, FaultPoint};
pub use handshake::{Hello, Role};
pub use message::*;
pub use version::Version;
pub use wire::{Evolve, Wire};
