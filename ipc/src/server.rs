//! The socket server: binding the socket safely, and an accept loop that feeds typed requests to
//! a [`Handler`] and writes its answers back.
//!
//! Connections over [`Config::max_connections`] (or [`Config::max_connections_per_uid`] for one uid) are
//! accepted, sent one `ConstraintError` frame
//! with `"id": null`, and closed at once, so a client learns why instead of hanging in the
//! listen backlog. Each connection is one task; its requests are answered strictly in order.

use std::collections::HashMap;
use std::fs::{self, DirBuilder};
use std::future::Future;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use zeroize::Zeroizing;

use crate::frame::{self, FrameError, HEADER_LEN, MAX_FRAME_LEN, write_frame};
use crate::message::{ErrorBody, ErrorName, Request, RequestBody, Response, ResponseBody};

/// Who is on the other end of a connection, from the kernel (`SO_PEERCRED`), not from the
/// client's say-so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Caller {
    /// The caller's user id: whose vault it may use.
    pub uid: u32,
    /// The caller's group id.
    pub gid: u32,
    /// The caller's process id, when the kernel reports one.
    pub pid: Option<i32>,
}

/// What the server calls for each well-formed request.
///
/// Errors come back to the caller as `{"ok": false}` frames. Runs on the connection's task: one
/// request at a time per connection, many connections concurrently. A panic closes that
/// connection without a reply.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request from `caller`.
    fn handle(
        &self,
        caller: &Caller,
        request: RequestBody,
    ) -> impl Future<Output = Result<ResponseBody, ErrorBody>> + Send;
}

/// Server limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Connections served at once; further ones are refused with `ConstraintError`.
    pub max_connections: usize,
    /// Connections of one uid served at once; further ones of that uid are refused the same way. Below
    /// `max_connections` where several users share the socket, so none of them can take every slot.
    pub max_connections_per_uid: usize,
    /// A connection with no request started for this long is closed.
    pub idle_timeout: Duration,
    /// A frame whose first byte has arrived must be complete within this; a reply must be
    /// written within it too.
    pub frame_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_connections: 128,
            max_connections_per_uid: 128,
            idle_timeout: Duration::from_secs(5 * 60),
            frame_timeout: Duration::from_secs(10),
        }
    }
}

/// Pause after a failed `accept` (e.g. out of file descriptors), which would otherwise fail
/// again at once and spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds the socket at `path` for the invoking user: parent directory created `0700` if
/// missing, socket `0600`. Same as [`bind_with_modes`]`(path, 0o700, 0o600)`.
///
/// Must be called inside a Tokio runtime.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    bind_with_modes(path, 0o700, 0o600)
}

/// Binds the socket at `path` with explicit permissions, for the system service whose socket all
/// local users reach (e.g. directory `0755`, socket `0666`; callers are then told apart by uid).
///
/// - A missing parent directory is created with `dir_mode` (an existing one is left alone).
/// - An existing socket file nobody accepts on is stale and is removed; if something answers,
///   fails with [`io::ErrorKind::AddrInUse`].
/// - Any other existing file is left alone and the call fails with
///   [`io::ErrorKind::AlreadyExists`].
/// - After binding, the socket file is set to `socket_mode`. Until then it has the umask's mode,
///   which is why the parent directory should not be more open than needed.
///
/// Must be called inside a Tokio runtime.
pub fn bind_with_modes(path: &Path, dir_mode: u32, socket_mode: u32) -> io::Result<UnixListener> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        DirBuilder::new()
            .recursive(true)
            .mode(dir_mode)
            .create(parent)?;
        // The umask may have narrowed the mode further; set exactly what was asked.
        fs::set_permissions(parent, fs::Permissions::from_mode(dir_mode))?;
    }

    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("another server is listening on {}", path.display()),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    debug!(path = %path.display(), "removing stale socket");
                    fs::remove_file(path)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; refusing to remove it",
                    path.display()
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }

    let listener = UnixListener::bind(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(socket_mode))?;
    Ok(listener)
}

/// Serves connections on `listener` until `shutdown` is cancelled.
///
/// On shutdown it stops accepting, lets each connection finish the request it is reading or
/// handling (bounded by [`Config::frame_timeout`] for the I/O, not for the handler), closes idle
/// connections, and returns once every connection task has ended. The socket file is left in
/// place; the next [`bind`] treats it as stale.
pub async fn serve<H: Handler>(
    listener: UnixListener,
    handler: Arc<H>,
    config: Config,
    shutdown: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(
        config.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let per_uid = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let mut tasks = JoinSet::new();

    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        while let Some(result) = tasks.try_join_next() {
            log_task_end(result);
        }

        let stream = match accepted {
            Ok((stream, _addr)) => stream,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            warn!(
                limit = config.max_connections,
                "connection refused: too many connections"
            );
            refuse(stream, config.max_connections);
            continue;
        };
        let caller = match stream.peer_cred() {
            Ok(cred) => Caller {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: cred.pid(),
            },
            Err(e) => {
                warn!(error = %e, "connection dropped: no peer credentials");
                continue;
            }
        };
        let Some(uid_slot) = UidSlot::take(&per_uid, caller.uid, config.max_connections_per_uid)
        else {
            warn!(
                uid = caller.uid,
                limit = config.max_connections_per_uid,
                "connection refused: too many connections of this uid"
            );
            refuse(stream, config.max_connections_per_uid);
            continue;
        };
        tasks.spawn(connection(
            stream,
            caller,
            Arc::clone(&handler),
            config.clone(),
            shutdown.clone(),
            (permit, uid_slot),
        ));
    }

    drop(listener);
    while let Some(result) = tasks.join_next().await {
        log_task_end(result);
    }
}

/// Open connections per uid.
type PerUid = Arc<std::sync::Mutex<HashMap<u32, usize>>>;

/// One connection's place in its uid's count, given back on drop.
struct UidSlot {
    counts: PerUid,
    uid: u32,
}

impl UidSlot {
    /// A slot for `uid` unless it already holds `max`.
    fn take(counts: &PerUid, uid: u32, max: usize) -> Option<UidSlot> {
        let mut map = counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(uid).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(UidSlot {
            counts: Arc::clone(counts),
            uid,
        })
    }
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let mut map = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.uid);
            }
        }
    }
}

fn log_task_end(result: Result<(), tokio::task::JoinError>) {
    if let Err(e) = result
        && e.is_panic()
    {
        warn!("connection task panicked; connection closed");
    }
}

/// Tells an over-the-limit client why it is being dropped, without spending a task on it.
fn refuse(stream: UnixStream, limit: usize) {
    let body = ErrorBody::new(
        ErrorName::ConstraintError,
        format!("too many connections (limit {limit}); try again later"),
    );
    let payload = encode_error(None, body);
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&payload);
    // A fresh socket's send buffer is empty, so this short frame fits in one non-blocking write;
    // should it not, the client only sees the close.
    if let Ok(std_stream) = stream.into_std() {
        let _ = (&std_stream).write(&frame);
    }
}

/// Why a connection ended, for the debug log.
#[derive(Debug, Clone, Copy)]
enum CloseReason {
    Shutdown,
    PeerHungUp,
    Idle,
    FrameTimeout,
    Truncated,
    Oversized,
    ReadFailed,
    WriteFailed,
}

async fn connection<H: Handler>(
    stream: UnixStream,
    caller: Caller,
    handler: Arc<H>,
    config: Config,
    shutdown: CancellationToken,
    _permits: (OwnedSemaphorePermit, UidSlot),
) {
    debug!(uid = caller.uid, pid = ?caller.pid, "connection opened");
    let (mut reader, mut writer) = stream.into_split();
    let reason = loop {
        match next_request(&mut reader, &mut writer, &config, &shutdown).await {
            Ok(frame) => {
                let response = answer(&*handler, &caller, &frame).await;
                drop(frame);
                let bytes = encode(&response);
                match timeout(config.frame_timeout, write_frame(&mut writer, &bytes)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => break CloseReason::WriteFailed,
                }
            }
            Err(reason) => break reason,
        }
    };
    debug!(uid = caller.uid, ?reason, "connection closed");
}

/// Waits for the next frame. Only the wait for its first byte is interrupted by shutdown or the
/// idle timeout; once a frame has begun it gets `frame_timeout` to complete.
async fn next_request(
    reader: &mut OwnedReadHalf,
    writer: &mut OwnedWriteHalf,
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<Zeroizing<Vec<u8>>, CloseReason> {
    let mut header = [0u8; HEADER_LEN];
    // `read` on a Tokio socket is cancel-safe: if the select drops it, no byte was consumed.
    let first = tokio::select! {
        biased;
        () = shutdown.cancelled() => return Err(CloseReason::Shutdown),
        first = timeout(config.idle_timeout, reader.read(&mut header)) => first,
    };
    let filled = match first {
        Err(_) => return Err(CloseReason::Idle),
        Ok(Err(_)) => return Err(CloseReason::ReadFailed),
        Ok(Ok(0)) => return Err(CloseReason::PeerHungUp),
        Ok(Ok(n)) => n,
    };

    match timeout(
        config.frame_timeout,
        frame::read_frame_rest(reader, header, filled),
    )
    .await
    {
        Ok(Ok(payload)) => Ok(Zeroizing::new(payload)),
        Ok(Err(FrameError::TooLarge { len })) => {
            warn!(len, "oversized frame; closing connection");
            let body = ErrorBody::new(
                ErrorName::ConstraintError,
                format!("frame of {len} bytes exceeds the 1 MiB limit"),
            );
            let bytes = encode_error(None, body);
            let _ = timeout(config.frame_timeout, write_frame(writer, &bytes)).await;
            Err(CloseReason::Oversized)
        }
        Ok(Err(FrameError::Truncated)) => Err(CloseReason::Truncated),
        Ok(Err(_)) => Err(CloseReason::ReadFailed),
        Err(_) => Err(CloseReason::FrameTimeout),
    }
}

/// Parses one payload and runs the handler on it. Malformed input is answered, never fatal.
async fn answer<H: Handler>(handler: &H, caller: &Caller, payload: &[u8]) -> Response {
    let Ok(text) = std::str::from_utf8(payload) else {
        debug!(uid = caller.uid, "request is not UTF-8");
        return Response::error(
            None,
            ErrorBody::new(ErrorName::SyntaxError, "request is not valid UTF-8"),
        );
    };
    let request: Request = match serde_json::from_str(text) {
        Ok(request) => request,
        Err(e) if e.is_data() => {
            debug!(uid = caller.uid, "request has the wrong shape");
            return Response::error(
                request_id(text),
                ErrorBody::new(ErrorName::TypeError, e.to_string()),
            );
        }
        Err(e) => {
            debug!(uid = caller.uid, "request is not JSON");
            return Response::error(
                None,
                ErrorBody::new(
                    ErrorName::SyntaxError,
                    format!("request is not valid JSON: {e}"),
                ),
            );
        }
    };
    debug!(
        uid = caller.uid,
        id = request.id,
        kind = request.body.kind(),
        "request"
    );
    let result = handler.handle(caller, request.body).await;
    if let Err(e) = &result {
        debug!(uid = caller.uid, id = request.id, error = %e.name, "request failed");
    }
    Response {
        id: Some(request.id),
        result,
    }
}

/// The request's id, if the JSON has a usable one, so even a rejected request can be matched. All other
/// members are skipped unparsed (serde ignores unknown fields), so no copy of a PIN is made here.
fn request_id(text: &str) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: u64,
    }
    // serde also reads a struct from an array (`[5]`); only an object has an "id" member.
    if !text.trim_start().starts_with('{') {
        return None;
    }
    serde_json::from_str::<IdOnly>(text).ok().map(|v| v.id)
}

/// Encodes a response; one that would not fit in a frame becomes a `ConstraintError`.
fn encode(response: &Response) -> Vec<u8> {
    match serde_json::to_vec(response) {
        Ok(bytes) if bytes.len() <= MAX_FRAME_LEN => bytes,
        Ok(bytes) => {
            warn!(len = bytes.len(), "response exceeds the frame limit");
            encode_error(
                response.id,
                ErrorBody::new(
                    ErrorName::ConstraintError,
                    format!("response of {} bytes exceeds the 1 MiB limit", bytes.len()),
                ),
            )
        }
        Err(e) => {
            warn!(error = %e, "could not encode a response");
            encode_error(
                response.id,
                ErrorBody::new(ErrorName::UnknownError, "could not encode the response"),
            )
        }
    }
}

/// Encodes an error built by the server itself (short, plain strings).
fn encode_error(id: Option<u64>, body: ErrorBody) -> Vec<u8> {
    serde_json::to_vec(&Response::error(id, body)).unwrap_or_else(|_| {
        br#"{"id":null,"ok":false,"error":{"name":"UnknownError","message":"internal error"}}"#
            .to_vec()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config() {
        let c = Config::default();
        assert_eq!(c.max_connections, 128);
        assert_eq!(c.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.frame_timeout, Duration::from_secs(10));
    }

    #[test]
    fn oversized_responses_become_constraint_errors() {
        let huge = Response::error(
            Some(3),
            ErrorBody::new(ErrorName::UnknownError, "x".repeat(MAX_FRAME_LEN)),
        );
        let bytes = encode(&huge);
        let back: Response = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back.id, Some(3));
        let err = back.result.unwrap_err();
        assert_eq!(err.name, ErrorName::ConstraintError);
        assert!(err.message.contains("exceeds the 1 MiB limit"), "{err}");
    }

    #[test]
    fn request_id_is_taken_only_when_it_is_a_u64() {
        assert_eq!(request_id(r#"{"id": 5, "type": "nope"}"#), Some(5));
        assert_eq!(request_id(r#"{"id": "5"}"#), None);
        assert_eq!(request_id(r#"{"id": -5}"#), None);
        assert_eq!(request_id(r#"[5]"#), None);
    }
}
