//! Protocol versions: what each side speaks and when two sides can talk.
//!
//! Rule: the major versions must be equal. A minor version adds fields, or variants at the
//! end of an enum; after the hellos both sides use the lower minor and never send what it
//! does not know ([`crate::wire`]).

use serde::{Deserialize, Serialize};

/// Version 1.0: handshake, system info, shutdown, load, generate, cancel, unload,
/// telemetry, faults.
pub const V1_0: Version = Version { major: 1, minor: 0 };

/// Version 1.1: the device of a load (`LoadRequest::device`, `LoadInfo::device`).
pub const V1_1: Version = Version { major: 1, minor: 1 };

/// Version 1.2: the compute dtype of a load (`LoadRequest::compute`,
/// `LoadInfo::compute_dtype`).
pub const V1_2: Version = Version { major: 1, minor: 2 };

/// Version 1.3: the KV-cache quantization of a load (`LoadRequest::kv_bits`), the
/// activation coefficients of a load (`LoadRequest::activation`), the MLX version and
/// backend of a load (`LoadInfo::mlx_version`, `LoadInfo::backend`).
pub const V1_3: Version = Version { major: 1, minor: 3 };

/// Version 1.4: the images of a vision-language prompt (`GenerateRequest::images`).
pub const V1_4: Version = Version { major: 1, minor: 4 };

/// Version 1.5: the vision tower's measured peak of a request with images
/// (`Event::Vision`).
pub const V1_5: Version = Version { major: 1, minor: 5 };

/// Version 1.6: negotiation. After the hellos both sides speak the lower of their two
/// minors, writing only what it knows ([`crate::wire`]); a 1.6 peer talks to every 1.x.
/// (Control 1.5 carries worker 1.6's types.)
pub const V1_6: Version = Version { major: 1, minor: 6 };

/// The version this build speaks.
pub const CURRENT: Version = V1_6;

/// A protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    pub major: u16,
    pub minor: u16,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// How a peer's version compares with ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compat {
    /// Same major version: the two can talk.
    Compatible,
    /// The peer's major version is older than ours.
    PeerTooOld,
    /// The peer's major version is newer than ours.
    PeerTooNew,
}

impl Version {
    /// Whether a peer speaking `peer` can talk to us (speaking `self`).
    pub fn compat(self, peer: Version) -> Compat {
        use std::cmp::Ordering::*;
        match peer.major.cmp(&self.major) {
            Equal => Compat::Compatible,
            Less => Compat::PeerTooOld,
            Greater => Compat::PeerTooNew,
        }
    }
}
