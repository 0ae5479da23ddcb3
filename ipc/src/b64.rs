//! Binary values on the wire: base64url without padding, as in the WebAuthn JSON forms.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Encoding never pads; decoding accepts input with or without padding, since some encoders
/// (and hand-written test vectors) pad. Non-canonical trailing bits are still rejected.
const LENIENT_URL_SAFE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Errors decoding base64url text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Base64Error {
    /// The text is not valid base64url (wrong alphabet, bad length or padding, stray bits).
    #[error("invalid base64url: {0}")]
    Invalid(String),
}

/// Bytes that travel as a base64url string (no padding) in JSON.
///
/// `Debug` and `Display` show the base64url text. Not for secrets: use a zeroizing type for those.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Base64Url(pub Vec<u8>);

impl Base64Url {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Consumes the value and returns the raw bytes.
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }

    /// Encodes bytes as base64url without padding.
    pub fn encode(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Decodes base64url text, with or without padding.
    pub fn decode(s: &str) -> Result<Vec<u8>, Base64Error> {
        LENIENT_URL_SAFE
            .decode(s)
            .map_err(|e| Base64Error::Invalid(e.to_string()))
    }

    /// This value's base64url text.
    pub fn to_base64(&self) -> String {
        Self::encode(&self.0)
    }
}

impl From<Vec<u8>> for Base64Url {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

impl From<&[u8]> for Base64Url {
    fn from(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }
}

impl<const N: usize> From<[u8; N]> for Base64Url {
    fn from(bytes: [u8; N]) -> Self {
        Self(bytes.to_vec())
    }
}

impl From<Base64Url> for Vec<u8> {
    fn from(value: Base64Url) -> Self {
        value.0
    }
}

impl AsRef<[u8]> for Base64Url {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl FromStr for Base64Url {
    type Err = Base64Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::decode(s).map(Self)
    }
}

impl fmt::Debug for Base64Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Base64Url").field(&self.to_base64()).finish()
    }
}

impl fmt::Display for Base64Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl Serialize for Base64Url {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for Base64Url {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct B64Visitor;

        impl Visitor<'_> for B64Visitor {
            type Value = Base64Url;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a base64url string")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Base64Url, E> {
                Base64Url::decode(v).map(Base64Url).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(B64Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_url_safe_without_padding() {
        assert_eq!(Base64Url::encode(&[0xFB, 0xFF]), "-_8");
        assert_eq!(Base64Url::encode(b""), "");
        assert_eq!(Base64Url::encode(b"ab"), "YWI");
    }

    #[test]
    fn decodes_with_or_without_padding() {
        assert_eq!(Base64Url::decode("YWI").unwrap(), b"ab");
        assert_eq!(Base64Url::decode("YWI=").unwrap(), b"ab");
        assert_eq!(Base64Url::decode("-_8").unwrap(), [0xFB, 0xFF]);
    }

    #[test]
    fn rejects_the_standard_alphabet_and_junk() {
        assert!(Base64Url::decode("+/8").is_err());
        assert!(Base64Url::decode("a").is_err());
        assert!(Base64Url::decode("YW I").is_err());
        // "YWJ" has non-zero trailing bits: not the canonical form of any byte string.
        assert!(Base64Url::decode("YWJ").is_err());
    }

    #[test]
    fn serde_is_a_plain_string() {
        let v = Base64Url(vec![0, 1, 2, 0xFF]);
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, r#""AAEC_w""#);
        assert_eq!(serde_json::from_str::<Base64Url>(&json).unwrap(), v);
        assert_eq!(
            serde_json::from_str::<Base64Url>(r#""AAEC_w==""#).unwrap(),
            v
        );
        assert!(serde_json::from_str::<Base64Url>(r#""AAEC/w""#).is_err());
        assert!(serde_json::from_str::<Base64Url>("[0,1]").is_err());
    }

    #[test]
    fn debug_shows_the_text() {
        assert_eq!(
            format!("{:?}", Base64Url(vec![0, 1, 2])),
            r#"Base64Url("AAEC")"#
        );
        assert_eq!(Base64Url(vec![0, 1, 2]).to_string(), "AAEC");
    }
}
