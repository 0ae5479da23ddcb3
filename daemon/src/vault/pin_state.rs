//! The PIN commands of the vault actor. An attempt is counted on disk before anybody checks the PIN (so a
//! crash or a kill cannot hand out free guesses), and a new PIN replaces only the one the caller verified.

use super::actor::Actor;
use super::{Error, PinCheck, PinKeys};
use crate::pin::{PinHash, PinState};
use crate::store::{Durability, Meta};

impl Actor {
    /// Starts a PIN check: refuses while locked, else counts the attempt (durably) and hands out the hash.
    pub(super) fn pin_begin(&mut self) -> Result<PinCheck, Error> {
        let Some(hash) = self.pin.hash.clone() else {
            return Ok(PinCheck::NotSet);
        };
        let mut next = self.pin.clone();
        next.begin_attempt(crate::now_ms(), &self.policy)?;
        let old = std::mem::replace(&mut self.pin, next);
        self.save_pin()
            .map(|()| PinCheck::Verify(hash))
            .inspect_err(|_| self.pin = old)
    }

    /// Finishes a PIN check: a right PIN clears the failures; a wrong one stays counted.
    pub(super) fn pin_finish(&mut self, ok: bool) -> Result<(), Error> {
        if !ok {
            return Ok(());
        }
        self.pin.succeed();
        self.save_pin()
    }

    /// Sets a new PIN hash and clears the counter, provided the current hash is still `previous`; then
    /// publishes the new PIN's approval key (a failure there is logged: the PIN is set, and this device's
    /// purges are only not approved).
    pub(super) fn set_pin(
        &mut self,
        hash: PinHash,
        previous: Option<PinHash>,
        keys: Option<PinKeys>,
    ) -> Result<(), Error> {
        if self.pin.hash != previous {
            return Err(Error::PinChanged);
        }
        let old = std::mem::take(&mut self.pin);
        self.pin = PinState {
            hash: Some(hash),
            failures: 0,
            locked_until_ms: 0,
        };
        self.save_pin().inspect_err(|_| self.pin = old)?;
        if let Some(keys) = keys {
            match self
                .vault
                .publish_pin_key(&keys.new, keys.previous.as_ref(), crate::now_ms())
            {
                Ok(wrote) => self.dirty |= wrote,
                Err(e) => tracing::warn!(error = %e, "cannot publish the PIN's approval key"),
            }
            self.local_change();
        }
        Ok(())
    }

    fn save_pin(&self) -> Result<(), Error> {
        let bytes = serde_json::to_vec(&self.pin).map_err(|_| Error::PinState)?;
        self.store.put(Meta::Pin, &bytes, Durability::Flushed)?;
        Ok(())
    }
}
