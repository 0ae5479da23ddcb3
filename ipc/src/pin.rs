//! Secrets as they cross the socket: the user-verification PIN and the recovery phrase.

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A PIN supplied by the caller for user verification.
///
/// Travels as a plain JSON string. The text is wiped from memory when the value is dropped and
/// `Debug` never shows it. The frame it arrived in is the server's to wipe (it does).
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(transparent)]
pub struct Pin(String);

impl Pin {
    /// Wraps PIN text.
    pub fn new(pin: String) -> Self {
        Self(pin)
    }

    /// The PIN text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(..)")
    }
}

/// A recovery phrase (24 words), sent to restore a backup.
///
/// Travels as a plain JSON string; wiped from memory when dropped; `Debug` never shows it.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(transparent)]
pub struct Phrase(String);

impl Phrase {
    /// Wraps phrase text.
    pub fn new(phrase: String) -> Self {
        Self(phrase)
    }

    /// The phrase text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Phrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Phrase(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_pin() {
        let pin = Pin::new("4711".to_owned());
        assert_eq!(format!("{pin:?}"), "Pin(..)");
        assert_eq!(pin.as_str(), "4711");
    }

    #[test]
    fn debug_hides_the_phrase() {
        let p = Phrase::new("abandon ability able".to_owned());
        assert_eq!(format!("{p:?}"), "Phrase(..)");
    }

    #[test]
    fn serde_is_a_plain_string() {
        let pin: Pin = serde_json::from_str(r#""12 34""#).unwrap();
        assert_eq!(pin.as_str(), "12 34");
        assert_eq!(serde_json::to_string(&pin).unwrap(), r#""12 34""#);
        assert!(serde_json::from_str::<Pin>("1234").is_err());
    }
}
