//! The user's approval of a purge, which every device can check: what lets a purge destroy old keys at once.
//!
//! Any member can delete records and rotate the key; a stolen device can, and so can a modified client with a
//! member's keys. So a device that sees records purged or deleted by another keeps the keys that open them (and
//! lets its user restore them) for a while — unless the user proved, with the PIN, that the purge is theirs.
//! The proof is a signature by a **PIN key**: an ed25519 key whose seed the daemon derives from the PIN with
//! argon2id (it never leaves the device that derives it). Two audit events carry it:
//!
//! ```text
//! pin-key-set     subject = hex(public ‖ [sig by the device's previous PIN key over
//!                           "passmesh/v1/pin-key" 0x00 ‖ vault id ‖ device ‖ public])
//! purge-approved  subject = epoch (decimal) ":" hex(sig by the device's PIN key over
//!                           "passmesh/v1/approve" 0x00 ‖ vault id ‖ device ‖ epoch u32)
//! ```
//!
//! Both are ordinary audit entries, signed by the device identity too, so only a verified entry counts. A
//! device's PIN keys form a chain: one first key (an entry without a previous signature), then each next key
//! signed by the one before it, followed in history order. A device with two different first keys (a thief
//! who writes one without knowing the PIN) has no PIN key at all: its approvals then count for nothing, which
//! only makes every device keep keys longer. An approval counts when it is signed by the last key of its
//! device's chain, its device is an active member, the epoch it names was made by that device, and the replica
//! trusts the chain's first key: a thief who holds a device without a PIN can set one, so a first key counts
//! only once the replica has known it for a while (the daemon's `[vault] trash_days`), or when the device that
//! invited this one trusted it (see [`Vault::trust_pin_keys`](crate::Vault::trust_pin_keys)).

use std::collections::HashMap;
use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use crate::audit::{AuditEntry, Event, Verdict};
use crate::members;
use crate::{DeviceId, Epoch, VaultId};

/// A key derived from a device's PIN. Secret: wiped on drop, `Debug` shows nothing.
pub struct PinKey(SigningKey);

impl PinKey {
    /// From 32 bytes the caller derived from the PIN (argon2id; see the daemon's `pin` module).
    pub fn from_seed(seed: &Zeroizing<[u8; 32]>) -> Self {
        PinKey(SigningKey::from_bytes(seed))
    }

    /// Its public half.
    pub fn public(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }
}

impl fmt::Debug for PinKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PinKey(..)")
    }
}

fn key_message(vault: &VaultId, device: &DeviceId, public: &[u8; 32]) -> Vec<u8> {
    let mut out = members::message(b"passmesh/v1/pin-key", vault);
    members::push_str(&mut out, device.as_str());
    out.extend_from_slice(public);
    out
}

fn approve_message(vault: &VaultId, device: &DeviceId, epoch: Epoch) -> Vec<u8> {
    let mut out = members::message(b"passmesh/v1/approve", vault);
    members::push_str(&mut out, device.as_str());
    out.extend_from_slice(&epoch.0.to_be_bytes());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// The subject of a `pin-key-set` entry by `device` publishing `new`, signed by `previous` when there is one.
pub(crate) fn key_subject(
    vault: &VaultId,
    device: &DeviceId,
    new: &PinKey,
    previous: Option<&PinKey>,
) -> String {
    let public = new.public();
    let mut bytes = public.to_vec();
    if let Some(p) = previous {
        bytes.extend_from_slice(&p.0.sign(&key_message(vault, device, &public)).to_bytes());
    }
    hex(&bytes)
}

/// The subject of a `purge-approved` entry by `device` for `epoch`.
pub(crate) fn approval_subject(
    vault: &VaultId,
    device: &DeviceId,
    epoch: Epoch,
    key: &PinKey,
) -> String {
    let sig = key.0.sign(&approve_message(vault, device, epoch));
    format!("{}:{}", epoch.0, hex(&sig.to_bytes()))
}

/// Parses a `pin-key-set` subject: the public key, and the previous key's signature if any.
pub(crate) fn parse_key(subject: &str) -> Option<([u8; 32], Option<[u8; 64]>)> {
    let bytes = unhex(subject)?;
    match bytes.len() {
        32 => Some((bytes.try_into().ok()?, None)),
        96 => Some((
            bytes[..32].try_into().ok()?,
            Some(bytes[32..].try_into().ok()?),
        )),
        _ => None,
    }
}

/// Parses a `purge-approved` subject: the epoch and the signature.
pub(crate) fn parse_approval(subject: &str) -> Option<(Epoch, [u8; 64])> {
    let (epoch, sig) = subject.split_once(':')?;
    if epoch.is_empty() || !epoch.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let sig = unhex(sig)?;
    Some((Epoch(epoch.parse().ok()?), sig.try_into().ok()?))
}

fn verifies(public: &[u8; 32], message: &[u8], sig: &[u8; 64]) -> bool {
    VerifyingKey::from_bytes(public).is_ok_and(|k| {
        k.verify_strict(message, &Signature::from_bytes(sig))
            .is_ok()
    })
}

/// A device's PIN-key chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Chain {
    /// Its first key.
    pub(crate) root: [u8; 32],
    /// Its last key.
    pub(crate) tip: [u8; 32],
}

/// Each device's PIN-key chain, from the verified `pin-key-set` entries of `log` (in history order, see the
/// module documentation). Devices with no first key, or with two different ones, are left out.
pub(crate) fn chains(vault: &VaultId, log: &[AuditEntry]) -> HashMap<DeviceId, Chain> {
    // Per device: (index in the log, public key, the previous key's signature).
    type Published = (usize, [u8; 32], Option<[u8; 64]>);
    let mut by_device: HashMap<&DeviceId, Vec<Published>> = HashMap::new();
    for (i, e) in log.iter().enumerate() {
        if e.event == Event::PinKey
            && e.verdict == Verdict::Verified
            && let Some((public, prev)) = parse_key(&e.subject)
        {
            by_device
                .entry(&e.device)
                .or_default()
                .push((i, public, prev));
        }
    }
    let mut out = HashMap::new();
    for (device, keys) in by_device {
        let mut roots = keys.iter().filter(|k| k.2.is_none());
        let Some(&(root_index, root, _)) = roots.next() else {
            continue;
        };
        if roots.any(|r| r.1 != root) {
            continue;
        }
        // Follow the chain forward in history (not by the device's clock): each step is the next key, later in
        // history, that the current one signed.
        let (mut tip, mut at) = (root, root_index);
        while let Some(next) = keys.iter().find(|(i, public, prev)| {
            *i > at
                && prev.is_some_and(|sig| verifies(&tip, &key_message(vault, device, public), &sig))
        }) {
            (tip, at) = (next.1, next.0);
        }
        out.insert(device.clone(), Chain { root, tip });
    }
    out
}

/// An approval whose signature verifies against the last key of its device's chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Approval {
    pub(crate) epoch: Epoch,
    /// Its index in the log.
    pub(crate) index: usize,
    pub(crate) device: DeviceId,
    /// Its device's first PIN key (whether that key is trusted is the caller's call).
    pub(crate) root: [u8; 32],
}

/// The approvals of `log` by devices for which `active` holds, signed by the last key of their device's chain
/// (see [`chains`]).
pub(crate) fn approvals(
    vault: &VaultId,
    log: &[AuditEntry],
    active: impl Fn(&DeviceId) -> bool,
) -> Vec<Approval> {
    let chains = chains(vault, log);
    log.iter()
        .enumerate()
        .filter(|(_, e)| {
            e.event == Event::Approved && e.verdict == Verdict::Verified && active(&e.device)
        })
        .filter_map(|(index, e)| {
            let (epoch, sig) = parse_approval(&e.subject)?;
            let chain = chains.get(&e.device)?;
            verifies(&chain.tip, &approve_message(vault, &e.device, epoch), &sig).then(|| {
                Approval {
                    epoch,
                    index,
                    device: e.device.clone(),
                    root: chain.root,
                }
            })
        })
        .collect()
}

/// Runs the subject parsers on arbitrary text (part of the audit fuzz target).
pub(crate) fn fuzz_subject(subject: &str) {
    if let Some((public, prev)) = parse_key(subject) {
        let mut bytes = public.to_vec();
        bytes.extend(prev.iter().flatten());
        assert_eq!(hex(&bytes), subject.to_ascii_lowercase());
    }
    let _ = parse_approval(subject);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approved(
        vault: &VaultId,
        log: &[AuditEntry],
        active: impl Fn(&DeviceId) -> bool,
    ) -> Vec<Epoch> {
        approvals(vault, log, active)
            .into_iter()
            .map(|a| a.epoch)
            .collect()
    }

    fn pin_key(n: u8) -> PinKey {
        PinKey::from_seed(&Zeroizing::new([n; 32]))
    }

    /// A verified `pin-key-set` entry by `d` at `at_ms` publishing `key`, signed by `previous`.
    fn key(
        vault: &VaultId,
        d: &DeviceId,
        at_ms: u64,
        key: &PinKey,
        previous: Option<&PinKey>,
    ) -> AuditEntry {
        entry(
            d,
            at_ms,
            Event::PinKey,
            key_subject(vault, d, key, previous),
        )
    }

    /// A verified `purge-approved` entry by `d` at `at_ms` for `epoch`, signed with `key`.
    fn approve(vault: &VaultId, d: &DeviceId, at_ms: u64, epoch: u32, key: &PinKey) -> AuditEntry {
        entry(
            d,
            at_ms,
            Event::Approved,
            approval_subject(vault, d, Epoch(epoch), key),
        )
    }

    fn entry(device: &DeviceId, at_ms: u64, event: Event, subject: String) -> AuditEntry {
        AuditEntry {
            key: String::new(),
            at_ms,
            device: device.clone(),
            event,
            subject,
            verdict: Verdict::Verified,
        }
    }

    #[test]
    fn an_approval_counts_when_signed_by_the_last_key_of_its_devices_chain() {
        let v = VaultId::from_bytes([3; 16]);
        let d = members::device_id_of(&[9; 32]);
        let (k1, k2) = (pin_key(1), pin_key(2));
        let mut log = vec![key(&v, &d, 10, &k1, None), approve(&v, &d, 20, 5, &k1)];
        assert_eq!(approved(&v, &log, |_| true), vec![Epoch(5)]);
        assert!(
            approved(&v, &log, |_| false).is_empty(),
            "only active devices"
        );
        // The PIN changes: the old key approves nothing any more, the new one does.
        log.push(key(&v, &d, 30, &k2, Some(&k1)));
        log.push(approve(&v, &d, 40, 6, &k2));
        assert_eq!(approved(&v, &log, |_| true), vec![Epoch(6)]);
        // Changed back to the first PIN: the chain follows history, not a set.
        log.push(key(&v, &d, 50, &k1, Some(&k2)));
        assert_eq!(approved(&v, &log, |_| true), vec![Epoch(5)]);
        // An approval for another device's name, or another vault, or a forged entry: nothing.
        let other = members::device_id_of(&[8; 32]);
        let stolen = entry(
            &other,
            60,
            Event::Approved,
            approval_subject(&v, &d, Epoch(7), &k1),
        );
        let mut forged = approve(&v, &d, 60, 8, &k1);
        forged.verdict = Verdict::Forged("test");
        let foreign = approve(&VaultId::from_bytes([4; 16]), &d, 60, 9, &k1);
        log.extend([stolen, forged, foreign]);
        assert_eq!(approved(&v, &log, |_| true), vec![Epoch(5)]);
    }

    #[test]
    fn a_second_first_key_written_without_the_pin_voids_every_approval_of_that_device() {
        let v = VaultId::from_bytes([3; 16]);
        let d = members::device_id_of(&[9; 32]);
        let (k1, thief) = (pin_key(1), pin_key(66));
        let mut log = vec![key(&v, &d, 10, &k1, None), approve(&v, &d, 20, 5, &k1)];
        // A thief without the PIN cannot extend the chain (its key is not signed by k1) ...
        log.push(key(&v, &d, 30, &thief, Some(&thief)));
        log.push(approve(&v, &d, 40, 6, &thief));
        assert_eq!(approved(&v, &log, |_| true), vec![Epoch(5)]);
        // ... and a first key of its own makes the device's approvals count for nothing.
        log.push(key(&v, &d, 50, &thief, None));
        assert!(approved(&v, &log, |_| true).is_empty());
    }

    #[test]
    fn subjects_parse_strictly() {
        let vault = VaultId::from_bytes([3; 16]);
        let d = members::device_id_of(&[9; 32]);
        let s = key_subject(&vault, &d, &pin_key(1), Some(&pin_key(2)));
        assert_eq!(s.len(), 192);
        assert!(parse_key(&s).is_some_and(|(p, sig)| p == pin_key(1).public() && sig.is_some()));
        for bad in ["", "zz", &s[..190], &format!("{s}00"), "+1:00"] {
            assert!(parse_key(bad).is_none(), "{bad}");
        }
        let a = approval_subject(&vault, &d, Epoch(42), &pin_key(1));
        assert_eq!(parse_approval(&a).map(|(e, _)| e), Some(Epoch(42)));
        for bad in [
            ":",
            "42",
            "-1:00",
            "42:00",
            "99999999999:00",
            &a.replace(':', ""),
        ] {
            assert!(parse_approval(bad).is_none(), "{bad}");
        }
    }
}
