//! A small async client of the daemon's control protocol: what the `mlxsup` CLI uses,
//! and what a third-party Rust client would use.
//!
//! ```no_run
//! use protocol::{control::*, daemon_client::DaemonClient, GenerateRequest, Prompt, Sampling};
//! # async fn example() -> Result<(), protocol::daemon_client::ClientError> {
//! let mut client = DaemonClient::connect(std::path::Path::new("/run/user/1000/mlxsup/mlxsup.sock")).await?;
//! let reply = client
//!     .call(
//!         ControlRequest::Generate(GenerateModel {
//!             model: "Qwen2.5-0.5B-Instruct-bf16".into(),
//!             request: GenerateRequest {
//!                 prompt: Prompt::Text("Hello".into()),
//!                 max_tokens: 32,
//!                 sampling: Sampling::default(),
//!                 stop: vec![],
//!                 fault: None,
//!                 images: Vec::new(),
//!             },
//!             context: None,
//!             keep_alive: None,
//!             force: false,
//!             device: protocol::Device::Default,
//!             compute: protocol::ComputePolicy::Auto,
//!             kv_bits: None,
//!         }),
//!         |event| {
//!             if let ControlEvent::Worker(protocol::Event::Token { text, .. }) = event {
//!                 print!("{text}");
//!             }
//!         },
//!     )
//!     .await?;
//! println!("\n{reply:?}");
//! # Ok(()) }
//! ```

use std::{io, path::Path, time::Duration};

use tokio::net::UnixStream;

use crate::{
    client::Connection,
    control::{self, ControlEvent, ControlReply, ControlRequest, FromDaemon, ToDaemon},
    error::ProtocolError,
    handshake::{self, Hello, Role},
    message::RequestId,
};

/// How long the handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a call did not get a reply.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon answers at the socket.
    #[error("no mlxsup daemon is running at {path}: {source}")]
    NotRunning { path: String, source: io::Error },
    /// The socket is there but could not be connected to (permissions, say).
    #[error("cannot connect to the daemon at {path}: {source}")]
    Connect { path: String, source: io::Error },
    /// The daemon refused this connection.
    #[error("the daemon refused the connection: {0}")]
    Refused(String),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The daemon went away before it answered.
    #[error("the daemon closed the connection before answering")]
    Closed,
}

/// A connection to the daemon.
pub struct DaemonClient {
    conn: Connection<UnixStream>,
    next_id: RequestId,
    /// The daemon's hello.
    pub daemon: Hello,
}

impl DaemonClient {
    /// Connects and exchanges the handshake.
    pub async fn connect(path: &Path) -> Result<DaemonClient, ClientError> {
        let stream = UnixStream::connect(path).await.map_err(|source| {
            let path = path.display().to_string();
            match source.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                    ClientError::NotRunning { path, source }
                }
                _ => ClientError::Connect { path, source },
            }
        })?;
        let mut conn = Connection::new(stream);
        let ours = Hello {
            version: control::version::CURRENT,
            ..Hello::ours(
                Role::Client,
                concat!("mlxsup-client ", env!("CARGO_PKG_VERSION")),
            )
        };
        let daemon =
            handshake::handshake::<_, ToDaemon, FromDaemon>(&mut conn, ours, HANDSHAKE_TIMEOUT)
                .await?;
        Ok(DaemonClient {
            conn,
            next_id: 1,
            daemon,
        })
    }

    /// Sends a request; returns its id.
    pub async fn send(&mut self, body: ControlRequest) -> Result<RequestId, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        if let Err(e) = self.conn.send(&ToDaemon::Request { id, body }).await {
            // A daemon that refuses a connection says why, then closes it: the reason may
            // be waiting to be read.
            let why =
                tokio::time::timeout(Duration::from_millis(500), self.conn.recv::<FromDaemon>());
            if let Ok(Ok(Some(FromDaemon::Refused { message }))) = why.await {
                return Err(ClientError::Refused(message));
            }
            return Err(e.into());
        }
        Ok(id)
    }

    /// Cancels a request sent on this connection.
    pub async fn cancel(&mut self, id: RequestId) -> Result<(), ClientError> {
        Ok(self.conn.send(&ToDaemon::Cancel { id }).await?)
    }

    /// The next message from the daemon: an event or a reply, with its request id.
    pub async fn next(
        &mut self,
    ) -> Result<(RequestId, Result<ControlReply, ControlEvent>), ClientError> {
        match self.conn.recv::<FromDaemon>().await? {
            Some(FromDaemon::Reply { id, body }) => Ok((id, Ok(body))),
            Some(FromDaemon::Event { id, event }) => Ok((id, Err(event))),
            Some(FromDaemon::Refused { message }) => Err(ClientError::Refused(message)),
            Some(FromDaemon::Hello(_)) => {
                Err(ProtocolError::Unexpected("a second handshake".into()).into())
            }
            None => Err(ClientError::Closed),
        }
    }

    /// Sends a request and waits for its reply, handing each of its events to `on_event`.
    pub async fn call(
        &mut self,
        body: ControlRequest,
        mut on_event: impl FnMut(&ControlEvent),
    ) -> Result<ControlReply, ClientError> {
        let id = self.send(body).await?;
        loop {
            match self.next().await? {
                (rid, Ok(reply)) if rid == id => return Ok(reply),
                (rid, Err(event)) if rid == id => on_event(&event),
                _ => {}
            }
        }
    }
}
