//! The WebAuthn authenticator and client-side steps for socket callers: checks on the options, the
//! clientDataJSON, authenticator data, `none` attestation, and ES256 assertions.
//!
//! Everything here is pure computation on checked inputs; the vault, the PIN and I/O live elsewhere.

use p256::ecdsa::{Signature, SigningKey, signature::Signer};
use p256::elliptic_curve::Generate;
use p256::pkcs8::EncodePublicKey;
use passmesh_crdt::NewPasskey;
use passmesh_ipc::{
    AuthenticationResponseJson, AuthenticatorAssertionResponseJson,
    AuthenticatorAttestationResponseJson, Base64Url, ClientExtensionResults, CredProps, ErrorBody,
    ErrorName, PublicKeyCredentialCreationOptionsJson, PublicKeyCredentialRequestOptionsJson,
    RegistrationResponseJson,
};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::cbor;
use crate::origin::Checked;

/// Passmesh's AAGUID, the same on every device and every credential (attestation `none` still names the model).
pub const AAGUID: [u8; 16] = [
    0x5a, 0x8e, 0x0c, 0x3b, 0x71, 0x2f, 0x4d, 0x94, 0xa6, 0x1e, 0x9b, 0x37, 0xc2, 0x50, 0xd8, 0x14,
];

/// COSE algorithm identifier of ES256.
pub const ES256: i64 = -7;

/// Length of the credential ids this authenticator makes.
pub const CREDENTIAL_ID_LEN: usize = 16;

/// Longest user name or display name stored, in bytes (CTAP2 lets authenticators truncate to 64).
pub const MAX_NAME_BYTES: usize = 64;

/// `s` cut to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Authenticator data flag bits.
pub mod flags {
    /// User present.
    pub const UP: u8 = 0x01;
    /// User verified.
    pub const UV: u8 = 0x04;
    /// Backup eligible.
    pub const BE: u8 = 0x08;
    /// Backed up.
    pub const BS: u8 = 0x10;
    /// Attested credential data included.
    pub const AT: u8 = 0x40;
    /// Extension data included.
    pub const ED: u8 = 0x80;
}

/// The caller's `userVerification` preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserVerification {
    /// Fail unless the user is verified.
    Required,
    /// Verify if possible.
    Preferred,
    /// Don't bother.
    Discouraged,
}

impl UserVerification {
    /// Parses the WebAuthn enum; absent or unknown values mean `preferred`, as the spec says.
    pub fn parse(s: Option<&str>) -> UserVerification {
        match s {
            Some("required") => UserVerification::Required,
            Some("discouraged") => UserVerification::Discouraged,
            _ => UserVerification::Preferred,
        }
    }
}

fn err(name: ErrorName, message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(name, message)
}

/// Checks creation options beyond the origin: algorithms, user id, attachment.
pub fn check_creation(options: &PublicKeyCredentialCreationOptionsJson) -> Result<(), ErrorBody> {
    let params = &options.pub_key_cred_params;
    // An empty list means "ES256 and RS256" (WebAuthn §5.1.3 step 10).
    let es256 = params.is_empty()
        || params
            .iter()
            .any(|p| p.type_ == "public-key" && p.alg == ES256);
    if !es256 {
        return Err(err(
            ErrorName::NotSupportedError,
            "none of the requested algorithms is supported: Passmesh creates ES256 (-7) keys",
        ));
    }
    let uid = options.user.id.as_bytes().len();
    if !(1..=64).contains(&uid) {
        return Err(err(
            ErrorName::TypeError,
            format!("user.id must be 1 to 64 bytes, got {uid}"),
        ));
    }
    if options.challenge.as_bytes().is_empty() {
        return Err(err(ErrorName::TypeError, "challenge must not be empty"));
    }
    if let Some(sel) = &options.authenticator_selection
        && sel.authenticator_attachment.as_deref() == Some("cross-platform")
    {
        return Err(err(
            ErrorName::NotSupportedError,
            "the request asks for a cross-platform authenticator; Passmesh is a platform authenticator",
        ));
    }
    Ok(())
}

/// Builds clientDataJSON exactly as a browser does (member order type, challenge, origin, crossOrigin).
pub fn client_data_json(kind: &str, challenge: &[u8], origin: &str) -> Vec<u8> {
    let origin = serde_json::to_string(origin).unwrap_or_else(|_| "\"\"".to_owned());
    format!(
        r#"{{"type":"{kind}","challenge":"{}","origin":{origin},"crossOrigin":false}}"#,
        Base64Url::encode(challenge)
    )
    .into_bytes()
}

fn flag_byte(uv: bool, backed_up: bool) -> u8 {
    let mut f = flags::UP | flags::BE;
    if uv {
        f |= flags::UV;
    }
    if backed_up {
        f |= flags::BS;
    }
    f
}

/// Authenticator data: rpIdHash ‖ flags ‖ signCount (always 0: synced credentials) ‖ optional attested data.
pub fn authenticator_data(rp_id: &str, flag_bits: u8, attested: Option<(&[u8], &[u8])>) -> Vec<u8> {
    let mut out = Vec::with_capacity(37 + attested.map_or(0, |(c, k)| 18 + c.len() + k.len()));
    out.extend_from_slice(&Sha256::digest(rp_id.as_bytes()));
    out.push(flag_bits | if attested.is_some() { flags::AT } else { 0 });
    out.extend_from_slice(&0u32.to_be_bytes());
    if let Some((cred_id, cose_key)) = attested {
        out.extend_from_slice(&AAGUID);
        out.extend_from_slice(&(cred_id.len() as u16).to_be_bytes());
        out.extend_from_slice(cred_id);
        out.extend_from_slice(cose_key);
    }
    out
}

/// A freshly made credential: what goes into the vault and what goes back to the caller.
pub struct Made {
    /// The record to store.
    pub passkey: NewPasskey,
    /// The caller's answer.
    pub response: RegistrationResponseJson,
}

/// authenticatorMakeCredential with `none` attestation: a new ES256 key pair and its registration response.
pub fn make_credential(
    checked: &Checked,
    options: &PublicKeyCredentialCreationOptionsJson,
    uv: bool,
    now_ms: u64,
) -> Result<Made, ErrorBody> {
    let key = SigningKey::generate();
    let mut credential_id = vec![0u8; CREDENTIAL_ID_LEN];
    rand::fill(credential_id.as_mut_slice());

    let point = key.verifying_key().to_sec1_point(false);
    let (x, y) = match point.as_bytes() {
        [4, rest @ ..] if rest.len() == 64 => {
            let mut x = [0u8; 32];
            let mut y = [0u8; 32];
            x.copy_from_slice(&rest[..32]);
            y.copy_from_slice(&rest[32..]);
            (x, y)
        }
        _ => {
            return Err(err(
                ErrorName::UnknownError,
                "unexpected public key encoding",
            ));
        }
    };
    let cose = cbor::cose_es256_key(&x, &y);
    let spki = key
        .verifying_key()
        .to_public_key_der()
        .map_err(|e| err(ErrorName::UnknownError, format!("public key encoding: {e}")))?;

    let auth_data = authenticator_data(
        &checked.rp_id,
        flag_byte(uv, false),
        Some((&credential_id, &cose)),
    );
    let client_data = client_data_json(
        "webauthn.create",
        options.challenge.as_bytes(),
        &checked.origin,
    );
    let wants_cred_props = options.extensions.cred_props == Some(true);

    let response = RegistrationResponseJson {
        id: Base64Url::encode(&credential_id),
        raw_id: Base64Url(credential_id.clone()),
        response: AuthenticatorAttestationResponseJson {
            client_data_json: Base64Url(client_data),
            attestation_object: Base64Url(cbor::attestation_object_none(&auth_data)),
            authenticator_data: Base64Url(auth_data),
            transports: vec!["internal".to_owned()],
            public_key: Some(Base64Url(spki.as_bytes().to_vec())),
            public_key_algorithm: ES256,
        },
        authenticator_attachment: Some("platform".to_owned()),
        client_extension_results: ClientExtensionResults {
            // Every Passmesh credential is discoverable.
            cred_props: wants_cred_props.then_some(CredProps { rk: true }),
        },
        type_: "public-key".to_owned(),
    };
    let passkey = NewPasskey {
        credential_id,
        rp_id: checked.rp_id.clone(),
        user_handle: options.user.id.as_bytes().to_vec(),
        user_name: truncate(&options.user.name, MAX_NAME_BYTES),
        user_display_name: truncate(&options.user.display_name, MAX_NAME_BYTES),
        private_key: {
            let mut scalar = key.to_bytes();
            let copy = Zeroizing::new(scalar.to_vec());
            zeroize::Zeroize::zeroize(scalar.as_mut_slice());
            copy
        },
        created_at_ms: now_ms,
    };
    Ok(Made { passkey, response })
}

/// What the vault hands out to sign an assertion.
pub struct Credential {
    /// The credential id.
    pub credential_id: Vec<u8>,
    /// The user handle stored at registration.
    pub user_handle: Vec<u8>,
    /// The signing key (its secret scalar is zeroized when the last reference drops).
    pub signing_key: std::sync::Arc<SigningKey>,
    /// Whether another device is known to hold it (BS flag).
    pub backed_up: bool,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("credential_id", &Base64Url::encode(&self.credential_id))
            .finish_non_exhaustive()
    }
}

/// authenticatorGetAssertion: signs authenticatorData ‖ SHA-256(clientDataJSON) with the credential's key.
pub fn get_assertion(
    checked: &Checked,
    options: &PublicKeyCredentialRequestOptionsJson,
    credential: &Credential,
    uv: bool,
) -> Result<AuthenticationResponseJson, ErrorBody> {
    if options.challenge.as_bytes().is_empty() {
        return Err(err(ErrorName::TypeError, "challenge must not be empty"));
    }
    let auth_data = authenticator_data(&checked.rp_id, flag_byte(uv, credential.backed_up), None);
    let client_data = client_data_json(
        "webauthn.get",
        options.challenge.as_bytes(),
        &checked.origin,
    );
    let mut signed = Vec::with_capacity(auth_data.len() + 32);
    signed.extend_from_slice(&auth_data);
    signed.extend_from_slice(&Sha256::digest(&client_data));
    let signature: Signature = credential.signing_key.sign(&signed);
    Ok(AuthenticationResponseJson {
        id: Base64Url::encode(&credential.credential_id),
        raw_id: Base64Url(credential.credential_id.clone()),
        response: AuthenticatorAssertionResponseJson {
            client_data_json: Base64Url(client_data),
            authenticator_data: Base64Url(auth_data),
            signature: Base64Url(signature.to_der().to_bytes().to_vec()),
            user_handle: Some(Base64Url(credential.user_handle.clone())),
        },
        authenticator_attachment: Some("platform".to_owned()),
        client_extension_results: ClientExtensionResults::default(),
        type_: "public-key".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::{VerifyingKey, signature::Verifier};
    use p256::pkcs8::DecodePublicKey;

    fn creation_options(json: serde_json::Value) -> PublicKeyCredentialCreationOptionsJson {
        serde_json::from_value(json).unwrap()
    }

    fn base_options() -> serde_json::Value {
        serde_json::json!({
            "rp": {"id": "example.com", "name": "Example"},
            "user": {"id": "dXNlcjE", "name": "alice", "displayName": "Alice"},
            "challenge": "Y2hhbGxlbmdl",
            "pubKeyCredParams": [{"type": "public-key", "alg": -7}],
            "extensions": {"credProps": true}
        })
    }

    fn checked() -> Checked {
        crate::origin::check("https://login.example.com", Some("example.com")).unwrap()
    }

    #[test]
    fn client_data_is_browser_shaped_and_escaped() {
        let cd = client_data_json("webauthn.get", b"\x01\x02", "https://a\"b");
        let v: serde_json::Value = serde_json::from_slice(&cd).unwrap();
        assert_eq!(v["type"], "webauthn.get");
        assert_eq!(v["challenge"], "AQI");
        assert_eq!(v["origin"], "https://a\"b");
        assert_eq!(v["crossOrigin"], false);
    }

    #[test]
    fn registration_then_assertion_verify_with_the_registered_key() {
        let opts = creation_options(base_options());
        check_creation(&opts).unwrap();
        let made = make_credential(&checked(), &opts, false, 1).unwrap();
        let r = &made.response;
        let ad = r.response.authenticator_data.as_bytes();
        assert_eq!(&ad[..32], Sha256::digest(b"example.com").as_slice());
        assert_eq!(ad[32], flags::UP | flags::BE | flags::AT);
        assert_eq!(&ad[33..37], &[0, 0, 0, 0]);
        assert_eq!(&ad[37..53], &AAGUID);
        assert_eq!(
            r.client_extension_results.cred_props,
            Some(CredProps { rk: true })
        );
        assert_eq!(made.passkey.user_handle, b"user1");

        let spki = r.response.public_key.as_ref().unwrap();
        let vk = VerifyingKey::from_public_key_der(spki.as_bytes()).unwrap();
        let req: PublicKeyCredentialRequestOptionsJson =
            serde_json::from_value(serde_json::json!({"challenge": "AAEC", "rpId": "example.com"}))
                .unwrap();
        let cred = Credential {
            credential_id: made.passkey.credential_id.clone(),
            user_handle: made.passkey.user_handle.clone(),
            signing_key: std::sync::Arc::new(
                SigningKey::from_slice(&made.passkey.private_key).unwrap(),
            ),
            backed_up: false,
        };
        let a = get_assertion(&checked(), &req, &cred, true).unwrap();
        let ad = a.response.authenticator_data.as_bytes();
        assert_eq!(ad.len(), 37);
        assert_eq!(ad[32], flags::UP | flags::UV | flags::BE);
        let mut signed = ad.to_vec();
        signed.extend_from_slice(&Sha256::digest(a.response.client_data_json.as_bytes()));
        let sig = Signature::from_der(a.response.signature.as_bytes()).unwrap();
        vk.verify(&signed, &sig).unwrap();
        // The same signature must not verify other data.
        signed[0] ^= 1;
        assert!(vk.verify(&signed, &sig).is_err());
        assert!(!format!("{cred:?}").contains("private"));
    }

    #[test]
    fn names_truncate_on_char_boundaries() {
        assert_eq!(truncate("alice", 64), "alice");
        assert_eq!(truncate(&"é".repeat(40), 64), "é".repeat(32));
        assert_eq!(truncate("aé", 2), "a");
    }

    #[test]
    fn creation_checks() {
        let mut o = base_options();
        o["pubKeyCredParams"] = serde_json::json!([{"type": "public-key", "alg": -257}]);
        assert_eq!(
            check_creation(&creation_options(o)).unwrap_err().name,
            ErrorName::NotSupportedError
        );
        let mut o = base_options();
        o["pubKeyCredParams"] = serde_json::json!([]);
        assert!(check_creation(&creation_options(o)).is_ok());
        let mut o = base_options();
        o["user"]["id"] = serde_json::json!("");
        assert_eq!(
            check_creation(&creation_options(o)).unwrap_err().name,
            ErrorName::TypeError
        );
    }
}
