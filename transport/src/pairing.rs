//! Pairing by code: the invitation URI, the `Noise_XXpsk3_25519_ChaChaPoly_SHA256` handshake (snow) and the
//! messages of `/passmesh/pair/1`. Sans-IO: the host moves the bytes, the daemon drives the steps and decides
//! what to send once the handshake is done (it wraps the vault keys; this module never sees them).
//!
//! The handshake's PSK is HKDF-SHA256 of the invitation's 256-bit secret; its prologue binds the invitation
//! (version, vault id, inviter peer id, expiry) and both libp2p peer ids of the connection. Each side's
//! handshake payload carries its device name and a signature by its libp2p identity key over its x25519
//! static key and the prologue, so the Noise static keys are bound to the peer ids. The joiner is the
//! initiator:
//!
//! ```text
//! joiner  → inviter   Request::Hello(-> e)
//! inviter → joiner    Response::Handshake(<- e, ee, s, es + inviter hello)
//! joiner  → inviter   Request::Finish(-> s, se, psk + joiner hello)
//! inviter → joiner    Response::Sealed(transport message)     (or Refused)
//! joiner  → inviter   Request::Ack(transport message)
//! inviter → joiner    Response::Done
//! ```

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hkdf::Hkdf;
use libp2p::identity::PublicKey;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use rand::RngExt as _;
use sha2::Sha256;
use snow::{HandshakeState, TransportState};
use x25519_dalek::{PublicKey as XPublic, StaticSecret};
use zeroize::Zeroizing;

use crate::Identity;

/// The pairing protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/passmesh/pair/1");
/// The invitation format version this build speaks.
pub const VERSION: u8 = 1;
/// The URI scheme and path every invitation starts with.
pub const URI_PREFIX: &str = "passmesh://pair?";
/// Longest invitation URI accepted.
pub const MAX_URI_LEN: usize = 2048;
/// Most addresses an invitation carries (it must fit a QR code).
pub const MAX_ADDRS: usize = 6;
/// Longest encoded multiaddr accepted in an invitation.
pub const MAX_ADDR_LEN: usize = 128;
/// Longest device name in a handshake payload, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Largest pairing message on the wire (one Noise message plus its tag byte).
pub const MAX_MESSAGE: usize = 65535 + 1;
/// Largest plaintext one [`Session::seal`] takes.
pub const MAX_PLAINTEXT: usize = 65535 - 16;

const NOISE_PARAMS: &str = "Noise_XXpsk3_25519_ChaChaPoly_SHA256";
const PSK_INFO: &[u8] = b"passmesh pair psk v1";
const SAS_INFO: &[u8] = b"passmesh pair sas v1";
const KEY_INFO: &[u8] = b"passmesh device x25519 v1";
const PROLOGUE_LABEL: &[u8] = b"passmesh pair prologue v1\0";
const SIGN_LABEL: &[u8] = b"passmesh pair static v1\0";

/// Why pairing input was refused. Names no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The text is not a Passmesh invitation URI.
    #[error("not a passmesh pairing code (expected {URI_PREFIX}...)")]
    NotAnInvitation,
    /// The invitation is of another format version.
    #[error("pairing code version {0} is not supported (this build speaks version {VERSION})")]
    UnsupportedVersion(String),
    /// A field is missing from the invitation.
    #[error("the pairing code lacks its `{0}` field")]
    MissingField(&'static str),
    /// A field appears twice.
    #[error("the pairing code has the `{0}` field twice")]
    DuplicateField(String),
    /// A field is not known to this version.
    #[error("the pairing code has an unknown field `{0}`")]
    UnknownField(String),
    /// A field's value does not decode or has the wrong length.
    #[error("the pairing code's `{0}` field is malformed")]
    BadField(&'static str),
    /// The URI is longer than [`MAX_URI_LEN`].
    #[error("the pairing code is too long")]
    TooLong,
    /// The Noise handshake failed: the other side used another secret, or the code was altered.
    #[error("the pairing handshake failed: wrong or altered code")]
    Handshake,
    /// A handshake payload's identity or signature does not match the connection's peer.
    #[error("the other device's identity does not match the connection")]
    PeerMismatch,
    /// A pairing message is malformed or over its size limit.
    #[error("malformed pairing message")]
    Malformed,
}

/// A device's long-term x25519 key for pairing: the Noise static key, and what vault keys are wrapped to.
/// Derived from the device identity (HKDF-SHA256, a label of its own), so nothing more has to be sealed.
/// `Debug` prints the public half only.
#[derive(Clone)]
pub struct PairKey(StaticSecret);

impl PairKey {
    /// A fresh random key (for ephemeral use, e.g. key wrapping).
    pub fn generate() -> Self {
        let bytes = Zeroizing::new(rand::rng().random::<[u8; 32]>());
        Self(StaticSecret::from(*bytes))
    }

    /// Derives the device's key from its identity.
    pub fn derive(identity: &Identity) -> Self {
        let secret = identity.secret_bytes();
        let mut okm = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(None, secret.as_slice())
            .expand(KEY_INFO, okm.as_mut_slice())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Self(StaticSecret::from(*okm))
    }

    /// The public key.
    pub fn public(&self) -> [u8; 32] {
        XPublic::from(&self.0).to_bytes()
    }

    /// X25519 with `their_public`; `None` if the result is all zeros (a low-order point).
    pub fn diffie_hellman(&self, their_public: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
        let shared = self.0.diffie_hellman(&XPublic::from(*their_public));
        shared
            .was_contributory()
            .then(|| Zeroizing::new(shared.to_bytes()))
    }

    /// The secret key (for the vault, which unwraps epoch keys with it).
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }
}

impl fmt::Debug for PairKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PairKey({})", B64.encode(self.public()))
    }
}

/// A one-time invitation: who to reach, which vault, until when, and the 256-bit secret.
/// `Debug` leaves the secret out; [`Invitation::uri`] is the only way it leaves this value.
#[derive(Clone, PartialEq, Eq)]
pub struct Invitation {
    /// The inviting device.
    pub inviter: PeerId,
    /// Where it listens (without `/p2p/`).
    pub addrs: Vec<Multiaddr>,
    /// The vault's id.
    pub vault: [u8; 16],
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
    secret: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for Invitation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invitation")
            .field("inviter", &self.inviter)
            .field("addrs", &self.addrs)
            .field("expires_at", &self.expires_at)
            .field("secret", &format_args!(".."))
            .finish()
    }
}

impl Invitation {
    /// A new invitation with a fresh random secret. At most [`MAX_ADDRS`] addresses are kept, in order.
    pub fn new(
        inviter: PeerId,
        mut addrs: Vec<Multiaddr>,
        vault: [u8; 16],
        expires_at: u64,
    ) -> Self {
        addrs.retain(|a| a.to_vec().len() <= MAX_ADDR_LEN);
        addrs.truncate(MAX_ADDRS);
        Self {
            inviter,
            addrs,
            vault,
            expires_at,
            secret: Zeroizing::new(rand::rng().random()),
        }
    }

    /// The `passmesh://pair?...` URI. It holds the secret: show it to the person, never log it.
    pub fn uri(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(400));
        s.push_str(URI_PREFIX);
        s.push_str(&format!("v={VERSION}"));
        s.push_str("&p=");
        s.push_str(&B64.encode(self.inviter.to_bytes()));
        s.push_str("&vault=");
        s.push_str(&B64.encode(self.vault));
        s.push_str("&exp=");
        s.push_str(&B64.encode(self.expires_at.to_be_bytes()));
        s.push_str("&s=");
        s.push_str(&Zeroizing::new(B64.encode(*self.secret)));
        for a in &self.addrs {
            s.push_str("&a=");
            s.push_str(&B64.encode(a.to_vec()));
        }
        s
    }

    /// Parses a URI strictly: the exact prefix, version 1, each of `v`, `p`, `vault`, `exp`, `s` exactly once,
    /// 1 to [`MAX_ADDRS`] `a` fields, nothing else, every length checked.
    pub fn parse(uri: &str) -> Result<Self, Error> {
        let uri = uri.trim();
        if uri.len() > MAX_URI_LEN {
            return Err(Error::TooLong);
        }
        let query = uri.strip_prefix(URI_PREFIX).ok_or(Error::NotAnInvitation)?;
        let (mut v, mut p, mut vault, mut exp, mut s) = (None, None, None, None, None);
        let mut addrs = Vec::new();
        for field in query.split('&') {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| Error::UnknownField(short(field)))?;
            let slot = match key {
                "v" => &mut v,
                "p" => &mut p,
                "vault" => &mut vault,
                "exp" => &mut exp,
                "s" => &mut s,
                "a" => {
                    if addrs.len() == MAX_ADDRS {
                        return Err(Error::BadField("a"));
                    }
                    let bytes = decode(value, "a")?;
                    if bytes.len() > MAX_ADDR_LEN {
                        return Err(Error::BadField("a"));
                    }
                    addrs.push(Multiaddr::try_from(bytes).map_err(|_| Error::BadField("a"))?);
                    continue;
                }
                other => return Err(Error::UnknownField(short(other))),
            };
            if slot.replace(value).is_some() {
                return Err(Error::DuplicateField(key.to_owned()));
            }
        }
        let v = v.ok_or(Error::MissingField("v"))?;
        if v != VERSION.to_string() {
            return Err(Error::UnsupportedVersion(short(v)));
        }
        let p = decode(p.ok_or(Error::MissingField("p"))?, "p")?;
        let inviter = PeerId::from_bytes(&p).map_err(|_| Error::BadField("p"))?;
        let vault: [u8; 16] = decode(vault.ok_or(Error::MissingField("vault"))?, "vault")?
            .try_into()
            .map_err(|_| Error::BadField("vault"))?;
        let exp: [u8; 8] = decode(exp.ok_or(Error::MissingField("exp"))?, "exp")?
            .try_into()
            .map_err(|_| Error::BadField("exp"))?;
        let secret = Zeroizing::new(decode(s.ok_or(Error::MissingField("s"))?, "s")?);
        let secret: [u8; 32] = secret
            .as_slice()
            .try_into()
            .map_err(|_| Error::BadField("s"))?;
        if addrs.is_empty() {
            return Err(Error::MissingField("a"));
        }
        Ok(Self {
            inviter,
            addrs,
            vault,
            expires_at: u64::from_be_bytes(exp),
            secret: Zeroizing::new(secret),
        })
    }

    fn psk(&self) -> Zeroizing<[u8; 32]> {
        let mut okm = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(None, self.secret.as_slice())
            .expand(PSK_INFO, okm.as_mut_slice())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        okm
    }

    /// The prologue: the invitation and both peer ids of the connection.
    fn prologue(&self, joiner: &PeerId) -> Vec<u8> {
        let mut out = PROLOGUE_LABEL.to_vec();
        out.push(VERSION);
        out.extend_from_slice(&self.vault);
        put_bytes(&mut out, &self.inviter.to_bytes());
        out.extend_from_slice(&self.expires_at.to_be_bytes());
        put_bytes(&mut out, &joiner.to_bytes());
        out
    }
}

fn short(s: &str) -> String {
    s.chars().take(16).collect()
}

fn decode(value: &str, field: &'static str) -> Result<Vec<u8>, Error> {
    B64.decode(value).map_err(|_| Error::BadField(field))
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&b[..usize::from(len)]);
}

/// Reads a u16-length-prefixed field.
fn take_bytes<'a>(input: &mut &'a [u8]) -> Result<&'a [u8], Error> {
    let (len, rest) = input.split_at_checked(2).ok_or(Error::Malformed)?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    let (field, rest) = rest.split_at_checked(len).ok_or(Error::Malformed)?;
    *input = rest;
    Ok(field)
}

/// What one side learnt about the other in the handshake, authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHello {
    /// Its peer id (the connection's, checked against its signature).
    pub peer: PeerId,
    /// Its device name.
    pub name: String,
    /// Its x25519 static public key (the one the handshake used).
    pub x25519_public: [u8; 32],
}

const ROLE_INVITER: u8 = 1;
const ROLE_JOINER: u8 = 2;

fn signed_message(role: u8, static_public: &[u8; 32], prologue: &[u8]) -> Vec<u8> {
    let mut m = SIGN_LABEL.to_vec();
    m.push(role);
    m.extend_from_slice(static_public);
    m.extend_from_slice(prologue);
    m
}

fn hello_payload(
    identity: &Identity,
    key: &PairKey,
    role: u8,
    name: &str,
    prologue: &[u8],
) -> Result<Vec<u8>, Error> {
    if name.len() > MAX_NAME_LEN {
        return Err(Error::Malformed);
    }
    let keypair = identity.keypair();
    let sig = keypair
        .sign(&signed_message(role, &key.public(), prologue))
        .map_err(|_| Error::Malformed)?;
    let mut out = Vec::new();
    put_bytes(&mut out, name.as_bytes());
    put_bytes(&mut out, &keypair.public().encode_protobuf());
    put_bytes(&mut out, &sig);
    Ok(out)
}

fn check_hello(
    payload: &[u8],
    role: u8,
    expected: PeerId,
    remote_static: Option<&[u8]>,
    prologue: &[u8],
) -> Result<PeerHello, Error> {
    let mut input = payload;
    let name = take_bytes(&mut input)?;
    let public = take_bytes(&mut input)?;
    let sig = take_bytes(&mut input)?;
    if !input.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(Error::Malformed);
    }
    let name = std::str::from_utf8(name)
        .map_err(|_| Error::Malformed)?
        .to_owned();
    let public = PublicKey::try_decode_protobuf(public).map_err(|_| Error::PeerMismatch)?;
    if public.to_peer_id() != expected {
        return Err(Error::PeerMismatch);
    }
    let x25519_public: [u8; 32] = remote_static
        .and_then(|s| s.try_into().ok())
        .ok_or(Error::Handshake)?;
    if !public.verify(&signed_message(role, &x25519_public, prologue), sig) {
        return Err(Error::PeerMismatch);
    }
    Ok(PeerHello {
        peer: expected,
        name,
        x25519_public,
    })
}

fn builder_state(
    invitation: &Invitation,
    joiner: &PeerId,
    key: &PairKey,
    initiator: bool,
) -> Result<(HandshakeState, Vec<u8>), Error> {
    let params = NOISE_PARAMS
        .parse()
        .expect("the Noise parameter string is valid");
    let psk = invitation.psk();
    let prologue = invitation.prologue(joiner);
    let secret = key.secret_bytes();
    let builder = snow::Builder::new(params)
        .psk(3, &psk)
        .and_then(|b| b.prologue(&prologue))
        .and_then(|b| b.local_private_key(secret.as_slice()))
        .map_err(|_| Error::Handshake)?;
    let state = if initiator {
        builder.build_initiator()
    } else {
        builder.build_responder()
    }
    .map_err(|_| Error::Handshake)?;
    Ok((state, prologue))
}

fn write(hs: &mut HandshakeState, payload: &[u8]) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; 65535];
    let n = hs
        .write_message(payload, &mut buf)
        .map_err(|_| Error::Malformed)?;
    buf.truncate(n);
    Ok(buf)
}

fn read(hs: &mut HandshakeState, msg: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
    if msg.len() > 65535 {
        return Err(Error::Malformed);
    }
    let mut buf = Zeroizing::new(vec![0u8; 65535]);
    let n = hs
        .read_message(msg, &mut buf)
        .map_err(|_| Error::Handshake)?;
    buf.truncate(n);
    Ok(buf)
}

/// The joiner's side (Noise initiator), between its first and its last handshake message.
pub struct JoinHandshake {
    hs: HandshakeState,
    prologue: Vec<u8>,
    inviter: PeerId,
}

impl fmt::Debug for JoinHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandshake")
            .field("inviter", &self.inviter)
            .finish_non_exhaustive()
    }
}

impl JoinHandshake {
    /// Starts the handshake for `invitation` as device `me`; returns the first message.
    pub fn start(
        invitation: &Invitation,
        me: &Identity,
        key: &PairKey,
    ) -> Result<(Self, Vec<u8>), Error> {
        let (mut hs, prologue) = builder_state(invitation, &me.peer_id(), key, true)?;
        let msg1 = write(&mut hs, &[])?;
        Ok((
            Self {
                hs,
                prologue,
                inviter: invitation.inviter,
            },
            msg1,
        ))
    }

    /// Reads the inviter's message, checks its identity, and writes the last handshake message (with this
    /// device's `name`). The session's SAS is final; the joiner learns that the inviter knew the secret when
    /// the inviter's first sealed message opens.
    pub fn finish(
        mut self,
        msg2: &[u8],
        me: &Identity,
        key: &PairKey,
        name: &str,
    ) -> Result<(Session, Vec<u8>), Error> {
        let payload = read(&mut self.hs, msg2)?;
        let inviter = check_hello(
            &payload,
            ROLE_INVITER,
            self.inviter,
            self.hs.get_remote_static(),
            &self.prologue,
        )?;
        let hello = hello_payload(me, key, ROLE_JOINER, name, &self.prologue)?;
        let msg3 = write(&mut self.hs, &hello)?;
        Ok((Session::new(self.hs, inviter)?, msg3))
    }
}

/// The inviter's side (Noise responder), between its reply and the joiner's last message.
pub struct InviteHandshake {
    hs: HandshakeState,
    prologue: Vec<u8>,
    joiner: PeerId,
}

impl fmt::Debug for InviteHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InviteHandshake")
            .field("joiner", &self.joiner)
            .finish_non_exhaustive()
    }
}

impl InviteHandshake {
    /// Answers the first message of `joiner` (the connection's remote peer) for `invitation`, which `me`
    /// issued; returns the reply carrying this device's `name`.
    pub fn respond(
        invitation: &Invitation,
        me: &Identity,
        key: &PairKey,
        name: &str,
        joiner: PeerId,
        msg1: &[u8],
    ) -> Result<(Self, Vec<u8>), Error> {
        let (mut hs, prologue) = builder_state(invitation, &joiner, key, false)?;
        let payload = read(&mut hs, msg1)?;
        if !payload.is_empty() {
            return Err(Error::Malformed);
        }
        let hello = hello_payload(me, key, ROLE_INVITER, name, &prologue)?;
        let msg2 = write(&mut hs, &hello)?;
        Ok((
            Self {
                hs,
                prologue,
                joiner,
            },
            msg2,
        ))
    }

    /// Reads the joiner's last message: fails with [`Error::Handshake`] if the joiner used another secret or
    /// an altered invitation, [`Error::PeerMismatch`] if its identity does not match the connection.
    pub fn finish(mut self, msg3: &[u8]) -> Result<Session, Error> {
        let payload = read(&mut self.hs, msg3)?;
        let joiner = check_hello(
            &payload,
            ROLE_JOINER,
            self.joiner,
            self.hs.get_remote_static(),
            &self.prologue,
        )?;
        Session::new(self.hs, joiner)
    }
}

/// A finished handshake: the authenticated peer, the SAS, and a Noise transport for the rest.
pub struct Session {
    transport: TransportState,
    peer: PeerHello,
    sas: String,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .field("sas", &self.sas)
            .finish_non_exhaustive()
    }
}

impl Session {
    fn new(hs: HandshakeState, peer: PeerHello) -> Result<Self, Error> {
        let sas = sas(hs.get_handshake_hash());
        let transport = hs.into_transport_mode().map_err(|_| Error::Handshake)?;
        Ok(Self {
            transport,
            peer,
            sas,
        })
    }

    /// The other device, as authenticated by the handshake.
    pub fn peer(&self) -> &PeerHello {
        &self.peer
    }

    /// The short authentication string both sides show: six digits in two groups, e.g. `042 917`.
    pub fn sas(&self) -> &str {
        &self.sas
    }

    /// Encrypts one message (at most [`MAX_PLAINTEXT`] bytes) for the other side.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(Error::Malformed);
        }
        let mut buf = vec![0u8; plaintext.len() + 16];
        let n = self
            .transport
            .write_message(plaintext, &mut buf)
            .map_err(|_| Error::Malformed)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Decrypts one message from the other side; [`Error::Handshake`] if it does not authenticate.
    pub fn open(&mut self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        if ciphertext.len() > 65535 || ciphertext.len() < 16 {
            return Err(Error::Malformed);
        }
        let mut buf = Zeroizing::new(vec![0u8; ciphertext.len()]);
        let n = self
            .transport
            .read_message(ciphertext, &mut buf)
            .map_err(|_| Error::Handshake)?;
        buf.truncate(n);
        Ok(buf)
    }
}

fn sas(handshake_hash: &[u8]) -> String {
    let mut okm = [0u8; 8];
    Hkdf::<Sha256>::new(None, handshake_hash)
        .expand(SAS_INFO, &mut okm)
        .expect("8 bytes is a valid HKDF-SHA256 output length");
    let n = u64::from_be_bytes(okm) % 1_000_000;
    format!("{:03} {:03}", n / 1000, n % 1000)
}

/// A request on `/passmesh/pair/1` (joiner to inviter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The first handshake message.
    Hello(Vec<u8>),
    /// The last handshake message.
    Finish(Vec<u8>),
    /// The joiner stored the vault: a sealed acknowledgement.
    Ack(Vec<u8>),
}

/// An answer on `/passmesh/pair/1` (inviter to joiner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The inviter's handshake message.
    Handshake(Vec<u8>),
    /// A sealed message after the handshake (the wrapped vault keys and device table).
    Sealed(Vec<u8>),
    /// The joiner was added to the device table.
    Done,
    /// The inviter refused.
    Refused(Refusal),
}

/// Why the inviter refused. Sent in the clear (a failed handshake has no keys), so the joiner shows it as the
/// inviter's claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The invitation expired.
    Expired,
    /// The invitation was already used.
    Used,
    /// Too many failed attempts: the invitation is dead.
    TooManyAttempts,
    /// The handshake failed: wrong or altered code.
    HandshakeFailed,
    /// The person at the inviter did not confirm the code.
    Declined,
    /// Another device is pairing right now.
    Busy,
    /// No invitation is open.
    NotOpen,
    /// Something else went wrong at the inviter.
    Failed,
}

impl Refusal {
    fn code(self) -> u8 {
        match self {
            Self::Expired => 1,
            Self::Used => 2,
            Self::TooManyAttempts => 3,
            Self::HandshakeFailed => 4,
            Self::Declined => 5,
            Self::Busy => 6,
            Self::NotOpen => 7,
            Self::Failed => 8,
        }
    }

    fn from_code(c: u8) -> Self {
        match c {
            1 => Self::Expired,
            2 => Self::Used,
            3 => Self::TooManyAttempts,
            4 => Self::HandshakeFailed,
            5 => Self::Declined,
            6 => Self::Busy,
            7 => Self::NotOpen,
            _ => Self::Failed,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Expired => "the invitation has expired",
            Self::Used => "the invitation was already used",
            Self::TooManyAttempts => "the invitation is dead after too many failed attempts",
            Self::HandshakeFailed => "the handshake failed: wrong or altered code",
            Self::Declined => "the code was not confirmed on the inviting device",
            Self::Busy => "another device is pairing with the inviter right now",
            Self::NotOpen => "the inviting device has no open invitation",
            Self::Failed => "the inviting device failed to complete the pairing",
        })
    }
}

impl Request {
    /// Wire bytes: a tag then the body.
    pub fn encode(&self) -> Vec<u8> {
        let (tag, body) = match self {
            Self::Hello(b) => (1u8, b),
            Self::Finish(b) => (2, b),
            Self::Ack(b) => (3, b),
        };
        let mut out = Vec::with_capacity(body.len() + 1);
        out.push(tag);
        out.extend_from_slice(body);
        out
    }

    /// Parses wire bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_MESSAGE {
            return Err(Error::Malformed);
        }
        let (&tag, body) = bytes.split_first().ok_or(Error::Malformed)?;
        let body = body.to_vec();
        match tag {
            1 => Ok(Self::Hello(body)),
            2 => Ok(Self::Finish(body)),
            3 => Ok(Self::Ack(body)),
            _ => Err(Error::Malformed),
        }
    }
}

impl Response {
    /// Wire bytes: a tag then the body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Self::Handshake(b) => {
                out.push(1);
                out.extend_from_slice(b);
            }
            Self::Sealed(b) => {
                out.push(2);
                out.extend_from_slice(b);
            }
            Self::Done => out.push(3),
            Self::Refused(r) => {
                out.push(4);
                out.push(r.code());
            }
        }
        out
    }

    /// Parses wire bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_MESSAGE {
            return Err(Error::Malformed);
        }
        let (&tag, body) = bytes.split_first().ok_or(Error::Malformed)?;
        match (tag, body) {
            (1, b) => Ok(Self::Handshake(b.to_vec())),
            (2, b) => Ok(Self::Sealed(b.to_vec())),
            (3, []) => Ok(Self::Done),
            (4, [c]) => Ok(Self::Refused(Refusal::from_code(*c))),
            _ => Err(Error::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn invitation(inviter: &Identity) -> Invitation {
        Invitation::new(
            inviter.peer_id(),
            vec![
                "/ip4/127.0.0.1/tcp/4001".parse().unwrap(),
                "/ip4/127.0.0.1/udp/4001/quic-v1".parse().unwrap(),
            ],
            [7; 16],
            1_900_000_000,
        )
    }

    struct Side {
        id: Identity,
        key: PairKey,
    }

    fn side() -> Side {
        let id = Identity::generate();
        let key = PairKey::derive(&id);
        Side { id, key }
    }

    /// Runs the handshake with the joiner holding `joiner_view` of the invitation and the inviter `inv`;
    /// `connected_joiner` is the peer id the inviter's connection reports.
    fn run(
        inv: &Invitation,
        joiner_view: &Invitation,
        a: &Side,
        b: &Side,
        connected_joiner: PeerId,
    ) -> Result<(Session, Session), Error> {
        let (jh, m1) = JoinHandshake::start(joiner_view, &b.id, &b.key)?;
        let (ih, m2) =
            InviteHandshake::respond(inv, &a.id, &a.key, "alpha", connected_joiner, &m1)?;
        let (js, m3) = jh.finish(&m2, &b.id, &b.key, "beta")?;
        let is = ih.finish(&m3)?;
        Ok((is, js))
    }

    #[test]
    fn handshake_agrees_on_sas_and_binds_identities() {
        let (a, b) = (side(), side());
        let inv = invitation(&a.id);
        let (mut is, mut js) = run(&inv, &inv, &a, &b, b.id.peer_id()).unwrap();
        assert_eq!(is.sas(), js.sas());
        assert_eq!(is.sas().len(), 7);
        assert_eq!(is.peer().peer, b.id.peer_id());
        assert_eq!(is.peer().name, "beta");
        assert_eq!(is.peer().x25519_public, b.key.public());
        assert_eq!(js.peer().peer, a.id.peer_id());
        assert_eq!(js.peer().x25519_public, a.key.public());
        let sealed = is.seal(b"vault keys").unwrap();
        assert_eq!(js.open(&sealed).unwrap().as_slice(), b"vault keys");
        let back = js.seal(b"ack").unwrap();
        assert_eq!(is.open(&back).unwrap().as_slice(), b"ack");
        let mut tampered = is.seal(b"x").unwrap();
        tampered[0] ^= 1;
        assert_eq!(js.open(&tampered).unwrap_err(), Error::Handshake);
    }

    #[test]
    fn wrong_psk_fails_at_the_inviter() {
        let (a, b) = (side(), side());
        let inv = invitation(&a.id);
        let mut other = inv.clone();
        other.secret = Zeroizing::new([1; 32]);
        assert_eq!(
            run(&inv, &other, &a, &b, b.id.peer_id()).unwrap_err(),
            Error::Handshake
        );
    }

    #[test]
    fn tampered_prologue_fields_fail() {
        let (a, b) = (side(), side());
        let inv = invitation(&a.id);
        let mut vault = inv.clone();
        vault.vault[0] ^= 1;
        let mut exp = inv.clone();
        exp.expires_at += 1;
        for view in [vault, exp] {
            assert_eq!(
                run(&inv, &view, &a, &b, b.id.peer_id()).unwrap_err(),
                Error::Handshake
            );
        }
        // Addresses are only where to dial: not bound, changing them changes nothing.
        let mut addrs = inv.clone();
        addrs.addrs.clear();
        assert!(run(&inv, &addrs, &a, &b, b.id.peer_id()).is_ok());
    }

    #[test]
    fn wrong_peer_id_binding_fails() {
        let (a, b, c) = (side(), side(), side());
        let inv = invitation(&a.id);
        // The inviter's connection reports another peer than the one that signs: the prologue differs.
        assert!(run(&inv, &inv, &a, &b, c.id.peer_id()).is_err());
        // The joiner expects another inviter (the URI's peer id was changed): the prologues differ.
        let mut view = inv.clone();
        view.inviter = c.id.peer_id();
        assert_eq!(
            run(&inv, &view, &a, &b, b.id.peer_id()).unwrap_err(),
            Error::Handshake
        );
        // A hello whose identity or signed static key is not the connection's is refused.
        let hello = hello_payload(&b.id, &b.key, ROLE_JOINER, "x", b"p").unwrap();
        assert_eq!(
            check_hello(
                &hello,
                ROLE_JOINER,
                b.id.peer_id(),
                Some(&c.key.public()),
                b"p"
            )
            .unwrap_err(),
            Error::PeerMismatch
        );
        assert_eq!(
            check_hello(
                &hello,
                ROLE_JOINER,
                c.id.peer_id(),
                Some(&b.key.public()),
                b"p"
            )
            .unwrap_err(),
            Error::PeerMismatch
        );
    }

    #[test]
    fn uri_round_trips_and_hides_the_secret_from_debug() {
        let a = Identity::generate();
        let inv = invitation(&a);
        let uri = inv.uri();
        assert!(uri.starts_with(URI_PREFIX));
        let parsed = Invitation::parse(&uri).unwrap();
        assert_eq!(parsed, inv);
        let secret = B64.encode(*inv.secret);
        assert!(uri.contains(&secret));
        assert!(!format!("{inv:?}").contains(&secret));
    }

    #[test]
    fn uri_strictness() {
        let a = Identity::generate();
        let uri = invitation(&a).uri().to_string();
        let field = |k: &str| {
            uri.split(['?', '&'])
                .find(|f| f.starts_with(&format!("{k}=")))
                .unwrap()
                .to_owned()
        };
        let without = |k: &str| uri.replacen(&format!("&{}", field(k)), "", 1);
        assert_eq!(
            Invitation::parse(&uri.replace("v=1", "v=2")).unwrap_err(),
            Error::UnsupportedVersion("2".into())
        );
        for k in ["p", "vault", "exp", "s"] {
            assert_eq!(
                Invitation::parse(&without(k)).unwrap_err(),
                Error::MissingField(match k {
                    "p" => "p",
                    "vault" => "vault",
                    "exp" => "exp",
                    _ => "s",
                })
            );
            let dup = format!("{uri}&{}", field(k));
            assert!(matches!(
                Invitation::parse(&dup).unwrap_err(),
                Error::DuplicateField(_)
            ));
        }
        assert!(matches!(
            Invitation::parse(&format!("{uri}&x=1")).unwrap_err(),
            Error::UnknownField(_)
        ));
        assert_eq!(
            Invitation::parse(&uri.replace(&field("s"), "s=AAAA")).unwrap_err(),
            Error::BadField("s")
        );
        assert_eq!(
            Invitation::parse(&uri.replace(&field("vault"), "vault=AAAA")).unwrap_err(),
            Error::BadField("vault")
        );
        assert_eq!(
            Invitation::parse("https://example.com/").unwrap_err(),
            Error::NotAnInvitation
        );
        assert_eq!(
            Invitation::parse(&"a".repeat(MAX_URI_LEN + 1)).unwrap_err(),
            Error::TooLong
        );
    }

    #[test]
    fn wire_messages_round_trip() {
        for r in [
            Request::Hello(vec![1, 2]),
            Request::Finish(vec![]),
            Request::Ack(vec![9; 40]),
        ] {
            assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }
        for r in [
            Response::Handshake(vec![1]),
            Response::Sealed(vec![2; 50]),
            Response::Done,
            Response::Refused(Refusal::TooManyAttempts),
        ] {
            assert_eq!(Response::decode(&r.encode()).unwrap(), r);
        }
        assert!(Request::decode(&[]).is_err());
        assert!(Response::decode(&[3, 0]).is_err());
    }

    #[test]
    fn derived_key_is_stable_per_identity() {
        let id = Identity::generate();
        assert_eq!(PairKey::derive(&id).public(), PairKey::derive(&id).public());
        assert_ne!(
            PairKey::derive(&id).public(),
            PairKey::derive(&Identity::generate()).public()
        );
        let (x, y) = (PairKey::generate(), PairKey::generate());
        assert_eq!(
            *x.diffie_hellman(&y.public()).unwrap(),
            *y.diffie_hellman(&x.public()).unwrap()
        );
        assert!(x.diffie_hellman(&[0; 32]).is_none());
    }

    proptest! {
        #[test]
        fn random_text_never_panics(s in ".{0,600}") {
            let _ = Invitation::parse(&s);
            let _ = Invitation::parse(&format!("{URI_PREFIX}{s}"));
        }

        #[test]
        fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Request::decode(&b);
            let _ = Response::decode(&b);
            let _ = check_hello(&b, ROLE_JOINER, PeerId::random(), Some(&[1; 32]), b"p");
        }

        #[test]
        fn mutated_uris_are_refused_or_parse_to_something_else(pos in 0usize..400, ch in any::<char>()) {
            let a = Identity::generate();
            let inv = invitation(&a);
            let uri = inv.uri().to_string();
            let pos = pos % uri.len();
            let mut mutated: String = uri.chars().take(pos).collect();
            mutated.push(ch);
            mutated.extend(uri.chars().skip(pos + 1));
            if let Ok(parsed) = Invitation::parse(&mutated) {
                // Only a change that keeps the fields valid parses, and then it is another invitation
                // (or, for base64 padding bits that do not count, the same one).
                prop_assert!(mutated == uri || parsed != inv || mutated.trim() == uri);
            }
        }
    }
}
