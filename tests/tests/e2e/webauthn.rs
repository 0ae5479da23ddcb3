//! The happy paths a relying party sees: registration, sign-in, discoverable sign-in.

use std::time::Duration;

use passmesh_ipc::ErrorName;
use passmesh_tests::authdata::{AuthData, flag};
use passmesh_tests::ops::{self, expect_error};
use passmesh_tests::rp::{
    self, AttestationFormat, ParsedAttestationData, RegistrationOptions, RelyingParty, User,
    UserVerificationPolicy, b64url,
};

use crate::{
    ORIGIN, RP_ID, client, contains_bytes, daemon, example_rp, register, register_user, sign_in,
};

#[tokio::test]
async fn registration_is_accepted_by_a_relying_party_and_signs_in() {
    let d = daemon().await;
    let mut c = client(&d).await;
    let rp = example_rp();
    let alice = User::new("alice");

    let (options, state) = rp
        .begin_registration(&alice, &RegistrationOptions::default())
        .unwrap();
    let challenge = options.challenge.clone();
    let response = ops::create(&mut c, ORIGIN, options, None).await.unwrap();
    let credential = rp.finish_registration(&response, &state).unwrap();

    // Attestation "none", as promised.
    assert_eq!(credential.attestation_format, AttestationFormat::None);
    assert!(matches!(
        credential.attestation.data,
        ParsedAttestationData::None
    ));
    let attestation_object = response.response.attestation_object.as_bytes();
    // CBOR text "fmt" → text "none", and "attStmt" → empty map (0xa0).
    assert!(contains_bytes(attestation_object, b"\x63fmt\x64none"));
    assert!(contains_bytes(attestation_object, b"\x67attStmt\xa0"));
    let auth_data_bytes = response.response.authenticator_data.as_bytes();
    assert!(
        contains_bytes(attestation_object, auth_data_bytes),
        "authenticatorData differs from the authData inside attestationObject"
    );

    // Flags: UP, BE, AT; no UV without a PIN, BS=0 while on one device only, no extensions.
    let auth = AuthData::parse(auth_data_bytes).unwrap();
    assert!(auth.has(flag::UP), "UP must be set: {:#04x}", auth.flags);
    assert!(
        !auth.has(flag::UV),
        "UV set without a PIN: {:#04x}",
        auth.flags
    );
    assert!(auth.has(flag::BE), "BE must be set: {:#04x}", auth.flags);
    assert!(
        !auth.has(flag::BS),
        "BS set on a lone device: {:#04x}",
        auth.flags
    );
    assert!(auth.has(flag::AT));
    assert!(!auth.has(flag::ED), "ED set without extension data");
    assert_eq!(auth.sign_count, 0);
    let aaguid = auth.aaguid.unwrap();
    assert_ne!(aaguid, [0u8; 16], "AAGUID must be Passmesh's, not zero");
    assert_eq!(
        auth.credential_id.as_deref(),
        Some(response.raw_id.as_bytes())
    );
    assert!(!credential.user_verified);
    assert!(credential.backup_eligible);
    assert!(!credential.backup_state);

    // The JSON envelope.
    assert_eq!(response.id, b64url(response.raw_id.as_bytes()));
    assert_eq!(response.type_, "public-key");
    assert_eq!(response.response.transports, vec!["internal".to_owned()]);
    assert_eq!(response.response.public_key_algorithm, -7);
    let spki = response.response.public_key.as_ref().expect("publicKey");
    assert_eq!(
        rp::spki_public_key(spki.as_bytes()).unwrap(),
        rp::credential_public_key(&credential).unwrap(),
        "publicKey (SPKI) and the COSE key in authData differ"
    );
    assert_eq!(
        response
            .client_extension_results
            .cred_props
            .as_ref()
            .map(|p| p.rk),
        Some(true)
    );
    let client_data = rp::client_data(&response.response.client_data_json).unwrap();
    assert_eq!(client_data["type"], "webauthn.create");
    assert_eq!(client_data["challenge"], b64url(challenge.as_bytes()));
    assert_eq!(client_data["origin"], ORIGIN);
    assert_eq!(client_data["crossOrigin"], false);

    // A second passkey: same AAGUID, new id.
    let bob = register_user(&mut c, &rp, "bob").await;
    let bob_auth = AuthData::parse(bob.response.response.authenticator_data.as_bytes()).unwrap();
    assert_eq!(
        bob_auth.aaguid,
        Some(aaguid),
        "AAGUID changes between creates"
    );
    assert_ne!(bob.id(), credential.cred_id.as_slice());

    // The vault shows both.
    assert_eq!(ops::status(&mut c).await.unwrap().passkeys, 2);
    let listed = ops::list(&mut c, Some(RP_ID)).await.unwrap();
    assert_eq!(listed.len(), 2);
    let alice_info = listed
        .iter()
        .find(|p| p.credential_id.as_bytes() == credential.cred_id.as_slice())
        .expect("alice's passkey is listed");
    assert_eq!(alice_info.rp_id, RP_ID);
    assert_eq!(alice_info.user_name, "alice");
    assert_eq!(alice_info.user_display_name, "alice (display)");
    assert_eq!(alice_info.user_handle.as_bytes(), alice.id.as_slice());
    assert!(!alice_info.backed_up);
    assert!(
        ops::list(&mut c, Some("other.org"))
            .await
            .unwrap()
            .is_empty()
    );

    // Sign in with alice's passkey named in allowCredentials.
    let alice_reg = crate::Registered {
        user: alice.clone(),
        credential: credential.clone(),
        response: response.clone(),
    };
    let (assertion, result) = sign_in(
        &mut c,
        &rp,
        &[&alice_reg],
        &[],
        UserVerificationPolicy::Preferred,
        None,
    )
    .await;
    assert_eq!(assertion.raw_id.as_bytes(), credential.cred_id.as_slice());
    assert_eq!(
        assertion
            .response
            .user_handle
            .as_ref()
            .map(|h| h.as_bytes()),
        Some(alice.id.as_slice()),
        "userHandle must be returned and be alice's"
    );
    assert_eq!(result.counter(), 0);
    assert!(!result.user_verified());
    assert!(result.backup_eligible());
    assert!(!result.backup_state());
    let auth = AuthData::parse(assertion.response.authenticator_data.as_bytes()).unwrap();
    assert!(auth.has(flag::UP | flag::BE));
    assert!(!auth.has(flag::UV) && !auth.has(flag::BS) && !auth.has(flag::AT));
    assert_eq!(auth.sign_count, 0);
    let client_data = rp::client_data(&assertion.response.client_data_json).unwrap();
    assert_eq!(client_data["type"], "webauthn.get");
    assert_eq!(client_data["origin"], ORIGIN);

    // Signing in twice works too (counter stays 0, RP accepts it).
    let (_, again) = sign_in(
        &mut c,
        &rp,
        &[&alice_reg],
        &[],
        UserVerificationPolicy::Preferred,
        None,
    )
    .await;
    assert_eq!(again.counter(), 0);
}

#[tokio::test]
async fn discoverable_sign_in_picks_the_rps_newest_passkey_and_allow_list_is_honoured() {
    let d = daemon().await;
    let mut c = client(&d).await;
    let rp = example_rp();
    let other = RelyingParty::new("other.org", "https://other.org").unwrap();

    let alice = register_user(&mut c, &rp, "alice").await;
    // Distinct creation times: "newest" must not depend on a tie-break.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let bob = register_user(&mut c, &rp, "bob").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let carol = register_user(&mut c, &other, "carol").await;
    let known = [&alice, &bob, &carol];

    // Empty allowCredentials: the newest passkey of example.com (bob), not other.org's.
    let (assertion, result) = sign_in(
        &mut c,
        &rp,
        &[],
        &known,
        UserVerificationPolicy::Preferred,
        None,
    )
    .await;
    assert_eq!(assertion.raw_id.as_bytes(), bob.id());
    assert_eq!(result.cred_id().as_slice(), bob.id());
    assert_eq!(
        assertion
            .response
            .user_handle
            .as_ref()
            .map(|h| h.as_bytes()),
        Some(bob.user.id.as_slice())
    );

    // allowCredentials naming alice's passkey → alice, although bob's is newer.
    let (assertion, _) = sign_in(
        &mut c,
        &rp,
        &[&alice],
        &known,
        UserVerificationPolicy::Preferred,
        None,
    )
    .await;
    assert_eq!(assertion.raw_id.as_bytes(), alice.id());
    assert_eq!(
        assertion
            .response
            .user_handle
            .as_ref()
            .map(|h| h.as_bytes()),
        Some(alice.user.id.as_slice())
    );

    // other.org's discoverable sign-in finds carol.
    let (assertion, _) = sign_in(
        &mut c,
        &other,
        &[],
        &known,
        UserVerificationPolicy::Preferred,
        None,
    )
    .await;
    assert_eq!(assertion.raw_id.as_bytes(), carol.id());

    // allowCredentials naming only another RP's passkey → nothing to use.
    let (request, _) = rp
        .begin_authentication(
            std::slice::from_ref(&carol.credential),
            UserVerificationPolicy::Preferred,
        )
        .unwrap();
    let before = ops::snapshot(&mut c).await.unwrap();
    expect_error(
        ops::get(&mut c, ORIGIN, request, None).await,
        ErrorName::NotAllowedError,
    );

    // A site with no passkey at all.
    let empty = RelyingParty::new("empty.example.net", "https://empty.example.net").unwrap();
    let (request, _) = empty
        .begin_authentication(&[], UserVerificationPolicy::Preferred)
        .unwrap();
    expect_error(
        ops::get(&mut c, empty.origin(), request, None).await,
        ErrorName::NotAllowedError,
    );
    assert_eq!(ops::snapshot(&mut c).await.unwrap(), before);

    // Deleting bob's passkey: discoverable sign-in falls back to alice.
    assert!(ops::delete(&mut c, bob.id()).await.unwrap());
    assert!(
        !ops::delete(&mut c, bob.id()).await.unwrap(),
        "deleted twice"
    );
    let (assertion, _) = sign_in(
        &mut c,
        &rp,
        &[],
        &known,
        UserVerificationPolicy::Preferred,
        None,
    )
    .await;
    assert_eq!(assertion.raw_id.as_bytes(), alice.id());
    let (request, _) = rp
        .begin_authentication(
            std::slice::from_ref(&bob.credential),
            UserVerificationPolicy::Preferred,
        )
        .unwrap();
    expect_error(
        ops::get(&mut c, ORIGIN, request, None).await,
        ErrorName::NotAllowedError,
    );
    assert_eq!(ops::status(&mut c).await.unwrap().passkeys, 2);
}

#[tokio::test]
async fn localhost_over_http_with_default_rp_id() {
    let d = daemon().await;
    let mut c = client(&d).await;
    let rp = RelyingParty::new("localhost", "http://localhost:8080").unwrap();
    let dev = User::new("dev");

    // A page that leaves rp.id out: the daemon uses the origin's host.
    let (mut options, state) = rp
        .begin_registration(&dev, &RegistrationOptions::default())
        .unwrap();
    options.rp.id = None;
    let response = ops::create(&mut c, rp.origin(), options, None)
        .await
        .unwrap();
    let credential = rp.finish_registration(&response, &state).unwrap();
    let registered = crate::Registered {
        user: dev,
        credential,
        response,
    };
    let listed = ops::list(&mut c, None).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].rp_id, "localhost");

    let (mut request, pending) = rp
        .begin_authentication(&[], UserVerificationPolicy::Preferred)
        .unwrap();
    request.rp_id = None;
    let assertion = ops::get(&mut c, rp.origin(), request, None).await.unwrap();
    rp.finish_authentication(
        &assertion,
        pending,
        &[(registered.user.clone(), registered.credential.clone())],
    )
    .unwrap();

    // 127.0.0.1 is a secure context as well.
    let loopback = RelyingParty::new("127.0.0.1", "http://127.0.0.1:3000").unwrap();
    register(
        &mut c,
        &loopback,
        &User::new("ip"),
        &RegistrationOptions::default(),
        None,
    )
    .await;
    assert_eq!(ops::status(&mut c).await.unwrap().passkeys, 2);
}

#[tokio::test]
async fn origin_with_a_port_goes_into_client_data() {
    let d = daemon().await;
    let mut c = client(&d).await;
    let rp = RelyingParty::new(RP_ID, "https://login.example.com:8443").unwrap();
    let alice = register_user(&mut c, &rp, "alice").await;
    let client_data = rp::client_data(&alice.response.response.client_data_json).unwrap();
    assert_eq!(client_data["origin"], "https://login.example.com:8443");
    let (assertion, _) = sign_in(
        &mut c,
        &rp,
        &[],
        &[&alice],
        UserVerificationPolicy::Preferred,
        None,
    )
    .await;
    let client_data = rp::client_data(&assertion.response.client_data_json).unwrap();
    assert_eq!(client_data["origin"], "https://login.example.com:8443");
}
