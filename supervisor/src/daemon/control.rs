//! The control-protocol server: one task per connection. It checks the peer's uid,
//! exchanges the handshake, then reads requests and writes their events and replies,
//! multiplexed by request id. A peer that sends garbage, an oversized frame or a wrong
//! version loses its connection; one that disconnects cancels its own requests.

use std::{collections::HashMap, sync::Arc, time::Duration};

use protocol::{
    client::Connection,
    control::{self, ControlReply, ControlRequest, FromDaemon, ToDaemon},
    handshake::{self, Hello, Role},
    RequestId,
};
use tokio::{net::UnixStream, sync::mpsc};
use tokio_util::sync::CancellationToken;

use super::{
    models::{Job, ModelCmd, Responder},
    Shared,
};

/// How long a client may take to say hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Our hello on the control socket.
pub fn hello() -> Hello {
    Hello {
        version: control::version::CURRENT,
        ..Hello::ours(Role::Daemon, concat!("mlxsup ", env!("CARGO_PKG_VERSION")))
    }
}

/// Serves one client until it goes away or the daemon stops.
pub async fn serve_connection(shared: Arc<Shared>, stream: UnixStream) {
    let peer_uid = stream.peer_cred().map(|c| c.uid()).ok();
    let me = nix::unistd::geteuid().as_raw();
    let mut conn = Connection::new(stream);
    let peer = match handshake::handshake::<_, FromDaemon, ToDaemon>(
        &mut conn,
        hello(),
        HANDSHAKE_TIMEOUT,
    )
    .await
    {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("a client's handshake failed: {e}");
            return;
        }
    };
    if peer_uid != Some(me) {
        tracing::warn!(
            peer_uid = ?peer_uid,
            peer_pid = peer.pid,
            "refused a connection from another user"
        );
        let _ = conn
            .send(&FromDaemon::Refused {
                message: format!(
                    "this daemon serves uid {me} only; uid {} is refused",
                    peer_uid.map_or("unknown".to_string(), |u| u.to_string())
                ),
            })
            .await;
        return;
    }
    tracing::debug!(
        client = %peer.build,
        pid = peer.pid,
        version = %conn.wire().map_or(peer.version, |w| w.version()),
        "client connected"
    );
    let (out_tx, mut out_rx) = mpsc::channel::<FromDaemon>(super::models::CLIENT_BUFFER);
    let mut requests: HashMap<RequestId, CancellationToken> = HashMap::new();
    let stopping = shared.closed.clone();
    loop {
        tokio::select! {
            msg = conn.recv::<ToDaemon>() => match msg {
                Ok(Some(ToDaemon::Request { id, body })) => {
                    let cancel = CancellationToken::new();
                    requests.retain(|_, c| !c.is_cancelled());
                    requests.insert(id, cancel.clone());
                    dispatch(&shared, body, Responder::new(id, out_tx.clone()), cancel);
                }
                Ok(Some(ToDaemon::Cancel { id })) => {
                    if let Some(c) = requests.remove(&id) {
                        c.cancel();
                    }
                }
                Ok(Some(ToDaemon::Hello(_))) => {
                    tracing::warn!("a client sent a second handshake; closing it");
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("closing a client connection: {e}");
                    break;
                }
            },
            out = out_rx.recv() => {
                let Some(out) = out else { break };
                if let FromDaemon::Reply { id, .. } = &out {
                    requests.remove(id);
                }
                if conn.send(&out).await.is_err() {
                    break;
                }
            }
            _ = stopping.cancelled() => {
                // The models have answered everything (shutting_down): flush, close.
                while let Ok(out) = out_rx.try_recv() {
                    let _ = conn.send(&out).await;
                }
                break;
            }
        }
    }
    // Gone: what this client asked for is cancelled; nothing else is.
    for (_, c) in requests {
        c.cancel();
    }
}

/// Starts serving one request; its answer goes to `resp`.
fn dispatch(
    shared: &Arc<Shared>,
    body: ControlRequest,
    resp: Responder,
    cancel: CancellationToken,
) {
    match body {
        ControlRequest::Status => resp.reply(ControlReply::Status(Box::new(shared.status()))),
        ControlRequest::Ps => resp.reply(ControlReply::Ps(shared.ps())),
        ControlRequest::Ls => {
            let shared = Arc::clone(shared);
            // Reading headers of many folders: off the connection's task.
            tokio::task::spawn_blocking(move || resp.reply(ControlReply::Ls(shared.ls())));
        }
        ControlRequest::Load(req) => match shared.slot_for(&req.model) {
            Ok(slot) => send(
                &slot.cmds,
                ModelCmd::Load {
                    req,
                    resp: resp.clone(),
                },
                &resp,
            ),
            Err(message) => resp.reply(ControlReply::BadRequest { message }),
        },
        ControlRequest::Unload { model } => match shared.slot_for(&model) {
            Ok(slot) => send(&slot.cmds, ModelCmd::Unload { resp: resp.clone() }, &resp),
            Err(message) => resp.reply(ControlReply::BadRequest { message }),
        },
        ControlRequest::Generate(req) => match shared.slot_for(&req.model) {
            Ok(slot) => {
                let job = Job {
                    req,
                    resp: resp.clone(),
                    cancel,
                    checked: None,
                };
                send(&slot.cmds, ModelCmd::Generate(job), &resp);
            }
            Err(message) => resp.reply(ControlReply::BadRequest { message }),
        },
        ControlRequest::Subscribe => {
            let mut rx = shared.changes.subscribe();
            let stopping = shared.closed.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        m = rx.recv() => match m {
                            Ok(status) => resp.event(protocol::control::ControlEvent::Model(Box::new(status))),
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(_) => break,
                        },
                        _ = cancel.cancelled() => break,
                        _ = stopping.cancelled() => break,
                    }
                    if resp.out.is_closed() || resp.lagging() {
                        break;
                    }
                }
                resp.cancelled();
            });
        }
        ControlRequest::Shutdown => {
            resp.reply(ControlReply::ShuttingDown);
            shared.shutdown.cancel();
        }
    }
}

fn send(cmds: &mpsc::UnboundedSender<ModelCmd>, cmd: ModelCmd, resp: &Responder) {
    if cmds.send(cmd).is_err() {
        resp.reply(ControlReply::BadRequest {
            message: "the daemon is shutting down".into(),
        });
    }
}
