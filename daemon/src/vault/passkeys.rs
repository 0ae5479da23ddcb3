//! The passkey commands of the vault actor: excludeCredentials, insert (moving the account's older passkey to
//! the trash), the credential for `get` (with the signing-key cache), list, delete (to the trash) and rename.

use std::sync::Arc;

use p256::ecdsa::SigningKey;
use passmesh_crdt::{CredentialId, NewPasskey, Passkey, RecordId};
use passmesh_ipc::{Base64Url, PasskeyInfo};

use super::Error;
use super::actor::Actor;
use crate::authenticator::Credential;
use crate::names::Label;

impl Actor {
    /// Whether any of `ids` is a credential of `rp_id` in this vault.
    pub(super) fn any_excluded(&self, rp_id: &str, ids: &[CredentialId]) -> bool {
        ids.iter().any(|id| {
            self.vault
                .find_by_credential_id(id.as_bytes())
                .is_some_and(|p| p.rp_id == rp_id)
        })
    }

    pub(super) fn insert(&mut self, passkey: NewPasskey) -> Result<(), Error> {
        let now = crate::now_ms();
        // CTAP2: a new discoverable credential replaces the one this authenticator already holds for the same
        // rpId and user handle, so re-registering an account leaves no stale key behind. The old one goes to the
        // trash, like a delete: restorable should the relying party not have taken the new one.
        let replaced: Vec<(RecordId, Vec<u8>)> = self
            .vault
            .find_by_rp(&passkey.rp_id)
            .filter(|p| p.user_handle == passkey.user_handle)
            .map(|p| (p.record_id, p.credential_id.clone()))
            .collect();
        let result = replaced
            .iter()
            .try_for_each(|(id, credential_id)| {
                self.keys.remove(credential_id.as_slice());
                self.note_seen(id, now, now);
                self.vault.trash(id, now)
            })
            .and_then(|()| self.vault.insert(passkey, now).map(|_| ()))
            .map_err(Error::from);
        self.dirty |= result.is_ok() || !replaced.is_empty();
        self.local_change();
        result
    }

    /// The credential to sign with: one of `allow` for `rp_id`, or with `allow` empty the newest of `rp_id`.
    pub(super) fn find_for_get(
        &mut self,
        rp_id: &str,
        allow: &[CredentialId],
    ) -> Option<Credential> {
        let found = if allow.is_empty() {
            self.vault
                .find_by_rp(rp_id)
                .max_by_key(|p| (p.created_at_ms, p.record_id))
        } else {
            allow
                .iter()
                .filter_map(|id| self.vault.find_by_credential_id(id.as_bytes()))
                .find(|p| p.rp_id == rp_id)
        }?;
        let key = match self.keys.get(found.credential_id.as_slice()) {
            Some(k) => Arc::clone(k),
            None => {
                let k = Arc::new(SigningKey::from_slice(&found.private_key).ok()?);
                self.keys
                    .insert(found.credential_id.clone().into(), Arc::clone(&k));
                k
            }
        };
        Some(Credential {
            credential_id: found.credential_id.clone(),
            user_handle: found.user_handle.clone(),
            signing_key: key,
            backed_up: self.replication.held(&found.record_id),
        })
    }

    /// One page of the passkeys, optionally of one rpId, oldest first, with the total number of matches.
    pub(super) fn list(
        &self,
        rp_id: Option<&str>,
        offset: u64,
        limit: usize,
    ) -> (Vec<PasskeyInfo>, u64) {
        let mut all: Vec<&Passkey> = match rp_id {
            Some(rp) => self.vault.find_by_rp(rp).collect(),
            None => self.vault.passkeys().collect(),
        };
        all.sort_unstable_by(|a, b| {
            (a.created_at_ms, &a.credential_id).cmp(&(b.created_at_ms, &b.credential_id))
        });
        let total = all.len() as u64;
        let page = all
            .into_iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(limit)
            .map(|p| info(p, self.replication.held(&p.record_id)))
            .collect();
        (page, total)
    }

    /// Moves a passkey to the trash.
    pub(super) fn delete(&mut self, credential_id: &CredentialId) -> Result<bool, Error> {
        let result = match self.vault.find_by_credential_id(credential_id.as_bytes()) {
            Some(p) => {
                let id = p.record_id;
                self.keys.remove(credential_id.as_bytes());
                let now = crate::now_ms();
                self.vault
                    .trash(&id, now)
                    .map(|()| {
                        self.note_seen(&id, now, now);
                        true
                    })
                    .map_err(Error::from)
            }
            None => Ok(false),
        };
        self.dirty |= matches!(result, Ok(true));
        self.local_change();
        result
    }

    pub(super) fn rename(
        &mut self,
        credential_id: &CredentialId,
        label: &Label,
    ) -> Result<bool, Error> {
        let result = match self.vault.find_by_credential_id(credential_id.as_bytes()) {
            Some(p) => {
                let id = p.record_id;
                self.vault
                    .rename(&id, label.as_str(), crate::now_ms())
                    .map(|()| true)
                    .map_err(Error::from)
            }
            None => Ok(false),
        };
        self.dirty |= matches!(result, Ok(true));
        self.local_change();
        result
    }
}

pub(super) fn info(p: &Passkey, backed_up: bool) -> PasskeyInfo {
    PasskeyInfo {
        credential_id: Base64Url(p.credential_id.clone()),
        rp_id: p.rp_id.clone(),
        user_name: p.user_name.clone(),
        user_display_name: p.user_display_name.clone(),
        user_handle: Base64Url(p.user_handle.clone()),
        label: p.label.clone(),
        created_at_ms: p.created_at_ms,
        backed_up,
    }
}
