//! The WebAuthn requests (`create`, `get`) and user verification: the PIN is checked off the runtime, with the
//! attempt counted by the vault before the check.

use std::sync::atomic::Ordering;

use passmesh_crdt::{CredentialId, PinKey, VaultId};
use passmesh_ipc::{
    CredentialDescriptor, ErrorBody, ErrorName, Pin, PublicKeyCredentialCreationOptionsJson,
    PublicKeyCredentialRequestOptionsJson, ResponseBody,
};

use super::{Session, e, internal, security};
use crate::authenticator::{self, UserVerification};
use crate::origin;
use crate::pin::{self, PinHash};
use crate::vault::{self, PinCheck};

/// The ids of the `public-key` credentials among `descriptors` (other types are for other authenticators).
fn public_key_ids(descriptors: &[CredentialDescriptor]) -> Vec<CredentialId> {
    descriptors
        .iter()
        .filter(|d| d.type_ == "public-key")
        .map(|d| CredentialId::from(d.id.0.clone()))
        .collect()
}

impl Session<'_> {
    pub(super) async fn create(
        &self,
        origin: &str,
        options: &PublicKeyCredentialCreationOptionsJson,
        pin: Option<&Pin>,
    ) -> Result<ResponseBody, ErrorBody> {
        let checked = origin::check(origin, options.rp.id.as_deref()).map_err(security)?;
        authenticator::check_creation(options)?;
        let excluded = public_key_ids(&options.exclude_credentials);
        if !excluded.is_empty()
            && self
                .vault
                .any_excluded(checked.rp_id.clone(), excluded)
                .await
                .map_err(internal)?
        {
            return Err(e(
                ErrorName::InvalidStateError,
                "a passkey in excludeCredentials is already stored in this vault",
            ));
        }
        let uv_wanted = UserVerification::parse(
            options
                .authenticator_selection
                .as_ref()
                .and_then(|s| s.user_verification.as_deref()),
        );
        let uv = self.verify_user(uv_wanted, pin).await?;
        let made = authenticator::make_credential(&checked, options, uv, crate::now_ms())?;
        self.vault.insert(made.passkey).await.map_err(internal)?;
        tracing::info!(rp = %checked.rp_id, "created a passkey");
        Ok(ResponseBody::Create {
            credential: made.response,
        })
    }

    pub(super) async fn get(
        &self,
        origin: &str,
        options: &PublicKeyCredentialRequestOptionsJson,
        pin: Option<&Pin>,
    ) -> Result<ResponseBody, ErrorBody> {
        let checked = origin::check(origin, options.rp_id.as_deref()).map_err(security)?;
        // Everything about the request is checked before a PIN attempt can be spent on it.
        if options.challenge.as_bytes().is_empty() {
            return Err(e(ErrorName::TypeError, "challenge must not be empty"));
        }
        let allow = public_key_ids(&options.allow_credentials);
        if !options.allow_credentials.is_empty() && allow.is_empty() {
            return Err(e(
                ErrorName::NotAllowedError,
                "allowCredentials names no public-key credential",
            ));
        }
        let credential = self
            .vault
            .find_for_get(checked.rp_id.clone(), allow)
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                e(
                    ErrorName::NotAllowedError,
                    format!("no matching passkey for {}", checked.rp_id),
                )
            })?;
        let uv = self
            .verify_user(
                UserVerification::parse(options.user_verification.as_deref()),
                pin,
            )
            .await?;
        let credential = authenticator::get_assertion(&checked, options, &credential, uv)?;
        Ok(ResponseBody::Get { credential })
    }

    /// Decides the UV flag: verifies the PIN when one is given; refuses when verification is required but
    /// impossible or failed.
    async fn verify_user(
        &self,
        wanted: UserVerification,
        pin: Option<&Pin>,
    ) -> Result<bool, ErrorBody> {
        let wanted = if self.service.always_verify.load(Ordering::Relaxed) {
            UserVerification::Required
        } else {
            wanted
        };
        let Some(pin) = pin else {
            return match wanted {
                UserVerification::Required => Err(e(
                    ErrorName::NotAllowedError,
                    "user verification is required: pass the device PIN",
                )),
                _ => Ok(false),
            };
        };
        match self.check_pin(pin).await? {
            Some(_) => Ok(true),
            None if wanted == UserVerification::Required => Err(e(
                ErrorName::NotAllowedError,
                "user verification is required but no PIN is set on this device (run `passmesh pin set`)",
            )),
            None => Ok(false),
        }
    }

    /// The approval key of `pin` for this device and vault (see [`pin::approval_key`]); slow, off the runtime.
    pub(super) async fn approval_key(&self, pin: &Pin) -> Result<PinKey, ErrorBody> {
        let status = self.vault.status().await.map_err(internal)?;
        let vault_id: VaultId = status
            .vault_id
            .parse()
            .map_err(|err: passmesh_crdt::Error| internal(vault::Error::from(err)))?;
        let pin = pin.clone();
        self.service
            .hash_off_runtime(move || pin::approval_key(pin.as_str(), &vault_id, &status.device_id))
            .await?
            .map_err(|p| e(ErrorName::ConstraintError, p.to_string()))
    }

    /// The verified hash when the PIN is right, `None` when no PIN is set; an error when it is wrong or locked.
    pub(super) async fn check_pin(&self, pin: &Pin) -> Result<Option<PinHash>, ErrorBody> {
        let hash = match self.vault.pin_begin().await {
            Ok(PinCheck::NotSet) => return Ok(None),
            Ok(PinCheck::Verify(hash)) => hash,
            Err(vault::Error::Pin(p @ pin::Error::Locked { .. })) => {
                return Err(e(ErrorName::NotAllowedError, p.to_string()));
            }
            Err(other) => return Err(internal(other)),
        };
        let candidate = pin.clone();
        let verified = hash.clone();
        let ok = self
            .service
            .hash_off_runtime(move || verified.verify(candidate.as_str()))
            .await?
            .map_err(|p| e(ErrorName::UnknownError, p.to_string()))?;
        self.vault.pin_finish(ok).await.map_err(internal)?;
        if ok {
            return Ok(Some(hash));
        }
        let left = self
            .vault
            .status()
            .await
            .map(|s| s.pin_attempts_left)
            .unwrap_or(0);
        Err(e(
            ErrorName::NotAllowedError,
            if left == 0 {
                "wrong PIN; the PIN is now locked".to_owned()
            } else {
                format!("wrong PIN; {left} attempt(s) left")
            },
        ))
    }

    pub(super) async fn set_pin(
        &self,
        new: &Pin,
        current: Option<&Pin>,
    ) -> Result<ResponseBody, ErrorBody> {
        pin::validate(new.as_str()).map_err(|p| e(ErrorName::ConstraintError, p.to_string()))?;
        let status = self.vault.status().await.map_err(internal)?;
        let previous = if status.pin_set {
            let Some(current) = current else {
                return Err(e(
                    ErrorName::NotAllowedError,
                    "a PIN is already set: the current PIN is needed to change it",
                ));
            };
            self.check_pin(current).await?
        } else {
            None
        };
        let keys = vault::PinKeys {
            new: self.approval_key(new).await?,
            previous: match (&previous, current) {
                (Some(_), Some(current)) => Some(self.approval_key(current).await?),
                _ => None,
            },
        };
        let new = new.clone();
        let hash = self
            .service
            .hash_off_runtime(move || PinHash::new(new.as_str()))
            .await?
            .map_err(|p| e(ErrorName::ConstraintError, p.to_string()))?;
        self.vault
            .set_pin(hash, previous, Some(keys))
            .await
            .map_err(|err| match err {
                vault::Error::PinChanged => e(ErrorName::InvalidStateError, err.to_string()),
                other => internal(other),
            })?;
        tracing::info!("the device PIN was set");
        Ok(ResponseBody::SetPin {})
    }
}
