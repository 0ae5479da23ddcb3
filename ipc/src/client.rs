//! A client for the daemon's socket, used by the CLI, the native-messaging host and tests.

use std::io;
use std::path::{Path, PathBuf};

use tokio::net::UnixStream;
use zeroize::Zeroizing;

use crate::frame::{FrameError, read_frame, write_frame};
use crate::message::{
    AuditInfo, ErrorBody, PasskeyInfo, Request, RequestBody, Response, ResponseBody, TrashedPasskey,
};

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        /// The socket path tried.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
    /// Sending or receiving a frame failed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A request could not be encoded, or the reply was not a valid response.
    #[error("invalid JSON from the daemon: {0}")]
    Json(#[from] serde_json::Error),
    /// The daemon answered with an error.
    #[error("{0}")]
    Remote(ErrorBody),
    /// The reply did not belong to the request (wrong id or type).
    #[error("unexpected reply: {0}")]
    UnexpectedReply(String),
    /// The daemon closed the connection without answering.
    #[error("the daemon closed the connection")]
    Closed,
}

/// One connection to the daemon. Requests are sent one at a time and answered in order.
///
/// `call` and `call_raw` are not cancel-safe: dropping one part-way (e.g. under a timeout) can
/// leave half a frame or an unread reply on the connection; connect again afterwards.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    next_id: u64,
}

impl Client {
    /// Connects to the socket at `path`.
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self::from_stream(stream))
    }

    /// Wraps an already connected stream.
    pub fn from_stream(stream: UnixStream) -> Client {
        Client { stream, next_id: 1 }
    }

    /// Every passkey (optionally of one rpId), fetching `list` pages until `total` is reached.
    pub async fn list_all(&mut self, rp_id: Option<&str>) -> Result<Vec<PasskeyInfo>, ClientError> {
        let rp_id = rp_id.map(str::to_owned);
        self.all_pages(
            "list",
            |offset| RequestBody::List {
                rp_id: rp_id.clone(),
                offset,
                limit: None,
            },
            |reply| match reply {
                ResponseBody::List { passkeys, total } => Ok((passkeys, total)),
                other => Err(other.kind()),
            },
        )
        .await
    }

    /// Every passkey in the trash, fetching `trashList` pages until `total` is reached.
    pub async fn trash_all(&mut self) -> Result<Vec<TrashedPasskey>, ClientError> {
        self.all_pages(
            "trashList",
            |offset| RequestBody::TrashList {
                offset,
                limit: None,
            },
            |reply| match reply {
                ResponseBody::TrashList { passkeys, total } => Ok((passkeys, total)),
                other => Err(other.kind()),
            },
        )
        .await
    }

    /// The whole audit log, fetching `audit` pages until `total` is reached.
    pub async fn audit_all(&mut self) -> Result<Vec<AuditInfo>, ClientError> {
        self.all_pages(
            "audit",
            |offset| RequestBody::Audit {
                offset,
                limit: None,
            },
            |reply| match reply {
                ResponseBody::Audit { entries, total } => Ok((entries, total)),
                other => Err(other.kind()),
            },
        )
        .await
    }

    /// Fetches the pages of a paged request (`page(offset)`) until the reply's `total` is reached or a page is
    /// empty (what is listed may shrink between pages); `items` takes a page's items and total out of a reply, or
    /// names the reply's type.
    async fn all_pages<T>(
        &mut self,
        what: &str,
        page: impl Fn(u64) -> RequestBody,
        items: impl Fn(ResponseBody) -> Result<(Vec<T>, u64), &'static str>,
    ) -> Result<Vec<T>, ClientError> {
        let mut all = Vec::new();
        loop {
            match items(self.call(page(all.len() as u64)).await?) {
                Ok((got, total)) => {
                    let empty = got.is_empty();
                    all.extend(got);
                    if empty || all.len() as u64 >= total {
                        return Ok(all);
                    }
                }
                Err(other) => {
                    return Err(ClientError::UnexpectedReply(format!(
                        "expected a {what} reply, got {other}"
                    )));
                }
            }
        }
    }

    /// Sends a request and waits for its answer. Ids are assigned here, starting at 1.
    ///
    /// The daemon's `{"ok": false}` answers come back as [`ClientError::Remote`], including
    /// ones with `"id": null` (e.g. the connection limit was reached).
    pub async fn call(&mut self, body: RequestBody) -> Result<ResponseBody, ClientError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let kind = body.kind();
        // The encoded request may carry a PIN: wipe it once sent.
        let payload = Zeroizing::new(serde_json::to_vec(&Request { id, body })?);

        if let Err(e) = write_frame(&mut self.stream, &payload).await {
            // A server that refuses the connection writes its reason and closes; the reason is
            // more useful than "broken pipe".
            if let FrameError::Io(io) = &e
                && matches!(
                    io.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                )
                && let Ok(Some(reply)) = read_frame(&mut self.stream).await
                && let Ok(Response {
                    result: Err(err), ..
                }) = serde_json::from_slice(&reply)
            {
                return Err(ClientError::Remote(err));
            }
            return Err(e.into());
        }

        let reply = read_frame(&mut self.stream)
            .await?
            .ok_or(ClientError::Closed)?;
        let response: Response = serde_json::from_slice(&reply)?;
        match (response.id, response.result) {
            (Some(got), Ok(body)) if got == id => {
                if body.kind() == kind {
                    Ok(body)
                } else {
                    Err(ClientError::UnexpectedReply(format!(
                        "a `{}` reply to a `{kind}` request",
                        body.kind()
                    )))
                }
            }
            (Some(got), Err(err)) if got == id => Err(ClientError::Remote(err)),
            (None, Err(err)) => Err(ClientError::Remote(err)),
            (got, _) => Err(ClientError::UnexpectedReply(format!(
                "reply id {} for request {id}",
                got.map_or_else(|| "null".to_owned(), |g| g.to_string())
            ))),
        }
    }

    /// Sends one raw frame and returns the payload of the next frame, unparsed. For tests and
    /// tools; ids are the sender's business.
    pub async fn call_raw(&mut self, payload: &[u8]) -> Result<Vec<u8>, ClientError> {
        write_frame(&mut self.stream, payload).await?;
        read_frame(&mut self.stream)
            .await?
            .ok_or(ClientError::Closed)
    }
}
