//! System mode: one `passmeshd --system` serves every local user through one socket, each from the vault of
//! their kernel-reported uid. Driven as several uids with `setpriv`, so it needs root (as CI runs).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use passmesh_tests::rp::{RegistrationOptions, User};
use passmesh_tests::{CliOutput, Daemon, DaemonOptions, binaries};
use serde_json::{Value, json};

use crate::{ORIGIN, example_rp};

const ALICE: u32 = 61_001;
const BOB: u32 = 61_002;
const CAROL: u32 = 61_003;

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "system-mode tests act as several uids with setpriv and need root (CI runs as root)"
    );
}

/// A system-mode daemon whose socket every test uid can reach.
async fn system_daemon(config_toml: Option<&str>) -> Daemon {
    let d = Daemon::start(DaemonOptions {
        extra_args: vec!["--system".to_owned()],
        config_toml: config_toml.map(str::to_owned),
        ..DaemonOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("daemon did not start: {e:#}"));
    // The tempdir is 0700; the other uids must be able to walk to the socket.
    std::fs::set_permissions(d.dir(), std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    d
}

/// Runs `program args…` as `uid` (and gid `uid`, no supplementary groups), feeding `stdin`.
async fn as_uid(uid: u32, program: &Path, args: Vec<String>, stdin: String) -> CliOutput {
    let program = program.to_owned();
    tokio::task::spawn_blocking(move || {
        let id = uid.to_string();
        let mut child = Command::new("setpriv")
            .args(["--reuid", &id, "--regid", &id, "--clear-groups"])
            .arg(&program)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("setpriv runs");
        if let Some(mut pipe) = child.stdin.take() {
            let _ = std::io::Write::write_all(&mut pipe, stdin.as_bytes());
        }
        let out = child.wait_with_output().expect("setpriv finishes");
        CliOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .expect("join")
}

/// `passmesh --socket S --json ARGS…` as `uid`.
async fn cli(d: &Daemon, uid: u32, args: &[&str], stdin: &str) -> CliOutput {
    let mut all = vec![
        "--socket".to_owned(),
        d.socket_path().display().to_string(),
        "--json".to_owned(),
    ];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    as_uid(
        uid,
        &binaries().expect("binaries").cli,
        all,
        stdin.to_owned(),
    )
    .await
}

/// One raw request frame as `uid`; the parsed reply.
async fn raw(d: &Daemon, uid: u32, request: &Value) -> Value {
    let out = as_uid(
        uid,
        Path::new(env!("CARGO_BIN_EXE_ipc-raw")),
        vec![d.socket_path().display().to_string()],
        request.to_string(),
    )
    .await;
    out.expect_success("ipc-raw");
    out.json("ipc-raw")
}

/// Registers `name` at the example RP as `uid` through the CLI; the credential id (base64url).
async fn create(d: &Daemon, uid: u32, name: &str) -> String {
    let rp = example_rp();
    let (options, state) = rp
        .begin_registration(&User::new(name), &RegistrationOptions::default())
        .expect("options");
    let out = cli(
        d,
        uid,
        &["create", "--origin", ORIGIN, "--options", "-"],
        &serde_json::to_string(&options).expect("json"),
    )
    .await;
    out.expect_success("create");
    let credential = crate::find_object_with(&out.json("create"), "rawId")
        .expect("a credential")
        .clone();
    let response = serde_json::from_value(credential.clone()).expect("a registration response");
    rp.finish_registration(&response, &state)
        .unwrap_or_else(|e| panic!("the RP refused uid {uid}'s passkey: {e:#}"));
    credential["id"].as_str().expect("id").to_owned()
}

/// The user names in `uid`'s `list`.
async fn names(d: &Daemon, uid: u32) -> Vec<String> {
    let out = cli(d, uid, &["list"], "").await;
    out.expect_success("list");
    let mut names: Vec<String> = out.json("list")["passkeys"]
        .as_array()
        .expect("passkeys")
        .iter()
        .map(|p| p["userName"].as_str().expect("userName").to_owned())
        .collect();
    names.sort();
    names
}

async fn status(d: &Daemon, uid: u32) -> Value {
    let out = cli(d, uid, &["status"], "").await;
    out.expect_success("status");
    out.json("status")["status"].clone()
}

/// A `get` as `uid` allowing only `credential_id`.
async fn get(d: &Daemon, uid: u32, credential_id: &str) -> CliOutput {
    let options = json!({
        "challenge": "AAECAwQFBgcICQoLDA0ODw",
        "rpId": "example.com",
        "allowCredentials": [{"type": "public-key", "id": credential_id}],
        "userVerification": "discouraged",
    });
    cli(
        d,
        uid,
        &["get", "--origin", ORIGIN, "--options", "-"],
        &options.to_string(),
    )
    .await
}

#[tokio::test]
async fn every_uid_gets_its_own_vault_through_one_socket() {
    require_root();
    let mut d = system_daemon(None).await;

    let mode = std::fs::metadata(d.socket_path())
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o666, "socket mode {mode:o}");

    let a1 = create(&d, ALICE, "alice").await;
    create(&d, ALICE, "alice-work").await;
    let b1 = create(&d, BOB, "bob").await;

    assert_eq!(names(&d, ALICE).await, ["alice", "alice-work"]);
    assert_eq!(names(&d, BOB).await, ["bob"]);
    assert!(
        names(&d, CAROL).await.is_empty(),
        "a new uid's vault is empty"
    );

    let (sa, sb, sc) = (
        status(&d, ALICE).await,
        status(&d, BOB).await,
        status(&d, CAROL).await,
    );
    assert_eq!(
        (sa["uid"].as_u64(), sa["passkeys"].as_u64()),
        (Some(ALICE.into()), Some(2))
    );
    assert_eq!(
        (sb["uid"].as_u64(), sb["passkeys"].as_u64()),
        (Some(BOB.into()), Some(1))
    );
    assert_eq!(
        (sc["uid"].as_u64(), sc["passkeys"].as_u64()),
        (Some(CAROL.into()), Some(0))
    );
    let vault_ids = [&sa["vaultId"], &sb["vaultId"], &sc["vaultId"]];
    assert!(
        vault_ids[0] != vault_ids[1]
            && vault_ids[1] != vault_ids[2]
            && vault_ids[0] != vault_ids[2],
        "vaults must differ: {vault_ids:?}"
    );
    assert!(
        sa["networkOff"]
            .as_str()
            .is_some_and(|s| s.contains("system mode")),
        "status says why networking is off: {sa}"
    );

    // Alice signs in with her own passkey; Bob naming it gets exactly what an unknown credential gets.
    get(&d, ALICE, &a1).await.expect_success("alice's get");
    let stolen = get(&d, BOB, &a1).await;
    let unknown = get(&d, BOB, "bm8tc3VjaC1jcmVkZW50aWFs").await;
    assert_eq!(stolen.code, Some(1), "{stolen:?}");
    assert_eq!(
        stolen.json("get A as B"),
        unknown.json("get unknown"),
        "another user's credential must look unknown"
    );
    assert!(!stolen.stdout.contains("alice"), "{stolen:?}");
    get(&d, BOB, &b1).await.expect_success("bob's get");

    // Whatever the JSON claims, the kernel's uid decides.
    let reply = raw(
        &d,
        BOB,
        &json!({"id": 7, "type": "status", "uid": ALICE, "caller": {"uid": ALICE}}),
    )
    .await;
    assert_eq!(reply["status"]["uid"].as_u64(), Some(BOB.into()), "{reply}");
    assert_eq!(reply["status"]["passkeys"].as_u64(), Some(1), "{reply}");
    let reply = raw(&d, BOB, &json!({"id": 8, "type": "list", "uid": ALICE})).await;
    let listed = reply["passkeys"].as_array().expect("passkeys");
    assert_eq!(listed.len(), 1, "{reply}");
    assert_eq!(listed[0]["userName"], "bob", "{reply}");

    // Vault directories are private to the daemon's user.
    for uid in [ALICE, BOB, CAROL] {
        let dir = passmesh_daemon::vault::user_dir(d.state_dir(), uid);
        let mode = std::fs::metadata(&dir)
            .expect("vault dir")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{} mode {mode:o}", dir.display());
    }

    // After a restart every user's passkeys are there, before the user connects again.
    d.restart().await.expect("restart");
    assert!(
        d.log().contains("system mode: one vault per local uid") && d.log().contains("vaults=4"),
        "the restarted daemon opened every vault at start:\n{}",
        d.log_tail()
    );
    assert_eq!(names(&d, BOB).await, ["bob"]);
    assert_eq!(names(&d, ALICE).await, ["alice", "alice-work"]);
    assert!(names(&d, CAROL).await.is_empty());
    get(&d, ALICE, &a1)
        .await
        .expect_success("alice's get after restart");
}

#[tokio::test]
async fn a_full_daemon_refuses_new_vaults_but_serves_existing_ones() {
    require_root();
    // The readiness probe (as root) takes the first slot.
    let d = system_daemon(Some("[daemon]\nmax_vaults = 2\n")).await;
    create(&d, ALICE, "alice").await;
    let out = cli(&d, BOB, &["list"], "").await;
    assert_eq!(out.code, Some(1), "{out:?}");
    let reply = out.json("refused list");
    assert_eq!(reply["error"]["name"], "ConstraintError", "{reply}");
    assert!(
        out.stderr.contains("max_vaults"),
        "the refusal names the setting: {out:?}"
    );
    assert_eq!(names(&d, ALICE).await, ["alice"]);
}
