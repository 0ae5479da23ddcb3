//! Reading authenticator data the way a relying party's debugging tool would: flags,
//! signature counter, and (for registrations) the AAGUID and credential id.
//!
//! webauthn-rs-core verifies these bytes but keeps the AAGUID of `none` attestations and
//! the raw flag byte to itself, so tests parse them here. Layout (WebAuthn §6.1):
//! `rpIdHash[32] | flags[1] | signCount[4 BE] | (AT) aaguid[16] credIdLen[2 BE] credId …`.

use anyhow::{bail, ensure};

/// Flag bits of the authenticator-data flags byte.
pub mod flag {
    /// User present.
    pub const UP: u8 = 0x01;
    /// User verified.
    pub const UV: u8 = 0x04;
    /// Backup eligible.
    pub const BE: u8 = 0x08;
    /// Backup state.
    pub const BS: u8 = 0x10;
    /// Attested credential data included.
    pub const AT: u8 = 0x40;
    /// Extension data included.
    pub const ED: u8 = 0x80;
}

/// The parsed fixed part of authenticator data, plus the attested credential header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthData {
    /// SHA-256 of the rpId.
    pub rp_id_hash: [u8; 32],
    /// The raw flags byte (see [`flag`]).
    pub flags: u8,
    /// The signature counter.
    pub sign_count: u32,
    /// The AAGUID, present when AT is set.
    pub aaguid: Option<[u8; 16]>,
    /// The credential id, present when AT is set.
    pub credential_id: Option<Vec<u8>>,
}

impl AuthData {
    /// Parses authenticator data; the credential public key (CBOR) after the credential id
    /// is left to webauthn-rs-core.
    pub fn parse(bytes: &[u8]) -> anyhow::Result<AuthData> {
        ensure!(
            bytes.len() >= 37,
            "authenticator data of {} bytes is shorter than 37",
            bytes.len()
        );
        let mut rp_id_hash = [0u8; 32];
        rp_id_hash.copy_from_slice(&bytes[..32]);
        let flags = bytes[32];
        let sign_count = u32::from_be_bytes([bytes[33], bytes[34], bytes[35], bytes[36]]);
        let (aaguid, credential_id) = if flags & flag::AT != 0 {
            let rest = &bytes[37..];
            if rest.len() < 18 {
                bail!("AT is set but the attested credential data is cut short");
            }
            let mut aaguid = [0u8; 16];
            aaguid.copy_from_slice(&rest[..16]);
            let len = usize::from(u16::from_be_bytes([rest[16], rest[17]]));
            let id = rest
                .get(18..18 + len)
                .ok_or_else(|| anyhow::anyhow!("credential id of {len} bytes is cut short"))?;
            (Some(aaguid), Some(id.to_vec()))
        } else {
            (None, None)
        };
        Ok(AuthData {
            rp_id_hash,
            flags,
            sign_count,
            aaguid,
            credential_id,
        })
    }

    /// Whether all bits of `mask` are set.
    pub fn has(&self, mask: u8) -> bool {
        self.flags & mask == mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_assertion_and_a_registration() {
        let mut assertion = vec![7u8; 32];
        assertion.push(flag::UP | flag::BE);
        assertion.extend_from_slice(&5u32.to_be_bytes());
        let a = AuthData::parse(&assertion).unwrap();
        assert!(a.has(flag::UP | flag::BE));
        assert!(!a.has(flag::UV));
        assert_eq!(a.sign_count, 5);
        assert_eq!(a.aaguid, None);

        let mut reg = vec![1u8; 32];
        reg.push(flag::UP | flag::AT);
        reg.extend_from_slice(&0u32.to_be_bytes());
        reg.extend_from_slice(&[9u8; 16]);
        reg.extend_from_slice(&3u16.to_be_bytes());
        reg.extend_from_slice(&[1, 2, 3, 0xa5]);
        let r = AuthData::parse(&reg).unwrap();
        assert_eq!(r.aaguid, Some([9u8; 16]));
        assert_eq!(r.credential_id.as_deref(), Some(&[1u8, 2, 3][..]));

        assert!(AuthData::parse(&reg[..40]).is_err());
        assert!(AuthData::parse(&reg[..56]).is_err());
    }
}
