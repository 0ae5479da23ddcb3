//! The Passmesh local socket protocol: how browsers (through the native-messaging host), the
//! `passmesh` CLI and other local apps talk to `passmeshd`.
//!
//! Frames are a 4-byte little-endian length and UTF-8 JSON, at most 1 MiB — the browser
//! native-messaging framing. Requests carry WebAuthn Level 3 JSON forms
//! (`PublicKeyCredentialCreationOptionsJSON`…) plus the caller's origin; responses carry
//! `RegistrationResponseJSON` / `AuthenticationResponseJSON` or a WebAuthn error name. The full
//! wire description is `docs/ipc.md`.
//!
//! This crate has no business logic: it checks no WebAuthn rule, does no cryptography and keeps
//! no state. It parses untrusted bytes into typed values, hands them to a [`Handler`], and
//! writes the answer back; the daemon decides everything else.
//!
//! Modules:
//! - [`frame`]: length-prefixed frames with the size limit.
//! - [`b64`]: [`Base64Url`], bytes that travel as base64url text.
//! - [`pin`]: [`Pin`] and [`Phrase`], zeroizing, never-printed secret strings.
//! - [`webauthn`]: the WebAuthn Level 3 JSON structures.
//! - [`message`]: [`Request`], [`Response`] and their bodies, [`ErrorBody`] / [`ErrorName`].
//! - [`server`]: [`bind`] the socket and [`serve`] it with a [`Handler`].
//! - [`client`]: [`Client`], one connection to the daemon.

pub mod b64;
pub mod client;
pub mod frame;
pub mod message;
pub mod pin;
pub mod server;
pub mod webauthn;

pub use b64::{Base64Error, Base64Url};
pub use client::{Client, ClientError};
pub use frame::{FrameError, HEADER_LEN, MAX_FRAME_LEN, read_frame, write_frame};
pub use message::{
    AuditInfo, DeviceInfo, DeviceState, ErrorBody, ErrorName, MAX_LIST_PAGE, OldKeysInfo,
    PasskeyInfo, RecoveryInfo, RecoveryKeyInfo, Request, RequestBody, Response, ResponseBody,
    StatusInfo, TrashedPasskey,
};
pub use pin::{Phrase, Pin};
pub use server::{Caller, Config, Handler, bind, bind_with_modes, serve};
pub use webauthn::{
    AuthenticationResponseJson, AuthenticatorAssertionResponseJson,
    AuthenticatorAttestationResponseJson, AuthenticatorSelection, ClientExtensionResults,
    CredProps, CredentialDescriptor, ExtensionsInput, PUBLIC_KEY_TYPE, PubKeyCredParam,
    PublicKeyCredentialCreationOptionsJson, PublicKeyCredentialRequestOptionsJson,
    RegistrationResponseJson, RpEntity, UserEntity,
};
