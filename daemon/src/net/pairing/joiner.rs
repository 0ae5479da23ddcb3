//! The joiner: runs the handshake with the inviting device named by a code, unwraps the vault keyring the
//! inviter grants, replaces this device's empty vault with a replica of the granted one, and acknowledges.

use passmesh_crdt::{Device, DeviceId, VaultId};
use passmesh_ipc::message::PairEvent;
use passmesh_transport::Multiaddr;
use passmesh_transport::pairing::{Invitation, JoinHandshake, Request, Response};
use zeroize::Zeroizing;

use super::{
    ACK_TEXT, Ack, Error, Failure, Grant, Inner, Pairing, PairingId, Phase, now_secs, shareable,
};
use crate::custody::wrap::unwrap_keyring;
use crate::ids;
use crate::names::DeviceName;
use crate::vault::{self, Member};

impl Pairing {
    /// Starts joining `vault` (of user `uid`) to the vault of `uri` under `name`; follow with
    /// [`Pairing::progress`].
    pub async fn join(
        &self,
        uid: u32,
        vault: &vault::Handle,
        uri: &str,
        name: DeviceName,
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
        let info = vault.join_info().await?;
        vault
            .adopt(
                info.vault_id,
                Zeroizing::new(Vec::new()),
                Vec::new(),
                info.device,
                Vec::new(),
                true,
            )
            .await?;
        let id = {
            let mut st = me.state.lock().await;
            if st.busy() {
                return Err(Error::Busy);
            }
            st.begin(uid, Phase::Joining, &me.changed)
        };
        let inner = me.clone();
        let vault = vault.clone();
        tokio::spawn(async move {
            let inviter = invitation.inviter;
            let result = inner
                .run_join(id, &vault, invitation, name.into_string())
                .await;
            let _ = inner.transport.end_join(inviter).await;
            let mut st = inner.state.lock().await;
            if matches!(st.phase, Phase::Joining(current) if current == id) {
                st.phase = Phase::Idle;
            }
            match result {
                Ok((device_id, name, adopted)) => {
                    tracing::info!(inviter = %device_id, merged = adopted.merged, "joined the vault");
                    st.push_for(
                        id,
                        PairEvent::Done {
                            device_id,
                            name,
                            merged: adopted.merged,
                        },
                        &inner.changed,
                    );
                }
                Err(failure) => {
                    let reason = failure.to_string();
                    tracing::warn!(%reason, "joining failed");
                    st.push_for(id, PairEvent::Failed { reason }, &inner.changed);
                }
            }
        });
        Ok(())
    }
}

impl Inner {
    /// The joiner's steps; the inviter's device id and name, and what joining did with this device's vault, on
    /// success; the reason otherwise.
    async fn run_join(
        &self,
        id: PairingId,
        vault: &vault::Handle,
        invitation: Invitation,
        name: String,
    ) -> Result<(String, String, vault::Adopted), Failure> {
        let inviter = invitation.inviter;
        let addrs = invitation.addrs.clone();
        let (hs, m1) = JoinHandshake::start(&invitation, &self.identity, &self.key)?;
        let Response::Handshake(m2) = self.request(inviter, &addrs, Request::Hello(m1)).await?
        else {
            return Err(Failure::UnexpectedAnswer);
        };
        self.push_for(
            id,
            PairEvent::PeerConnected {
                peer: inviter.to_string(),
            },
        )
        .await;
        let (mut session, m3) = hs.finish(&m2, &self.identity, &self.key, &name)?;
        self.push_for(
            id,
            PairEvent::Sas {
                sas: session.sas().to_owned(),
            },
        )
        .await;
        let Response::Sealed(sealed) = self.request(inviter, &addrs, Request::Finish(m3)).await?
        else {
            return Err(Failure::UnexpectedAnswer);
        };
        let plain = session.open(&sealed).map_err(|_| Failure::NotProven)?;
        let grant: Grant = serde_json::from_slice(&plain).map_err(|_| Failure::MalformedGrant)?;
        drop(plain);
        let vault_bytes: [u8; 16] = grant
            .vault
            .0
            .as_slice()
            .try_into()
            .map_err(|_| Failure::MalformedVaultId)?;
        if vault_bytes != invitation.vault {
            return Err(Failure::OtherVault);
        }
        let vault_id = VaultId::from_bytes(vault_bytes);
        let me = self.identity.peer_id();
        let keyring =
            unwrap_keyring(&grant.wrapped.0, &self.key, &vault_id, &me).ok_or(Failure::Unwrap)?;
        let anchors: Vec<DeviceId> = grant
            .anchors
            .into_iter()
            .take(1024)
            .map(DeviceId::new)
            .collect();
        // A key that is not 32 bytes is no PIN key: left out (approvals signed with it only count later).
        let pin_keys: Vec<(DeviceId, [u8; 32])> = grant
            .pin_keys
            .into_iter()
            .take(1024)
            .filter_map(|k| Some((DeviceId::new(k.device), k.key.0.as_slice().try_into().ok()?)))
            .collect();
        let mut members = Vec::new();
        let mut inviter_name = String::new();
        for m in grant.members.into_iter().take(1024) {
            let x25519: [u8; 32] = m
                .x25519
                .0
                .as_slice()
                .try_into()
                .map_err(|_| Failure::MalformedDevice)?;
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
                    kind: passmesh_crdt::MemberKind::Device,
                    signature: match m.signature {
                        None => None,
                        Some(s) => Some(
                            <[u8; 64]>::try_from(s.0.as_slice())
                                .map_err(|_| Failure::MalformedDevice)?,
                        ),
                    },
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
            id: ids::device_id(&me),
            name: name.clone(),
            x25519_public: self.key.public(),
            added_by: Some(ids::device_id(&inviter)),
            added_at_ms: crate::now_ms(),
            kind: passmesh_crdt::MemberKind::Device,
            signature: None,
        };
        let dial: Vec<Multiaddr> = members
            .iter()
            .filter_map(|m| Some((ids::peer_id(&m.device.id)?, &m.addrs)))
            .filter(|(peer, _)| *peer != me)
            .flat_map(|(peer, addrs)| {
                addrs
                    .iter()
                    .filter_map(move |a| a.parse::<Multiaddr>().ok()?.with_p2p(peer).ok())
            })
            .collect();
        let adopted = vault
            .adopt(vault_id, keyring, members, device, anchors, false)
            .await?;
        if let Err(e) = vault.trust_pin_keys(pin_keys).await {
            // The approvals of those keys then count only after the keeping time: nothing is lost.
            tracing::warn!(error = %e, "cannot note the PIN keys the inviting device trusts");
        }
        for addr in dial {
            // Remembered for redialling once the device table (sent to the transport) lists the peer.
            let _ = self.transport.dial(addr).await;
        }
        let own = shareable(self.transport.listen_addrs().await.unwrap_or_default());
        let ack = Ack {
            text: ACK_TEXT.into(),
            addrs: own.iter().map(|a| a.to_string()).collect(),
        };
        let ack = session.seal(&serde_json::to_vec(&ack)?)?;
        match self.request(inviter, &addrs, Request::Ack(ack)).await? {
            Response::Done => Ok((inviter.to_string(), inviter_name, adopted)),
            _ => Err(Failure::UnexpectedAnswer),
        }
    }
}
