//! Pairing by code between running daemons: the inviter's one-time invitation and the joiner's side, over
//! the transport's `/passmesh/pair/1` and its `XXpsk3` handshake (see `docs/pairing.md`).
//!
//! One pairing at a time per daemon, inviting or joining, by one local user (in system mode the others are
//! told to wait; only that user sees its progress and may confirm it). Its progress is a list of [`PairEvent`]s that
//! `pairProgress` long-polls. The inviter wraps the vault keyring to the joiner's x25519 static key (X25519
//! with a fresh ephemeral key, HKDF-SHA256, XChaCha20-Poly1305 with the vault id and the joiner's peer id as
//! associated data) and sends it with the device table over the Noise session; the joiner stores its replica
//! and acknowledges; only then does the inviter add it to the replicated device table.

use std::sync::Arc;
use std::time::Duration;

use passmesh_crdt::{Device, DeviceId, VaultId};
use passmesh_ipc::Base64Url;
use passmesh_ipc::message::PairEvent;
use passmesh_transport::pairing::{
    self, Invitation, InviteHandshake, JoinHandshake, PairKey, Refusal, Request, Response, Session,
};
use passmesh_transport::{self as transport, Identity, Multiaddr, PairRequestId, PeerId};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::router::Carried;
use crate::custody::wrap::{unwrap_keyring, wrap_keyring};
use crate::vault::{self, Member};

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
    /// The invitation is for the vault this device already holds.
    #[error("this device already belongs to that vault")]
    SameVault,
    /// Another local user's vault on this machine is that vault (system mode).
    #[error(
        "that vault is already on this device under another user; a vault can be held by one user only"
    )]
    HeldByAnotherUser,
    /// The code was made by this device.
    #[error("this code was made by this device: scan it on the device that should join")]
    OwnCode,
    /// A bad argument.
    #[error("{0}")]
    Invalid(String),
    /// The network is off or stopped.
    #[error("networking is off or stopped: {0}")]
    Network(String),
    /// Nothing waits for a confirmation.
    #[error("no pairing is waiting for a confirmation")]
    NothingToConfirm,
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

#[derive(Default)]
struct State {
    events: Vec<PairEvent>,
    finished: bool,
    /// Bumped per pairing, so that a timer of an old invitation does not touch a new one.
    serial: u64,
    invite: Option<Invite>,
    joining: bool,
    /// Whose pairing this is (the latest one, finished or not).
    owner: Option<u32>,
}

struct Invite {
    /// The pairing this invitation belongs to ([`State::serial`] when it was opened).
    serial: u64,
    /// The vault it invites to: whatever pairing comes later, this one only ever touches this vault.
    vault: vault::Handle,
    invitation: Invitation,
    expires: Instant,
    confirm: bool,
    name: String,
    attempts: u32,
    used: bool,
    handshake: Option<(PeerId, Instant, InviteHandshake)>,
    session: Option<(PeerId, Session)>,
    confirmation: Option<oneshot::Sender<bool>>,
}

impl Invite {
    fn refusal(&self) -> Option<Refusal> {
        if self.attempts >= MAX_ATTEMPTS {
            Some(Refusal::TooManyAttempts)
        } else if self.used {
            Some(Refusal::Used)
        } else if Instant::now() >= self.expires {
            Some(Refusal::Expired)
        } else {
            None
        }
    }
}

impl State {
    fn push(&mut self, event: PairEvent, changed: &watch::Sender<u64>) {
        if self.finished {
            return;
        }
        if matches!(event, PairEvent::Done { .. } | PairEvent::Failed { .. }) {
            self.finished = true;
        }
        self.events.push(event);
        changed.send_modify(|n| *n += 1);
    }

    fn busy(&self) -> bool {
        !self.finished && (self.invite.is_some() || self.joining)
    }

    fn owned_by(&self, uid: u32) -> bool {
        self.owner == Some(uid)
    }

    /// Pushes `event` only if the pairing `serial` is still the current one (a slow step of an ended
    /// pairing must not write into the next one's progress).
    fn push_for(&mut self, serial: u64, event: PairEvent, changed: &watch::Sender<u64>) {
        if self.serial == serial {
            self.push(event, changed);
        }
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

    /// Opens an invitation to `vault` (of user `uid`) valid for `expires`; returns its URI (secret inside) and
    /// expiry (ms). `name`, if given, renames this device in the device table first.
    pub async fn invite(
        &self,
        uid: u32,
        vault: &vault::Handle,
        expires: Duration,
        confirm: bool,
        name: Option<String>,
    ) -> Result<(Zeroizing<String>, u64), Error> {
        let me = &self.inner;
        if me.state.lock().await.busy() {
            return Err(Error::Busy);
        }
        if let Some(n) = &name
            && (n.is_empty() || n.len() > pairing::MAX_NAME_LEN)
        {
            return Err(Error::Invalid(format!(
                "the device name must be 1 to {} bytes",
                pairing::MAX_NAME_LEN
            )));
        }
        let mut info = vault.join_info().await?;
        if let Some(n) = name.filter(|n| *n != info.device.name) {
            // The name is this device's entry in the replicated table: every device shows the same one.
            info.device.name = n;
            vault.add_device(info.device.clone(), Vec::new()).await?;
        }
        let addrs = shareable(
            me.transport
                .listen_addrs()
                .await
                .map_err(|e| Error::Network(e.to_string()))?,
        );
        if addrs.is_empty() {
            return Err(Error::Network("this device listens on no address".into()));
        }
        let expires_at_ms = crate::now_ms() + u64::try_from(expires.as_millis()).unwrap_or(0);
        let invitation = Invitation::new(
            me.identity.peer_id(),
            addrs,
            *info.vault_id.as_bytes(),
            expires_at_ms.div_ceil(1000),
        );
        let uri = invitation.uri();
        let serial = {
            let mut st = me.state.lock().await;
            if st.busy() {
                return Err(Error::Busy);
            }
            st.serial += 1;
            st.events.clear();
            st.finished = false;
            st.joining = false;
            st.owner = Some(uid);
            st.invite = Some(Invite {
                serial: st.serial,
                vault: vault.clone(),
                invitation,
                expires: Instant::now() + expires,
                confirm,
                name: info.device.name,
                attempts: 0,
                used: false,
                handshake: None,
                session: None,
                confirmation: None,
            });
            st.push(PairEvent::Waiting, &me.changed);
            st.serial
        };
        me.transport
            .open_invitation(expires)
            .await
            .map_err(|e| Error::Network(e.to_string()))?;
        tracing::info!(expires_in = ?expires, confirm, "pairing invitation opened");
        let weak = Arc::downgrade(me);
        tokio::spawn(async move {
            tokio::time::sleep(expires).await;
            let Some(inner) = weak.upgrade() else { return };
            let mut st = inner.state.lock().await;
            if st.serial != serial {
                return;
            }
            let waiting = st.invite.as_ref().is_some_and(|i| !i.used);
            if waiting {
                tracing::info!("pairing invitation expired");
                st.push(
                    PairEvent::Failed {
                        reason: Refusal::Expired.to_string(),
                    },
                    &inner.changed,
                );
            }
            st.invite = None;
            drop(st);
            let _ = inner.transport.close_invitation().await;
        });
        Ok((uri, expires_at_ms))
    }

    /// Starts joining `vault` (of user `uid`) to the vault of `uri` under `name`; follow with
    /// [`Pairing::progress`].
    pub async fn join(
        &self,
        uid: u32,
        vault: &vault::Handle,
        uri: &str,
        name: String,
    ) -> Result<(), Error> {
        let me = &self.inner;
        let invitation = Invitation::parse(uri)?;
        if invitation.expires_at <= now_secs() {
            return Err(Error::Expired);
        }
        if invitation.inviter == me.identity.peer_id() {
            return Err(Error::OwnCode);
        }
        if me
            .carried
            .held_elsewhere(uid, &VaultId::from_bytes(invitation.vault))
        {
            return Err(Error::HeldByAnotherUser);
        }
        if name.is_empty() || name.len() > pairing::MAX_NAME_LEN {
            return Err(Error::Invalid(format!(
                "the device name must be 1 to {} bytes",
                pairing::MAX_NAME_LEN
            )));
        }
        let info = vault.join_info().await?;
        if info.vault_id.as_bytes() == &invitation.vault {
            return Err(Error::SameVault);
        }
        vault
            .adopt(
                info.vault_id,
                Zeroizing::new(Vec::new()),
                Vec::new(),
                info.device,
                true,
            )
            .await?;
        {
            let mut st = me.state.lock().await;
            if st.busy() {
                return Err(Error::Busy);
            }
            st.serial += 1;
            st.events.clear();
            st.finished = false;
            st.invite = None;
            st.joining = true;
            st.owner = Some(uid);
            st.push(PairEvent::Waiting, &me.changed);
        }
        let inner = me.clone();
        let vault = vault.clone();
        tokio::spawn(async move {
            let inviter = invitation.inviter;
            let result = inner.run_join(&vault, invitation, name).await;
            let _ = inner.transport.end_join(inviter).await;
            let mut st = inner.state.lock().await;
            st.joining = false;
            match result {
                Ok((device_id, name)) => {
                    tracing::info!(inviter = %device_id, "joined the vault");
                    st.push(PairEvent::Done { device_id, name }, &inner.changed);
                }
                Err(reason) => {
                    tracing::warn!(%reason, "joining failed");
                    st.push(PairEvent::Failed { reason }, &inner.changed);
                }
            }
        });
        Ok(())
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
                let from = (since as usize).min(st.events.len());
                if st.events.len() > from || st.finished || st.events.is_empty() {
                    let next = u32::try_from(st.events.len()).unwrap_or(u32::MAX);
                    return (st.events[from..].to_vec(), next, st.finished);
                }
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                let st = me.state.lock().await;
                if !st.owned_by(uid) {
                    return (Vec::new(), 0, false);
                }
                let next = u32::try_from(st.events.len()).unwrap_or(u32::MAX);
                return (Vec::new(), next.max(since), st.finished);
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
            .invite
            .as_mut()
            .and_then(|i| i.confirmation.take())
            .ok_or(Error::NothingToConfirm)?;
        let _ = tx.send(accept);
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

    /// Counts a failed attempt; the refusal to send.
    fn failed_attempt(&self, st: &mut State, why: &str) -> Response {
        let Some(inv) = st.invite.as_mut() else {
            return Response::Refused(Refusal::NotOpen);
        };
        inv.attempts += 1;
        inv.handshake = None;
        let left = MAX_ATTEMPTS.saturating_sub(inv.attempts);
        tracing::warn!(attempts_left = left, "a pairing attempt failed: {why}");
        if left == 0 {
            st.push(
                PairEvent::Failed {
                    reason: "too many failed attempts: the invitation is dead".into(),
                },
                &self.changed,
            );
            Response::Refused(Refusal::TooManyAttempts)
        } else {
            st.push(
                PairEvent::AttemptFailed {
                    reason: why.to_owned(),
                    attempts_left: left,
                },
                &self.changed,
            );
            Response::Refused(Refusal::HandshakeFailed)
        }
    }

    async fn hello(&self, peer: PeerId, m1: &[u8]) -> Response {
        let mut st = self.state.lock().await;
        let Some(inv) = st.invite.as_mut() else {
            return Response::Refused(Refusal::NotOpen);
        };
        if let Some(r) = inv.refusal() {
            tracing::info!(%peer, refusal = %r, "refused a pairing attempt");
            return Response::Refused(r);
        }
        if let Some((other, started, _)) = &inv.handshake
            && *other != peer
            && started.elapsed() < HANDSHAKE_STALE
        {
            return Response::Refused(Refusal::Busy);
        }
        match InviteHandshake::respond(
            &inv.invitation,
            &self.identity,
            &self.key,
            &inv.name,
            peer,
            m1,
        ) {
            Ok((hs, m2)) => {
                inv.handshake = Some((peer, Instant::now(), hs));
                st.push(
                    PairEvent::PeerConnected {
                        peer: peer.to_string(),
                    },
                    &self.changed,
                );
                Response::Handshake(m2)
            }
            Err(e) => self.failed_attempt(&mut st, &e.to_string()),
        }
    }

    async fn finish(&self, peer: PeerId, m3: &[u8]) -> Response {
        let (mut session, confirm, serial, vault) = {
            let mut st = self.state.lock().await;
            let Some(inv) = st.invite.as_mut() else {
                return Response::Refused(Refusal::NotOpen);
            };
            let (serial, vault) = (inv.serial, inv.vault.clone());
            if let Some(r) = inv.refusal() {
                return Response::Refused(r);
            }
            let hs = match inv.handshake.take() {
                Some((p, _, hs)) if p == peer => hs,
                other => {
                    inv.handshake = other;
                    return Response::Refused(Refusal::NotOpen);
                }
            };
            match hs.finish(m3) {
                Ok(session) => {
                    // An invitation works once: from here on it is spent, whatever happens next.
                    inv.used = true;
                    let confirm = inv.confirm.then(|| {
                        let (tx, rx) = oneshot::channel();
                        inv.confirmation = Some(tx);
                        rx
                    });
                    st.push(
                        PairEvent::Sas {
                            sas: session.sas().to_owned(),
                        },
                        &self.changed,
                    );
                    if confirm.is_some() {
                        st.push(PairEvent::AwaitingConfirmation, &self.changed);
                    }
                    (session, confirm, serial, vault)
                }
                Err(e) => return self.failed_attempt(&mut st, &e.to_string()),
            }
        };
        if let Some(rx) = confirm {
            let accepted = matches!(tokio::time::timeout(CONFIRM_WAIT, rx).await, Ok(Ok(true)));
            if !accepted {
                let mut st = self.state.lock().await;
                st.push_for(
                    serial,
                    PairEvent::Failed {
                        reason: "the code was not confirmed: nothing was sent".into(),
                    },
                    &self.changed,
                );
                return Response::Refused(Refusal::Declined);
            }
        }
        match self.grant(&vault, &mut session).await {
            Ok(sealed) => {
                let mut st = self.state.lock().await;
                // The invitation may have ended (expired, replaced by another user's) while the vault was
                // read: the session then belongs nowhere, and the joiner's ack finds nothing.
                match st.invite.as_mut() {
                    Some(inv) if inv.serial == serial => {
                        inv.session = Some((peer, session));
                        Response::Sealed(sealed)
                    }
                    _ => Response::Refused(Refusal::NotOpen),
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot prepare the vault for the joining device");
                let mut st = self.state.lock().await;
                st.push_for(
                    serial,
                    PairEvent::Failed {
                        reason: format!("cannot prepare the vault for the joining device: {e}"),
                    },
                    &self.changed,
                );
                Response::Refused(Refusal::Failed)
            }
        }
    }

    async fn grant(&self, vault: &vault::Handle, session: &mut Session) -> Result<Vec<u8>, String> {
        let joiner = session.peer().clone();
        let info = vault.join_info().await.map_err(|e| e.to_string())?;
        let own: Vec<String> = shareable(self.transport.listen_addrs().await.unwrap_or_default())
            .iter()
            .map(|a| a.to_string())
            .collect();
        let me = self.identity.peer_id().to_string();
        let members = vault
            .members()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|m| WireMember {
                addrs: if m.device.id.as_str() == me {
                    own.clone()
                } else {
                    m.addrs
                },
                id: m.device.id.to_string(),
                name: m.device.name,
                x25519: Base64Url(m.device.x25519_public.to_vec()),
                added_by: m.device.added_by.map(|d| d.to_string()),
                added_at_ms: m.device.added_at_ms,
            })
            .collect();
        let wrapped = wrap_keyring(
            &info.keyring,
            &joiner.x25519_public,
            &info.vault_id,
            &joiner.peer,
        )
        .ok_or("the joining device's key is unusable")?;
        let grant = Grant {
            vault: Base64Url(info.vault_id.as_bytes().to_vec()),
            wrapped: Base64Url(wrapped),
            members,
        };
        let plain = Zeroizing::new(serde_json::to_vec(&grant).map_err(|e| e.to_string())?);
        session.seal(&plain).map_err(|e| {
            format!(
                "the device table is too large for one pairing message ({} bytes): {e}",
                plain.len()
            )
        })
    }

    async fn ack(&self, peer: PeerId, ct: &[u8]) -> Response {
        let mut st = self.state.lock().await;
        let Some(inv) = st.invite.as_mut() else {
            return Response::Refused(Refusal::NotOpen);
        };
        let Some((p, mut session)) = inv.session.take() else {
            return Response::Refused(Refusal::NotOpen);
        };
        if p != peer {
            inv.session = Some((p, session));
            return Response::Refused(Refusal::NotOpen);
        }
        let ack: Option<Ack> = session
            .open(ct)
            .ok()
            .and_then(|plain| serde_json::from_slice(&plain).ok())
            .filter(|a: &Ack| a.text == ACK_TEXT);
        let Some(ack) = ack else {
            st.push(
                PairEvent::Failed {
                    reason: "the joining device sent an invalid acknowledgement".into(),
                },
                &self.changed,
            );
            return Response::Refused(Refusal::Failed);
        };
        let hello = session.peer().clone();
        let device = Device {
            id: DeviceId::new(hello.peer.to_string()),
            name: hello.name.clone(),
            x25519_public: hello.x25519_public,
            added_by: Some(DeviceId::new(self.identity.peer_id().to_string())),
            added_at_ms: crate::now_ms(),
        };
        let addrs: Vec<String> = ack
            .addrs
            .into_iter()
            .filter(|a| a.len() <= 256 && a.parse::<Multiaddr>().is_ok())
            .take(pairing::MAX_ADDRS)
            .collect();
        // The session was stored in this very invitation (same serial), so its vault is the invited one.
        let (serial, vault) = (inv.serial, inv.vault.clone());
        drop(st);
        let added = vault.add_device(device, addrs).await;
        let mut st = self.state.lock().await;
        match added {
            Ok(()) => {
                tracing::info!(device = %hello.peer, name = %hello.name, "paired a new device");
                st.push_for(
                    serial,
                    PairEvent::Done {
                        device_id: hello.peer.to_string(),
                        name: hello.name,
                    },
                    &self.changed,
                );
                Response::Done
            }
            Err(e) => {
                st.push_for(
                    serial,
                    PairEvent::Failed {
                        reason: format!("cannot add the device: {e}"),
                    },
                    &self.changed,
                );
                Response::Refused(Refusal::Failed)
            }
        }
    }

    async fn push(&self, event: PairEvent) {
        self.state.lock().await.push(event, &self.changed);
    }

    async fn request(
        &self,
        inviter: PeerId,
        addrs: &[Multiaddr],
        request: Request,
    ) -> Result<Response, String> {
        let bytes = self
            .transport
            .pair_request(inviter, addrs.to_vec(), request.encode())
            .await
            .map_err(|e| match e {
                transport::Error::Pairing(why) => why,
                other => other.to_string(),
            })?;
        match Response::decode(&bytes) {
            Ok(Response::Refused(r)) => Err(format!("the inviting device refused: {r}")),
            Ok(r) => Ok(r),
            Err(_) => Err("the inviting device sent a malformed answer".into()),
        }
    }

    /// The joiner's steps; the inviter's device id and name on success, the reason otherwise.
    async fn run_join(
        &self,
        vault: &vault::Handle,
        invitation: Invitation,
        name: String,
    ) -> Result<(String, String), String> {
        let inviter = invitation.inviter;
        let addrs = invitation.addrs.clone();
        let (hs, m1) = JoinHandshake::start(&invitation, &self.identity, &self.key)
            .map_err(|e| e.to_string())?;
        let Response::Handshake(m2) = self.request(inviter, &addrs, Request::Hello(m1)).await?
        else {
            return Err("the inviting device sent an unexpected answer".into());
        };
        self.push(PairEvent::PeerConnected {
            peer: inviter.to_string(),
        })
        .await;
        let (mut session, m3) = hs
            .finish(&m2, &self.identity, &self.key, &name)
            .map_err(|e| e.to_string())?;
        self.push(PairEvent::Sas {
            sas: session.sas().to_owned(),
        })
        .await;
        let Response::Sealed(sealed) = self.request(inviter, &addrs, Request::Finish(m3)).await?
        else {
            return Err("the inviting device sent an unexpected answer".into());
        };
        let plain = session.open(&sealed).map_err(|_| {
            "the inviting device did not prove it knows the code (wrong or altered code)".to_owned()
        })?;
        let grant: Grant = serde_json::from_slice(&plain)
            .map_err(|_| "the inviting device sent a malformed vault grant".to_owned())?;
        drop(plain);
        let vault_bytes: [u8; 16] = grant
            .vault
            .0
            .as_slice()
            .try_into()
            .map_err(|_| "malformed vault id".to_owned())?;
        if vault_bytes != invitation.vault {
            return Err("the inviting device granted another vault than the code names".into());
        }
        let vault_id = VaultId::from_bytes(vault_bytes);
        let me = self.identity.peer_id();
        let keyring = unwrap_keyring(&grant.wrapped.0, &self.key, &vault_id, &me)
            .ok_or("the vault keys do not unwrap with this device's key")?;
        let mut members = Vec::new();
        let mut inviter_name = String::new();
        for m in grant.members.into_iter().take(1024) {
            let x25519: [u8; 32] = m
                .x25519
                .0
                .as_slice()
                .try_into()
                .map_err(|_| "malformed device entry".to_owned())?;
            if m.id == inviter.to_string() {
                inviter_name.clone_from(&m.name);
            }
            members.push(Member {
                device: Device {
                    id: DeviceId::new(m.id),
                    name: m.name,
                    x25519_public: x25519,
                    added_by: m.added_by.map(DeviceId::new),
                    added_at_ms: m.added_at_ms,
                },
                addrs: m
                    .addrs
                    .into_iter()
                    .filter(|a| a.len() <= 256)
                    .take(16)
                    .collect(),
            });
        }
        let device = Device {
            id: DeviceId::new(me.to_string()),
            name: name.clone(),
            x25519_public: self.key.public(),
            added_by: Some(DeviceId::new(inviter.to_string())),
            added_at_ms: crate::now_ms(),
        };
        let dial: Vec<Multiaddr> = members
            .iter()
            .filter(|m| m.device.id.as_str() != me.to_string())
            .flat_map(|m| {
                let peer = m.device.id.to_string();
                m.addrs
                    .iter()
                    .filter_map(move |a| format!("{a}/p2p/{peer}").parse().ok())
            })
            .collect();
        vault
            .adopt(vault_id, keyring, members, device, false)
            .await
            .map_err(|e| e.to_string())?;
        for addr in dial {
            // Remembered for redialling once the device table (sent to the transport) lists the peer.
            let _ = self.transport.dial(addr).await;
        }
        let own = shareable(self.transport.listen_addrs().await.unwrap_or_default());
        let ack = Ack {
            text: ACK_TEXT.into(),
            addrs: own.iter().map(|a| a.to_string()).collect(),
        };
        let ack = session
            .seal(&serde_json::to_vec(&ack).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        match self.request(inviter, &addrs, Request::Ack(ack)).await? {
            Response::Done => Ok((inviter.to_string(), inviter_name)),
            _ => Err("the inviting device sent an unexpected answer".into()),
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
