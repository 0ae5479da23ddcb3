//! The TPM backend: secrets sealed as KeyedHash objects under a primary key in the owner hierarchy.
//!
//! The primary key is an ECC P-256 restricted decryption key from a fixed template, re-created on every start:
//! for a given TPM (owner seed) the same template always yields the same key, so nothing about it is stored.
//! A sealed blob holds the sealed object's public and private parts (the private part is encrypted by the TPM
//! under the primary key) and, when PCRs bind the seal, their indices and the values they had when sealing, so
//! a refusal can name the PCRs that changed. The TPM is only used while the daemon starts, migrates or
//! reseals; every handle is flushed before the backend is dropped.

use std::time::Duration;

use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::{CapabilityType, PropertyTag, SessionType, Tss2ResponseCodeKind};
use tss_esapi::handles::{KeyHandle, ObjectHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    CapabilityData, Digest, EccPoint, KeyedHashScheme, PcrSelectionList, PcrSelectionListBuilder,
    PcrSlot, Private, Public, PublicBuilder, PublicEccParametersBuilder, PublicKeyedHashParameters,
    SensitiveData, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::{Context, Error as TssError};
use zeroize::Zeroizing;

use super::Error;

/// Format tag of a TPM-sealed blob.
pub(super) const TAG: &[u8] = b"passmesh-tpm-v1\0";
/// Attempts for one TPM command that fails transiently (TPM_RC_RETRY, YIELDED, TESTING).
const ATTEMPTS: u32 = 5;
/// Backoff before the first retry; doubled each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
/// Highest PCR index of the sha256 bank that may bind a seal.
pub const MAX_PCR: u8 = 23;

/// What `status` shows about the TPM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// TPM2_PT_MANUFACTURER as up to 4 ASCII characters (e.g. `IBM` for swtpm).
    pub manufacturer: String,
    /// TPM2_PT_FIRMWARE_VERSION_1 and _2 as `a.b.c.d` (the high and low 16 bits of each).
    pub firmware: String,
}

/// An open connection to the TPM with the primary key loaded.
pub struct Tpm {
    context: Context,
    primary: KeyHandle,
    info: Info,
}

impl std::fmt::Debug for Tpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tpm").field("info", &self.info).finish()
    }
}

/// The parts of a TPM blob.
struct Parsed<'a> {
    pcrs: Vec<(u8, &'a [u8])>,
    public: &'a [u8],
    private: &'a [u8],
}

fn micros(since: std::time::Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn tss(what: &str, e: TssError) -> Error {
    Error::Tpm(format!("{what}: {e}"))
}

fn is_transient(e: &TssError) -> bool {
    matches!(
        e,
        TssError::Tss2Error(rc) if matches!(
            rc.kind(),
            Some(Tss2ResponseCodeKind::Retry | Tss2ResponseCodeKind::Yielded | Tss2ResponseCodeKind::Testing)
        )
    )
}

/// Runs `op` until it succeeds, fails for good, or [`ATTEMPTS`] transient failures happened.
fn retry<T>(
    context: &mut Context,
    mut op: impl FnMut(&mut Context) -> Result<T, TssError>,
) -> Result<T, TssError> {
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        match op(context) {
            Err(e) if is_transient(&e) && attempt < ATTEMPTS => {
                tracing::debug!(error = %e, attempt, "transient TPM error, retrying");
                std::thread::sleep(backoff);
                backoff *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

fn primary_template() -> Result<Public, TssError> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_restricted(true)
        .with_decrypt(true)
        .with_no_da(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

fn sealed_template(policy: Option<Digest>) -> Result<Public, TssError> {
    // No userWithAuth when a policy binds the object: then only the policy session can unseal it.
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_no_da(true)
        .with_user_with_auth(policy.is_none())
        .build()?;
    let mut builder = PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default());
    if let Some(policy) = policy {
        builder = builder.with_auth_policy(policy);
    }
    builder.build()
}

fn selection(pcrs: &[u8]) -> Result<PcrSelectionList, Error> {
    let slots = pcrs
        .iter()
        .map(|&p| {
            PcrSlot::try_from(1u32 << p).map_err(|_| Error::Tpm(format!("PCR {p} does not exist")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(|e| tss("PCR selection", e))
}

/// Formats TPM2_PT_MANUFACTURER: four ASCII bytes, trailing NULs and spaces dropped.
pub fn manufacturer_name(raw: u32) -> String {
    raw.to_be_bytes()
        .iter()
        .filter(|b| b.is_ascii_graphic())
        .map(|&b| char::from(b))
        .collect()
}

/// Formats TPM2_PT_FIRMWARE_VERSION_1/2 as `a.b.c.d`.
pub fn firmware_version(v1: u32, v2: u32) -> String {
    format!("{}.{}.{}.{}", v1 >> 16, v1 & 0xffff, v2 >> 16, v2 & 0xffff)
}

impl Tpm {
    /// Connects through `tcti`, flushes transient objects and sessions left behind (a TPM without a resource
    /// manager keeps them after their process died) and creates the primary key.
    pub fn open(tcti: &str) -> Result<Tpm, Error> {
        let started = std::time::Instant::now();
        let conf: TctiNameConf = tcti
            .parse()
            .map_err(|e| Error::NoTpm(format!("invalid TCTI {tcti:?}: {e}")))?;
        if let TctiNameConf::Device(_) = conf {
            let path = tcti.strip_prefix("device:").unwrap_or("/dev/tpmrm0");
            if !std::path::Path::new(path).exists() {
                return Err(Error::NoTpm(format!("no TPM device at {path}")));
            }
        }
        let mut context = connect(conf, tcti)?;
        flush_leftovers(&mut context);
        let info = read_info(&mut context).map_err(|e| Error::NoTpm(format!("{tcti}: {e}")))?;
        let template = primary_template().map_err(|e| tss("primary template", e))?;
        let primary = retry(&mut context, |ctx| {
            ctx.execute_with_nullauth_session(|ctx| {
                ctx.create_primary(Hierarchy::Owner, template.clone(), None, None, None, None)
            })
        })
        .map_err(|e| Error::NoTpm(format!("{tcti}: cannot create the primary key: {e}")))?
        .key_handle;
        tracing::info!(
            us = micros(started),
            "TPM ready (connected, leftovers flushed, primary key created)"
        );
        Ok(Tpm {
            context,
            primary,
            info,
        })
    }

    /// Manufacturer and firmware.
    pub fn info(&self) -> &Info {
        &self.info
    }

    /// Seals `secret`; with `pcrs` non-empty, only a policy session with those sha256 PCRs at their current
    /// values can unseal it.
    pub fn seal(&mut self, secret: &[u8], pcrs: &[u8]) -> Result<Vec<u8>, Error> {
        let started = std::time::Instant::now();
        let sensitive = SensitiveData::try_from(secret.to_vec())
            .map_err(|e| tss("the secret is too large to seal", e))?;
        let mut values = Vec::new();
        let policy = if pcrs.is_empty() {
            None
        } else {
            values = self.read_pcrs(pcrs)?;
            Some(self.pcr_policy(pcrs, SessionType::Trial)?)
        };
        let template = sealed_template(policy.as_ref().map(|(_, d)| d.clone()))
            .map_err(|e| tss("sealed object template", e))?;
        if let Some((session, _)) = policy {
            self.flush_session(session);
        }
        let primary = self.primary;
        let created = retry(&mut self.context, |ctx| {
            ctx.execute_with_nullauth_session(|ctx| {
                ctx.create(
                    primary,
                    template.clone(),
                    None,
                    Some(sensitive.clone()),
                    None,
                    None,
                )
            })
        })
        .map_err(|e| tss("sealing", e))?;
        let public = created
            .out_public
            .marshall()
            .map_err(|e| tss("marshalling the sealed object", e))?;
        let blob = encode(pcrs, &values, &public, created.out_private.value())?;
        tracing::info!(us = micros(started), "sealed a secret with the TPM");
        Ok(blob)
    }

    /// Unseals a blob made by [`Tpm::seal`] on this TPM.
    pub fn unseal(&mut self, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        let started = std::time::Instant::now();
        let parsed = parse(blob)?;
        let public = Public::unmarshall(parsed.public).map_err(|_| Error::Damaged)?;
        let private = Private::try_from(parsed.private.to_vec()).map_err(|_| Error::Damaged)?;
        let primary = self.primary;
        let loaded = retry(&mut self.context, |ctx| {
            ctx.execute_with_nullauth_session(|ctx| {
                ctx.load(primary, private.clone(), public.clone())
            })
        })
        .map_err(|e| match e {
            TssError::Tss2Error(rc)
                if matches!(
                    rc.kind(),
                    Some(Tss2ResponseCodeKind::Integrity | Tss2ResponseCodeKind::Size)
                ) =>
            {
                Error::OtherTpm
            }
            e => tss("loading the sealed object", e),
        })?;
        let pcrs: Vec<u8> = parsed.pcrs.iter().map(|(p, _)| *p).collect();
        let result = if pcrs.is_empty() {
            retry(&mut self.context, |ctx| {
                ctx.execute_with_nullauth_session(|ctx| ctx.unseal(loaded.into()))
            })
            .map_err(|e| tss("unsealing", e))
        } else {
            self.unseal_with_policy(loaded, &parsed)
        };
        if let Err(e) = self.context.flush_context(loaded.into()) {
            tracing::warn!(error = %e, "cannot flush the sealed object");
        }
        let secret = Zeroizing::new(result?.value().to_vec());
        tracing::info!(us = micros(started), "unsealed a secret with the TPM");
        Ok(secret)
    }

    fn unseal_with_policy(
        &mut self,
        loaded: KeyHandle,
        parsed: &Parsed<'_>,
    ) -> Result<SensitiveData, Error> {
        let pcrs: Vec<u8> = parsed.pcrs.iter().map(|(p, _)| *p).collect();
        // Compare first so that the refusal can name what changed; the TPM's policy check stays the authority.
        let now = self.read_pcrs(&pcrs)?;
        let changed: Vec<u8> = parsed
            .pcrs
            .iter()
            .zip(now.chunks(32))
            .filter(|((_, then), now)| then != now)
            .map(|((p, _), _)| *p)
            .collect();
        if !changed.is_empty() {
            return Err(Error::PcrsChanged { changed });
        }
        let (session, _) = self.pcr_policy(&pcrs, SessionType::Policy)?;
        let result = retry(&mut self.context, |ctx| {
            ctx.execute_with_session(Some(session), |ctx| ctx.unseal(loaded.into()))
        });
        self.flush_session(session);
        result.map_err(|e| match e {
            TssError::Tss2Error(rc) if rc.kind() == Some(Tss2ResponseCodeKind::PolicyFail) => {
                Error::PcrsChanged { changed: pcrs }
            }
            e => tss("unsealing", e),
        })
    }

    /// Starts a session of `kind` (trial or policy) and runs PolicyPCR over the current values of `pcrs`.
    fn pcr_policy(
        &mut self,
        pcrs: &[u8],
        kind: SessionType,
    ) -> Result<(AuthSession, Digest), Error> {
        let selection = selection(pcrs)?;
        let session = retry(&mut self.context, |ctx| {
            ctx.start_auth_session(
                None,
                None,
                None,
                kind,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
        })
        .map_err(|e| tss("starting a policy session", e))?
        .ok_or_else(|| Error::Tpm("the TPM returned no session".into()))?;
        let digest = (|| -> Result<Digest, TssError> {
            let policy = PolicySession::try_from(session)?;
            retry(&mut self.context, |ctx| {
                ctx.policy_pcr(policy, Digest::default(), selection.clone())
            })?;
            retry(&mut self.context, |ctx| ctx.policy_get_digest(policy))
        })();
        match digest {
            Ok(d) => Ok((session, d)),
            Err(e) => {
                self.flush_session(session);
                Err(tss("PolicyPCR", e))
            }
        }
    }

    fn flush_session(&mut self, session: AuthSession) {
        let handle = ObjectHandle::from(tss_esapi::handles::SessionHandle::from(session));
        if let Err(e) = self.context.flush_context(handle) {
            tracing::warn!(error = %e, "cannot flush a TPM session");
        }
    }

    /// The sha256 values of `pcrs`, 32 bytes each, in order.
    fn read_pcrs(&mut self, pcrs: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(pcrs.len() * 32);
        for &p in pcrs {
            let one = selection(&[p])?;
            let (_, _, digests) = retry(&mut self.context, |ctx| {
                ctx.execute_without_session(|ctx| ctx.pcr_read(one.clone()))
            })
            .map_err(|e| tss("reading PCRs", e))?;
            let value = digests
                .value()
                .first()
                .filter(|d| d.value().len() == 32)
                .ok_or_else(|| Error::Tpm(format!("the TPM has no sha256 value for PCR {p}")))?;
            out.extend_from_slice(value.value());
        }
        Ok(out)
    }
}

impl Drop for Tpm {
    fn drop(&mut self) {
        if let Err(e) = self.context.flush_context(self.primary.into()) {
            tracing::warn!(error = %e, "cannot flush the TPM primary key");
        }
    }
}

/// Connects, retrying briefly: a TPM simulator or a resource manager that is starting refuses for a moment.
fn connect(conf: TctiNameConf, tcti: &str) -> Result<Context, Error> {
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        match Context::new(conf.clone()) {
            Ok(c) => return Ok(c),
            Err(e) if attempt < ATTEMPTS => {
                tracing::debug!(error = %e, attempt, "cannot reach the TPM yet, retrying");
                std::thread::sleep(backoff);
                backoff *= 2;
                attempt += 1;
            }
            Err(e) => return Err(Error::NoTpm(format!("cannot reach a TPM at {tcti}: {e}"))),
        }
    }
}

/// Flushes every transient object and loaded session on the TPM. Only safe because the daemon is the TPM's
/// only user when it has no resource manager; behind a resource manager (`/dev/tpmrm0`) the list is ours only.
fn flush_leftovers(context: &mut Context) {
    use tss_esapi::constants::tss::{TPM2_LOADED_SESSION_FIRST, TPM2_TRANSIENT_FIRST};
    // Loaded sessions are listed from the HMAC range on and include policy sessions (0x03…).
    for (first, types, what) in [
        (TPM2_TRANSIENT_FIRST, &[0x80u32][..], "transient objects"),
        (TPM2_LOADED_SESSION_FIRST, &[0x02, 0x03][..], "sessions"),
    ] {
        let before = list_handles(context, first, types);
        for &handle in &before {
            // For sessions tss-esapi reports a bookkeeping error after the TPM flushed them, so success is
            // judged by listing the handles again.
            let _ = context
                .tr_from_tpm_public(handle)
                .and_then(|h| context.flush_context(h));
        }
        let after = list_handles(context, first, types);
        let flushed = before.iter().filter(|h| !after.contains(h)).count();
        if flushed > 0 {
            tracing::info!(
                flushed,
                "flushed TPM {what} left behind by an earlier process"
            );
        }
        if !after.is_empty() {
            tracing::warn!(
                left = after.len(),
                "cannot flush TPM {what} left behind by an earlier process"
            );
        }
    }
}

fn list_handles(context: &mut Context, first: u32, types: &[u32]) -> Vec<TpmHandle> {
    match retry(context, |ctx| {
        ctx.get_capability(CapabilityType::Handles, first, 64)
    }) {
        Ok((CapabilityData::Handles(list), _)) => list
            .into_inner()
            .into_iter()
            // The TPM lists from `first` on; keep only handles of the asked types.
            .filter(|h| types.contains(&(u32::from(*h) >> 24)))
            .collect(),
        Ok(_) => Vec::new(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list TPM handles");
            Vec::new()
        }
    }
}

fn read_info(context: &mut Context) -> Result<Info, TssError> {
    let manufacturer = context
        .get_tpm_property(PropertyTag::Manufacturer)?
        .unwrap_or(0);
    let v1 = context
        .get_tpm_property(PropertyTag::FirmwareVersion1)?
        .unwrap_or(0);
    let v2 = context
        .get_tpm_property(PropertyTag::FirmwareVersion2)?
        .unwrap_or(0);
    Ok(Info {
        manufacturer: manufacturer_name(manufacturer),
        firmware: firmware_version(v1, v2),
    })
}

// Blob layout after TAG: n (u8), n PCR indices, n × 32 bytes of PCR values at seal time,
// public (u16 BE length + bytes), private (u16 BE length + bytes).
fn encode(pcrs: &[u8], values: &[u8], public: &[u8], private: &[u8]) -> Result<Vec<u8>, Error> {
    let too_big = |_| Error::Tpm("sealed object too large".into());
    let mut out = TAG.to_vec();
    out.push(u8::try_from(pcrs.len()).map_err(too_big)?);
    out.extend_from_slice(pcrs);
    out.extend_from_slice(values);
    for part in [public, private] {
        out.extend_from_slice(&u16::try_from(part.len()).map_err(too_big)?.to_be_bytes());
        out.extend_from_slice(part);
    }
    Ok(out)
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], Error> {
    let (head, tail) = rest.split_at_checked(n).ok_or(Error::Damaged)?;
    *rest = tail;
    Ok(head)
}

fn parse(blob: &[u8]) -> Result<Parsed<'_>, Error> {
    let mut rest = blob
        .strip_prefix(TAG)
        .ok_or(Error::WrongFormat { backend: "tpm" })?;
    let n = usize::from(*take(&mut rest, 1)?.first().ok_or(Error::Damaged)?);
    let indices = take(&mut rest, n)?;
    if indices.iter().any(|&p| p > MAX_PCR) {
        return Err(Error::Damaged);
    }
    let mut pcrs = Vec::with_capacity(n);
    for &p in indices {
        pcrs.push((p, take(&mut rest, 32)?));
    }
    let mut part = || -> Result<&[u8], Error> {
        let len = take(&mut rest, 2)?;
        let len = u16::from_be_bytes([len[0], len[1]]);
        take(&mut rest, usize::from(len))
    };
    let public = part()?;
    let private = part()?;
    if !rest.is_empty() {
        return Err(Error::Damaged);
    }
    Ok(Parsed {
        pcrs,
        public,
        private,
    })
}

/// The PCRs a TPM blob is bound to (empty when none), `None` when `blob` is not a TPM blob or is damaged.
pub fn bound_pcrs(blob: &[u8]) -> Option<Vec<u8>> {
    parse(blob)
        .ok()
        .map(|p| p.pcrs.iter().map(|(i, _)| *i).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_layout_round_trips_and_rejects_damage() {
        let values = [7u8; 64];
        let blob = encode(&[7, 14], &values, b"pub", b"private").unwrap();
        let p = parse(&blob).unwrap();
        assert_eq!(p.pcrs, vec![(7, &values[..32]), (14, &values[32..])]);
        assert_eq!((p.public, p.private), (&b"pub"[..], &b"private"[..]));
        assert_eq!(bound_pcrs(&blob), Some(vec![7, 14]));
        for cut in 0..blob.len() {
            assert!(parse(&blob[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = blob.clone();
        longer.push(0);
        assert!(matches!(parse(&longer), Err(Error::Damaged)));
        assert!(matches!(
            parse(b"passmesh-sw-v1\0xx"),
            Err(Error::WrongFormat { .. })
        ));
    }

    #[test]
    fn tpm_properties_format() {
        assert_eq!(manufacturer_name(u32::from_be_bytes(*b"IBM\0")), "IBM");
        assert_eq!(manufacturer_name(u32::from_be_bytes(*b"IFX\0")), "IFX");
        assert_eq!(firmware_version(0x0007_0055, 0x11cb_0000), "7.85.4555.0");
    }

    #[test]
    fn unreachable_tcti_is_no_tpm() {
        // Port 1 on loopback: nothing listens there.
        let err = Tpm::open("swtpm:host=127.0.0.1,port=1").unwrap_err();
        assert!(matches!(err, Error::NoTpm(_)), "{err}");
        let err = Tpm::open("device:/nonexistent/tpm").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tpm"), "{err}");
    }
}
