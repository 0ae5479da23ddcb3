//! The keystore seals the device's secrets (the vault keyring) before they reach the disk.
//!
//! A backend turns a secret into an opaque sealed blob that the store keeps, and back. The `software` backend
//! is the explicit "no hardware" choice: its blobs are the secret itself behind a format tag, protected only by
//! file permissions — which is why choosing it, or falling back to it, is loud. The TPM backend seals with the
//! TPM so that a copied state directory is useless elsewhere.

use std::fmt;
use std::str::FromStr;

use zeroize::Zeroizing;

const SOFTWARE_TAG: &[u8] = b"passmesh-sw-v1\0";

/// Which backend the user asked for (`--keystore`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    /// The TPM when one answers, else software with a warning.
    #[default]
    Auto,
    /// The TPM or nothing.
    Tpm,
    /// Software only, on purpose.
    Software,
}

impl FromStr for Choice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Choice::Auto),
            "tpm" => Ok(Choice::Tpm),
            "software" => Ok(Choice::Software),
            other => Err(format!(
                "unknown keystore {other:?}: expected auto, tpm or software"
            )),
        }
    }
}

/// Keystore failures.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--keystore tpm` was asked for but no usable TPM backend exists.
    #[error(
        "no usable TPM: {0}. Use --keystore software to keep keys in software (protected by file permissions \
         only), or --keystore auto to fall back to software automatically"
    )]
    NoTpm(String),
    /// A sealed blob is not in a format this backend can open.
    #[error("sealed secret is not a {backend} blob (sealed by another keystore backend?)")]
    WrongFormat {
        /// The backend that tried to open it.
        backend: &'static str,
    },
}

/// An open keystore backend.
pub enum Keystore {
    /// Secrets kept in software.
    Software,
}

impl fmt::Debug for Keystore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The keystore that was opened, and a warning for the log and `status` if it is weaker than asked.
#[derive(Debug)]
pub struct Opened {
    /// The backend in use.
    pub keystore: Keystore,
    /// Set when the daemon fell back to software keys.
    pub warning: Option<String>,
}

/// Opens the backend for `choice`.
pub fn open(choice: Choice) -> Result<Opened, Error> {
    // The TPM backend is not built yet; `auto` falls back exactly as it will on a machine without a TPM.
    let tpm_unavailable = "this build of passmeshd has no TPM backend yet".to_owned();
    match choice {
        Choice::Software => Ok(Opened {
            keystore: Keystore::Software,
            warning: None,
        }),
        Choice::Tpm => Err(Error::NoTpm(tpm_unavailable)),
        Choice::Auto => Ok(Opened {
            keystore: Keystore::Software,
            warning: Some(format!(
                "no TPM available ({tpm_unavailable}): vault keys are protected by file permissions only"
            )),
        }),
    }
}

impl Keystore {
    /// The backend's name as shown in `status`.
    pub fn name(&self) -> &'static str {
        match self {
            Keystore::Software => "software",
        }
    }

    /// Seals `secret` into a blob to store. (A software blob contains the secret itself, so it is zeroized too.)
    pub fn seal(&self, secret: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        match self {
            Keystore::Software => {
                let mut blob =
                    Zeroizing::new(Vec::with_capacity(SOFTWARE_TAG.len() + secret.len()));
                blob.extend_from_slice(SOFTWARE_TAG);
                blob.extend_from_slice(secret);
                Ok(blob)
            }
        }
    }

    /// Opens a blob made by [`Keystore::seal`].
    pub fn unseal(&self, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        match self {
            Keystore::Software => blob
                .strip_prefix(SOFTWARE_TAG)
                .map(|s| Zeroizing::new(s.to_vec()))
                .ok_or(Error::WrongFormat {
                    backend: "software",
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn software_round_trip_and_format_check() {
        let ks = open(Choice::Software).unwrap();
        assert!(ks.warning.is_none());
        let blob = ks.keystore.seal(b"secret").unwrap();
        assert_eq!(ks.keystore.unseal(&blob).unwrap().as_slice(), b"secret");
        assert!(matches!(
            ks.keystore.unseal(b"garbage"),
            Err(Error::WrongFormat { .. })
        ));
    }

    #[test]
    fn auto_falls_back_loudly_and_tpm_refuses() {
        let ks = open(Choice::Auto).unwrap();
        assert_eq!(ks.keystore.name(), "software");
        assert!(ks.warning.unwrap().contains("no TPM"));
        let err = open(Choice::Tpm).unwrap_err().to_string();
        assert!(
            err.contains("--keystore software") && err.contains("--keystore auto"),
            "{err}"
        );
    }

    #[test]
    fn choice_parses() {
        assert_eq!("tpm".parse::<Choice>(), Ok(Choice::Tpm));
        assert!("TPM2".parse::<Choice>().is_err());
    }
}
