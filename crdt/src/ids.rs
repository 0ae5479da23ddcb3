//! Identifiers: records, vaults and devices.
//!
//! [`RecordId`] and [`VaultId`] are 16 random bytes written as 32 lowercase hex characters; [`DeviceId`] is an
//! opaque string (a libp2p peer id in the daemon).

use std::fmt;
use std::str::FromStr;

use rand::RngExt;

use crate::Error;

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 16]);

        impl $name {
            /// A fresh random id.
            pub fn random() -> Self {
                Self(rand::rng().random())
            }

            /// The id made of these bytes.
            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(bytes)
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, &self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "("))?;
                write_hex(f, &self.0)?;
                f.write_str(")")
            }
        }

        impl FromStr for $name {
            type Err = Error;

            /// Parses exactly 32 lowercase hex characters.
            fn from_str(s: &str) -> Result<Self, Error> {
                parse_hex16(s)
                    .map(Self)
                    .ok_or_else(|| Error::Malformed(concat!("not a ", $what, " (32 lowercase hex characters)").into()))
            }
        }
    };
}

hex_id!(
    /// The id of one passkey record inside a vault. Random, never reused.
    RecordId,
    "record id"
);

hex_id!(
    /// The id of a vault, shared by all of its replicas. It determines the vault's genesis change.
    VaultId,
    "vault id"
);

/// A WebAuthn credential id: opaque bytes the authenticator chose (1 to 1023 of them). Not secret: relying
/// parties store it and browsers send it in the clear.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CredentialId(Vec<u8>);

impl CredentialId {
    /// The bytes of the id.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for CredentialId {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

impl AsRef<[u8]> for CredentialId {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::borrow::Borrow<[u8]> for CredentialId {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CredentialId(")?;
        write_hex(f, &self.0)?;
        f.write_str(")")
    }
}

/// The id of a device of the vault (a libp2p peer id string in the daemon; opaque here).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(String);

impl DeviceId {
    /// Wraps a device id string.
    pub fn new(id: String) -> Self {
        Self(id)
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({:?})", self.0)
    }
}

impl From<String> for DeviceId {
    fn from(id: String) -> Self {
        Self(id)
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

fn parse_hex16(s: &str) -> Option<[u8; 16]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let s = s.as_bytes();
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = RecordId::from_bytes([0xab; 16]);
        assert_eq!(id.to_string(), "abababababababababababababababab");
        assert_eq!(id.to_string().parse::<RecordId>().unwrap(), id);
        let v = VaultId::random();
        assert_eq!(v.to_string().parse::<VaultId>().unwrap(), v);
        assert_eq!(
            format!("{id:?}"),
            "RecordId(abababababababababababababababab)"
        );
    }

    #[test]
    fn hex_rejects_bad_input() {
        for bad in [
            "",
            "abc",
            "ABABABABABABABABABABABABABABABAB",
            "abababababababababababababababag",
            "abababababababababababababababab00",
            "abababababababababababababab\u{e9}ab",
        ] {
            assert!(bad.parse::<RecordId>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(RecordId::random(), RecordId::random());
    }
}
