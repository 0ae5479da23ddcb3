//! The `passmesh` CLI as a user runs it: human output, `--json`, option files, errors.

use passmesh_ipc::{AuthenticationResponseJson, RegistrationResponseJson};
use passmesh_tests::ops;
use passmesh_tests::rp::{RegistrationOptions, RelyingParty, User, UserVerificationPolicy, b64url};
use passmesh_tests::{CliOutput, run_cli};
use serde_json::Value;

use crate::{ORIGIN, RP_ID, client, daemon, example_rp, find_key, find_object_with, register_user};

/// The credential object in the CLI's output (the whole output, or nested in it).
fn credential_json(out: &CliOutput, what: &str) -> Value {
    let value = out.json(what);
    find_object_with(&value, "rawId")
        .unwrap_or_else(|| panic!("{what}: no credential in {value}"))
        .clone()
}

fn assert_failed_with(out: &CliOutput, name: &str, what: &str) {
    assert_eq!(
        out.code,
        Some(1),
        "{what}: expected exit code 1\nstdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.contains(name),
        "{what}: stderr does not name {name}:\n{}",
        out.stderr
    );
}

#[tokio::test]
async fn status_list_show_delete_human_and_json() {
    let d = daemon().await;
    let mut c = client(&d).await;
    let alice = register_user(&mut c, &example_rp(), "alice").await;
    let other = RelyingParty::new("other.org", "https://other.org").unwrap();
    let bob = register_user(&mut c, &other, "bob").await;
    let alice_id = b64url(alice.id());
    let bob_id = b64url(bob.id());

    let out = d.cli(&["status"]).await.unwrap();
    let text = out.expect_success("status").to_lowercase();
    assert!(
        text.contains("software"),
        "status hides the keystore:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("passkey") && l.contains('2')),
        "status does not say there are 2 passkeys:\n{text}"
    );

    let out = d.cli(&["--json", "status"]).await.unwrap();
    out.expect_success("status --json");
    let v = out.json("status --json");
    assert_eq!(find_key(&v, "passkeys"), Some(&Value::from(2)), "{v}");
    assert_eq!(
        find_key(&v, "keystore"),
        Some(&Value::from("software")),
        "{v}"
    );
    assert_eq!(find_key(&v, "pinSet"), Some(&Value::from(false)), "{v}");

    let out = d.cli(&["list"]).await.unwrap();
    let text = out.expect_success("list");
    for needle in [RP_ID, "alice", "other.org", "bob", &alice_id, &bob_id] {
        assert!(
            text.contains(needle),
            "list does not show {needle}:\n{text}"
        );
    }
    let out = d.cli(&["list", "--rp", RP_ID]).await.unwrap();
    let text = out.expect_success("list --rp");
    assert!(text.contains(&alice_id) && text.contains("alice"), "{text}");
    assert!(
        !text.contains(&bob_id),
        "list --rp {RP_ID} shows other.org:\n{text}"
    );

    let out = d.cli(&["--json", "list"]).await.unwrap();
    out.expect_success("list --json");
    let v = out.json("list --json");
    let passkeys = find_key(&v, "passkeys")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no passkeys array in {v}"));
    let mut ids: Vec<&str> = passkeys
        .iter()
        .filter_map(|p| p["credentialId"].as_str())
        .collect();
    ids.sort_unstable();
    let mut expected = vec![alice_id.as_str(), bob_id.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected);

    let out = d.cli(&["show", "--", &alice_id]).await.unwrap();
    let text = out.expect_success("show");
    for needle in [RP_ID, "alice", "alice (display)", alice_id.as_str()] {
        assert!(
            text.contains(needle),
            "show does not show {needle}:\n{text}"
        );
    }
    assert!(
        !text.contains("bob"),
        "show mixes in another passkey:\n{text}"
    );
    let out = d.cli(&["--json", "show", "--", &alice_id]).await.unwrap();
    out.expect_success("show --json");
    let v = out.json("show --json");
    assert_eq!(find_key(&v, "rpId"), Some(&Value::from(RP_ID)), "{v}");
    assert_eq!(find_key(&v, "userName"), Some(&Value::from("alice")), "{v}");
    assert_eq!(
        find_key(&v, "credentialId"),
        Some(&Value::from(alice_id.clone()))
    );

    d.cli(&["delete", "--", &alice_id])
        .await
        .unwrap()
        .expect_success("delete");
    let listed = ops::list(&mut c, None).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].credential_id.as_bytes(), bob.id());
    let out = d.cli(&["list"]).await.unwrap();
    let text = out.expect_success("list after delete");
    assert!(
        !text.contains(&alice_id),
        "deleted passkey still listed:\n{text}"
    );
    assert!(text.contains(&bob_id));
}

#[tokio::test]
async fn rename_sets_a_label_that_list_shows_and_survives_a_restart() {
    let mut d = daemon().await;
    let mut c = client(&d).await;
    let alice = register_user(&mut c, &example_rp(), "alice").await;
    let alice_id = b64url(alice.id());

    let out = d
        .cli(&["rename", "--", &alice_id[..6], "work laptop"])
        .await
        .unwrap();
    let text = out.expect_success("rename by prefix");
    assert!(text.contains("work laptop"), "{text}");
    let listed = ops::list(&mut c, None).await.unwrap();
    assert_eq!(listed[0].label.as_deref(), Some("work laptop"));

    // Bad labels are refused and change nothing.
    for bad in ["", "tab\there", &"x".repeat(257)] {
        let out = d.cli(&["rename", "--", &alice_id, bad]).await.unwrap();
        assert_failed_with(&out, "ConstraintError", &format!("rename to {bad:?}"));
    }
    let out = d
        .cli(&["--json", "rename", "--", &alice_id, "personal"])
        .await
        .unwrap();
    out.expect_success("rename --json");
    assert_eq!(
        find_key(&out.json("rename --json"), "renamed"),
        Some(&Value::from(true))
    );

    d.restart().await.unwrap();
    let mut c = client(&d).await;
    let listed = ops::list(&mut c, None).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].label.as_deref(), Some("personal"));
    let out = d.cli(&["list"]).await.unwrap();
    assert!(out.expect_success("list").contains("personal"));
}

#[tokio::test]
async fn create_and_get_with_option_files_and_stdin() {
    let d = daemon().await;
    let mut c = client(&d).await;
    let rp = example_rp();
    let alice = User::new("alice");

    // create --options FILE
    let (options, state) = rp
        .begin_registration(&alice, &RegistrationOptions::default())
        .unwrap();
    let create_file = d.dir().join("create.json");
    std::fs::write(&create_file, serde_json::to_vec(&options).unwrap()).unwrap();
    let out = d
        .cli(&[
            "create",
            "--origin",
            ORIGIN,
            "--options",
            create_file.to_str().unwrap(),
        ])
        .await
        .unwrap();
    out.expect_success("create");
    let response: RegistrationResponseJson =
        serde_json::from_value(credential_json(&out, "create")).unwrap();
    let credential = rp.finish_registration(&response, &state).unwrap();

    // get --options FILE
    let (request, pending) = rp
        .begin_authentication(
            std::slice::from_ref(&credential),
            UserVerificationPolicy::Preferred,
        )
        .unwrap();
    let get_file = d.dir().join("get.json");
    std::fs::write(&get_file, serde_json::to_vec(&request).unwrap()).unwrap();
    let get_args = [
        "get",
        "--origin",
        ORIGIN,
        "--options",
        get_file.to_str().unwrap(),
    ];
    let out = d.cli(&get_args).await.unwrap();
    out.expect_success("get");
    let assertion: AuthenticationResponseJson =
        serde_json::from_value(credential_json(&out, "get")).unwrap();
    let result = rp.finish_authentication(&assertion, pending, &[]).unwrap();
    assert_eq!(result.cred_id(), &credential.cred_id);
    assert!(!result.user_verified());

    // create --options - (options on stdin)
    let bob = User::new("bob");
    let (options, state) = rp
        .begin_registration(&bob, &RegistrationOptions::default())
        .unwrap();
    let out = d
        .cli_with_stdin(
            &["create", "--origin", ORIGIN, "--options", "-"],
            &serde_json::to_string(&options).unwrap(),
        )
        .await
        .unwrap();
    out.expect_success("create --options -");
    let response: RegistrationResponseJson =
        serde_json::from_value(credential_json(&out, "create -")).unwrap();
    rp.finish_registration(&response, &state).unwrap();
    assert_eq!(ops::status(&mut c).await.unwrap().passkeys, 2);

    // With a PIN: get --pin-stdin under userVerification "required".
    d.cli_with_stdin(&["pin", "set"], "8642\n")
        .await
        .unwrap()
        .expect_success("pin set");
    let (request, pending) = rp
        .begin_authentication(
            std::slice::from_ref(&credential),
            UserVerificationPolicy::Required,
        )
        .unwrap();
    std::fs::write(&get_file, serde_json::to_vec(&request).unwrap()).unwrap();
    let mut args = get_args.to_vec();
    args.push("--pin-stdin");
    let out = d.cli_with_stdin(&args, "8642\n").await.unwrap();
    out.expect_success("get --pin-stdin");
    let assertion: AuthenticationResponseJson =
        serde_json::from_value(credential_json(&out, "get --pin-stdin")).unwrap();
    let result = rp.finish_authentication(&assertion, pending, &[]).unwrap();
    assert!(result.user_verified());

    // Wrong PIN on stdin: refused.
    let (request, _) = rp
        .begin_authentication(
            std::slice::from_ref(&credential),
            UserVerificationPolicy::Required,
        )
        .unwrap();
    std::fs::write(&get_file, serde_json::to_vec(&request).unwrap()).unwrap();
    let out = d.cli_with_stdin(&args, "1111\n").await.unwrap();
    assert_failed_with(&out, "NotAllowedError", "get with a wrong PIN");
}

#[tokio::test]
async fn errors_exit_1_and_name_the_problem() {
    let mut d = daemon().await;
    let mut c = client(&d).await;
    let rp = example_rp();
    let alice = register_user(&mut c, &rp, "alice").await;
    let before = ops::snapshot(&mut c).await.unwrap();

    // A get for a credential that does not exist.
    let (mut request, _) = rp
        .begin_authentication(
            std::slice::from_ref(&alice.credential),
            UserVerificationPolicy::Preferred,
        )
        .unwrap();
    request.allow_credentials[0].id = passmesh_ipc::Base64Url(vec![7; 16]);
    let file = d.dir().join("unknown.json");
    std::fs::write(&file, serde_json::to_vec(&request).unwrap()).unwrap();
    let args = [
        "get",
        "--origin",
        ORIGIN,
        "--options",
        file.to_str().unwrap(),
    ];
    let out = d.cli(&args).await.unwrap();
    assert_failed_with(&out, "NotAllowedError", "get unknown");
    assert!(out.stderr.contains("passmesh:"), "{}", out.stderr);
    assert!(out.stdout.trim().is_empty(), "a failure printed a result");

    let mut json_args = vec!["--json"];
    json_args.extend_from_slice(&args);
    let out = d.cli(&json_args).await.unwrap();
    assert_failed_with(&out, "NotAllowedError", "--json get unknown");
    let v = out.json("--json get unknown");
    assert_eq!(
        find_key(&v, "name"),
        Some(&Value::from("NotAllowedError")),
        "{v}"
    );

    // A phishing origin.
    let (options, _) = rp
        .begin_registration(&User::new("bob"), &RegistrationOptions::default())
        .unwrap();
    let file = d.dir().join("phish.json");
    std::fs::write(&file, serde_json::to_vec(&options).unwrap()).unwrap();
    let out = d
        .cli(&[
            "create",
            "--origin",
            "https://examp1e.com",
            "--options",
            file.to_str().unwrap(),
        ])
        .await
        .unwrap();
    assert_failed_with(&out, "SecurityError", "create from a phishing origin");

    // A PIN that is too short.
    let out = d.cli_with_stdin(&["pin", "set"], "12\n").await.unwrap();
    assert_failed_with(&out, "ConstraintError", "pin set 12");
    assert!(!ops::status(&mut c).await.unwrap().pin_set);

    // An options file that is not JSON.
    std::fs::write(&file, b"{this is not json").unwrap();
    let out = d
        .cli(&[
            "create",
            "--origin",
            ORIGIN,
            "--options",
            file.to_str().unwrap(),
        ])
        .await
        .unwrap();
    assert_eq!(out.code, Some(1), "bad options file: {out:?}");
    assert!(!out.stderr.trim().is_empty());

    assert_eq!(ops::snapshot(&mut c).await.unwrap(), before);

    // Nobody listening: a socket path that does not exist, then a dead daemon's socket.
    let absent = d.dir().join("absent.sock");
    let out = run_cli(&absent, &["status"], None).await.unwrap();
    assert_failed_with(&out, absent.to_str().unwrap(), "status, no socket");
    drop(c);
    d.kill9().unwrap();
    let out = d.cli(&["list"]).await.unwrap();
    assert_failed_with(
        &out,
        d.socket_path().to_str().unwrap(),
        "list, daemon killed",
    );
}
