//! The per-device PIN: argon2id hashing and the consecutive-failure counter with lockout.
//!
//! An attempt is counted *before* the hash is checked and cleared on success, so neither a crash mid-check nor
//! concurrent guesses can get more than `max_attempts` tries past the counter. The counter lives in the store
//! (not replicated: a PIN is a property of one device).

use std::time::Duration;

use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Shortest PIN accepted, in characters.
pub const MIN_LEN: usize = 4;
/// Longest PIN accepted, in characters (CTAP2's limit).
pub const MAX_LEN: usize = 63;

/// Longest lock the doubling reaches (unless the configured lockout is longer): one day.
const MAX_BACKOFF_MS: u64 = 24 * 3600 * 1000;

/// Failure of a PIN operation.
#[non_exhaustive]
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// The PIN's length is out of bounds.
    #[error("a PIN must be {MIN_LEN} to {MAX_LEN} characters long")]
    Length,
    /// Too many wrong PINs: no attempt is allowed until the lockout ends.
    #[error("PIN locked after too many wrong attempts; try again in {} s", .remaining.as_secs().max(1))]
    Locked {
        /// Time left until the next attempt is allowed.
        remaining: Duration,
    },
    /// The hash could not be computed (bad parameters stored on disk).
    #[error("PIN hashing failed: {0}")]
    Hash(String),
}

/// Attempt limit and lockout, from the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Consecutive wrong PINs before the PIN locks.
    pub max_attempts: u32,
    /// How long the first lock lasts. After a lock one attempt is allowed; a wrong one locks again for twice
    /// as long (up to a day).
    pub lockout: Duration,
    /// Treat every create and get as `userVerification: "required"` (an administrator's policy).
    pub always_required: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_attempts: 5,
            lockout: Duration::from_secs(300),
            always_required: false,
        }
    }
}

/// An argon2id hash of a PIN with its salt and parameters.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PinHash {
    m_kib: u32,
    t: u32,
    p: u32,
    salt: [u8; 16],
    hash: [u8; 32],
}

impl std::fmt::Debug for PinHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinHash(..)")
    }
}

/// Checks a PIN's length in characters.
pub fn validate(pin: &str) -> Result<(), Error> {
    let n = pin.chars().count();
    if (MIN_LEN..=MAX_LEN).contains(&n) {
        Ok(())
    } else {
        Err(Error::Length)
    }
}

/// The argon2id parameters new PIN hashes and PIN keys use (m KiB, passes, lanes): OWASP's 19 MiB, 2 passes.
const NEW_PARAMS: (u32, u32, u32) = (Params::DEFAULT_M_COST, Params::DEFAULT_T_COST, 1);

fn argon(m_kib: u32, t: u32, p: u32) -> Result<Argon2<'static>, Error> {
    let params = Params::new(m_kib, t, p, Some(32)).map_err(|e| Error::Hash(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

impl PinHash {
    /// Hashes a PIN with a fresh salt and the OWASP-recommended argon2id parameters (19 MiB, 2 passes).
    /// Takes tens of milliseconds: call it off the async runtime.
    pub fn new(pin: &str) -> Result<PinHash, Error> {
        validate(pin)?;
        let mut salt = [0u8; 16];
        rand::fill(&mut salt);
        let (m_kib, t, p) = NEW_PARAMS;
        let mut hash = [0u8; 32];
        argon(m_kib, t, p)?
            .hash_password_into(pin.as_bytes(), &salt, &mut hash)
            .map_err(|e| Error::Hash(e.to_string()))?;
        Ok(PinHash {
            m_kib,
            t,
            p,
            salt,
            hash,
        })
    }

    /// Whether `pin` matches, compared in constant time. Slow like [`PinHash::new`].
    pub fn verify(&self, pin: &str) -> Result<bool, Error> {
        let mut out = Zeroizing::new([0u8; 32]);
        argon(self.m_kib, self.t, self.p)?
            .hash_password_into(pin.as_bytes(), &self.salt, out.as_mut())
            .map_err(|e| Error::Hash(e.to_string()))?;
        let diff = out
            .iter()
            .zip(self.hash.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        Ok(diff == 0)
    }
}

/// The key derived from `pin` that approves purges for every device to check (see
/// [`passmesh_crdt::approval`]): an ed25519 key whose seed is argon2id of the PIN with the same parameters as
/// [`PinHash::new`] and a salt bound to the vault and the device, so one PIN gives one key per device and vault.
/// Its public half is published in the vault, so it can be attacked offline like the PIN hash on this disk.
/// Slow like [`PinHash::new`]: call it off the async runtime.
pub fn approval_key(
    pin: &str,
    vault: &passmesh_crdt::VaultId,
    device: &str,
) -> Result<passmesh_crdt::PinKey, Error> {
    use sha2::{Digest, Sha256};
    validate(pin)?;
    let mut h = Sha256::new();
    h.update(b"passmesh/v1/pin-key-salt\0");
    h.update(vault.as_bytes());
    h.update(device.as_bytes());
    let digest = h.finalize();
    let mut seed = Zeroizing::new([0u8; 32]);
    let (m_kib, t, p) = NEW_PARAMS;
    argon(m_kib, t, p)?
        .hash_password_into(pin.as_bytes(), &digest[..16], seed.as_mut())
        .map_err(|e| Error::Hash(e.to_string()))?;
    Ok(passmesh_crdt::PinKey::from_seed(&seed))
}

/// The persisted PIN state of one vault on this device.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PinState {
    /// The PIN's hash, `None` while no PIN is set.
    pub hash: Option<PinHash>,
    /// Consecutive failed (or begun and unfinished) attempts.
    pub failures: u32,
    /// While in the future, no attempt is allowed (ms since the Unix epoch).
    pub locked_until_ms: u64,
}

impl PinState {
    /// Starts an attempt at `now_ms`: refuses while locked, else counts the attempt as a failure until
    /// [`PinState::succeed`] clears it. Persist the state before checking the PIN.
    pub fn begin_attempt(&mut self, now_ms: u64, policy: &Policy) -> Result<(), Error> {
        if now_ms < self.locked_until_ms {
            return Err(Error::Locked {
                remaining: Duration::from_millis(self.locked_until_ms - now_ms),
            });
        }
        self.failures = self.failures.saturating_add(1);
        let max = policy.max_attempts.max(1);
        if self.failures >= max {
            // This attempt is the last one allowed: whatever its outcome, the next must wait. Each further
            // failure doubles the wait (up to a day, or the configured lockout if longer), so guessing a short
            // PIN one try per lockout does not stay cheap.
            let base = u64::try_from(policy.lockout.as_millis()).unwrap_or(u64::MAX);
            let doublings = (self.failures - max).min(20);
            let cap = base.max(MAX_BACKOFF_MS);
            let lock = base.saturating_mul(1 << doublings).min(cap);
            self.locked_until_ms = now_ms.saturating_add(lock);
        }
        Ok(())
    }

    /// Records a correct PIN: the counter and any lock are cleared.
    pub fn succeed(&mut self) {
        self.failures = 0;
        self.locked_until_ms = 0;
    }

    /// Attempts left before the lockout (1 after a lock has expired, 0 while locked).
    pub fn attempts_left(&self, now_ms: u64, policy: &Policy) -> u32 {
        if now_ms < self.locked_until_ms {
            0
        } else {
            policy.max_attempts.saturating_sub(self.failures).max(1)
        }
    }

    /// Time left on the current lock, if any.
    pub fn locked_for(&self, now_ms: u64) -> Option<Duration> {
        (now_ms < self.locked_until_ms)
            .then(|| Duration::from_millis(self.locked_until_ms - now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_verifies_only_the_right_pin() {
        let h = PinHash::new("1234").unwrap();
        assert!(h.verify("1234").unwrap());
        assert!(!h.verify("1235").unwrap());
        assert!(!h.verify("").unwrap());
        assert_eq!(format!("{h:?}"), "PinHash(..)");
        // Fresh salt each time.
        assert_ne!(PinHash::new("1234").unwrap(), h);
    }

    #[test]
    fn length_bounds_in_characters() {
        assert_eq!(PinHash::new("123").unwrap_err(), Error::Length);
        assert!(validate("ÄÖÜß").is_ok());
        assert!(validate(&"x".repeat(63)).is_ok());
        assert_eq!(validate(&"x".repeat(64)), Err(Error::Length));
    }

    #[test]
    fn lockout_after_max_attempts_then_one_try_per_lockout() {
        let policy = Policy {
            max_attempts: 3,
            lockout: Duration::from_secs(60),
            always_required: false,
        };
        let mut s = PinState::default();
        assert_eq!(s.attempts_left(0, &policy), 3);
        s.begin_attempt(0, &policy).unwrap();
        s.begin_attempt(1, &policy).unwrap();
        assert_eq!(s.attempts_left(1, &policy), 1);
        s.begin_attempt(2, &policy).unwrap();
        assert_eq!(s.attempts_left(3, &policy), 0);
        assert!(matches!(
            s.begin_attempt(3, &policy),
            Err(Error::Locked { .. })
        ));
        assert_eq!(s.locked_for(2), Some(Duration::from_secs(60)));
        // After the lock: one attempt, a wrong one locks again, for twice as long each time.
        let later = 2 + 60_000;
        assert_eq!(s.attempts_left(later, &policy), 1);
        s.begin_attempt(later, &policy).unwrap();
        assert!(s.begin_attempt(later + 1, &policy).is_err());
        assert_eq!(s.locked_for(later), Some(Duration::from_secs(120)));
        let later = later + 120_000;
        s.begin_attempt(later, &policy).unwrap();
        assert_eq!(s.locked_for(later), Some(Duration::from_secs(240)));
        // The doubling stops at a day.
        for _ in 0..30 {
            let t = s.locked_until_ms;
            s.begin_attempt(t, &policy).unwrap();
        }
        assert_eq!(
            s.locked_for(s.locked_until_ms - 86_400_000),
            Some(Duration::from_secs(86_400))
        );
        // Success clears everything.
        s.succeed();
        assert_eq!(s.attempts_left(later + 1, &policy), 3);
        assert_eq!(s.locked_for(later + 1), None);
    }
}
