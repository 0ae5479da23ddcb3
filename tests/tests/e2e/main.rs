//! End-to-end tests: every test starts its own `passmeshd` in a tempdir and acts as a
//! browser (over the socket or through the CLI) and as a relying party (webauthn-rs-core).
//!
//! One test binary, so the daemon binaries are built once and tests share helpers.

mod cli;
mod durability;
mod garbage;
mod lifecycle;
mod list;
mod negative;
mod netns;
mod pairing;
mod pin;
mod recovery;
mod removal;
mod sync;
mod system;
mod tpm;
mod trash;
mod uid;
mod webauthn;

use passmesh_ipc::{AuthenticationResponseJson, Client, RegistrationResponseJson};
use passmesh_tests::ops;
use passmesh_tests::rp::{
    AuthenticationResult, Credential, RegistrationOptions, RelyingParty, User,
    UserVerificationPolicy,
};
use passmesh_tests::{Daemon, DaemonOptions};

/// The relying party most tests use: a site whose login page is on a subdomain.
pub const RP_ID: &str = "example.com";
/// The origin of that relying party's login page.
pub const ORIGIN: &str = "https://login.example.com";

/// A daemon with default options (software keystore, no config).
pub async fn daemon() -> Daemon {
    Daemon::start(DaemonOptions::default())
        .await
        .unwrap_or_else(|e| panic!("daemon did not start: {e:#}"))
}

/// A connection to `daemon`.
pub async fn client(daemon: &Daemon) -> Client {
    daemon
        .client()
        .await
        .unwrap_or_else(|e| panic!("cannot connect: {e:#}"))
}

/// The relying party for [`RP_ID`] at [`ORIGIN`].
pub fn example_rp() -> RelyingParty {
    RelyingParty::new(RP_ID, ORIGIN).expect("valid RP")
}

/// A passkey registered and verified by the relying party.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The account it belongs to.
    pub user: User,
    /// What the RP stored.
    pub credential: Credential,
    /// The daemon's full answer.
    pub response: RegistrationResponseJson,
}

impl Registered {
    /// The credential id.
    pub fn id(&self) -> &[u8] {
        &self.credential.cred_id
    }
}

/// Registers `user` at `rp` through the daemon and verifies the result as the RP.
pub async fn register(
    client: &mut Client,
    rp: &RelyingParty,
    user: &User,
    options: &RegistrationOptions,
    pin: Option<&str>,
) -> Registered {
    let (creation, state) = rp.begin_registration(user, options).expect("options");
    let response = ops::create(client, rp.origin(), creation, pin)
        .await
        .unwrap_or_else(|e| panic!("create for {} at {} failed: {e:?}", user.name, rp.rp_id()));
    let credential = rp
        .finish_registration(&response, &state)
        .unwrap_or_else(|e| panic!("{e:#}"));
    Registered {
        user: user.clone(),
        credential,
        response,
    }
}

/// Registers `name` at `rp` with default options and no PIN.
pub async fn register_user(client: &mut Client, rp: &RelyingParty, name: &str) -> Registered {
    register(
        client,
        rp,
        &User::new(name),
        &RegistrationOptions::default(),
        None,
    )
    .await
}

/// Signs in at `rp` allowing `allow` (empty: discoverable), verifies as the RP against
/// `known`, and returns the daemon's answer with the RP's verdict.
pub async fn sign_in(
    client: &mut Client,
    rp: &RelyingParty,
    allow: &[&Registered],
    known: &[&Registered],
    user_verification: UserVerificationPolicy,
    pin: Option<&str>,
) -> (AuthenticationResponseJson, AuthenticationResult) {
    let allow: Vec<Credential> = allow.iter().map(|r| r.credential.clone()).collect();
    let known: Vec<(User, Credential)> = known
        .iter()
        .map(|r| (r.user.clone(), r.credential.clone()))
        .collect();
    let (request, pending) = rp
        .begin_authentication(&allow, user_verification)
        .expect("request options");
    let response = ops::get(client, rp.origin(), request, pin)
        .await
        .unwrap_or_else(|e| panic!("get at {} failed: {e:?}", rp.rp_id()));
    let result = rp
        .finish_authentication(&response, pending, &known)
        .unwrap_or_else(|e| panic!("{e:#}"));
    (response, result)
}

/// Whether `needle` occurs in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Depth-first search for the first value under `key` anywhere in `value`.
pub fn find_key<'a>(value: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    match value {
        serde_json::Value::Object(map) => map
            .get(key)
            .or_else(|| map.values().find_map(|v| find_key(v, key))),
        serde_json::Value::Array(items) => items.iter().find_map(|v| find_key(v, key)),
        _ => None,
    }
}

/// The first object anywhere in `value` that has `key` (e.g. the credential inside a reply).
pub fn find_object_with<'a>(
    value: &'a serde_json::Value,
    key: &str,
) -> Option<&'a serde_json::Value> {
    match value {
        serde_json::Value::Object(map) if map.contains_key(key) => Some(value),
        serde_json::Value::Object(map) => map.values().find_map(|v| find_object_with(v, key)),
        serde_json::Value::Array(items) => items.iter().find_map(|v| find_object_with(v, key)),
        _ => None,
    }
}
