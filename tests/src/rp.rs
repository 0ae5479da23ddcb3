//! A relying party for tests, backed by webauthn-rs-core.
//!
//! It produces the options a website would hand to `navigator.credentials.create/get`,
//! converted through JSON into Passmesh's option types (exactly what a browser extension
//! would forward), and verifies the daemon's answers as a server would: challenge, origin,
//! rpIdHash, flags, attestation and signature. Nothing here trusts the daemon.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::pkcs8::DecodePublicKey as _;
use passmesh_ipc::{
    AuthenticationResponseJson, Base64Url, PublicKeyCredentialCreationOptionsJson,
    PublicKeyCredentialRequestOptionsJson, RegistrationResponseJson,
};
use serde_json::Value;
use webauthn_rs_core::WebauthnCore;
use webauthn_rs_core::proto::{
    AuthenticationState, COSEKeyType, PublicKeyCredential, RegisterPublicKeyCredential,
    RequestRegistrationExtensions,
};

pub use webauthn_rs_core::proto::{
    AttestationFormat, AuthenticationResult, COSEAlgorithm, Credential, ParsedAttestationData,
    RegistrationState, UserVerificationPolicy,
};

/// A user account at the relying party.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user handle (`user.id`), opaque bytes.
    pub id: Vec<u8>,
    /// `user.name`.
    pub name: String,
    /// `user.displayName`.
    pub display_name: String,
}

impl User {
    /// A user whose handle and display name derive from `name`.
    pub fn new(name: &str) -> User {
        User {
            id: format!("handle-of-{name}").into_bytes(),
            name: name.to_owned(),
            display_name: format!("{name} (display)"),
        }
    }
}

/// What the relying party asks for at registration.
#[derive(Debug, Clone)]
pub struct RegistrationOptions {
    /// `authenticatorSelection.userVerification`.
    pub user_verification: UserVerificationPolicy,
    /// Credential ids for `excludeCredentials`.
    pub exclude: Vec<Vec<u8>>,
    /// `pubKeyCredParams`, in order of preference.
    pub algorithms: Vec<COSEAlgorithm>,
    /// Whether to request the `credProps` extension.
    pub cred_props: bool,
}

impl Default for RegistrationOptions {
    fn default() -> Self {
        Self {
            user_verification: UserVerificationPolicy::Preferred,
            exclude: Vec::new(),
            algorithms: COSEAlgorithm::secure_algs(),
            cred_props: true,
        }
    }
}

/// An authentication ceremony in progress.
#[derive(Debug, Clone)]
pub struct PendingAuthentication {
    state: AuthenticationState,
    discoverable: bool,
}

/// A WebAuthn relying party with one rpId and one allowed origin.
#[derive(Debug, Clone)]
pub struct RelyingParty {
    core: WebauthnCore,
    rp_id: String,
    origin: String,
}

impl RelyingParty {
    /// A relying party for `rp_id` accepting responses from exactly `origin`.
    pub fn new(rp_id: &str, origin: &str) -> anyhow::Result<RelyingParty> {
        let url = url::Url::parse(origin).with_context(|| format!("bad origin {origin}"))?;
        let core = WebauthnCore::new_unsafe_experts_only(
            "Passmesh test RP",
            rp_id,
            vec![url],
            Duration::from_secs(60),
            None,
            None,
        );
        Ok(RelyingParty {
            core,
            rp_id: rp_id.to_owned(),
            origin: origin.to_owned(),
        })
    }

    /// The rpId.
    pub fn rp_id(&self) -> &str {
        &self.rp_id
    }

    /// The origin the RP's web page is served from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Creation options for `user`, as Passmesh's JSON type, and the state to verify with.
    pub fn begin_registration(
        &self,
        user: &User,
        options: &RegistrationOptions,
    ) -> anyhow::Result<(PublicKeyCredentialCreationOptionsJson, RegistrationState)> {
        let extensions = RequestRegistrationExtensions {
            cred_props: options.cred_props.then_some(true),
            uvm: None,
            ..RequestRegistrationExtensions::default()
        };
        let builder = self
            .core
            .new_challenge_register_builder(&user.id, &user.name, &user.display_name)
            .map_err(|e| anyhow!("webauthn-rs refused the user: {e}"))?
            .user_verification_policy(options.user_verification)
            .exclude_credentials((!options.exclude.is_empty()).then(|| options.exclude.clone()))
            .credential_algorithms(options.algorithms.clone())
            .require_resident_key(true)
            .extensions(Some(extensions));
        let (challenge, state) = self
            .core
            .generate_challenge_register(builder)
            .map_err(|e| anyhow!("webauthn-rs cannot make a challenge: {e}"))?;
        let json = serde_json::to_value(&challenge.public_key)?;
        let options = serde_json::from_value(json.clone()).with_context(|| {
            format!("passmesh-ipc cannot parse webauthn-rs creation options {json}")
        })?;
        Ok((options, state))
    }

    /// Verifies the daemon's registration response; returns the credential to store.
    pub fn finish_registration(
        &self,
        response: &RegistrationResponseJson,
        state: &RegistrationState,
    ) -> anyhow::Result<Credential> {
        let json = serde_json::to_value(response)?;
        let reg: RegisterPublicKeyCredential = serde_json::from_value(json.clone())
            .with_context(|| format!("webauthn-rs cannot parse the registration {json}"))?;
        self.core
            .register_credential(&reg, state, None)
            .map_err(|e| anyhow!("registration rejected by the relying party: {e:?}"))
    }

    /// Request options allowing `allow` (empty: a discoverable sign-in).
    pub fn begin_authentication(
        &self,
        allow: &[Credential],
        user_verification: UserVerificationPolicy,
    ) -> anyhow::Result<(PublicKeyCredentialRequestOptionsJson, PendingAuthentication)> {
        let builder = self
            .core
            .new_challenge_authenticate_builder(allow.to_vec(), Some(user_verification))
            .map_err(|e| anyhow!("webauthn-rs cannot start authentication: {e}"))?;
        let (challenge, state) = self
            .core
            .generate_challenge_authenticate(builder)
            .map_err(|e| anyhow!("webauthn-rs cannot make a challenge: {e}"))?;
        let json = serde_json::to_value(&challenge.public_key)?;
        let options = serde_json::from_value(json.clone()).with_context(|| {
            format!("passmesh-ipc cannot parse webauthn-rs request options {json}")
        })?;
        Ok((
            options,
            PendingAuthentication {
                state,
                discoverable: allow.is_empty(),
            },
        ))
    }

    /// Verifies the daemon's assertion.
    ///
    /// `registered` is the RP's database of credentials; it is consulted only for a
    /// discoverable sign-in, where the credential is looked up by id and must belong to the
    /// user named by the returned userHandle. Otherwise the allow-list decides.
    pub fn finish_authentication(
        &self,
        response: &AuthenticationResponseJson,
        pending: PendingAuthentication,
        registered: &[(User, Credential)],
    ) -> anyhow::Result<AuthenticationResult> {
        let json = serde_json::to_value(response)?;
        let assertion: PublicKeyCredential = serde_json::from_value(json.clone())
            .with_context(|| format!("webauthn-rs cannot parse the assertion {json}"))?;
        let mut state = pending.state;
        if pending.discoverable {
            let (user, credential) = registered
                .iter()
                .find(|(_, c)| c.cred_id.as_slice() == assertion.raw_id.as_slice())
                .ok_or_else(|| anyhow!("the assertion names a credential the RP never saw"))?;
            let handle = assertion
                .get_user_unique_id()
                .ok_or_else(|| anyhow!("discoverable assertion without userHandle"))?;
            if handle != user.id.as_slice() {
                bail!("userHandle does not belong to the credential's owner");
            }
            state.set_allowed_credentials(vec![credential.clone()]);
        }
        self.core
            .authenticate_credential(&assertion, &state)
            .map_err(|e| anyhow!("assertion rejected by the relying party: {e:?}"))
    }
}

/// The P-256 public key inside a registered credential.
pub fn credential_public_key(credential: &Credential) -> anyhow::Result<p256::PublicKey> {
    let COSEKeyType::EC_EC2(ec) = &credential.cred.key else {
        bail!(
            "credential key is not an EC2 key: {:?}",
            credential.cred.key
        );
    };
    let mut sec1 = Vec::with_capacity(65);
    sec1.push(0x04);
    sec1.extend_from_slice(&ec.x);
    sec1.extend_from_slice(&ec.y);
    p256::PublicKey::from_sec1_bytes(&sec1).map_err(|e| anyhow!("bad EC2 point: {e}"))
}

/// Parses an SPKI DER public key (the `publicKey` field of a registration response).
pub fn spki_public_key(der: &[u8]) -> anyhow::Result<p256::PublicKey> {
    p256::PublicKey::from_public_key_der(der).map_err(|e| anyhow!("bad SPKI public key: {e}"))
}

/// Decodes a clientDataJSON value into JSON.
pub fn client_data(client_data_json: &Base64Url) -> anyhow::Result<Value> {
    serde_json::from_slice(client_data_json.as_bytes()).context("clientDataJSON is not JSON")
}

/// base64url without padding, the encoding WebAuthn JSON uses for binary values.
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}
