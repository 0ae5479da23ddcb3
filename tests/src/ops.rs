//! Typed requests over a [`Client`], plus the checks every negative test needs: "this failed
//! with exactly that error name" and "the vault did not change".

use std::fmt::Debug;

use passmesh_ipc::{
    AuthenticationResponseJson, Base64Url, Client, ClientError, ErrorBody, ErrorName, PasskeyInfo,
    Pin, PublicKeyCredentialCreationOptionsJson, PublicKeyCredentialRequestOptionsJson,
    RegistrationResponseJson, RequestBody, ResponseBody, StatusInfo,
};
use serde_json::Value;

fn unexpected(what: &str, body: &ResponseBody) -> ClientError {
    ClientError::UnexpectedReply(format!("{what} answered with {body:?}"))
}

/// `status`.
pub async fn status(client: &mut Client) -> Result<StatusInfo, ClientError> {
    match client.call(RequestBody::Status).await? {
        ResponseBody::Status { status } => Ok(status),
        other => Err(unexpected("status", &other)),
    }
}

/// `list`, optionally filtered by rpId.
pub async fn list(
    client: &mut Client,
    rp_id: Option<&str>,
) -> Result<Vec<PasskeyInfo>, ClientError> {
    client.list_all(rp_id).await
}

/// `create` from `origin`, with an optional PIN.
pub async fn create(
    client: &mut Client,
    origin: &str,
    options: PublicKeyCredentialCreationOptionsJson,
    pin: Option<&str>,
) -> Result<RegistrationResponseJson, ClientError> {
    let body = RequestBody::Create {
        origin: origin.to_owned(),
        options,
        pin: pin.map(|p| Pin::new(p.to_owned())),
    };
    match client.call(body).await? {
        ResponseBody::Create { credential } => Ok(credential),
        other => Err(unexpected("create", &other)),
    }
}

/// `get` from `origin`, with an optional PIN.
pub async fn get(
    client: &mut Client,
    origin: &str,
    options: PublicKeyCredentialRequestOptionsJson,
    pin: Option<&str>,
) -> Result<AuthenticationResponseJson, ClientError> {
    let body = RequestBody::Get {
        origin: origin.to_owned(),
        options,
        pin: pin.map(|p| Pin::new(p.to_owned())),
    };
    match client.call(body).await? {
        ResponseBody::Get { credential } => Ok(credential),
        other => Err(unexpected("get", &other)),
    }
}

/// `delete`; returns whether something was deleted.
pub async fn delete(client: &mut Client, credential_id: &[u8]) -> Result<bool, ClientError> {
    let body = RequestBody::Delete {
        credential_id: Base64Url(credential_id.to_vec()),
    };
    match client.call(body).await? {
        ResponseBody::Delete { deleted } => Ok(deleted),
        other => Err(unexpected("delete", &other)),
    }
}

/// `setPin`, with the current PIN when one is set.
pub async fn set_pin(
    client: &mut Client,
    pin: &str,
    current: Option<&str>,
) -> Result<(), ClientError> {
    let body = RequestBody::SetPin {
        pin: Pin::new(pin.to_owned()),
        current_pin: current.map(|p| Pin::new(p.to_owned())),
    };
    match client.call(body).await? {
        ResponseBody::SetPin {} => Ok(()),
        other => Err(unexpected("setPin", &other)),
    }
}

/// Asserts that `result` is the daemon's error answer named `name`; returns it.
///
/// Panics (this is a test helper) on success, on another error name, or on a transport
/// failure instead of an answer.
#[track_caller]
pub fn expect_error<T: Debug>(result: Result<T, ClientError>, name: ErrorName) -> ErrorBody {
    match result {
        Err(ClientError::Remote(body)) => {
            assert_eq!(
                body.name, name,
                "expected {name:?}, got {:?}: {}",
                body.name, body.message
            );
            assert!(!body.message.is_empty(), "{name:?} without a message");
            body
        }
        Err(other) => panic!("expected the daemon to answer {name:?}, got {other:?}"),
        Ok(value) => panic!("expected {name:?}, but the request succeeded: {value:?}"),
    }
}

/// What a user can see of the vault: every passkey as `list` shows it, and the count in
/// `status`.
#[derive(Debug, Clone, PartialEq)]
pub struct VaultSnapshot {
    /// The `list` answer (all relying parties), as JSON for exact comparison.
    pub passkeys: Value,
    /// `status.passkeys`.
    pub count: u64,
}

/// Takes a [`VaultSnapshot`].
pub async fn snapshot(client: &mut Client) -> anyhow::Result<VaultSnapshot> {
    let passkeys = serde_json::to_value(list(client, None).await?)?;
    let count = status(client).await?.passkeys;
    Ok(VaultSnapshot { passkeys, count })
}
