//! WebAuthn Level 3 JSON forms (`PublicKeyCredentialCreationOptionsJSON` and friends).
//!
//! Shapes only; nothing here checks WebAuthn rules. Field names are the spec's camelCase
//! spellings (note `clientDataJSON`). Unknown fields are ignored on input so newer browsers and
//! callers keep working; optional fields that are absent are omitted on output.

use serde::{Deserialize, Serialize};

use crate::b64::Base64Url;

/// The credential type string WebAuthn uses everywhere: `"public-key"`.
pub const PUBLIC_KEY_TYPE: &str = "public-key";

/// `PublicKeyCredentialCreationOptionsJSON`: the input to `navigator.credentials.create()`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicKeyCredentialCreationOptionsJson {
    /// The relying party.
    pub rp: RpEntity,
    /// The account the credential is for.
    pub user: UserEntity,
    /// The relying party's challenge.
    pub challenge: Base64Url,
    /// Acceptable key types and algorithms, most preferred first.
    pub pub_key_cred_params: Vec<PubKeyCredParam>,
    /// How long the caller is willing to wait, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// Credentials that must not be created again on this authenticator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_credentials: Vec<CredentialDescriptor>,
    /// Requirements on the authenticator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticator_selection: Option<AuthenticatorSelection>,
    /// UI hints (`"security-key"`, `"client-device"`, `"hybrid"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hints: Vec<String>,
    /// Attestation conveyance preference (`"none"`, `"indirect"`, `"direct"`, `"enterprise"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<String>,
    /// Preferred attestation statement formats.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attestation_formats: Vec<String>,
    /// Client extension inputs.
    #[serde(default, skip_serializing_if = "ExtensionsInput::is_empty")]
    pub extensions: ExtensionsInput,
}

/// `PublicKeyCredentialRequestOptionsJSON`: the input to `navigator.credentials.get()`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicKeyCredentialRequestOptionsJson {
    /// The relying party's challenge.
    pub challenge: Base64Url,
    /// How long the caller is willing to wait, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// The relying party id; defaults to the origin's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rp_id: Option<String>,
    /// Credentials the relying party accepts; empty means any discoverable credential.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_credentials: Vec<CredentialDescriptor>,
    /// User verification requirement (`"required"`, `"preferred"`, `"discouraged"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_verification: Option<String>,
    /// UI hints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hints: Vec<String>,
    /// Client extension inputs.
    #[serde(default, skip_serializing_if = "ExtensionsInput::is_empty")]
    pub extensions: ExtensionsInput,
}

/// `PublicKeyCredentialRpEntity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RpEntity {
    /// The relying party id; defaults to the origin's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Human-readable name of the relying party.
    pub name: String,
}

/// `PublicKeyCredentialUserEntityJSON`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserEntity {
    /// The user handle (opaque, at most 64 bytes by the spec; not checked here).
    pub id: Base64Url,
    /// Account name, e.g. an e-mail address.
    pub name: String,
    /// Name for display.
    pub display_name: String,
}

/// `PublicKeyCredentialParameters`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PubKeyCredParam {
    /// Credential type, normally `"public-key"`.
    #[serde(rename = "type")]
    pub type_: String,
    /// COSE algorithm identifier (-7 is ES256).
    pub alg: i64,
}

/// `PublicKeyCredentialDescriptorJSON`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialDescriptor {
    /// Credential type, normally `"public-key"`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The credential id.
    pub id: Base64Url,
    /// Transport hints (`"internal"`, `"hybrid"`, `"usb"`…).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transports: Vec<String>,
}

/// `AuthenticatorSelectionCriteria`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticatorSelection {
    /// `"platform"` or `"cross-platform"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticator_attachment: Option<String>,
    /// `"discouraged"`, `"preferred"` or `"required"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resident_key: Option<String>,
    /// Level 1 spelling of `residentKey: "required"`.
    #[serde(default)]
    pub require_resident_key: bool,
    /// `"required"`, `"preferred"` or `"discouraged"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_verification: Option<String>,
}

/// `AuthenticationExtensionsClientInputsJSON`: `credProps` typed, everything else kept as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionsInput {
    /// `credProps`: the caller wants to learn whether the credential is discoverable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cred_props: Option<bool>,
    /// Extensions this crate does not model (e.g. `prf`), as given.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl ExtensionsInput {
    /// True when no extension was requested.
    pub fn is_empty(&self) -> bool {
        self.cred_props.is_none() && self.other.is_empty()
    }
}

/// `RegistrationResponseJSON`: what `create` returns.
///
/// Serializes as `{"id", "rawId", "response", "authenticatorAttachment",
/// "clientExtensionResults", "type"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationResponseJson {
    /// The credential id as base64url text (the same bytes as `raw_id`).
    pub id: String,
    /// The credential id.
    pub raw_id: Base64Url,
    /// The authenticator's attestation response.
    pub response: AuthenticatorAttestationResponseJson,
    /// `"platform"` or `"cross-platform"`, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticator_attachment: Option<String>,
    /// Client extension outputs.
    #[serde(default)]
    pub client_extension_results: ClientExtensionResults,
    /// Always `"public-key"`.
    #[serde(rename = "type")]
    pub type_: String,
}

/// `AuthenticatorAttestationResponseJSON`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticatorAttestationResponseJson {
    /// The client data the authenticator signed over (UTF-8 JSON).
    #[serde(rename = "clientDataJSON")]
    pub client_data_json: Base64Url,
    /// Authenticator data.
    pub authenticator_data: Base64Url,
    /// Transports the credential can be reached over.
    #[serde(default)]
    pub transports: Vec<String>,
    /// The credential public key as DER `SubjectPublicKeyInfo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<Base64Url>,
    /// COSE algorithm of the credential key.
    pub public_key_algorithm: i64,
    /// CBOR attestation object.
    pub attestation_object: Base64Url,
}

/// `AuthenticationResponseJSON`: what `get` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticationResponseJson {
    /// The credential id as base64url text (the same bytes as `raw_id`).
    pub id: String,
    /// The credential id.
    pub raw_id: Base64Url,
    /// The authenticator's assertion.
    pub response: AuthenticatorAssertionResponseJson,
    /// `"platform"` or `"cross-platform"`, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticator_attachment: Option<String>,
    /// Client extension outputs.
    #[serde(default)]
    pub client_extension_results: ClientExtensionResults,
    /// Always `"public-key"`.
    #[serde(rename = "type")]
    pub type_: String,
}

/// `AuthenticatorAssertionResponseJSON`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticatorAssertionResponseJson {
    /// The client data the authenticator signed over (UTF-8 JSON).
    #[serde(rename = "clientDataJSON")]
    pub client_data_json: Base64Url,
    /// Authenticator data.
    pub authenticator_data: Base64Url,
    /// Signature over `authenticatorData || SHA-256(clientDataJSON)`.
    pub signature: Base64Url,
    /// The user handle of a discoverable credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_handle: Option<Base64Url>,
}

/// `AuthenticationExtensionsClientOutputsJSON`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientExtensionResults {
    /// `credProps` output, present when the caller asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cred_props: Option<CredProps>,
}

/// `CredentialPropertiesOutput`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredProps {
    /// Whether the credential is discoverable (resident).
    pub rk: bool,
}
