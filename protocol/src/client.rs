//! Async connections: typed messages over framed local sockets, for the supervisor, the
//! daemon and third-party clients.

use std::{io, path::Path};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use interprocess::local_socket::{
    tokio::{prelude::*, Listener},
    GenericFilePath, ListenerOptions,
};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

use crate::{
    error::ProtocolError,
    frame,
    wire::{Evolve, Wire},
};

/// The stream of a local socket (Unix domain socket).
pub type LocalStream = interprocess::local_socket::tokio::Stream;

/// A framed, typed connection over any byte stream. Until the handshake has set the
/// negotiated [`Wire`], frames are postcard at this build's versions (the hellos are).
pub struct Connection<S> {
    framed: Framed<S, frame::FrameCodec>,
    wire: Option<Wire>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(stream: S) -> Self {
        Connection {
            framed: Framed::new(stream, frame::FrameCodec::default()),
            wire: None,
        }
    }

    /// The negotiated versions, once the handshake has set them.
    pub fn wire(&self) -> Option<Wire> {
        self.wire
    }

    /// Sets the negotiated versions (the handshake does).
    pub fn set_wire(&mut self, wire: Wire) {
        self.wire = Some(wire);
    }

    /// Sends one message, fitted to the peer's version: one the peer cannot receive (an
    /// event of a newer minor) is dropped.
    pub async fn send<T: Serialize + Evolve>(&mut self, msg: &T) -> Result<(), ProtocolError> {
        let body = match self.wire {
            Some(wire) => match frame::encode_at(msg, wire)? {
                Some(body) => body,
                None => return Ok(()),
            },
            None => frame::encode(msg)?,
        };
        self.framed.send(Bytes::from(body)).await
    }

    /// Receives one message; `Ok(None)` when the peer closed the connection cleanly
    /// between two frames.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ProtocolError> {
        match self.framed.next().await {
            None => Ok(None),
            Some(Err(e)) => Err(e),
            Some(Ok(body)) => match self.wire {
                Some(wire) => frame::decode_at(&body, wire).map(Some),
                None => frame::decode(&body).map(Some),
            },
        }
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        self.framed.get_ref()
    }
}

/// Connects to a local socket at `path`.
pub async fn connect(path: &Path) -> io::Result<Connection<LocalStream>> {
    let name = path.to_fs_name::<GenericFilePath>()?;
    Ok(Connection::new(LocalStream::connect(name).await?))
}

/// A listening local socket at a path; the socket file is removed when it is dropped.
pub struct Server {
    listener: Listener,
}

impl Server {
    /// Listens at `path`. The caller makes sure the directory is private.
    pub fn bind(path: &Path) -> io::Result<Server> {
        let name = path.to_fs_name::<GenericFilePath>()?;
        let listener = ListenerOptions::new().name(name).create_tokio()?;
        Ok(Server { listener })
    }

    /// Accepts one connection.
    pub async fn accept(&self) -> io::Result<Connection<LocalStream>> {
        Ok(Connection::new(self.listener.accept().await?))
    }
}
