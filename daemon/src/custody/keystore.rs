//! The keystore seals the device's secrets (the vault keyring) before they reach the disk.
//!
//! A backend turns a secret into an opaque sealed blob that the store keeps, and back. The `software` backend
//! is the explicit "no hardware" choice: its blobs are the secret itself behind a format tag, protected only by
//! file permissions — which is why choosing it, or falling back to it, is loud. The TPM backend seals with the
//! TPM so that a copied state directory is useless elsewhere.

use std::fmt;
use std::str::FromStr;

use zeroize::Zeroizing;

pub mod tpm;

use tpm::Tpm;

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

/// Settings of the TPM backend (`[tpm]` in the config file, `--tpm-tcti`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmOptions {
    /// The TCTI to reach the TPM, e.g. `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`.
    pub tcti: String,
    /// sha256 PCRs that bind new seals (empty: none).
    pub pcrs: Vec<u8>,
}

/// The TCTI used when none is configured: the kernel's resource manager.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

impl Default for TpmOptions {
    fn default() -> Self {
        Self {
            tcti: DEFAULT_TCTI.to_owned(),
            pcrs: Vec::new(),
        }
    }
}

/// How to recover when the PCRs that bind the seal changed; shown with the refusal and in the README.
pub const PCR_RECOVERY: &str = "if the change was intended (firmware, bootloader or kernel update), \
restore the previous boot state, run `passmesh keystore reseal --pcrs none`, make the change, then run \
`passmesh keystore reseal` to bind the new values; otherwise treat this device as compromised and restore \
the vault from another device or a backup";

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
    /// The vault was sealed by another backend than the one asked for.
    #[error(
        "this vault is sealed by the {sealed_by} keystore, not by the {asked} keystore: {hint}"
    )]
    SealedByOther {
        /// The backend that sealed it.
        sealed_by: &'static str,
        /// The backend that was asked for.
        asked: &'static str,
        /// What to do about it.
        hint: &'static str,
    },
    /// A TPM blob is truncated or malformed.
    #[error("the sealed secret is damaged")]
    Damaged,
    /// The blob was sealed by a different TPM (or a TPM whose owner hierarchy was cleared).
    #[error(
        "the vault was sealed by a different TPM (or this TPM was cleared): it cannot be unsealed here. \
         Restore the vault from another device or a backup, or start passmeshd on the machine that sealed it"
    )]
    OtherTpm,
    /// PCRs that bind the seal no longer have their sealed values.
    #[error(
        "refusing to unseal the vault: PCR(s) {} (sha256) changed since the vault was sealed, so the boot state \
         differs. Nothing was changed on disk. Recovery: {PCR_RECOVERY}",
        list_pcrs(changed)
    )]
    PcrsChanged {
        /// The PCRs whose values differ.
        changed: Vec<u8>,
    },
    /// A TPM command failed.
    #[error("TPM error: {0}")]
    Tpm(String),
}

/// `7, 14` for display.
pub fn list_pcrs(pcrs: &[u8]) -> String {
    pcrs.iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which backend sealed a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The software keystore.
    Software,
    /// The TPM.
    Tpm,
}

impl Backend {
    /// The backend's name as shown in `status`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Software => "software",
            Backend::Tpm => "tpm",
        }
    }

    /// The backend that sealed `blob`, from its format tag.
    pub fn of(blob: &[u8]) -> Option<Backend> {
        if blob.starts_with(SOFTWARE_TAG) {
            Some(Backend::Software)
        } else if blob.starts_with(tpm::TAG) {
            Some(Backend::Tpm)
        } else {
            None
        }
    }
}

/// An open keystore backend.
pub enum Keystore {
    /// Secrets kept in software.
    Software,
    /// Secrets sealed by the TPM, bound to `pcrs` when sealing.
    Tpm {
        /// The open TPM.
        tpm: Box<Tpm>,
        /// PCRs that bind new seals.
        pcrs: Vec<u8>,
    },
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

/// Opens the backend for `choice`; `auto` tries the TPM at `tpm.tcti` first.
pub fn open(choice: Choice, tpm: &TpmOptions) -> Result<Opened, Error> {
    match choice {
        Choice::Software => Ok(Opened {
            keystore: Keystore::Software,
            warning: None,
        }),
        Choice::Tpm => Ok(Opened {
            keystore: open_tpm(tpm)?,
            warning: None,
        }),
        Choice::Auto => match open_tpm(tpm) {
            Ok(keystore) => Ok(Opened {
                keystore,
                warning: None,
            }),
            Err(e) => Ok(Opened {
                keystore: Keystore::Software,
                warning: Some(format!(
                    "no TPM available ({}): vault keys are protected by file permissions only",
                    reason(&e)
                )),
            }),
        },
    }
}

/// Opens the keystore that can unseal `blob` (the vault's stored keyring, `None` for a new vault), honouring
/// `choice`: `auto` follows the blob, an explicit choice must match it.
pub fn open_for(choice: Choice, tpm: &TpmOptions, blob: Option<&[u8]>) -> Result<Opened, Error> {
    let sealed_by = blob.and_then(Backend::of);
    match (choice, sealed_by) {
        (Choice::Tpm, Some(Backend::Software)) => Err(Error::SealedByOther {
            sealed_by: "software",
            asked: "tpm",
            hint: "move it to the TPM with `passmesh keystore migrate --to tpm` (passmeshd stopped), or start \
                   with --keystore software",
        }),
        (Choice::Software, Some(Backend::Tpm)) => Err(Error::SealedByOther {
            sealed_by: "tpm",
            asked: "software",
            hint: "start with --keystore tpm or --keystore auto on the machine whose TPM sealed it",
        }),
        (Choice::Auto, Some(Backend::Tpm)) => open_tpm(tpm)
            .map(|keystore| Opened {
                keystore,
                warning: None,
            })
            .map_err(|e| match e {
                Error::NoTpm(why) => {
                    Error::NoTpm(format!("this vault is sealed by the TPM, but {why}"))
                }
                other => other,
            }),
        (Choice::Auto, Some(Backend::Software)) => {
            // A software-sealed vault stays software until the user migrates it; say so if a TPM is there.
            let warning = match open_tpm(tpm) {
                Ok(_) => "this vault is sealed by the software keystore although a TPM is available: vault keys \
                          are protected by file permissions only; run `passmesh keystore migrate --to tpm` \
                          (passmeshd stopped)"
                    .to_owned(),
                Err(e) => format!(
                    "no TPM available ({}): vault keys are protected by file permissions only",
                    reason(&e)
                ),
            };
            Ok(Opened {
                keystore: Keystore::Software,
                warning: Some(warning),
            })
        }
        _ => open(choice, tpm),
    }
}

fn reason(e: &Error) -> String {
    match e {
        Error::NoTpm(why) => why.clone(),
        other => other.to_string(),
    }
}

fn open_tpm(options: &TpmOptions) -> Result<Keystore, Error> {
    Ok(Keystore::Tpm {
        tpm: Box::new(Tpm::open(&options.tcti)?),
        pcrs: options.pcrs.clone(),
    })
}

impl Keystore {
    /// The backend's name as shown in `status`.
    pub fn name(&self) -> &'static str {
        self.backend().name()
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        match self {
            Keystore::Software => Backend::Software,
            Keystore::Tpm { .. } => Backend::Tpm,
        }
    }

    /// The TPM's manufacturer and firmware, for the TPM backend.
    pub fn tpm_info(&self) -> Option<&tpm::Info> {
        match self {
            Keystore::Software => None,
            Keystore::Tpm { tpm, .. } => Some(tpm.info()),
        }
    }

    /// Replaces the PCRs that bind new seals.
    pub fn set_pcrs(&mut self, new: Vec<u8>) {
        if let Keystore::Tpm { pcrs, .. } = self {
            *pcrs = new;
        }
    }

    /// Seals `secret` into a blob to store. (A software blob contains the secret itself, so it is zeroized too.)
    pub fn seal(&mut self, secret: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        match self {
            Keystore::Software => {
                let mut blob =
                    Zeroizing::new(Vec::with_capacity(SOFTWARE_TAG.len() + secret.len()));
                blob.extend_from_slice(SOFTWARE_TAG);
                blob.extend_from_slice(secret);
                Ok(blob)
            }
            Keystore::Tpm { tpm, pcrs } => tpm.seal(secret, pcrs).map(Zeroizing::new),
        }
    }

    /// Opens a blob made by [`Keystore::seal`].
    pub fn unseal(&mut self, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        match self {
            Keystore::Software => blob
                .strip_prefix(SOFTWARE_TAG)
                .map(|s| Zeroizing::new(s.to_vec()))
                .ok_or(Error::WrongFormat {
                    backend: "software",
                }),
            Keystore::Tpm { tpm, .. } => tpm.unseal(blob),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn software_round_trip_and_format_check() {
        let mut ks = open(Choice::Software, &TpmOptions::default()).unwrap();
        assert!(ks.warning.is_none());
        let blob = ks.keystore.seal(b"secret").unwrap();
        assert_eq!(Backend::of(&blob), Some(Backend::Software));
        assert_eq!(ks.keystore.unseal(&blob).unwrap().as_slice(), b"secret");
        assert!(matches!(
            ks.keystore.unseal(b"garbage"),
            Err(Error::WrongFormat { .. })
        ));
    }

    #[test]
    fn auto_falls_back_loudly_and_tpm_refuses() {
        let nowhere = TpmOptions {
            tcti: "device:/nonexistent/tpmrm0".into(),
            pcrs: vec![],
        };
        let ks = open(Choice::Auto, &nowhere).unwrap();
        assert_eq!(ks.keystore.name(), "software");
        assert!(ks.warning.unwrap().contains("no TPM"));
        let err = open(Choice::Tpm, &nowhere).unwrap_err().to_string();
        assert!(
            err.contains("--keystore software") && err.contains("--keystore auto"),
            "{err}"
        );
    }

    #[test]
    fn mismatched_backends_are_named() {
        let nowhere = TpmOptions {
            tcti: "device:/nonexistent/tpmrm0".into(),
            pcrs: vec![],
        };
        let sw = b"passmesh-sw-v1\0key".as_slice();
        let err = open_for(Choice::Tpm, &nowhere, Some(sw))
            .unwrap_err()
            .to_string();
        assert!(err.contains("passmesh keystore migrate --to tpm"), "{err}");
        let tpm_blob = b"passmesh-tpm-v1\0\0".as_slice();
        let err = open_for(Choice::Software, &nowhere, Some(tpm_blob))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sealed by the tpm keystore"), "{err}");
        let err = open_for(Choice::Auto, &nowhere, Some(tpm_blob))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sealed by the TPM"), "{err}");
        let ok = open_for(Choice::Auto, &nowhere, Some(sw)).unwrap();
        assert_eq!(ok.keystore.name(), "software");
        assert!(ok.warning.is_some());
    }

    #[test]
    fn pcr_refusal_names_pcrs_and_recovery() {
        let msg = Error::PcrsChanged {
            changed: vec![7, 14],
        }
        .to_string();
        assert!(msg.contains("PCR(s) 7, 14"), "{msg}");
        assert!(
            msg.contains("passmesh keystore reseal --pcrs none"),
            "{msg}"
        );
    }

    #[test]
    fn choice_parses() {
        assert_eq!("tpm".parse::<Choice>(), Ok(Choice::Tpm));
        assert!("TPM2".parse::<Choice>().is_err());
    }
}
