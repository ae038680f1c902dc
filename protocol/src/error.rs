//! The one error type of the protocol crate.

use std::io;

use crate::{handshake::Role, version::Version};

/// Everything that can go wrong on a protocol connection.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("i/o error on the protocol socket: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {len} bytes is over the maximum of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("connection closed in the middle of a frame ({buffered} bytes of it received)")]
    Truncated { buffered: usize },
    #[error("malformed message: {0}")]
    Decode(#[from] postcard::Error),
    #[error("malformed JSON message: {0}")]
    Json(#[from] serde_json::Error),
    /// The peer's negotiated version cannot carry what was asked.
    #[error("the peer's protocol version cannot carry this: {0}")]
    Unsupported(String),
    #[error("the peer closed the connection before the handshake")]
    ClosedBeforeHandshake,
    #[error("the first message was not a handshake")]
    NoHandshake,
    #[error("the peer ({peer_role} {peer_build}) speaks protocol {peer}, this {our_role} speaks {ours}: the peer is too old; upgrade it")]
    PeerTooOld {
        ours: Version,
        peer: Version,
        our_role: Role,
        peer_role: Role,
        peer_build: String,
    },
    #[error("the peer ({peer_role} {peer_build}) speaks protocol {peer}, this {our_role} speaks {ours}: the peer is too new; upgrade this side")]
    PeerTooNew {
        ours: Version,
        peer: Version,
        our_role: Role,
        peer_role: Role,
        peer_build: String,
    },
    #[error("no answer from the peer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("unexpected message: {0}")]
    Unexpected(String),
}

impl ProtocolError {
    /// True when the error means the bytes on the wire were wrong (as opposed to the
    /// connection going away).
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            ProtocolError::FrameTooLarge { .. }
                | ProtocolError::Truncated { .. }
                | ProtocolError::Decode(_)
                | ProtocolError::Json(_)
                | ProtocolError::NoHandshake
                | ProtocolError::Unexpected(_)
        )
    }
}
