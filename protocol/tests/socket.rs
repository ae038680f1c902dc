//! A real local socket: `Server::bind` in a private temporary directory, `connect`, a handshake and messages both ways, and the socket file gone once the server is dropped.

use std::time::Duration;

use protocol::{
    client::{connect, Server},
    handshake::{handshake, Hello, Role},
    Event, FromWorker, Phase, Reply, Request, ToWorker,
};

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn bind_connect_exchange_and_clean_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mlxsup.sock");
    let server = Server::bind(&path).expect("bind");
    assert!(path.exists(), "bound socket file");

    let serving = async {
        let mut conn = server.accept().await.expect("accept");
        let peer =
            handshake::<_, FromWorker, ToWorker>(&mut conn, Hello::ours(Role::Worker, "server"), T)
                .await
                .expect("server handshake");
        assert_eq!(peer.role, Role::Supervisor);
        let mut got = Vec::new();
        while let Some(msg) = conn.recv::<ToWorker>().await.expect("server recv") {
            match &msg {
                ToWorker::Request {
                    id,
                    body: Request::Matmul { size },
                } => {
                    conn.send(&FromWorker::Event {
                        id: Some(*id),
                        event: Event::Phase(Phase::Prefill),
                    })
                    .await
                    .expect("send event");
                    conn.send(&FromWorker::Reply {
                        id: *id,
                        body: Reply::Matmul {
                            size: *size,
                            sum: f64::from(*size) * 2.0,
                            ms: 0.5,
                        },
                    })
                    .await
                    .expect("send reply");
                }
                ToWorker::Shutdown => {
                    got.push(msg);
                    break;
                }
                _ => {}
            }
            got.push(msg);
        }
        got
    };

    let client = async {
        let mut conn = connect(&path).await.expect("connect");
        let peer = handshake::<_, ToWorker, FromWorker>(
            &mut conn,
            Hello::ours(Role::Supervisor, "client"),
            T,
        )
        .await
        .expect("client handshake");
        assert_eq!((peer.role, peer.build.as_str()), (Role::Worker, "server"));
        let mut replies = Vec::new();
        for (id, size) in [(1u64, 2u32), (2, 64), (3, 1000)] {
            conn.send(&ToWorker::Request {
                id,
                body: Request::Matmul { size },
            })
            .await
            .expect("send");
            let ev: FromWorker = conn.recv().await.expect("recv").expect("event");
            assert_eq!(
                ev,
                FromWorker::Event {
                    id: Some(id),
                    event: Event::Phase(Phase::Prefill)
                }
            );
            replies.push(
                conn.recv::<FromWorker>()
                    .await
                    .expect("recv")
                    .expect("reply"),
            );
        }
        conn.send(&ToWorker::Shutdown).await.expect("send");
        // The server stops after Shutdown and drops its end: a clean end.
        assert!(conn.recv::<FromWorker>().await.expect("eof").is_none());
        replies
    };

    let (got, replies) = tokio::time::timeout(T * 2, async { tokio::join!(serving, client) })
        .await
        .expect("exchange in time");
    assert_eq!(got.len(), 4);
    assert_eq!(got[3], ToWorker::Shutdown);
    assert_eq!(
        replies[2],
        FromWorker::Reply {
            id: 3,
            body: Reply::Matmul {
                size: 1000,
                sum: 2000.0,
                ms: 0.5
            }
        }
    );

    drop(server);
    assert!(
        !path.exists(),
        "dropping the server removes the socket file"
    );
    assert!(connect(&path).await.is_err(), "nothing listens any more");
}

#[tokio::test]
async fn several_clients_in_turn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s");
    let server = Server::bind(&path).expect("bind");
    for i in 0..3u64 {
        let (accepted, connected) = tokio::join!(server.accept(), connect(&path));
        let (mut s, mut c) = (accepted.expect("accept"), connected.expect("connect"));
        c.send(&ToWorker::Cancel { id: i }).await.expect("send");
        assert_eq!(
            s.recv::<ToWorker>().await.expect("recv"),
            Some(ToWorker::Cancel { id: i })
        );
        s.send(&FromWorker::Event {
            id: Some(i),
            event: Event::Phase(Phase::Idle),
        })
        .await
        .expect("send");
        assert!(matches!(
            c.recv::<FromWorker>().await.expect("recv"),
            Some(FromWorker::Event { id: Some(n), .. }) if n == i
        ));
    }
    drop(server);
    assert!(!path.exists());
}
