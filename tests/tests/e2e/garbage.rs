//! One connection feeds the daemon garbage while another keeps using it: every honest
//! answer stays correct and the daemon survives.

use std::time::{Duration, Instant};

use passmesh_ipc::{read_frame, write_frame};
use passmesh_tests::ops;
use passmesh_tests::rp::UserVerificationPolicy;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::timeout;

use crate::{client, daemon, example_rp, register_user, sign_in};

const MAX_FRAMES: u64 = 2_000;
const MAX_TIME: Duration = Duration::from_secs(5);
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// SplitMix64: small, deterministic, seed printed so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    fn word(&mut self) -> String {
        let len = 1 + self.below(12) as usize;
        (0..len)
            .map(|_| char::from(b'a' + self.below(26) as u8))
            .collect()
    }
}

/// JSON that is not a valid request (or a harmless one), with the id it carries if any.
fn junk_request(rng: &mut Rng) -> (Vec<u8>, Option<u64>) {
    let id = rng.below(1 << 40);
    let value = match rng.below(10) {
        0 => json!({ "id": id, "type": format!("x{}", rng.word()) }),
        1 => json!({ "id": id, "type": "create" }),
        2 => json!({ "id": id, "type": "get", "origin": rng.word(), "options": rng.word() }),
        3 => json!({ "id": id, "type": "delete", "credentialId": "%%%" }),
        4 => json!({ "id": id, "type": "setPin" }),
        5 => json!({ "id": rng.word(), "type": "status" }),
        6 => {
            // Deep nesting, past serde_json's recursion limit.
            let depth = 200 + rng.below(300) as usize;
            let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            return (text.into_bytes(), None);
        }
        7 => {
            // A well-formed read-only request the handler must refuse.
            json!({ "id": id, "type": "get", "origin": format!("https://{}.test", rng.word()),
                "options": { "challenge": "AAAA", "allowCredentials": [
                    { "type": "public-key", "id": "3q2-7w" } ] } })
        }
        8 => {
            // Deleting something that does not exist: answered, changes nothing.
            let credential = passmesh_ipc::Base64Url::encode(&rng.bytes(24));
            json!({ "id": id, "type": "delete", "credentialId": credential })
        }
        _ => json!({ "id": id, "type": "list", "rpId": [rng.word()] }),
    };
    let id = value.get("id").and_then(Value::as_u64);
    (serde_json::to_vec(&value).expect("JSON value"), id)
}

/// Checks a reply to garbage: an error (or `delete` → deleted:false) with a sane id.
fn check_junk_reply(reply: &[u8], id: Option<u64>) {
    let reply: Value = serde_json::from_slice(reply).expect("replies are JSON");
    if reply["ok"] == true {
        assert_eq!(reply["type"], "delete", "garbage accepted: {reply}");
        assert_eq!(
            reply["deleted"], false,
            "garbage deleted something: {reply}"
        );
    } else {
        assert_eq!(reply["ok"], false, "{reply}");
        assert!(reply["error"]["name"].is_string(), "{reply}");
    }
    match (&reply["id"], id) {
        (Value::Null, _) => {}
        (Value::Number(n), Some(id)) => assert_eq!(n.as_u64(), Some(id), "{reply}"),
        (other, _) => panic!("reply id {other} to a request with id {id:?}"),
    }
}

async fn reconnect(socket: &std::path::Path) -> UnixStream {
    UnixStream::connect(socket).await.expect("daemon accepts")
}

/// Drains a connection the daemon should close; replies in between must be errors.
async fn drain(stream: &mut UnixStream) {
    let mut rest = Vec::new();
    let read = timeout(REPLY_TIMEOUT, stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "daemon kept a garbage connection open");
}

async fn feed_garbage(socket: std::path::PathBuf, seed: u64) -> u64 {
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut frames = 0u64;
    let mut stream = reconnect(&socket).await;
    while frames < MAX_FRAMES && started.elapsed() < MAX_TIME {
        match rng.below(8) {
            0 => {
                // Unframed noise; the daemon answers or closes, never hangs or dies.
                let len = 1 + rng.below(300) as usize;
                let noise = rng.bytes(len);
                let _ = stream.write_all(&noise).await;
                let _ = stream.shutdown().await;
                drain(&mut stream).await;
                stream = reconnect(&socket).await;
            }
            1 | 2 => {
                // A well-framed payload of random bytes.
                let len = rng.below(512) as usize;
                let payload = rng.bytes(len);
                write_frame(&mut stream, &payload).await.expect("write");
                let reply = timeout(REPLY_TIMEOUT, read_frame(&mut stream))
                    .await
                    .expect("reply in time")
                    .expect("readable")
                    .expect("a reply");
                check_junk_reply(&reply, None);
            }
            3..=5 => {
                let (payload, id) = junk_request(&mut rng);
                write_frame(&mut stream, &payload).await.expect("write");
                let reply = timeout(REPLY_TIMEOUT, read_frame(&mut stream))
                    .await
                    .expect("reply in time")
                    .expect("readable")
                    .expect("a reply");
                check_junk_reply(&reply, id);
            }
            6 => {
                // Oversized announcement.
                let len = u32::try_from(passmesh_ipc::MAX_FRAME_LEN).expect("1 MiB fits in u32")
                    + 1
                    + rng.below(1 << 30) as u32;
                stream.write_all(&len.to_le_bytes()).await.expect("write");
                let reply = timeout(REPLY_TIMEOUT, read_frame(&mut stream))
                    .await
                    .expect("reply in time")
                    .expect("readable")
                    .expect("a reply");
                let reply: Value = serde_json::from_slice(&reply).expect("replies are JSON");
                assert_eq!(reply["error"]["name"], "ConstraintError", "{reply}");
                drain(&mut stream).await;
                stream = reconnect(&socket).await;
            }
            _ => {
                // Cut off mid-frame.
                let len = 10 + rng.below(1000) as u32;
                let _ = stream.write_all(&len.to_le_bytes()).await;
                let sent = rng.below(u64::from(len)) as usize;
                let part = rng.bytes(sent);
                let _ = stream.write_all(&part).await;
                let _ = stream.shutdown().await;
                drain(&mut stream).await;
                stream = reconnect(&socket).await;
            }
        }
        frames += 1;
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_one_connection_never_disturbs_another() {
    let mut d = daemon().await;
    let mut c = client(&d).await;
    let rp = example_rp();
    let alice = register_user(&mut c, &rp, "alice").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let bob = register_user(&mut c, &rp, "bob").await;
    let before = ops::snapshot(&mut c).await.unwrap();

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_nanos() as u64)
        .unwrap_or(1);
    eprintln!("garbage seed: {seed:#x}");
    let garbage = tokio::spawn(feed_garbage(d.socket_path().to_path_buf(), seed));

    let mut rounds = 0u32;
    while !garbage.is_finished() {
        let (assertion, _) = sign_in(
            &mut c,
            &rp,
            &[&alice],
            &[],
            UserVerificationPolicy::Preferred,
            None,
        )
        .await;
        assert_eq!(assertion.raw_id.as_bytes(), alice.id());
        let (assertion, _) = sign_in(
            &mut c,
            &rp,
            &[],
            &[&alice, &bob],
            UserVerificationPolicy::Preferred,
            None,
        )
        .await;
        assert_eq!(assertion.raw_id.as_bytes(), bob.id());
        assert_eq!(ops::snapshot(&mut c).await.unwrap(), before);
        rounds += 1;
    }
    let frames = garbage.await.expect("garbage task did not panic");
    eprintln!("{frames} garbage frames, {rounds} honest rounds");
    assert!(frames > 100, "only {frames} garbage frames were sent");
    assert!(rounds > 0);

    assert!(d.is_running(), "the daemon died");
    let mut fresh = client(&d).await;
    assert_eq!(ops::snapshot(&mut fresh).await.unwrap(), before);
}
