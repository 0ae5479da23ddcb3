//! Names people give things, parsed once where they enter the daemon (the socket), so that nothing inside ever
//! holds one that breaks the rules: a passkey's [`Label`] and a device's [`DeviceName`].

use passmesh_ipc::message::MAX_LABEL;
use passmesh_transport::pairing::MAX_NAME_LEN;

/// A name that breaks the rules; the message says the rule.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not a label.
    #[error("a label is 1 to {MAX_LABEL} bytes without control characters")]
    Label,
    /// Not a device name.
    #[error("the device name must be 1 to {MAX_NAME_LEN} bytes")]
    DeviceName,
}

/// A passkey's label: 1 to [`MAX_LABEL`] bytes, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label(String);

impl TryFrom<String> for Label {
    type Error = Error;

    fn try_from(s: String) -> Result<Label, Error> {
        if s.is_empty() || s.len() > MAX_LABEL || s.chars().any(char::is_control) {
            return Err(Error::Label);
        }
        Ok(Label(s))
    }
}

impl Label {
    /// The label.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A device's name in the device table: 1 to [`MAX_NAME_LEN`] bytes (what a pairing Hello can carry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceName(String);

impl TryFrom<String> for DeviceName {
    type Error = Error;

    fn try_from(s: String) -> Result<DeviceName, Error> {
        if s.is_empty() || s.len() > MAX_NAME_LEN {
            return Err(Error::DeviceName);
        }
        Ok(DeviceName(s))
    }
}

impl DeviceName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a `String`.
    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_names_are_checked_once_at_parse() {
        assert_eq!(Label::try_from("work".to_owned()).unwrap().as_str(), "work");
        for bad in [String::new(), "a\nb".into(), "x".repeat(MAX_LABEL + 1)] {
            assert_eq!(Label::try_from(bad), Err(Error::Label));
        }
        assert!(Label::try_from("x".repeat(MAX_LABEL)).is_ok());
        assert_eq!(
            DeviceName::try_from("laptop".to_owned()).unwrap().as_str(),
            "laptop"
        );
        for bad in [String::new(), "x".repeat(MAX_NAME_LEN + 1)] {
            assert_eq!(DeviceName::try_from(bad), Err(Error::DeviceName));
        }
    }
}
