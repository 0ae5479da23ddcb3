//! Pairing by code between running daemons: the inviter's one-time invitation and the joiner's side, over
//! the transport's `/passmesh/pair/1` and its `XXpsk3` handshake (see `docs/pairing.md`).
//!
//! One pairing at a time per daemon, inviting or joining, by one local user (in system mode the others are
//! told to wait; only that user sees its progress and may confirm it). The service's state is a [`Phase`]:
//! idle, inviting (an [`inviter::Invite`] moving through its own steps) or joining. Every pairing has an
//! identity ([`PairingId`]); a step that finishes late (a slow vault, a timer) touches the state only while
//! its pairing is still the current one, so it can never write into the next. Progress is a list of
//! [`PairEvent`]s that `pairProgress` long-polls.
//!
//! - `inviter`: opening an invitation and answering a joiner's Hello, Finish and Ack: the inviter wraps the
//!   vault keyring to the joiner's x25519 key ([`crate::custody::wrap`]) and sends it with the device table over
//!   the Noise session; only after the joiner's ack does it add the joiner to the replicated device table.
//! - `joiner`: joining the vault a code names: the handshake, unwrapping the keyring, adopting the vault.

mod inviter;
mod joiner;

use std::sync::Arc;
use std::time::Duration;

use passmesh_ipc::Base64Url;
use passmesh_ipc::message::PairEvent;
use passmesh_transport::pairing::{self, PairKey, Refusal, Request, Response};
use passmesh_transport::{self as transport, Identity, Multiaddr, PairRequestId, PeerId};
use rand::RngExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc, watch};
use tokio::time::Instant;

use super::router::Carried;
use crate::vault;

/// Failed attempts (wrong secret, altered code) after which an invitation is dead.
pub const MAX_ATTEMPTS: u32 = 3;
/// How long the inviter waits for the person to confirm the SAS.
const CONFIRM_WAIT: Duration = Duration::from_secs(50);
/// A handshake started but not finished within this is dropped, freeing the invitation for another device.
const HANDSHAKE_STALE: Duration = Duration::from_secs(30);
/// How long one `pairProgress` waits for a new event.
const PROGRESS_WAIT: Duration = Duration::from_secs(20);
const ACK_TEXT: &str = "stored";

/// Why a pairing request was refused to the local caller.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URI does not parse.
    #[error("{0}")]
    Code(#[from] pairing::Error),
    /// The invitation's expiry has passed.
    #[error("the invitation has expired")]
    Expired,
    /// A pairing is in progress.
    #[error("another pairing is in progress on this device")]
    Busy,
    /// The vault refuses (it holds passkeys, or is paired).
    #[error(transparent)]
    Vault(#[from] vault::Error),
    /// Another local user's vault on this machine is that vault (system mode).
    #[error(
        "that vault is already on this device under another user; a vault can be held by one user only"
    )]
    HeldByAnotherUser,
    /// The code was made by this device.
    #[error("this code was made by this device: scan it on the device that should join")]
    OwnCode,
    /// The network is off or stopped.
    #[error("networking is off or stopped: {0}")]
    Network(String),
    /// Nothing waits for a confirmation.
    #[error("no pairing is waiting for a confirmation")]
    NothingToConfirm,
    /// No invitation of the caller's is open.
    #[error("no invitation of yours is open on this device (a join cannot be cancelled)")]
    NothingToCancel,
}

/// Why a pairing failed once under way; its text is the reason the person sees in the progress.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The handshake or the Noise session failed.
    #[error(transparent)]
    Handshake(#[from] pairing::Error),
    /// The request could not be sent, or got no answer.
    #[error("{}", transport_reason(.0))]
    Transport(transport::Error),
    /// The inviting device refused.
    #[error("the inviting device refused: {0}")]
    Refused(Refusal),
    /// The answer does not decode.
    #[error("the inviting device sent a malformed answer")]
    MalformedAnswer,
    /// The answer is not the one this step expects.
    #[error("the inviting device sent an unexpected answer")]
    UnexpectedAnswer,
    /// The grant does not open with the session: the inviter does not know the code.
    #[error("the inviting device did not prove it knows the code (wrong or altered code)")]
    NotProven,
    /// The grant does not decode.
    #[error("the inviting device sent a malformed vault grant")]
    MalformedGrant,
    /// The granted vault id is not 16 bytes.
    #[error("malformed vault id")]
    MalformedVaultId,
    /// The grant is for another vault than the code names.
    #[error("the inviting device granted another vault than the code names")]
    OtherVault,
    /// The wrapped keyring does not open with this device's key.
    #[error("the vault keys do not unwrap with this device's key")]
    Unwrap,
    /// A device entry of the grant is malformed.
    #[error("malformed device entry")]
    MalformedDevice,
    /// The joining device's x25519 key cannot be wrapped to.
    #[error("the joining device's key is unusable")]
    JoinerKey,
    /// The grant does not fit one pairing message.
    #[error("the device table is too large for one pairing message ({size} bytes): {source}")]
    TooLarge {
        /// The grant's size.
        size: usize,
        /// The session's refusal.
        source: pairing::Error,
    },
    /// A message could not be encoded.
    #[error("cannot encode a pairing message: {0}")]
    Encode(#[from] serde_json::Error),
    /// The vault refused.
    #[error(transparent)]
    Vault(#[from] vault::Error),
}

/// A transport failure as the person reads it: the pairing protocol's own reason as it is.
fn transport_reason(e: &transport::Error) -> String {
    match e {
        transport::Error::Pairing(why) => why.clone(),
        other => other.to_string(),
    }
}

/// The pairing service of one daemon. Cloneable.
#[derive(Clone, Debug)]
pub struct Pairing {
    inner: Arc<Inner>,
}

struct Inner {
    transport: transport::Handle,
    carried: Carried,
    identity: Identity,
    key: PairKey,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pairing")
            .field("device", &self.identity.peer_id())
            .finish_non_exhaustive()
    }
}

/// The identity of one pairing (an invitation, or a join), random.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PairingId(u64);

impl PairingId {
    fn new() -> PairingId {
        PairingId(rand::rng().random())
    }
}

/// What the pairing service is doing.
#[derive(Default)]
enum Phase {
    /// Nothing (the last pairing's progress stays readable).
    #[default]
    Idle,
    /// An invitation is open, or was used and has not expired yet.
    Inviting(Box<inviter::Invite>),
    /// This device is joining another device's vault.
    Joining(PairingId),
}

/// The events of the latest pairing, and whose pairing it is.
struct Progress {
    id: PairingId,
    owner: u32,
    events: Vec<PairEvent>,
    finished: bool,
}

#[derive(Default)]
struct State {
    phase: Phase,
    progress: Option<Progress>,
}

impl State {
    /// A pairing is under way: nobody else may start one.
    fn busy(&self) -> bool {
        !matches!(self.phase, Phase::Idle) && self.progress.as_ref().is_some_and(|p| !p.finished)
    }

    fn owned_by(&self, uid: u32) -> bool {
        self.progress.as_ref().is_some_and(|p| p.owner == uid)
    }

    /// Starts a new pairing of `owner` in the phase `phase` makes of its id.
    fn begin(
        &mut self,
        owner: u32,
        phase: impl FnOnce(PairingId) -> Phase,
        changed: &watch::Sender<u64>,
    ) -> PairingId {
        let id = PairingId::new();
        self.progress = Some(Progress {
            id,
            owner,
            events: Vec::new(),
            finished: false,
        });
        self.phase = phase(id);
        self.push_for(id, PairEvent::Waiting, changed);
        id
    }

    /// Records `event` for pairing `id`, if it is still the current one and has not ended.
    fn push_for(&mut self, id: PairingId, event: PairEvent, changed: &watch::Sender<u64>) {
        let Some(p) = self.progress.as_mut().filter(|p| p.id == id && !p.finished) else {
            return;
        };
        if matches!(event, PairEvent::Done { .. } | PairEvent::Failed { .. }) {
            p.finished = true;
        }
        p.events.push(event);
        changed.send_modify(|n| *n += 1);
    }

    /// The open invitation, whichever it is (for a request from the network).
    fn invite(&mut self) -> Option<&mut inviter::Invite> {
        match &mut self.phase {
            Phase::Inviting(inv) => Some(inv),
            _ => None,
        }
    }

    /// The invitation of pairing `id`, if it is still the current one.
    fn invite_of(&mut self, id: PairingId) -> Option<&mut inviter::Invite> {
        self.invite().filter(|inv| inv.id == id)
    }
}

/// The ack a joiner sends once its replica is stored: where it listens.
#[derive(Serialize, Deserialize)]
struct Ack {
    text: String,
    addrs: Vec<String>,
}

/// What the inviter sends after the handshake.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Grant {
    vault: Base64Url,
    /// Ephemeral public key ‖ nonce ‖ ciphertext of the encoded keyring.
    wrapped: Base64Url,
    members: Vec<WireMember>,
    /// The devices the inviter trusts without a signature chain (absent from older inviters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    anchors: Vec<String>,
    /// The first PIN keys whose approvals the inviter trusts (absent from older inviters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pin_keys: Vec<WirePinKey>,
}

#[derive(Serialize, Deserialize)]
struct WirePinKey {
    device: String,
    key: Base64Url,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMember {
    id: String,
    name: String,
    x25519: Base64Url,
    added_by: Option<String>,
    added_at_ms: u64,
    addrs: Vec<String>,
    /// The entry's signature by the device that added it, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signature: Option<Base64Url>,
}

/// The addresses worth handing out: no unspecified or relayed ones, non-loopback first, loopback last.
fn shareable(addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
    use passmesh_transport::Multiaddr as M;
    let text = |a: &M| a.to_string();
    let mut out: Vec<M> = addrs
        .into_iter()
        .filter(|a| {
            let t = text(a);
            !t.contains("/ip4/0.0.0.0/") && !t.contains("/ip6/::/") && !t.contains("/p2p-circuit")
        })
        .collect();
    out.sort_by_key(|a| {
        let t = text(a);
        t.contains("/ip4/127.") || t.contains("/ip6/::1/")
    });
    out
}

fn now_secs() -> u64 {
    crate::now_ms() / 1000
}

impl Pairing {
    /// Starts the pairing service on a running transport and vault. `requests` are the inbound
    /// `/passmesh/pair/1` requests the network task passes on.
    pub fn start(
        transport: transport::Handle,
        carried: Carried,
        identity: Identity,
        mut requests: mpsc::Receiver<(PeerId, PairRequestId, Vec<u8>)>,
    ) -> Pairing {
        let key = PairKey::derive(&identity);
        let (changed, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            transport,
            carried,
            identity,
            key,
            state: Mutex::new(State::default()),
            changed,
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            while let Some((peer, id, bytes)) = requests.recv().await {
                let Some(inner) = weak.upgrade() else { break };
                tokio::spawn(async move { inner.on_request(peer, id, bytes).await });
            }
        });
        Pairing { inner }
    }

    /// Events of `uid`'s pairing from index `since`, waiting up to about 20 s for a new one. Returns the
    /// events, the next index and whether the pairing ended. Another user's pairing looks like none.
    pub async fn progress(&self, uid: u32, since: u32) -> (Vec<PairEvent>, u32, bool) {
        let me = &self.inner;
        let mut rx = me.changed.subscribe();
        let deadline = Instant::now() + PROGRESS_WAIT;
        loop {
            {
                let st = me.state.lock().await;
                if !st.owned_by(uid) {
                    return (Vec::new(), 0, false);
                }
                let Some(p) = &st.progress else {
                    return (Vec::new(), 0, false);
                };
                let from = (since as usize).min(p.events.len());
                if p.events.len() > from || p.finished || p.events.is_empty() {
                    let next = u32::try_from(p.events.len()).unwrap_or(u32::MAX);
                    return (p.events[from..].to_vec(), next, p.finished);
                }
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                let st = me.state.lock().await;
                let Some(p) = st.progress.as_ref().filter(|p| p.owner == uid) else {
                    return (Vec::new(), 0, false);
                };
                let next = u32::try_from(p.events.len()).unwrap_or(u32::MAX);
                return (Vec::new(), next.max(since), p.finished);
            }
        }
    }

    /// Passes the person's answer to an inviter waiting for the SAS to be confirmed.
    pub async fn confirm(&self, uid: u32, accept: bool) -> Result<(), Error> {
        let mut st = self.inner.state.lock().await;
        if !st.owned_by(uid) {
            return Err(Error::NothingToConfirm);
        }
        let tx = st
            .invite()
            .and_then(inviter::Invite::take_confirmation)
            .ok_or(Error::NothingToConfirm)?;
        let _ = tx.send(accept);
        Ok(())
    }
}

impl Pairing {
    /// Ends whatever pairing is under way, for the daemon's shutdown: an invitation closes (dropping its vault
    /// handle) and a person's pending confirmation counts as "no", so no task waits on the pairing's own timers
    /// (the confirmation has 50 s) and the vault threads can stop at once.
    pub async fn shutdown(&self) {
        let me = &self.inner;
        let mut st = me.state.lock().await;
        if let Some(id) = st.progress.as_ref().map(|p| p.id) {
            let confirmation = st.invite_of(id).and_then(inviter::Invite::cancel);
            st.push_for(
                id,
                PairEvent::Failed {
                    reason: "the daemon is stopping".into(),
                },
                &me.changed,
            );
            if let Some(tx) = confirmation {
                let _ = tx.send(false);
            }
        }
        st.phase = Phase::Idle;
    }

    /// Cancels `uid`'s open invitation at once: its progress ends ("cancelled on this device"), a joiner waiting
    /// for the SAS confirmation is declined, and the transport's pairing slot closes.
    pub async fn cancel(&self, uid: u32) -> Result<(), Error> {
        let me = &self.inner;
        let mut st = me.state.lock().await;
        if !st.owned_by(uid) || !st.busy() {
            return Err(Error::NothingToCancel);
        }
        let Some(id) = st.progress.as_ref().map(|p| p.id) else {
            return Err(Error::NothingToCancel);
        };
        let Some(confirmation) = st.invite_of(id).map(inviter::Invite::cancel) else {
            return Err(Error::NothingToCancel);
        };
        st.push_for(
            id,
            PairEvent::Failed {
                reason: "cancelled on this device".into(),
            },
            &me.changed,
        );
        if let Some(tx) = confirmation {
            let _ = tx.send(false);
        }
        st.phase = Phase::Idle;
        drop(st);
        tracing::info!("pairing invitation cancelled");
        let _ = me.transport.close_invitation().await;
        Ok(())
    }
}

impl Inner {
    async fn on_request(self: Arc<Self>, peer: PeerId, id: PairRequestId, bytes: Vec<u8>) {
        let response = match Request::decode(&bytes) {
            Ok(Request::Hello(m1)) => self.hello(peer, &m1).await,
            Ok(Request::Finish(m3)) => self.finish(peer, &m3).await,
            Ok(Request::Ack(ct)) => self.ack(peer, &ct).await,
            Err(_) => Response::Refused(Refusal::Failed),
        };
        if let Err(e) = self.transport.pair_respond(id, response.encode()).await {
            tracing::info!(%peer, error = %e, "could not answer a pairing request");
        }
    }

    async fn push_for(&self, id: PairingId, event: PairEvent) {
        self.state.lock().await.push_for(id, event, &self.changed);
    }

    async fn request(
        &self,
        inviter: PeerId,
        addrs: &[Multiaddr],
        request: Request,
    ) -> Result<Response, Failure> {
        let bytes = self
            .transport
            .pair_request(inviter, addrs.to_vec(), request.encode())
            .await
            .map_err(Failure::Transport)?;
        match Response::decode(&bytes) {
            Ok(Response::Refused(r)) => Err(Failure::Refused(r)),
            Ok(r) => Ok(r),
            Err(_) => Err(Failure::MalformedAnswer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shareable_addresses_put_loopback_last() {
        let addrs: Vec<Multiaddr> = [
            "/ip4/127.0.0.1/tcp/1",
            "/ip4/0.0.0.0/tcp/2",
            "/ip4/192.168.1.2/tcp/3",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let out: Vec<String> = shareable(addrs).iter().map(|a| a.to_string()).collect();
        assert_eq!(out, vec!["/ip4/192.168.1.2/tcp/3", "/ip4/127.0.0.1/tcp/1"]);
    }
}
