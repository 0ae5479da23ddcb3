//! User verification with the device PIN: UV flag, "required", PIN rules, lockout.

use passmesh_ipc::ErrorName;
use passmesh_tests::authdata::{AuthData, flag};
use passmesh_tests::ops::{self, expect_error};
use passmesh_tests::rp::{RegistrationOptions, User, UserVerificationPolicy};
use passmesh_tests::{Daemon, DaemonOptions};

use crate::{ORIGIN, client, daemon, example_rp, register, register_user, sign_in};

fn required() -> RegistrationOptions {
    RegistrationOptions {
        user_verification: UserVerificationPolicy::Required,
        ..RegistrationOptions::default()
    }
}

fn uv_flag(response_auth_data: &[u8]) -> bool {
    AuthData::parse(response_auth_data)
        .expect("valid authenticator data")
        .has(flag::UV)
}

#[tokio::test]
async fn pin_set_with_the_cli_gives_uv_and_satisfies_required() {
    let d = daemon().await;
    let mut c = client(&d).await;
    let rp = example_rp();

    d.cli_with_stdin(&["pin", "set"], "482916\n")
        .await
        .unwrap()
        .expect_success("pin set");
    let status = ops::status(&mut c).await.unwrap();
    assert!(status.pin_set);
    assert_eq!(status.pin_attempts_left, 5, "default max_attempts is 5");

    // "required" + the right PIN: the RP (policy required) accepts, UV=1.
    let alice = register(
        &mut c,
        &rp,
        &User::new("alice"),
        &required(),
        Some("482916"),
    )
    .await;
    assert!(alice.credential.user_verified);
    assert!(uv_flag(
        alice.response.response.authenticator_data.as_bytes()
    ));
    let (assertion, result) = sign_in(
        &mut c,
        &rp,
        &[&alice],
        &[],
        UserVerificationPolicy::Required,
        Some("482916"),
    )
    .await;
    assert!(result.user_verified());
    assert!(uv_flag(assertion.response.authenticator_data.as_bytes()));

    // "required" without a PIN: refused, nothing stored.
    let before = ops::snapshot(&mut c).await.unwrap();
    let (options, _) = rp
        .begin_registration(&User::new("bob"), &required())
        .unwrap();
    expect_error(
        ops::create(&mut c, ORIGIN, options, None).await,
        ErrorName::NotAllowedError,
    );
    let (request, _) = rp
        .begin_authentication(
            std::slice::from_ref(&alice.credential),
            UserVerificationPolicy::Required,
        )
        .unwrap();
    expect_error(
        ops::get(&mut c, ORIGIN, request, None).await,
        ErrorName::NotAllowedError,
    );
    assert_eq!(ops::snapshot(&mut c).await.unwrap(), before);
    assert_eq!(
        ops::status(&mut c).await.unwrap().pin_attempts_left,
        5,
        "a missing PIN is not a wrong PIN"
    );

    // "preferred" without the PIN still works, but UV stays 0.
    let carol = register_user(&mut c, &rp, "carol").await;
    assert!(!carol.credential.user_verified);
    assert!(!uv_flag(
        carol.response.response.authenticator_data.as_bytes()
    ));

    // Changing the PIN with the CLI (current PIN first, then the new one).
    d.cli_with_stdin(&["pin", "set"], "482916\n1357924\n")
        .await
        .unwrap()
        .expect_success("pin change");
    let (request, _) = rp
        .begin_authentication(
            std::slice::from_ref(&alice.credential),
            UserVerificationPolicy::Required,
        )
        .unwrap();
    expect_error(
        ops::get(&mut c, ORIGIN, request, Some("482916")).await,
        ErrorName::NotAllowedError,
    );
    let (_, result) = sign_in(
        &mut c,
        &rp,
        &[&alice],
        &[],
        UserVerificationPolicy::Required,
        Some("1357924"),
    )
    .await;
    assert!(result.user_verified());
}

#[tokio::test]
async fn a_pin_cannot_verify_anything_when_none_is_set() {
    let d = daemon().await;
    let mut c = client(&d).await;
    let rp = example_rp();

    // "preferred" with a PIN but no PIN configured: the PIN is ignored, UV=0.
    let alice = register(
        &mut c,
        &rp,
        &User::new("alice"),
        &RegistrationOptions::default(),
        Some("1234"),
    )
    .await;
    assert!(!uv_flag(
        alice.response.response.authenticator_data.as_bytes()
    ));

    // "required": impossible without a configured PIN.
    let before = ops::snapshot(&mut c).await.unwrap();
    let (options, _) = rp
        .begin_registration(&User::new("bob"), &required())
        .unwrap();
    expect_error(
        ops::create(&mut c, ORIGIN, options, Some("1234")).await,
        ErrorName::NotAllowedError,
    );
    let (request, _) = rp
        .begin_authentication(
            std::slice::from_ref(&alice.credential),
            UserVerificationPolicy::Required,
        )
        .unwrap();
    expect_error(
        ops::get(&mut c, ORIGIN, request, Some("1234")).await,
        ErrorName::NotAllowedError,
    );
    assert_eq!(ops::snapshot(&mut c).await.unwrap(), before);
    assert!(!ops::status(&mut c).await.unwrap().pin_set);
}

#[tokio::test]
async fn pin_length_is_counted_in_characters_and_changes_need_the_current_pin() {
    let d = daemon().await;
    let mut c = client(&d).await;

    expect_error(
        ops::set_pin(&mut c, "123", None).await,
        ErrorName::ConstraintError,
    );
    expect_error(
        ops::set_pin(&mut c, &"7".repeat(64), None).await,
        ErrorName::ConstraintError,
    );
    assert!(!ops::status(&mut c).await.unwrap().pin_set);

    // Four characters, eight bytes.
    ops::set_pin(&mut c, "éééé", None).await.unwrap();
    assert!(ops::status(&mut c).await.unwrap().pin_set);

    // A PIN is set: changing it needs the current one.
    expect_error(
        ops::set_pin(&mut c, "24682468", None).await,
        ErrorName::NotAllowedError,
    );
    let left = ops::status(&mut c).await.unwrap().pin_attempts_left;
    expect_error(
        ops::set_pin(&mut c, "24682468", Some("0000")).await,
        ErrorName::NotAllowedError,
    );
    assert_eq!(
        ops::status(&mut c).await.unwrap().pin_attempts_left,
        left - 1,
        "a wrong current PIN counts as an attempt"
    );

    // 63 characters (126 bytes) is the longest PIN.
    let long = "ü".repeat(63);
    ops::set_pin(&mut c, &long, Some("éééé")).await.unwrap();
    let rp = example_rp();
    let alice = register(&mut c, &rp, &User::new("alice"), &required(), Some(&long)).await;
    assert!(alice.credential.user_verified);
}

#[tokio::test]
async fn wrong_pins_count_down_and_lock_out() {
    let mut d = Daemon::start(DaemonOptions::with_pin_policy(3, 60))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut c = client(&d).await;
    let rp = example_rp();
    ops::set_pin(&mut c, "2468", None).await.unwrap();
    let alice = register(&mut c, &rp, &User::new("alice"), &required(), Some("2468")).await;
    assert_eq!(ops::status(&mut c).await.unwrap().pin_attempts_left, 3);

    let get_with = |pin: &'static str| {
        let (request, _) = rp
            .begin_authentication(
                std::slice::from_ref(&alice.credential),
                UserVerificationPolicy::Required,
            )
            .unwrap();
        (request, pin)
    };

    // One wrong PIN, then the right one: the count starts over ("consecutive").
    let (request, pin) = get_with("0000");
    expect_error(
        ops::get(&mut c, ORIGIN, request, Some(pin)).await,
        ErrorName::NotAllowedError,
    );
    assert_eq!(ops::status(&mut c).await.unwrap().pin_attempts_left, 2);
    sign_in(
        &mut c,
        &rp,
        &[&alice],
        &[],
        UserVerificationPolicy::Required,
        Some("2468"),
    )
    .await;
    assert_eq!(ops::status(&mut c).await.unwrap().pin_attempts_left, 3);

    let before = ops::snapshot(&mut c).await.unwrap();
    // Three wrong PINs in a row, through create, get and setPin.
    let (options, _) = rp
        .begin_registration(&User::new("bob"), &required())
        .unwrap();
    expect_error(
        ops::create(&mut c, ORIGIN, options, Some("1111")).await,
        ErrorName::NotAllowedError,
    );
    let status = ops::status(&mut c).await.unwrap();
    assert_eq!(status.pin_attempts_left, 2);
    assert_eq!(status.pin_locked_for_ms, None);
    let (request, pin) = get_with("2222");
    expect_error(
        ops::get(&mut c, ORIGIN, request, Some(pin)).await,
        ErrorName::NotAllowedError,
    );
    assert_eq!(ops::status(&mut c).await.unwrap().pin_attempts_left, 1);
    expect_error(
        ops::set_pin(&mut c, "9999", Some("3333")).await,
        ErrorName::NotAllowedError,
    );
    let status = ops::status(&mut c).await.unwrap();
    assert_eq!(status.pin_attempts_left, 0);
    let locked_for = status
        .pin_locked_for_ms
        .expect("locked out after 3 wrong PINs");
    assert!(
        locked_for > 0 && locked_for <= 60_000,
        "lockout of {locked_for} ms, configured 60 s"
    );

    // Locked: even the right PIN is refused, everywhere.
    let (request, pin) = get_with("2468");
    expect_error(
        ops::get(&mut c, ORIGIN, request, Some(pin)).await,
        ErrorName::NotAllowedError,
    );
    let (options, _) = rp
        .begin_registration(&User::new("carol"), &required())
        .unwrap();
    expect_error(
        ops::create(&mut c, ORIGIN, options, Some("2468")).await,
        ErrorName::NotAllowedError,
    );
    expect_error(
        ops::set_pin(&mut c, "9999", Some("2468")).await,
        ErrorName::NotAllowedError,
    );
    assert_eq!(ops::snapshot(&mut c).await.unwrap(), before);
    let status = ops::status(&mut c).await.unwrap();
    assert!(status.pin_locked_for_ms.is_some());
    assert_eq!(status.pin_attempts_left, 0);

    // Killing and restarting the daemon does not buy more guesses.
    drop(c);
    d.kill9().unwrap();
    d.restart().await.unwrap_or_else(|e| panic!("{e:#}"));
    let mut c = client(&d).await;
    let status = ops::status(&mut c).await.unwrap();
    assert!(
        status.pin_locked_for_ms.is_some(),
        "restart lifted the lockout"
    );
    assert_eq!(status.pin_attempts_left, 0);
    let (request, pin) = get_with("2468");
    expect_error(
        ops::get(&mut c, ORIGIN, request, Some(pin)).await,
        ErrorName::NotAllowedError,
    );
}

#[tokio::test]
async fn the_right_pin_works_again_when_the_lockout_ends() {
    // 3 s: long enough that a slow (debug-build) argon2 check cannot outlast the lock.
    let d = Daemon::start(DaemonOptions::with_pin_policy(2, 3))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut c = client(&d).await;
    let rp = example_rp();
    ops::set_pin(&mut c, "8080", None).await.unwrap();
    let alice = register(&mut c, &rp, &User::new("alice"), &required(), Some("8080")).await;
    for wrong in ["1111", "2222"] {
        let (request, _) = rp
            .begin_authentication(
                std::slice::from_ref(&alice.credential),
                UserVerificationPolicy::Required,
            )
            .unwrap();
        expect_error(
            ops::get(&mut c, ORIGIN, request, Some(wrong)).await,
            ErrorName::NotAllowedError,
        );
    }
    let locked_for = ops::status(&mut c)
        .await
        .unwrap()
        .pin_locked_for_ms
        .expect("locked after 2 wrong PINs");
    assert!(
        locked_for <= 3_000,
        "locked for {locked_for} ms, configured 3 s"
    );

    tokio::time::sleep(std::time::Duration::from_millis(locked_for + 100)).await;
    let status = ops::status(&mut c).await.unwrap();
    assert_eq!(
        status.pin_locked_for_ms, None,
        "still locked after the lockout"
    );
    let (_, result) = sign_in(
        &mut c,
        &rp,
        &[&alice],
        &[],
        UserVerificationPolicy::Required,
        Some("8080"),
    )
    .await;
    assert!(result.user_verified());
    assert_eq!(ops::status(&mut c).await.unwrap().pin_attempts_left, 2);
}

#[tokio::test]
async fn policy_always_required_demands_the_pin_even_when_the_rp_prefers() {
    let d = Daemon::start(DaemonOptions {
        config_toml: Some("[pin]\nalways_required = true\n".to_owned()),
        ..DaemonOptions::default()
    })
    .await
    .expect("daemon");
    let mut c = client(&d).await;
    let rp = example_rp();
    ops::set_pin(&mut c, "482916", None).await.expect("set pin");
    let before = ops::snapshot(&mut c).await.unwrap();

    // The RP only prefers verification; the policy still refuses without the PIN.
    let (creation, _) = rp
        .begin_registration(&User::new("alice"), &RegistrationOptions::default())
        .expect("options");
    expect_error(
        ops::create(&mut c, ORIGIN, creation, None).await,
        ErrorName::NotAllowedError,
    );
    assert_eq!(ops::snapshot(&mut c).await.unwrap(), before);

    let alice = register(
        &mut c,
        &rp,
        &User::new("alice"),
        &RegistrationOptions::default(),
        Some("482916"),
    )
    .await;
    assert!(uv_flag(
        alice.response.response.authenticator_data.as_bytes()
    ));
    let (request, _) = rp
        .begin_authentication(
            std::slice::from_ref(&alice.credential),
            UserVerificationPolicy::Discouraged_DO_NOT_USE,
        )
        .expect("request");
    expect_error(
        ops::get(&mut c, ORIGIN, request, None).await,
        ErrorName::NotAllowedError,
    );
}
