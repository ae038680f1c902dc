//! The wire context: which minor version a frame is encoded for and decoded at, and the
//! per-field "since" gates that consult it while serde runs.
//!
//! Postcard writes struct fields by position, so a field added in minor `m` must not be
//! written to a peer below `m`, and must not be read from one. Every such field carries
//! three attributes on the existing derives:
//!
//! ```ignore
//! /// Since worker 1.3 (control 1.2).
//! #[serde(default, skip_serializing_if = "crate::wire::w1_3::skip",
//!         deserialize_with = "crate::wire::w1_3::de")]
//! pub kv_bits: Option<u8>,
//! ```
//!
//! `skip` is true (the field is not written) when the frame is encoded for a peer below
//! the field's version; `de` returns the field's `Default` without reading anything when
//! the frame comes from such a peer. Gates are named after the protocol the type belongs
//! to: `wN_M` for the worker protocol's types (which the control protocol also carries,
//! see [`Wire::control`]), `cN_M` for the control protocol's own types.
//!
//! A **variant** added in minor `m` is never sent below `m`: the message enums implement
//! [`Evolve`], which drops an event the peer cannot read or refuses a request it could
//! not honour, and a value-level enum (such as
//! [`FailureKind`](crate::failure::FailureKind)) maps a newer variant to the older one
//! that says the most of it ([`FailureKind::downgrade`](crate::failure::FailureKind::downgrade)),
//! through a `serialize_with` on the field that holds it.
//!
//! To add a gated field: add `wN_M`/`cN_M` below if it is not there, give the field the
//! three attributes above and a `Default`, bump the version in [`crate::version`] or
//! [`crate::control::version`] (and [`CONTROL_TO_WORKER`] for a worker bump), and record
//! the new minor's fixtures (protocol/tests/fixtures/README.md). A field of this work
//! (control 1.5, worker 1.6) uses `c1_5` or `w1_6`; from control 1.5 the frames are JSON,
//! where a missing field reads as its default and an unknown one is ignored, but the gate
//! still keeps the field out of the postcard frames of the older minors.
//!
//! To add a failure kind: add it at the end of
//! [`FailureKind`](crate::failure::FailureKind), give it its control minor in
//! [`FailureKind::since`](crate::failure::FailureKind::since) (e.g. 5) and the older kind
//! it is sent as below that in [`FailureKind::downgrade`](crate::failure::FailureKind::downgrade).
//! To add an event: add the variant at the end and return `false` from its
//! `known_at` (`Event::known_at`) below its minor.

use std::cell::Cell;

use serde::{Deserialize, Deserializer, Serialize};

use crate::{control, version, version::Version};

/// Which protocol a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// Supervisor ⇄ worker.
    Worker,
    /// Client ⇄ daemon.
    Control,
}

/// How frame bodies are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Postcard: the worker protocol, the hellos, and control below 1.5.
    Postcard,
    /// JSON (one object per frame body): control from 1.5 on.
    Json,
}

/// The first control minor whose frames (after the hellos) are JSON.
pub const CONTROL_JSON_SINCE: u16 = 5;

/// For each control minor (index), the worker minor whose layout the worker types it
/// carries (`GenerateRequest`, `LoadInfo`, `Event`, ...) had when it was released.
pub const CONTROL_TO_WORKER: [u16; 6] = [1, 2, 3, 4, 5, 6];

/// The versions a frame is written for: the negotiated minor of the connection's protocol
/// and, for the worker types inside control frames, the worker minor that goes with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wire {
    pub proto: Proto,
    /// The worker minor of the worker types in these frames.
    pub worker: u16,
    /// The control minor (on a worker connection: this build's).
    pub control: u16,
}

impl Wire {
    /// This build's versions of `proto`.
    pub fn current(proto: Proto) -> Wire {
        Wire {
            proto,
            worker: version::CURRENT.minor,
            control: control::version::CURRENT.minor,
        }
    }

    /// The worker protocol at `minor`.
    pub fn worker(minor: u16) -> Wire {
        Wire {
            proto: Proto::Worker,
            worker: minor,
            control: control::version::CURRENT.minor,
        }
    }

    /// The control protocol at `minor`, with the worker layout that goes with it.
    pub fn control(minor: u16) -> Wire {
        let last = CONTROL_TO_WORKER.len() - 1;
        Wire {
            proto: Proto::Control,
            worker: CONTROL_TO_WORKER[usize::from(minor).min(last)],
            control: minor,
        }
    }

    /// The negotiated wire of a connection: our protocol (from our role), minor =
    /// min(ours, the peer's). The majors have been checked equal by the handshake.
    pub fn negotiate(ours: Version, peer: Version, proto: Proto) -> Wire {
        let minor = ours.minor.min(peer.minor);
        match proto {
            Proto::Worker => Wire::worker(minor),
            Proto::Control => Wire::control(minor),
        }
    }

    /// The negotiated minor as a version.
    pub fn version(self) -> Version {
        let minor = match self.proto {
            Proto::Worker => self.worker,
            Proto::Control => self.control,
        };
        Version {
            major: version::CURRENT.major,
            minor,
        }
    }

    /// How this wire's frame bodies are written.
    pub fn format(self) -> Format {
        match self.proto {
            Proto::Control if self.control >= CONTROL_JSON_SINCE => Format::Json,
            _ => Format::Postcard,
        }
    }
}

thread_local! {
    static WIRE: Cell<Option<Wire>> = const { Cell::new(None) };
}

/// The wire serde is running for on this thread: the one set by [`with`], else this
/// build's own worker protocol (what an unversioned encode means).
pub fn current() -> Wire {
    WIRE.with(Cell::get)
        .unwrap_or_else(|| Wire::current(Proto::Worker))
}

/// Runs `f` (an encode or a decode) with `wire` as the current wire; the previous one is
/// restored afterwards, also when `f` panics.
pub fn with<R>(wire: Wire, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Wire>);
    impl Drop for Restore {
        fn drop(&mut self) {
            WIRE.with(|w| w.set(self.0));
        }
    }
    let _restore = Restore(WIRE.with(|w| w.replace(Some(wire))));
    f()
}

/// A message enum that knows which of its messages a peer's negotiated version can receive.
/// (What a value inside a message becomes for an older peer — a newer failure kind as an
/// older one — is decided where it is serialized, not here.)
pub trait Evolve {
    /// `Ok(true)`: send it; `Ok(false)`: the peer has no way to receive it and it is
    /// dropped (an event of a newer minor); `Err`: the peer's version cannot carry what
    /// was asked (a request with a newer option) and nothing is sent.
    fn fits(&self, wire: Wire) -> Result<bool, String>;
}

macro_rules! gates {
    ($($name:ident: $field:ident >= $minor:literal;)*) => {$(
        #[doc = concat!("The gate of a field added in ", stringify!($name), ".")]
        pub mod $name {
            use super::*;

            /// `skip_serializing_if`: the field is not written below its version.
            pub fn skip<T>(_: &T) -> bool {
                current().$field < $minor
            }

            /// `deserialize_with`: the field reads as its default below its version.
            pub fn de<'de, D, T>(d: D) -> Result<T, D::Error>
            where
                D: Deserializer<'de>,
                T: Deserialize<'de> + Default,
            {
                if current().$field < $minor {
                    Ok(T::default())
                } else {
                    T::deserialize(d)
                }
            }
        }
    )*};
}

gates! {
    w1_1: worker >= 1;
    w1_2: worker >= 2;
    w1_3: worker >= 3;
    w1_4: worker >= 4;
    w1_5: worker >= 5;
    w1_6: worker >= 6;
    c1_1: control >= 1;
    c1_2: control >= 2;
    c1_5: control >= 5;
}

/// Image bytes: a byte string in postcard (its layout since worker 1.4), a base64 string
/// in JSON, so that a client in another language sends an image as text.
pub mod bytes {
    use serde::{de::Error, Deserializer, Serializer};

    use super::*;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&base64::encode(v))
        } else {
            v.serialize(s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            base64::decode(s.as_bytes()).map_err(|e| D::Error::custom(format!("not base64: {e}")))
        } else {
            Vec::<u8>::deserialize(d)
        }
    }
}

/// A float that JSON may carry as `null` (serde_json writes a NaN or an infinity so):
/// read back as NaN.
pub mod float {
    use serde::Deserializer;

    use super::*;

    pub fn de<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        if d.is_human_readable() {
            Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
        } else {
            f64::deserialize(d)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_sets_and_restores_the_wire() {
        assert_eq!(current(), Wire::current(Proto::Worker));
        with(Wire::control(2), || {
            assert_eq!(current().control, 2);
            assert_eq!(current().worker, 3);
            with(Wire::worker(0), || assert_eq!(current().worker, 0));
            assert_eq!(current().control, 2);
        });
        assert_eq!(current(), Wire::current(Proto::Worker));
    }

    #[test]
    fn negotiation_takes_the_lower_minor_and_json_from_control_1_5() {
        let v = |minor| Version { major: 1, minor };
        assert_eq!(Wire::negotiate(v(5), v(2), Proto::Worker).worker, 2);
        assert_eq!(Wire::negotiate(v(1), v(7), Proto::Worker).worker, 1);
        let w = Wire::negotiate(v(5), v(9), Proto::Control);
        assert_eq!((w.control, w.format()), (5, Format::Json));
        assert_eq!(
            Wire::negotiate(v(5), v(4), Proto::Control).format(),
            Format::Postcard
        );
        assert_eq!(Wire::control(0).worker, 1);
    }
}
