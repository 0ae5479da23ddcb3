//! The server and client over real Unix sockets in a temporary directory.

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use passmesh_ipc::{
    Base64Url, Caller, Client, ClientError, Config, ErrorBody, ErrorName, FrameError, Handler,
    MAX_FRAME_LEN, PasskeyInfo, Pin, RequestBody, Response, ResponseBody, StatusInfo, bind,
    read_frame, serve, write_frame,
};
use tokio::io::AsyncWriteExt as _;
use tokio::net::UnixStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(5);

/// Answers from canned data; counts calls; `list` for rpId "slow" takes 300 ms.
#[derive(Default)]
struct TestHandler {
    calls: AtomicUsize,
}

impl Handler for TestHandler {
    async fn handle(
        &self,
        caller: &Caller,
        request: RequestBody,
    ) -> Result<ResponseBody, ErrorBody> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match request {
            RequestBody::Status => Ok(ResponseBody::Status {
                status: StatusInfo {
                    version: "test".into(),
                    uid: caller.uid,
                    vault_id: format!("gid-{}-pid-{}", caller.gid, caller.pid.unwrap_or(-1)),
                    passkeys: 0,
                    keystore: "software".into(),
                    keystore_warning: None,
                    pin_set: false,
                    pin_attempts_left: 8,
                    pin_locked_for_ms: None,
                    tpm: None,
                    device_id: None,
                    listen_addrs: Vec::new(),
                    peers: Vec::new(),
                    network_off: None,
                    old_keys: None,
                    recovery: None,
                },
            }),
            RequestBody::List { rp_id, .. } => {
                if rp_id.as_deref() == Some("slow") {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Ok(ResponseBody::List {
                    passkeys: vec![PasskeyInfo {
                        credential_id: Base64Url(vec![1, 2, 3]),
                        rp_id: rp_id.unwrap_or_else(|| "example.com".into()),
                        user_name: "alice".into(),
                        user_display_name: "Alice".into(),
                        user_handle: Base64Url(vec![9]),
                        label: None,
                        created_at_ms: 1,
                        backed_up: false,
                    }],
                    total: 1,
                })
            }
            RequestBody::Delete { credential_id } => Ok(ResponseBody::Delete {
                deleted: credential_id.as_bytes() == [1, 2, 3],
            }),
            RequestBody::SetPin { current_pin, .. } => {
                if current_pin.as_ref().map(Pin::as_str) == Some("1234") {
                    Ok(ResponseBody::SetPin {})
                } else {
                    Err(ErrorBody::new(ErrorName::NotAllowedError, "wrong PIN"))
                }
            }
            _ => Err(ErrorBody::new(
                ErrorName::NotSupportedError,
                "not in this test",
            )),
        }
    }
}

struct TestServer {
    _dir: tempfile::TempDir,
    path: PathBuf,
    handler: Arc<TestHandler>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl TestServer {
    async fn start(config: Config) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("ipc.sock");
        let listener = bind(&path).unwrap();
        let handler = Arc::new(TestHandler::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            Arc::clone(&handler),
            config,
            shutdown.clone(),
        ));
        Self {
            _dir: dir,
            path,
            handler,
            shutdown,
            task,
        }
    }

    fn calls(&self) -> usize {
        self.handler.calls.load(Ordering::SeqCst)
    }

    async fn client(&self) -> Client {
        Client::connect(&self.path).await.unwrap()
    }

    async fn raw(&self) -> UnixStream {
        UnixStream::connect(&self.path).await.unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap();
    }
}

/// The uid this test runs as: the owner of a file it just created.
fn own_uid() -> u32 {
    let dir = tempfile::tempdir().unwrap();
    std::fs::metadata(dir.path()).unwrap().uid()
}

fn parse(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

/// Reads until the server closes; a reset counts as closed (the kernel reports one when the
/// server drops a socket that still held unread bytes).
async fn assert_closed(stream: &mut UnixStream) {
    match tokio::time::timeout(PATIENCE, read_frame(stream)).await {
        Ok(Ok(None)) => {}
        Ok(Err(FrameError::Io(e))) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the server to close the connection, got {other:?}"),
    }
}

#[tokio::test]
async fn typed_calls_and_caller_identity() {
    let server = TestServer::start(Config::default()).await;
    let mut client = server.client().await;

    let ResponseBody::Status { status } = client.call(RequestBody::Status).await.unwrap() else {
        panic!("expected status");
    };
    assert_eq!(status.uid, own_uid());
    assert!(
        status
            .vault_id
            .ends_with(&format!("-pid-{}", std::process::id())),
        "{}",
        status.vault_id
    );

    let reply = client
        .call(RequestBody::Delete {
            credential_id: Base64Url(vec![1, 2, 3]),
        })
        .await
        .unwrap();
    assert_eq!(reply, ResponseBody::Delete { deleted: true });

    let ResponseBody::List { passkeys, .. } = client
        .call(RequestBody::List {
            rp_id: Some("example.org".into()),
            offset: 0,
            limit: None,
        })
        .await
        .unwrap()
    else {
        panic!("expected list");
    };
    assert_eq!(passkeys[0].rp_id, "example.org");

    let err = client
        .call(RequestBody::SetPin {
            pin: Pin::new("5678".into()),
            current_pin: Some(Pin::new("0000".into())),
        })
        .await
        .unwrap_err();
    match err {
        ClientError::Remote(body) => {
            assert_eq!(body.name, ErrorName::NotAllowedError);
            assert_eq!(body.message, "wrong PIN");
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
    let reply = client
        .call(RequestBody::SetPin {
            pin: Pin::new("5678".into()),
            current_pin: Some(Pin::new("1234".into())),
        })
        .await
        .unwrap();
    assert_eq!(reply, ResponseBody::SetPin {});
    assert_eq!(server.calls(), 5);
    server.stop().await;
}

#[tokio::test]
async fn raw_reply_has_the_wire_shape() {
    let server = TestServer::start(Config::default()).await;
    let mut client = server.client().await;
    let reply = client
        .call_raw(br#"{"id": 41, "type": "delete", "credentialId": "AQID"}"#)
        .await
        .unwrap();
    assert_eq!(
        parse(&reply),
        serde_json::json!({"id": 41, "ok": true, "type": "delete", "deleted": true})
    );
    server.stop().await;
}

#[tokio::test]
async fn garbage_gets_syntax_error_and_the_connection_survives() {
    let server = TestServer::start(Config::default()).await;
    let mut client = server.client().await;

    for garbage in [
        &b"\xff\xfe\x00not utf-8"[..],
        b"this is not json",
        br#"{"id": 3, "type": "status""#,
        b"",
    ] {
        let reply = parse(&client.call_raw(garbage).await.unwrap());
        assert_eq!(reply["id"], serde_json::Value::Null, "{reply}");
        assert_eq!(reply["ok"], false);
        assert_eq!(reply["error"]["name"], "SyntaxError", "{reply}");
    }

    // Same connection, still served.
    assert!(matches!(
        client.call(RequestBody::Status).await.unwrap(),
        ResponseBody::Status { .. }
    ));
    assert_eq!(server.calls(), 1);
    server.stop().await;
}

#[tokio::test]
async fn wrong_shape_gets_type_error_with_the_id() {
    let server = TestServer::start(Config::default()).await;
    let mut client = server.client().await;

    let reply = parse(
        &client
            .call_raw(br#"{"id": 77, "type": "frobnicate"}"#)
            .await
            .unwrap(),
    );
    assert_eq!(reply["id"], 77);
    assert_eq!(reply["ok"], false);
    assert_eq!(reply["error"]["name"], "TypeError");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains("frobnicate"), "{message}");

    let reply = parse(
        &client
            .call_raw(br#"{"id": 78, "type": "delete", "credentialId": "not/base64url"}"#)
            .await
            .unwrap(),
    );
    assert_eq!(reply["id"], 78);
    assert_eq!(reply["error"]["name"], "TypeError");

    let reply = parse(
        &client
            .call_raw(br#"{"id": 79, "type": "list", "rpId": 5}"#)
            .await
            .unwrap(),
    );
    assert_eq!(reply["id"], 79);
    assert_eq!(reply["error"]["name"], "TypeError");

    for no_usable_id in [
        &br#"{"id": "80", "type": "status"}"#[..],
        br#"{"type": "status"}"#,
        br#"[1, 2, 3]"#,
    ] {
        let reply = parse(&client.call_raw(no_usable_id).await.unwrap());
        assert_eq!(reply["id"], serde_json::Value::Null, "{reply}");
        assert_eq!(reply["error"]["name"], "TypeError", "{reply}");
    }

    assert!(matches!(
        client.call(RequestBody::Status).await.unwrap(),
        ResponseBody::Status { .. }
    ));
    assert_eq!(server.calls(), 1);
    server.stop().await;
}

#[tokio::test]
async fn oversized_header_gets_constraint_error_then_close() {
    let server = TestServer::start(Config::default()).await;
    let mut stream = server.raw().await;
    let announced = (MAX_FRAME_LEN + 1) as u32;
    stream.write_all(&announced.to_le_bytes()).await.unwrap();

    let reply = read_frame(&mut stream).await.unwrap().unwrap();
    let reply: Response = serde_json::from_slice(&reply).unwrap();
    assert_eq!(reply.id, None);
    let err = reply.result.unwrap_err();
    assert_eq!(err.name, ErrorName::ConstraintError);
    assert_eq!(
        err.message,
        "frame of 1048577 bytes exceeds the 1 MiB limit"
    );
    assert_closed(&mut stream).await;
    assert_eq!(server.calls(), 0);
    server.stop().await;
}

#[tokio::test]
async fn largest_frame_is_served() {
    let server = TestServer::start(Config::default()).await;
    let mut client = server.client().await;
    // A valid request padded with whitespace to exactly 1 MiB.
    let mut payload = br#"{"id": 5, "type": "status"}"#.to_vec();
    payload.resize(MAX_FRAME_LEN, b' ');
    let reply = parse(&client.call_raw(&payload).await.unwrap());
    assert_eq!(reply["id"], 5);
    assert_eq!(reply["ok"], true);
    server.stop().await;
}

#[tokio::test]
async fn cut_off_frame_closes_without_calling_the_handler() {
    let server = TestServer::start(Config::default()).await;
    let mut stream = server.raw().await;
    stream.write_all(&100u32.to_le_bytes()).await.unwrap();
    stream.write_all(br#"{"id": 1, "#).await.unwrap();
    stream.shutdown().await.unwrap();
    assert_closed(&mut stream).await;

    // Half a header is cut off too.
    let mut stream = server.raw().await;
    stream.write_all(&[9, 0]).await.unwrap();
    stream.shutdown().await.unwrap();
    assert_closed(&mut stream).await;

    assert_eq!(server.calls(), 0);
    server.stop().await;
}

#[tokio::test]
async fn stalled_frame_times_out() {
    let config = Config {
        frame_timeout: Duration::from_millis(200),
        ..Config::default()
    };
    let server = TestServer::start(config).await;
    let mut stream = server.raw().await;
    let started = Instant::now();
    stream.write_all(&100u32.to_le_bytes()).await.unwrap();
    stream.write_all(br#"{"id": 1, "#).await.unwrap();
    assert_closed(&mut stream).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(server.calls(), 0);
    server.stop().await;
}

#[tokio::test]
async fn idle_connection_times_out_but_a_slow_start_is_fine() {
    let config = Config {
        idle_timeout: Duration::from_millis(1000),
        frame_timeout: Duration::from_millis(200),
        ..Config::default()
    };
    let server = TestServer::start(config).await;

    // Pausing longer than the frame timeout, but less than the idle timeout, between requests
    // is fine.
    let mut client = server.client().await;
    client.call(RequestBody::Status).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    client.call(RequestBody::Status).await.unwrap();

    let mut stream = server.raw().await;
    let started = Instant::now();
    assert_closed(&mut stream).await;
    assert!(started.elapsed() >= Duration::from_millis(1000));
    server.stop().await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let server = TestServer::start(Config::default()).await;
    let mut stream = server.raw().await;
    write_frame(&mut stream, br#"{"id": 1, "type": "list", "rpId": "slow"}"#)
        .await
        .unwrap();
    write_frame(&mut stream, br#"{"id": 2, "type": "status"}"#)
        .await
        .unwrap();
    let first = parse(&read_frame(&mut stream).await.unwrap().unwrap());
    let second = parse(&read_frame(&mut stream).await.unwrap().unwrap());
    assert_eq!(
        (first["id"].clone(), first["type"].clone()),
        (1.into(), "list".into())
    );
    assert_eq!(
        (second["id"].clone(), second["type"].clone()),
        (2.into(), "status".into())
    );
    server.stop().await;
}

#[tokio::test]
async fn connections_are_served_concurrently() {
    let server = TestServer::start(Config::default()).await;
    let mut slow = server.client().await;
    let mut fast = server.client().await;
    let slow_call = tokio::spawn(async move {
        slow.call(RequestBody::List {
            rp_id: Some("slow".into()),
            offset: 0,
            limit: None,
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    fast.call(RequestBody::Status).await.unwrap();
    // Served one at a time, the slow call would have been answered first.
    assert!(!slow_call.is_finished());
    slow_call.await.unwrap().unwrap();
    server.stop().await;
}

#[tokio::test]
async fn max_connections_is_honoured() {
    let config = Config {
        max_connections: 1,
        ..Config::default()
    };
    let server = TestServer::start(config).await;
    let mut first = server.client().await;
    first.call(RequestBody::Status).await.unwrap();

    // Over the limit: told why, then closed.
    let mut stream = server.raw().await;
    let reply: Response =
        serde_json::from_slice(&read_frame(&mut stream).await.unwrap().unwrap()).unwrap();
    assert_eq!(reply.id, None);
    let err = reply.result.unwrap_err();
    assert_eq!(err.name, ErrorName::ConstraintError);
    assert!(err.message.contains("too many connections"), "{err}");
    assert_closed(&mut stream).await;

    // The typed client reports the same.
    let mut refused = server.client().await;
    match refused.call(RequestBody::Status).await {
        Err(ClientError::Remote(body)) => assert_eq!(body.name, ErrorName::ConstraintError),
        other => panic!("expected a ConstraintError, got {other:?}"),
    }

    // The first connection is unaffected; once it goes, a new one gets in.
    first.call(RequestBody::Status).await.unwrap();
    drop(first);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut client = server.client().await;
        match client.call(RequestBody::Status).await {
            Ok(_) => break,
            Err(ClientError::Remote(body)) if body.name == ErrorName::ConstraintError => {
                assert!(Instant::now() < deadline, "slot never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!(server.calls(), 3);
    server.stop().await;
}

#[tokio::test]
async fn one_uid_cannot_take_more_than_its_share_of_connections() {
    let config = Config {
        max_connections: 8,
        max_connections_per_uid: 2,
        ..Config::default()
    };
    let server = TestServer::start(config).await;
    let mut first = server.client().await;
    let mut second = server.client().await;
    first.call(RequestBody::Status).await.unwrap();
    second.call(RequestBody::Status).await.unwrap();

    // The same uid's third connection is told why and closed, though the server has room.
    let mut stream = server.raw().await;
    let reply: Response =
        serde_json::from_slice(&read_frame(&mut stream).await.unwrap().unwrap()).unwrap();
    let err = reply.result.unwrap_err();
    assert_eq!(err.name, ErrorName::ConstraintError);
    assert!(err.message.contains("limit 2"), "{err}");
    assert_closed(&mut stream).await;

    // Once one of them goes, the uid gets a slot again.
    drop(first);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut client = server.client().await;
        match client.call(RequestBody::Status).await {
            Ok(_) => break,
            Err(ClientError::Remote(body)) if body.name == ErrorName::ConstraintError => {
                assert!(Instant::now() < deadline, "slot never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    second.call(RequestBody::Status).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_the_current_request_and_closes_idle_connections() {
    let server = TestServer::start(Config::default()).await;
    let mut idle = server.raw().await;
    let mut busy = server.raw().await;
    write_frame(&mut busy, br#"{"id": 9, "type": "list", "rpId": "slow"}"#)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.shutdown.cancel();

    // The request in the handler still gets its answer, then the connection closes.
    let reply = parse(&read_frame(&mut busy).await.unwrap().unwrap());
    assert_eq!(reply["id"], 9);
    assert_eq!(reply["ok"], true);
    assert_closed(&mut busy).await;
    assert_closed(&mut idle).await;

    let path = server.path.clone();
    tokio::time::timeout(PATIENCE, server.task)
        .await
        .expect("serve returns after shutdown")
        .unwrap();
    assert!(matches!(
        Client::connect(&path).await,
        Err(ClientError::Connect { .. })
    ));
}

#[tokio::test]
async fn socket_is_private() {
    let server = TestServer::start(Config::default()).await;
    let socket_mode = std::fs::metadata(&server.path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(socket_mode & 0o777, 0o600);
    let dir_mode = std::fs::metadata(server.path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    server.stop().await;
}

#[tokio::test]
async fn stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipc.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "a dropped listener leaves its file behind");

    let listener = bind(&path).unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(
        listener,
        Arc::new(TestHandler::default()),
        Config::default(),
        shutdown.clone(),
    ));
    let mut client = Client::connect(&path).await.unwrap();
    client.call(RequestBody::Status).await.unwrap();
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn live_socket_is_not_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipc.sock");
    let _live = bind(&path).unwrap();
    let err = bind(&path).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    assert!(path.exists());
}

#[tokio::test]
async fn other_files_are_never_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipc.sock");
    std::fs::write(&path, b"precious").unwrap();
    let err = bind(&path).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");

    let dir_path = dir.path().join("a-directory");
    std::fs::create_dir(&dir_path).unwrap();
    assert!(bind(&dir_path).is_err());
    assert!(dir_path.is_dir());
}

#[tokio::test]
async fn connecting_to_nothing_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path: &Path = &dir.path().join("missing.sock");
    match Client::connect(path).await {
        Err(err @ ClientError::Connect { .. }) => {
            assert!(err.to_string().contains("missing.sock"), "{err}");
        }
        other => panic!("expected Connect error, got {other:?}"),
    }
}

#[tokio::test]
async fn client_rejects_a_reply_to_another_request() {
    // A fake daemon that answers with the wrong id, then with the wrong type.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake.sock");
    let listener = bind(&path).unwrap();
    let fake = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_frame(&mut stream).await.unwrap().unwrap();
        write_frame(&mut stream, br#"{"id": 999, "ok": true, "type": "setPin"}"#)
            .await
            .unwrap();
        read_frame(&mut stream).await.unwrap().unwrap();
        write_frame(&mut stream, br#"{"id": 2, "ok": true, "type": "setPin"}"#)
            .await
            .unwrap();
        read_frame(&mut stream).await.unwrap().unwrap();
        // Then hang up without answering.
    });
    let mut client = Client::connect(&path).await.unwrap();
    assert!(matches!(
        client.call(RequestBody::Status).await,
        Err(ClientError::UnexpectedReply(_))
    ));
    assert!(matches!(
        client.call(RequestBody::Status).await,
        Err(ClientError::UnexpectedReply(_))
    ));
    assert!(matches!(
        client.call(RequestBody::Status).await,
        Err(ClientError::Closed)
    ));
    fake.await.unwrap();
}
