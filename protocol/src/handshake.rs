//! The handshake: the first message each way names the protocol version, the build and
//! the process, and both sides refuse to go on when their major versions differ.

use std::{io, time::Duration};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    client::Connection,
    error::ProtocolError,
    frame,
    version::{self, Compat, Version},
    wire::{Evolve, Proto, Wire},
};

/// Who is speaking. Informational: it makes mismatch messages readable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Supervisor,
    Worker,
    Daemon,
    Client,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Supervisor => "supervisor",
            Role::Worker => "worker",
            Role::Daemon => "daemon",
            Role::Client => "client",
        })
    }
}

/// The first message each way. Its fields never change order or type: it is how two
/// builds of any age tell each other apart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: Version,
    pub role: Role,
    /// The sender's build, e.g. `mlxsup-worker 0.1.0`.
    pub build: String,
    pub pid: u32,
}

impl Hello {
    /// Our hello: the current protocol version, this process.
    pub fn ours(role: Role, build: impl Into<String>) -> Hello {
        Hello {
            version: version::CURRENT,
            role,
            build: build.into(),
            pid: std::process::id(),
        }
    }

    /// The protocol a hello of this role speaks.
    pub fn proto(&self) -> Proto {
        match self.role {
            Role::Supervisor | Role::Worker => Proto::Worker,
            Role::Daemon | Role::Client => Proto::Control,
        }
    }
}

/// The versions a connection uses after both hellos: our protocol, the same major, minor
/// = min(ours, the peer's).
pub fn negotiated(ours: &Hello, peer: &Hello) -> Wire {
    Wire::negotiate(ours.version, peer.version, ours.proto())
}

/// A message enum whose variant 0 is the handshake.
pub trait Handshake: Sized {
    fn hello(hello: Hello) -> Self;
    fn as_hello(&self) -> Option<&Hello>;
}

/// Checks a peer's hello against ours.
pub fn check_peer(ours: &Hello, peer: &Hello) -> Result<(), ProtocolError> {
    let (o, p) = (ours.version, peer.version);
    let detail = |e: fn(Version, Version, Role, Role, String) -> ProtocolError| {
        Err(e(o, p, ours.role, peer.role, peer.build.clone()))
    };
    match ours.version.compat(peer.version) {
        Compat::Compatible => Ok(()),
        Compat::PeerTooOld => {
            detail(
                |ours, peer, our_role, peer_role, peer_build| ProtocolError::PeerTooOld {
                    ours,
                    peer,
                    our_role,
                    peer_role,
                    peer_build,
                },
            )
        }
        Compat::PeerTooNew => {
            detail(
                |ours, peer, our_role, peer_role, peer_build| ProtocolError::PeerTooNew {
                    ours,
                    peer,
                    our_role,
                    peer_role,
                    peer_build,
                },
            )
        }
    }
}

/// A peer that went away shows as end of stream, EPIPE or ECONNRESET depending on when
/// it went; before the handshake all three are the same event.
fn gone(e: ProtocolError) -> ProtocolError {
    match &e {
        ProtocolError::Io(io)
            if matches!(
                io.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            ProtocolError::ClosedBeforeHandshake
        }
        _ => e,
    }
}

fn peer_hello<In: Handshake>(ours: &Hello, first: Option<In>) -> Result<Hello, ProtocolError> {
    let first = first.ok_or(ProtocolError::ClosedBeforeHandshake)?;
    let peer = first.as_hello().ok_or(ProtocolError::NoHandshake)?.clone();
    check_peer(ours, &peer)?;
    Ok(peer)
}

/// Async handshake: sends our hello, waits (at most `timeout`) for the peer's, checks it,
/// and sets the connection's negotiated versions ([`negotiated`]).
pub async fn handshake<S, Out, In>(
    conn: &mut Connection<S>,
    ours: Hello,
    timeout: Duration,
) -> Result<Hello, ProtocolError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    Out: Handshake + Serialize + Evolve,
    In: Handshake + DeserializeOwned,
{
    conn.send(&Out::hello(ours.clone())).await.map_err(gone)?;
    let first = tokio::time::timeout(timeout, conn.recv::<In>())
        .await
        .map_err(|_| ProtocolError::Timeout(timeout))?
        .map_err(gone)?;
    let peer = peer_hello(&ours, first)?;
    conn.set_wire(negotiated(&ours, &peer));
    Ok(peer)
}

/// Blocking handshake, for the worker (whose engine is synchronous). The frames after it
/// are read and written at [`negotiated`]`(&ours, &peer)`.
pub fn handshake_sync<Out, In>(
    reader: &mut impl io::Read,
    writer: &mut impl io::Write,
    ours: Hello,
) -> Result<Hello, ProtocolError>
where
    Out: Handshake + Serialize,
    In: Handshake + DeserializeOwned,
{
    frame::write_sync(writer, &Out::hello(ours.clone())).map_err(gone)?;
    let first = frame::read_sync::<In>(reader).map_err(gone)?;
    peer_hello(&ours, first)
}
