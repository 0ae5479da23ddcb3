//! A relying-party web server: one rpId (`localhost`), a page that registers and signs in through
//! `navigator.credentials`, and JSON endpoints verified with webauthn-rs-core.
//!
//! HTTP/1.1 by hand, one request per connection (`Connection: close`), bounded sizes. What the
//! server sees is reported to the test as [`Event`]s on a bounded channel.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use passmesh_ipc::{AuthenticationResponseJson, RegistrationResponseJson};
use passmesh_tests::rp::{
    Credential, PendingAuthentication, RegistrationOptions, RegistrationState, RelyingParty, User,
    UserVerificationPolicy,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The web page: `?flow=register-login`, `register`, `login` or `steal`.
const PAGE: &str = include_str!("page.html");

/// Largest request head and body the server reads.
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 1 << 20;

/// What the relying party saw.
#[derive(Debug, Clone)]
pub enum Event {
    /// A registration passed verification; `checks` are the page's own observations.
    Registered {
        /// The credential the RP stored.
        credential: Box<Credential>,
        /// What the page checked on the credential object (name → passed).
        checks: Value,
    },
    /// An assertion passed verification.
    SignedIn {
        /// The page's observations.
        checks: Value,
        /// Whether the authenticator reported user verification.
        user_verified: bool,
    },
    /// The server rejected a response.
    #[expect(dead_code, reason = "read through Debug, in failure messages")]
    Rejected {
        /// `register` or `login`.
        stage: String,
        /// Why.
        reason: String,
    },
    /// The page reported something (an error from `navigator.credentials`, or a step done).
    Report(Value),
}

#[derive(Default)]
struct Site {
    registration: Option<(User, RegistrationState)>,
    authentication: Option<PendingAuthentication>,
    registered: Vec<(User, Credential)>,
}

struct Shared {
    rp: RelyingParty,
    user: User,
    user_verification: UserVerificationPolicy,
    site: Mutex<Site>,
    events: mpsc::Sender<Event>,
}

/// The running server; stops when dropped.
pub struct RpServer {
    port: u16,
    events: mpsc::Receiver<Event>,
    task: JoinHandle<()>,
}

impl RpServer {
    /// Starts the relying party for rpId `localhost` on 127.0.0.1 (any free port), asking for
    /// user verification "preferred".
    pub async fn start(user: User) -> anyhow::Result<RpServer> {
        Self::start_with(user, UserVerificationPolicy::Preferred).await
    }

    /// Like [`RpServer::start`], with the given user-verification policy for both ceremonies.
    pub async fn start_with(
        user: User,
        user_verification: UserVerificationPolicy,
    ) -> anyhow::Result<RpServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let rp = RelyingParty::new("localhost", &format!("http://localhost:{port}"))?;
        let (tx, events) = mpsc::channel(64);
        let shared = Arc::new(Shared {
            rp,
            user,
            user_verification,
            site: Mutex::new(Site::default()),
            events: tx,
        });
        let task = tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let served =
                        tokio::time::timeout(Duration::from_secs(30), serve(stream, peer, &shared))
                            .await;
                    if let Ok(Err(e)) = served {
                        eprintln!("rp server: {e:#}");
                    }
                });
            }
        });
        Ok(RpServer { port, events, task })
    }

    /// The URL of the page at `host` (`localhost` or `127.0.0.1`) running `flow`.
    pub fn page(&self, host: &str, flow: &str) -> String {
        format!("http://{host}:{}/?flow={flow}", self.port)
    }

    /// An event that already arrived, if any.
    pub fn try_event(&mut self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// The next event, or an error after `limit`.
    pub async fn next_event(&mut self, limit: Duration) -> anyhow::Result<Event> {
        tokio::time::timeout(limit, self.events.recv())
            .await
            .map_err(|_| anyhow!("the relying party heard nothing for {limit:?}"))?
            .ok_or_else(|| anyhow!("the relying party stopped"))
    }
}

impl Drop for RpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct HttpRequest {
    method: String,
    path: String,
    body: Vec<u8>,
}

async fn serve(mut stream: TcpStream, _peer: SocketAddr, shared: &Shared) -> anyhow::Result<()> {
    let request = read_request(&mut stream).await?;
    let (status, content_type, body) = route(&request, shared).await;
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&body).await?;
    stream.shutdown().await?;
    Ok(())
}

async fn read_request(stream: &mut TcpStream) -> anyhow::Result<HttpRequest> {
    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > MAX_HEAD {
            bail!("request head over {MAX_HEAD} bytes");
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed inside the request head");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("request head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_owned();
    let path = first.next().unwrap_or("/").to_owned();
    let mut length = 0usize;
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().context("bad Content-Length")?;
        }
    }
    if length > MAX_BODY {
        bail!("request body of {length} bytes");
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = vec![0u8; (length - body.len()).min(64 * 1024)];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed inside the body");
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(HttpRequest { method, path, body })
}

type Reply = (&'static str, &'static str, Vec<u8>);

fn json_reply(status: &'static str, value: &Value) -> Reply {
    (status, "application/json", value.to_string().into_bytes())
}

async fn route(request: &HttpRequest, shared: &Shared) -> Reply {
    let path = request.path.split('?').next().unwrap_or("");
    let result = match (request.method.as_str(), path) {
        ("GET", "/") => {
            return (
                "200 OK",
                "text/html; charset=utf-8",
                PAGE.as_bytes().to_vec(),
            );
        }
        ("GET", "/register/begin") => register_begin(shared),
        ("POST", "/register/finish") => register_finish(shared, &request.body).await,
        ("GET", "/login/begin") => login_begin(shared),
        ("POST", "/login/finish") => login_finish(shared, &request.body).await,
        ("POST", "/report") => match serde_json::from_slice::<Value>(&request.body) {
            Ok(v) => {
                let _ = shared.events.send(Event::Report(v)).await;
                Ok(json!({"ok": true}))
            }
            Err(e) => Err(anyhow!("report is not JSON: {e}")),
        },
        ("GET", "/favicon.ico") => return ("404 Not Found", "text/plain", b"no".to_vec()),
        _ => Err(anyhow!("no route for {} {}", request.method, request.path)),
    };
    match result {
        Ok(v) => json_reply("200 OK", &v),
        Err(e) => json_reply(
            "400 Bad Request",
            &json!({"ok": false, "error": format!("{e:#}")}),
        ),
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Site> {
    shared
        .site
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn register_begin(shared: &Shared) -> anyhow::Result<Value> {
    let options = RegistrationOptions {
        user_verification: shared.user_verification,
        ..RegistrationOptions::default()
    };
    let (options, state) = shared.rp.begin_registration(&shared.user, &options)?;
    lock(shared).registration = Some((shared.user.clone(), state));
    Ok(serde_json::to_value(&options)?)
}

async fn register_finish(shared: &Shared, body: &[u8]) -> anyhow::Result<Value> {
    let posted: Value = serde_json::from_slice(body)?;
    let checks = posted.get("checks").cloned().unwrap_or(Value::Null);
    let verdict = (|| -> anyhow::Result<Credential> {
        let response: RegistrationResponseJson =
            serde_json::from_value(posted.get("credential").cloned().unwrap_or(Value::Null))
                .context("not a RegistrationResponseJSON")?;
        let (user, state) = lock(shared)
            .registration
            .take()
            .ok_or_else(|| anyhow!("no registration in progress"))?;
        let credential = shared.rp.finish_registration(&response, &state)?;
        lock(shared).registered.push((user, credential.clone()));
        Ok(credential)
    })();
    let event = match &verdict {
        Ok(credential) => Event::Registered {
            credential: Box::new(credential.clone()),
            checks,
        },
        Err(e) => Event::Rejected {
            stage: "register".into(),
            reason: format!("{e:#}"),
        },
    };
    let _ = shared.events.send(event).await;
    verdict.map(|_| json!({"ok": true}))
}

fn login_begin(shared: &Shared) -> anyhow::Result<Value> {
    // Discoverable sign-in: the prompt has to list the passkeys and the person picks one.
    let (options, pending) = shared
        .rp
        .begin_authentication(&[], shared.user_verification)?;
    lock(shared).authentication = Some(pending);
    Ok(serde_json::to_value(&options)?)
}

async fn login_finish(shared: &Shared, body: &[u8]) -> anyhow::Result<Value> {
    let posted: Value = serde_json::from_slice(body)?;
    let checks = posted.get("checks").cloned().unwrap_or(Value::Null);
    let verdict = (|| -> anyhow::Result<bool> {
        let response: AuthenticationResponseJson =
            serde_json::from_value(posted.get("credential").cloned().unwrap_or(Value::Null))
                .context("not an AuthenticationResponseJSON")?;
        let mut site = lock(shared);
        let pending = site
            .authentication
            .take()
            .ok_or_else(|| anyhow!("no sign-in in progress"))?;
        let result = shared
            .rp
            .finish_authentication(&response, pending, &site.registered)?;
        Ok(result.user_verified())
    })();
    let event = match &verdict {
        Ok(user_verified) => Event::SignedIn {
            checks,
            user_verified: *user_verified,
        },
        Err(e) => Event::Rejected {
            stage: "login".into(),
            reason: format!("{e:#}"),
        },
    };
    let _ = shared.events.send(event).await;
    verdict.map(|_| json!({"ok": true}))
}
