//! The inviter: opens a one-time invitation and answers the joiner's three requests. An invitation moves
//! through [`Step`]s: open (at most one handshake at a time, [`MAX_ATTEMPTS`] failures kill it), then spent
//! by the first finished handshake: waiting for the person to confirm the SAS (if asked), granted (the vault
//! keyring wrapped and sent, waiting for the joiner's ack), and spent for good.

use std::sync::Arc;
use std::time::Duration;

use passmesh_crdt::Device;
use passmesh_ipc::Base64Url;
use passmesh_ipc::message::PairEvent;
use passmesh_transport::pairing::{self, Invitation, InviteHandshake, Refusal, Response, Session};
use passmesh_transport::{Multiaddr, PeerId};
use tokio::sync::oneshot;
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::{
    ACK_TEXT, Ack, CONFIRM_WAIT, Error, Failure, Grant, HANDSHAKE_STALE, Inner, MAX_ATTEMPTS,
    Pairing, PairingId, Phase, WireMember, WirePinKey, shareable,
};
use crate::custody::wrap::wrap_keyring;
use crate::names::DeviceName;
use crate::{ids, vault};

/// An open (or spent, not yet expired) invitation.
pub(super) struct Invite {
    /// The pairing it belongs to.
    pub(super) id: PairingId,
    /// The vault it invites to: whatever pairing comes later, this one only ever touches this vault.
    vault: vault::Handle,
    invitation: Invitation,
    expires: Instant,
    confirm: bool,
    /// This device's name, sent to the joiner.
    name: String,
    /// Failed handshakes so far.
    attempts: u32,
    step: Step,
}

/// Where an invitation stands.
enum Step {
    /// Waiting for a joiner; at most one handshake under way.
    Open {
        handshake: Option<(PeerId, Instant, Box<InviteHandshake>)>,
    },
    /// A handshake finished: the invitation is spent. Waiting for the person to confirm the SAS (the sender
    /// is taken by [`Pairing::confirm`]), then granting.
    Confirming {
        confirmation: Option<oneshot::Sender<bool>>,
    },
    /// The vault was granted to `peer` over `session`; waiting for its acknowledgement.
    Granted { peer: PeerId, session: Box<Session> },
    /// Done, declined or failed after the handshake.
    Spent,
}

impl Invite {
    fn refusal(&self) -> Option<Refusal> {
        if self.attempts >= MAX_ATTEMPTS {
            Some(Refusal::TooManyAttempts)
        } else if !matches!(self.step, Step::Open { .. }) {
            Some(Refusal::Used)
        } else if Instant::now() >= self.expires {
            Some(Refusal::Expired)
        } else {
            None
        }
    }

    /// Ends the invitation (cancelled): nothing more is granted. Returns the way to answer a person still
    /// waiting to confirm the SAS, if any.
    pub(super) fn cancel(&mut self) -> Option<oneshot::Sender<bool>> {
        let confirmation = self.take_confirmation();
        self.step = Step::Spent;
        confirmation
    }

    /// The way to answer a person waiting to confirm the SAS, once.
    pub(super) fn take_confirmation(&mut self) -> Option<oneshot::Sender<bool>> {
        match &mut self.step {
            Step::Confirming { confirmation } => confirmation.take(),
            _ => None,
        }
    }
}

impl Pairing {
    /// Opens an invitation to `vault` (of user `uid`) valid for `expires`; returns its URI (secret inside) and
    /// expiry (ms). `name`, if given, renames this device in the device table first.
    pub async fn invite(
        &self,
        uid: u32,
        vault: &vault::Handle,
        expires: Duration,
        confirm: bool,
        name: Option<DeviceName>,
    ) -> Result<(Zeroizing<String>, u64), Error> {
        let me = &self.inner;
        if me.state.lock().await.busy() {
            return Err(Error::Busy);
        }
        let mut info = vault.join_info().await?;
        if let Some(n) = name
            .map(DeviceName::into_string)
            .filter(|n| *n != info.device.name)
        {
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
        let id = {
            let mut st = me.state.lock().await;
            if st.busy() {
                return Err(Error::Busy);
            }
            let invite = |id| {
                Phase::Inviting(Box::new(Invite {
                    id,
                    vault: vault.clone(),
                    invitation,
                    expires: Instant::now() + expires,
                    confirm,
                    name: info.device.name,
                    attempts: 0,
                    step: Step::Open { handshake: None },
                }))
            };
            st.begin(uid, invite, &me.changed)
        };
        me.transport
            .open_invitation(expires)
            .await
            .map_err(|e| Error::Network(e.to_string()))?;
        tracing::info!(expires_in = ?expires, confirm, "pairing invitation opened");
        let weak = Arc::downgrade(me);
        tokio::spawn(async move {
            tokio::time::sleep(expires).await;
            if let Some(inner) = weak.upgrade() {
                inner.expire(id).await;
            }
        });
        Ok((uri, expires_at_ms))
    }
}

impl Inner {
    /// The invitation of pairing `id` has expired: it ends, and so does its slot at the transport.
    async fn expire(&self, id: PairingId) {
        let mut st = self.state.lock().await;
        let Some(inv) = st.invite_of(id) else {
            return;
        };
        if matches!(inv.step, Step::Open { .. }) {
            tracing::info!("pairing invitation expired");
            st.push_for(
                id,
                PairEvent::Failed {
                    reason: Refusal::Expired.to_string(),
                },
                &self.changed,
            );
        }
        st.phase = Phase::Idle;
        drop(st);
        let _ = self.transport.close_invitation().await;
    }

    /// Ends pairing `id` with `reason` after its handshake (its invitation, if still current, is spent); the
    /// refusal the joining device gets.
    fn fail(&self, st: &mut super::State, id: PairingId, reason: String) -> Response {
        if let Some(inv) = st.invite_of(id) {
            inv.step = Step::Spent;
        }
        st.push_for(id, PairEvent::Failed { reason }, &self.changed);
        Response::Refused(Refusal::Failed)
    }

    /// Counts a failed attempt on the open invitation; the refusal to send.
    fn failed_attempt(&self, st: &mut super::State, why: &str) -> Response {
        let Some(inv) = st.invite() else {
            return Response::Refused(Refusal::NotOpen);
        };
        inv.attempts += 1;
        inv.step = Step::Open { handshake: None };
        let id = inv.id;
        let left = MAX_ATTEMPTS.saturating_sub(inv.attempts);
        tracing::warn!(attempts_left = left, "a pairing attempt failed: {why}");
        if left == 0 {
            st.push_for(
                id,
                PairEvent::Failed {
                    reason: "too many failed attempts: the invitation is dead".into(),
                },
                &self.changed,
            );
            Response::Refused(Refusal::TooManyAttempts)
        } else {
            st.push_for(
                id,
                PairEvent::AttemptFailed {
                    reason: why.to_owned(),
                    attempts_left: left,
                },
                &self.changed,
            );
            Response::Refused(Refusal::HandshakeFailed)
        }
    }

    pub(super) async fn hello(&self, peer: PeerId, m1: &[u8]) -> Response {
        let mut st = self.state.lock().await;
        let Some(inv) = st.invite() else {
            return Response::Refused(Refusal::NotOpen);
        };
        if let Some(r) = inv.refusal() {
            tracing::info!(%peer, refusal = %r, "refused a pairing attempt");
            return Response::Refused(r);
        }
        if let Step::Open {
            handshake: Some((other, started, _)),
        } = &inv.step
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
                inv.step = Step::Open {
                    handshake: Some((peer, Instant::now(), Box::new(hs))),
                };
                let id = inv.id;
                st.push_for(
                    id,
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

    pub(super) async fn finish(&self, peer: PeerId, m3: &[u8]) -> Response {
        let (mut session, confirm, id, vault) = {
            let mut st = self.state.lock().await;
            let Some(inv) = st.invite() else {
                return Response::Refused(Refusal::NotOpen);
            };
            if let Some(r) = inv.refusal() {
                return Response::Refused(r);
            }
            let hs = match std::mem::replace(&mut inv.step, Step::Open { handshake: None }) {
                Step::Open {
                    handshake: Some((p, _, hs)),
                } if p == peer => hs,
                other => {
                    inv.step = other;
                    return Response::Refused(Refusal::NotOpen);
                }
            };
            let (id, vault, wants_confirm) = (inv.id, inv.vault.clone(), inv.confirm);
            match hs.finish(m3) {
                Ok(session) => {
                    // An invitation works once: from here on it is spent, whatever happens next.
                    let (tx, rx) = match wants_confirm {
                        true => {
                            let (tx, rx) = oneshot::channel();
                            (Some(tx), Some(rx))
                        }
                        false => (None, None),
                    };
                    inv.step = Step::Confirming { confirmation: tx };
                    st.push_for(
                        id,
                        PairEvent::Sas {
                            sas: session.sas().to_owned(),
                        },
                        &self.changed,
                    );
                    if rx.is_some() {
                        st.push_for(id, PairEvent::AwaitingConfirmation, &self.changed);
                    }
                    (session, rx, id, vault)
                }
                Err(e) => return self.failed_attempt(&mut st, &e.to_string()),
            }
        };
        if let Some(rx) = confirm {
            let accepted = matches!(tokio::time::timeout(CONFIRM_WAIT, rx).await, Ok(Ok(true)));
            if !accepted {
                let mut st = self.state.lock().await;
                if let Some(inv) = st.invite_of(id) {
                    inv.step = Step::Spent;
                }
                st.push_for(
                    id,
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
                match st.invite_of(id) {
                    Some(inv) => {
                        inv.step = Step::Granted {
                            peer,
                            session: Box::new(session),
                        };
                        Response::Sealed(sealed)
                    }
                    None => Response::Refused(Refusal::NotOpen),
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot prepare the vault for the joining device");
                let mut st = self.state.lock().await;
                let reason = format!("cannot prepare the vault for the joining device: {e}");
                self.fail(&mut st, id, reason)
            }
        }
    }

    pub(super) async fn grant(
        &self,
        vault: &vault::Handle,
        session: &mut Session,
    ) -> Result<Vec<u8>, Failure> {
        let joiner = session.peer().clone();
        let info = vault.join_info().await?;
        let own: Vec<String> = shareable(self.transport.listen_addrs().await.unwrap_or_default())
            .iter()
            .map(|a| a.to_string())
            .collect();
        let me = self.identity.peer_id().to_string();
        let members = vault
            .members()
            .await?
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
                signature: m.device.signature.map(|s| Base64Url(s.to_vec())),
            })
            .collect();
        let wrapped = wrap_keyring(
            &info.keyring,
            &joiner.x25519_public,
            &info.vault_id,
            &joiner.peer,
        )
        .ok_or(Failure::JoinerKey)?;
        let grant = Grant {
            vault: Base64Url(info.vault_id.as_bytes().to_vec()),
            wrapped: Base64Url(wrapped),
            members,
            anchors: info.anchors.iter().map(ToString::to_string).collect(),
            pin_keys: info
                .pin_keys
                .iter()
                .map(|(device, key)| WirePinKey {
                    device: device.to_string(),
                    key: Base64Url(key.to_vec()),
                })
                .collect(),
        };
        let plain = Zeroizing::new(serde_json::to_vec(&grant)?);
        session.seal(&plain).map_err(|source| Failure::TooLarge {
            size: plain.len(),
            source,
        })
    }

    pub(super) async fn ack(&self, peer: PeerId, ct: &[u8]) -> Response {
        let mut st = self.state.lock().await;
        let Some(inv) = st.invite() else {
            return Response::Refused(Refusal::NotOpen);
        };
        let mut session = match std::mem::replace(&mut inv.step, Step::Spent) {
            Step::Granted { peer: p, session } if p == peer => session,
            other => {
                inv.step = other;
                return Response::Refused(Refusal::NotOpen);
            }
        };
        // The session was stored in this very invitation, so its vault is the invited one.
        let (id, vault) = (inv.id, inv.vault.clone());
        let ack: Option<Ack> = session
            .open(ct)
            .ok()
            .and_then(|plain| serde_json::from_slice(&plain).ok())
            .filter(|a: &Ack| a.text == ACK_TEXT);
        let Some(ack) = ack else {
            let reason = "the joining device sent an invalid acknowledgement".to_owned();
            return self.fail(&mut st, id, reason);
        };
        let hello = session.peer().clone();
        let device = Device {
            id: ids::device_id(&hello.peer),
            name: hello.name.clone(),
            x25519_public: hello.x25519_public,
            added_by: Some(ids::device_id(&self.identity.peer_id())),
            added_at_ms: crate::now_ms(),
            kind: passmesh_crdt::MemberKind::Device,
            signature: None,
        };
        let addrs: Vec<String> = ack
            .addrs
            .into_iter()
            .filter(|a| a.len() <= 256 && a.parse::<Multiaddr>().is_ok())
            .take(pairing::MAX_ADDRS)
            .collect();
        drop(st);
        let added = vault.add_device(device, addrs).await;
        let mut st = self.state.lock().await;
        match added {
            Ok(()) => {
                tracing::info!(device = %hello.peer, name = %hello.name, "paired a new device");
                st.push_for(
                    id,
                    PairEvent::Done {
                        device_id: hello.peer.to_string(),
                        name: hello.name,
                        merged: 0,
                    },
                    &self.changed,
                );
                Response::Done
            }
            Err(e) => self.fail(&mut st, id, format!("cannot add the device: {e}")),
        }
    }
}
