//! What was acknowledged stays: SIGKILL right after a reply, and graceful restarts.

use passmesh_tests::ops;
use passmesh_tests::rp::{RegistrationOptions, User, UserVerificationPolicy};

use crate::{RP_ID, client, daemon, example_rp, register, register_user, sign_in};

#[tokio::test]
async fn an_acknowledged_create_survives_sigkill() {
    let mut d = daemon().await;
    let rp = example_rp();
    let mut c = client(&d).await;
    let alice = register_user(&mut c, &rp, "alice").await;
    let bob = register_user(&mut c, &rp, "bob").await;
    // The reply is in hand: kill at once, no chance to flush anything else.
    d.kill9().unwrap();
    drop(c);

    d.restart().await.unwrap_or_else(|e| panic!("{e:#}"));
    let mut c = client(&d).await;
    let listed = ops::list(&mut c, None).await.unwrap();
    let mut ids: Vec<&[u8]> = listed.iter().map(|p| p.credential_id.as_bytes()).collect();
    ids.sort();
    let mut expected = vec![alice.id(), bob.id()];
    expected.sort();
    assert_eq!(ids, expected, "passkeys lost by SIGKILL");
    assert_eq!(ops::status(&mut c).await.unwrap().passkeys, 2);

    // The keys still sign, verified against the public keys from registration.
    for registered in [&alice, &bob] {
        let (assertion, _) = sign_in(
            &mut c,
            &rp,
            &[registered],
            &[],
            UserVerificationPolicy::Preferred,
            None,
        )
        .await;
        assert_eq!(assertion.raw_id.as_bytes(), registered.id());
    }

    // Killed right after a delete, too.
    assert!(ops::delete(&mut c, alice.id()).await.unwrap());
    d.kill9().unwrap();
    drop(c);
    d.restart().await.unwrap_or_else(|e| panic!("{e:#}"));
    let mut c = client(&d).await;
    let listed = ops::list(&mut c, None).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].credential_id.as_bytes(), bob.id());
}

#[tokio::test]
async fn sigterm_exits_cleanly_and_a_restart_keeps_vault_and_pin() {
    let mut d = daemon().await;
    let rp = example_rp();
    let mut c = client(&d).await;
    ops::set_pin(&mut c, "97531", None).await.unwrap();
    let required = RegistrationOptions {
        user_verification: UserVerificationPolicy::Required,
        ..RegistrationOptions::default()
    };
    let alice = register(&mut c, &rp, &User::new("alice"), &required, Some("97531")).await;
    let status_before = ops::status(&mut c).await.unwrap();
    drop(c);

    let exit = d.stop().await.unwrap();
    assert!(exit.success(), "passmeshd exited with {exit} on SIGTERM");
    d.restart().await.unwrap_or_else(|e| panic!("{e:#}"));

    let mut c = client(&d).await;
    let status = ops::status(&mut c).await.unwrap();
    assert!(status.pin_set, "the PIN was forgotten");
    assert_eq!(status.passkeys, 1);
    assert_eq!(
        status.vault_id, status_before.vault_id,
        "a new vault after restart"
    );
    let (assertion, result) = sign_in(
        &mut c,
        &rp,
        &[&alice],
        &[],
        UserVerificationPolicy::Required,
        Some("97531"),
    )
    .await;
    assert!(result.user_verified());
    assert_eq!(assertion.raw_id.as_bytes(), alice.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_all_land_and_survive_sigkill() {
    const CLIENTS: usize = 8;
    const EACH: usize = 10;
    let mut d = daemon().await;
    let rp = example_rp();
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let mut c = client(&d).await;
        let rp = rp.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for j in 0..EACH {
                let r = register_user(&mut c, &rp, &format!("user{i}-{j}")).await;
                ids.push(r.id().to_vec());
            }
            ids
        }));
    }
    let mut created = Vec::new();
    for task in tasks {
        created.extend(task.await.expect("creating task"));
    }
    d.kill9().unwrap();
    d.restart().await.unwrap_or_else(|e| panic!("{e:#}"));

    let mut c = client(&d).await;
    let mut listed: Vec<Vec<u8>> = ops::list(&mut c, Some(RP_ID))
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.credential_id.0)
        .collect();
    listed.sort();
    created.sort();
    created.dedup();
    assert_eq!(created.len(), CLIENTS * EACH, "duplicate credential ids");
    assert_eq!(listed, created);
    assert_eq!(
        ops::status(&mut c).await.unwrap().passkeys,
        (CLIENTS * EACH) as u64
    );
}
