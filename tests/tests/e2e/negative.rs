//! Requests the daemon must refuse, each with the right error name and with the vault
//! left exactly as it was.

use passmesh_ipc::{ErrorName, read_frame, write_frame};
use passmesh_tests::ops::{self, expect_error};
use passmesh_tests::rp::{
    COSEAlgorithm, RegistrationOptions, RelyingParty, User, UserVerificationPolicy,
};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::{ORIGIN, RP_ID, client, daemon, example_rp, register, register_user, sign_in};

/// Tries `create` for a fresh user with `rp_id` (None: left out) from `origin`.
async fn create_from(
    c: &mut passmesh_ipc::Client,
    rp_id: Option<&str>,
    origin: &str,
    name: ErrorName,
) {
    let rp = example_rp();
    let (mut options, _) = rp
        .begin_registration(&User::new("mallory"), &RegistrationOptions::default())
        .expect("creation options");
    options.rp.id = rp_id.map(str::to_owned);
    let err = expect_error(ops::create(c, origin, options, None).await, name);
    eprintln!("create rp.id={rp_id:?} origin={origin}: {}", err.message);
}

/// Tries `get` with `rp_id` from `origin`, allowing `allow`.
async fn get_from(
    c: &mut passmesh_ipc::Client,
    rp_id: Option<&str>,
    origin: &str,
    allow: &[passmesh_tests::rp::Credential],
    name: ErrorName,
) {
    let rp = example_rp();
    let (mut request, _) = rp
        .begin_authentication(allow, UserVerificationPolicy::Preferred)
        .expect("request options");
    request.rp_id = rp_id.map(str::to_owned);
    let err = expect_error(ops::get(c, origin, request, None).await, name);
    eprintln!("get rpId={rp_id:?} origin={origin}: {}", err.message);
}

#[tokio::test]
async fn origin_must_be_the_rp_id_or_below_it() {
    let d = daemon().await;
    let mut c = client(&d).await;
    let alice = register_user(&mut c, &example_rp(), "alice").await;
    let before = ops::snapshot(&mut c).await.unwrap();

    let sec = ErrorName::SecurityError;
    create_from(&mut c, Some(RP_ID), "https://evil.com", sec).await;
    // A suffix of the string but not of the domain.
    create_from(&mut c, Some(RP_ID), "https://notexample.com", sec).await;
    create_from(&mut c, Some(RP_ID), "https://example.com.evil.net", sec).await;
    // rpId below the origin's host, not above it.
    create_from(
        &mut c,
        Some("login.example.com"),
        "https://example.com",
        sec,
    )
    .await;
    create_from(&mut c, Some("other.org"), ORIGIN, sec).await;
    // Not an origin at all.
    create_from(&mut c, Some(RP_ID), "login.example.com", sec).await;

    let allow = std::slice::from_ref(&alice.credential);
    get_from(&mut c, Some(RP_ID), "https://evil.com", allow, sec).await;
    get_from(&mut c, Some(RP_ID), "https://notexample.com", allow, sec).await;
    get_from(&mut c, Some(RP_ID), "https://evil.com", &[], sec).await;

    assert_eq!(ops::snapshot(&mut c).await.unwrap(), before);
}

#[tokio::test]
async fn public_suffixes_are_not_rp_ids() {
    let d = daemon().await;
    let mut c = client(&d).await;
    let sec = ErrorName::SecurityError;
    let before = ops::snapshot(&mut c).await.unwrap();

    create_from(&mut c, Some("co.uk"), "https://foo.co.uk", sec).await;
    create_from(&mut c, Some("github.io"), "https://alice.github.io", sec).await;
    create_from(&mut c, Some("com"), "https://example.com", sec).await;
    // The origin's host itself being a public suffix, via the default rpId.
    create_from(&mut c, None, "https://github.io", sec).await;
    get_from(&mut c, Some("co.uk"), "https://foo.co.uk", &[], sec).await;
    get_from(
        &mut c,
        Some("github.io"),
        "https://alice.github.io",
        &[],
        sec,
    )
    .await;
    assert_eq!(ops::snapshot(&mut c).await.unwrap(), before);

    // The registrable domain below the suffix is fine.
    let rp = RelyingParty::new("foo.co.uk", "https://www.foo.co.uk").unwrap();
    register_user(&mut c, &rp, "alice").await;
    assert_eq!(ops::status(&mut c).await.unwrap().passkeys, 1);
}

#[tokio::test]
async fn plain_http_is_only_for_localhost() {
    let d = daemon().await;
    let mut c = client(&d).await;
    let alice = register_user(&mut c, &example_rp(), "alice").await;
    let before = ops::snapshot(&mut c).await.unwrap();
    let sec = ErrorName::SecurityError;

    create_from(&mut c, Some(RP_ID), "http://example.com", sec).await;
    create_from(&mut c, Some(RP_ID), "http://login.example.com", sec).await;
    create_from(
        &mut c,
        Some("localhost.example.com"),
        "http://localhost.example.com",
        sec,
    )
    .await;
    create_from(&mut c, Some(RP_ID), "ftp://example.com", sec).await;
    get_from(
        &mut c,
        Some(RP_ID),
        "http://login.example.com",
        std::slice::from_ref(&alice.credential),
        sec,
    )
    .await;
    assert_eq!(ops::snapshot(&mut c).await.unwrap(), before);
}

#[tokio::test]
async fn excluded_credentials_and_unknown_credentials() {
    let d = daemon().await;
    let mut c = client(&d).await;
    let rp = example_rp();
    let other = RelyingParty::new("other.org", "https://other.org").unwrap();
    let alice = register_user(&mut c, &rp, "alice").await;
    let carol = register_user(&mut c, &other, "carol").await;
    let before = ops::snapshot(&mut c).await.unwrap();

    // alice registers again, the site excluding the passkey she has: InvalidStateError.
    let excluding = RegistrationOptions {
        exclude: vec![vec![1, 2, 3], alice.id().to_vec()],
        ..RegistrationOptions::default()
    };
    let (options, _) = rp.begin_registration(&alice.user, &excluding).unwrap();
    expect_error(
        ops::create(&mut c, ORIGIN, options, None).await,
        ErrorName::InvalidStateError,
    );
    assert_eq!(ops::snapshot(&mut c).await.unwrap(), before);

    // get naming a credential that does not exist.
    let (mut request, _) = rp
        .begin_authentication(
            std::slice::from_ref(&alice.credential),
            UserVerificationPolicy::Preferred,
        )
        .unwrap();
    request.allow_credentials[0].id = passmesh_ipc::Base64Url(vec![0x5a; 32]);
    expect_error(
        ops::get(&mut c, ORIGIN, request, None).await,
        ErrorName::NotAllowedError,
    );
    assert_eq!(ops::snapshot(&mut c).await.unwrap(), before);

    // Excluding another site's passkey does not stop a registration here.
    let excluding_other = RegistrationOptions {
        exclude: vec![carol.id().to_vec()],
        ..RegistrationOptions::default()
    };
    register(&mut c, &rp, &User::new("dave"), &excluding_other, None).await;
    assert_eq!(ops::status(&mut c).await.unwrap().passkeys, 3);
}

#[tokio::test]
async fn es256_must_be_offered() {
    let d = daemon().await;
    let mut c = client(&d).await;
    let rp = example_rp();
    let before = ops::snapshot(&mut c).await.unwrap();
    let rsa_only = RegistrationOptions {
        algorithms: vec![COSEAlgorithm::RS256, COSEAlgorithm::ES384],
        ..RegistrationOptions::default()
    };
    let (options, _) = rp
        .begin_registration(&User::new("alice"), &rsa_only)
        .unwrap();
    expect_error(
        ops::create(&mut c, ORIGIN, options, None).await,
        ErrorName::NotSupportedError,
    );
    assert_eq!(ops::snapshot(&mut c).await.unwrap(), before);

    // ES256 last in the list is still ES256.
    let es256_last = RegistrationOptions {
        algorithms: vec![COSEAlgorithm::RS256, COSEAlgorithm::ES256],
        ..RegistrationOptions::default()
    };
    register(&mut c, &rp, &User::new("alice"), &es256_last, None).await;
}

/// Sends one raw frame and reads one back as JSON.
async fn raw_call(stream: &mut UnixStream, payload: &[u8]) -> Value {
    write_frame(stream, payload).await.expect("frame written");
    let reply = read_frame(stream)
        .await
        .expect("frame read")
        .expect("a reply, not end of stream");
    serde_json::from_slice(&reply).expect("the reply is JSON")
}

fn assert_error(reply: &Value, name: &str, id: Value) {
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["name"], name, "{reply}");
    assert!(reply["error"]["message"].is_string(), "{reply}");
    assert_eq!(reply["id"], id, "{reply}");
}

#[tokio::test]
async fn malformed_frames_get_errors_and_the_connection_stays_usable() {
    let d = daemon().await;
    let mut c = client(&d).await;
    register_user(&mut c, &example_rp(), "alice").await;
    let before = ops::snapshot(&mut c).await.unwrap();

    let mut raw = UnixStream::connect(d.socket_path()).await.unwrap();
    assert_error(
        &raw_call(&mut raw, b"{not json").await,
        "SyntaxError",
        Value::Null,
    );
    assert_error(
        &raw_call(&mut raw, b"\xff\xfe{}").await,
        "SyntaxError",
        Value::Null,
    );
    assert_error(&raw_call(&mut raw, b"").await, "SyntaxError", Value::Null);
    // JSON, but not a request: TypeError, echoing the id when there is one.
    assert_error(
        &raw_call(&mut raw, br#"{"id":9,"type":"create"}"#).await,
        "TypeError",
        json!(9),
    );
    assert_error(
        &raw_call(&mut raw, br#"{"id":10,"type":"launchMissiles"}"#).await,
        "TypeError",
        json!(10),
    );
    assert_error(
        &raw_call(
            &mut raw,
            br#"{"id":11,"type":"delete","credentialId":"!!"}"#,
        )
        .await,
        "TypeError",
        json!(11),
    );
    assert_error(
        &raw_call(&mut raw, br#"{"id":-1,"type":"status"}"#).await,
        "TypeError",
        Value::Null,
    );
    assert_error(
        &raw_call(&mut raw, b"[1,2,3]").await,
        "TypeError",
        Value::Null,
    );

    // Pipelined: three frames written at once are answered in order.
    let mut batch = Vec::new();
    for payload in [
        &br#"{"id":21,"type":"status"}"#[..],
        b"{oops",
        br#"{"id":23,"type":"list"}"#,
    ] {
        batch.extend_from_slice(&u32::try_from(payload.len()).expect("small").to_le_bytes());
        batch.extend_from_slice(payload);
    }
    raw.write_all(&batch).await.expect("write");
    let mut replies = Vec::new();
    for _ in 0..3 {
        let reply = read_frame(&mut raw).await.expect("read").expect("reply");
        replies.push(serde_json::from_slice::<Value>(&reply).expect("JSON"));
    }
    assert_eq!(replies[0]["id"], 21, "{replies:?}");
    assert_eq!(replies[0]["type"], "status", "{replies:?}");
    assert_error(&replies[1], "SyntaxError", Value::Null);
    assert_eq!(replies[2]["id"], 23, "{replies:?}");
    assert_eq!(replies[2]["type"], "list", "{replies:?}");

    // Same connection, a real request.
    let reply = raw_call(&mut raw, br#"{"id":7,"type":"status"}"#).await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["id"], 7);
    assert_eq!(reply["type"], "status");
    assert_eq!(reply["status"]["passkeys"], 1);

    assert_eq!(ops::snapshot(&mut c).await.unwrap(), before);
}

#[tokio::test]
async fn oversized_frame_is_refused_then_closed() {
    let d = daemon().await;
    let mut c = client(&d).await;
    register_user(&mut c, &example_rp(), "alice").await;
    let before = ops::snapshot(&mut c).await.unwrap();

    let mut raw = UnixStream::connect(d.socket_path()).await.unwrap();
    // Announce 2 MiB and send nothing more: the daemon must not wait for (or allocate) it.
    raw.write_all(&(2u32 << 20).to_le_bytes()).await.unwrap();
    let reply = read_frame(&mut raw).await.unwrap().expect("an error reply");
    let reply: Value = serde_json::from_slice(&reply).unwrap();
    assert_error(&reply, "ConstraintError", Value::Null);
    match read_frame(&mut raw).await {
        Ok(None) => {}
        Err(passmesh_ipc::FrameError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
        }
        other => panic!("connection should be closed after an oversized frame: {other:?}"),
    }

    // Exactly at the limit is a size the daemon accepts (then finds it is not JSON).
    let mut raw = UnixStream::connect(d.socket_path()).await.unwrap();
    let big = vec![b' '; passmesh_ipc::MAX_FRAME_LEN];
    assert_error(&raw_call(&mut raw, &big).await, "SyntaxError", Value::Null);

    assert_eq!(ops::snapshot(&mut c).await.unwrap(), before);
}

#[tokio::test]
async fn cut_off_frames_change_nothing_and_block_no_one() {
    let d = daemon().await;
    let mut c = client(&d).await;
    let rp = example_rp();
    let alice = register_user(&mut c, &rp, "alice").await;
    let before = ops::snapshot(&mut c).await.unwrap();

    // A frame announced as 100 bytes, 10 sent, connection left open: others are served.
    let mut stalled = UnixStream::connect(d.socket_path()).await.unwrap();
    stalled.write_all(&100u32.to_le_bytes()).await.unwrap();
    stalled.write_all(br#"{"id":1,"t"#).await.unwrap();
    sign_in(
        &mut c,
        &rp,
        &[&alice],
        &[],
        UserVerificationPolicy::Preferred,
        None,
    )
    .await;
    let mut other = client(&d).await;
    assert_eq!(ops::snapshot(&mut other).await.unwrap(), before);
    drop(stalled);

    // A cut-off create request: the header says more than was sent, then the peer leaves.
    let (options, _) = rp
        .begin_registration(&User::new("bob"), &RegistrationOptions::default())
        .unwrap();
    let request = serde_json::to_vec(&json!({
        "id": 1, "type": "create", "origin": ORIGIN, "options": options,
    }))
    .unwrap();
    let mut cut = UnixStream::connect(d.socket_path()).await.unwrap();
    cut.write_all(&u32::try_from(request.len()).unwrap().to_le_bytes())
        .await
        .unwrap();
    cut.write_all(&request[..request.len() - 1]).await.unwrap();
    cut.shutdown().await.unwrap();
    // The daemon closes its side without answering.
    assert!(matches!(read_frame(&mut cut).await, Ok(None) | Err(_)));
    drop(cut);

    let mut fresh = client(&d).await;
    assert_eq!(ops::snapshot(&mut fresh).await.unwrap(), before);
    assert_eq!(ops::snapshot(&mut c).await.unwrap(), before);
}
