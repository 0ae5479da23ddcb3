//! System mode: one `passmeshd --system` serves every local user through one socket, each from the vault of
//! their kernel-reported uid. Driven as several uids with `setpriv`, so it needs root (as CI runs).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use passmesh_tests::rp::{RegistrationOptions, User};
use passmesh_tests::{CliOutput, Daemon, DaemonOptions, binaries, mesh, ops, pairing};
use passmesh_transport as transport;
use serde_json::{Value, json};

use crate::{ORIGIN, example_rp};

const ALICE: u32 = 61_001;
const BOB: u32 = 61_002;
const CAROL: u32 = 61_003;
/// Bound on one network step.
const LIMIT: std::time::Duration = std::time::Duration::from_secs(20);

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "system-mode tests act as several uids with setpriv and need root (CI runs as root)"
    );
}

/// A system-mode daemon whose socket every test uid can reach, networking on loopback only (mDNS off).
async fn system_daemon(config_toml: Option<&str>) -> Daemon {
    system_daemon_with(config_toml, DaemonOptions::default()).await
}

/// Like [`system_daemon`], on top of `options` (keystore, state directory, more arguments).
async fn system_daemon_with(config_toml: Option<&str>, mut options: DaemonOptions) -> Daemon {
    options.extra_args.extend([
        "--system".to_owned(),
        "--listen".to_owned(),
        "/ip4/127.0.0.1/tcp/0".to_owned(),
    ]);
    options.config_toml = Some(format!(
        "{}\n[network]\nmdns = false\n",
        config_toml.unwrap_or_default()
    ));
    let d = Daemon::start(options)
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
    // One libp2p host carries every vault: the same device id for each user, networking on.
    assert!(sa["networkOff"].is_null(), "{sa}");
    assert!(sa["deviceId"].is_string(), "{sa}");
    assert!(
        sa["deviceId"] == sb["deviceId"] && sb["deviceId"] == sc["deviceId"],
        "one machine identity: {sa} {sb} {sc}"
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
        let dir = passmesh_daemon::layout::user_dir(d.state_dir(), uid);
        let mode = std::fs::metadata(&dir)
            .expect("vault dir")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{} mode {mode:o}", dir.display());
    }

    // Killed without warning (a crash; `Restart=on-failure` starts it again): nothing acknowledged is lost, and
    // every user's passkeys are there before the user connects again.
    d.kill9().expect("SIGKILL");
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

/// Waits up to 20 s for `uid`'s list on `d` to equal `want` (sorted user names).
async fn names_become(d: &Daemon, uid: u32, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let got = names(d, uid).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "uid {uid}'s passkeys are {got:?}, expected {want:?}\n{}",
            d.log_tail()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The user names a user-mode daemon lists.
async fn device_names(device: &pairing::Device) -> Vec<String> {
    let mut c = device.daemon.client().await.expect("client");
    let mut names: Vec<String> = ops::list(&mut c, None)
        .await
        .expect("list")
        .into_iter()
        .map(|p| p.user_name)
        .collect();
    names.sort();
    names
}

/// `uid` on the system daemon joins the vault `inviter` invites to, through the CLI.
async fn join_as(d: &Daemon, uid: u32, inviter: &pairing::Device, name: &str) {
    let mut invite = inviter.invite(&["--expires", "60"], "y\n").expect("invite");
    let uri = invite.uri().await.expect("code");
    let joined = cli(d, uid, &["join", &uri, "--name", name], "").await;
    let (code, events) = invite.finish().await.expect("inviter finishes");
    assert!(
        code == Some(0) && pairing::outcome(&pairing::json_lines(&joined)).is_ok(),
        "uid {uid} did not pair: inviter {code:?} {events:?}; joiner {joined:?}\n{}",
        d.log_tail()
    );
}

fn b64(bytes: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_pairs_and_syncs_through_the_one_host_and_only_with_their_own_devices() {
    require_root();
    let mut d = system_daemon(None).await;
    // Alice's and Bob's laptops: ordinary user-mode daemons.
    let laptop_a = pairing::Device::start().await.expect("alice's laptop");
    let mut laptop_b = pairing::Device::start().await.expect("bob's laptop");
    join_as(&d, ALICE, &laptop_a, "desktop").await;
    join_as(&d, BOB, &laptop_b, "desktop").await;

    let (sa, sb) = (status(&d, ALICE).await, status(&d, BOB).await);
    assert_eq!(sa["deviceId"], sb["deviceId"], "one host: {sa} {sb}");
    let peers = |s: &Value| -> Vec<String> {
        s["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .map(|p| p["deviceId"].as_str().expect("deviceId").to_owned())
            .collect()
    };
    assert_eq!(peers(&sa), [laptop_a.peer_id.as_str()], "{sa}");
    assert_eq!(peers(&sb), [laptop_b.peer_id.as_str()], "{sb}");
    assert_eq!(
        laptop_a.status().await.expect("status").vault_id,
        sa["vaultId"].as_str().expect("vaultId"),
        "alice's desktop vault is her laptop's"
    );

    // A passkey made on Alice's laptop reaches Alice on the desktop, and only her.
    let rp = example_rp();
    let mut ca = laptop_a.daemon.client().await.expect("client");
    let from_laptop = crate::register_user(&mut ca, &rp, "alice-laptop").await;
    names_become(&d, ALICE, &["alice-laptop"]).await;
    get(&d, ALICE, &b64(from_laptop.id()))
        .await
        .expect_success("alice signs in on the desktop with her laptop's passkey");
    // Bob made on the desktop: reaches Bob's laptop, nobody else.
    let bob_desktop = create(&d, BOB, "bob-desktop").await;
    mesh::eventually(
        std::time::Duration::from_secs(20),
        "bob's laptop",
        async || (device_names(&laptop_b).await == ["bob-desktop"]).then_some(()),
    )
    .await
    .expect("bob's desktop passkey reached his laptop");
    let options = json!({
        "challenge": "AAECAwQFBgcICQoLDA0ODw",
        "rpId": "example.com",
        "allowCredentials": [{"type": "public-key", "id": bob_desktop}],
        "userVerification": "discouraged",
    });
    laptop_b
        .daemon
        .cli_with_stdin(
            &["--json", "get", "--origin", ORIGIN, "--options", "-"],
            &options.to_string(),
        )
        .await
        .expect("cli")
        .expect_success("bob signs in on his laptop with the desktop's passkey");
    assert_eq!(names(&d, ALICE).await, ["alice-laptop"]);
    assert_eq!(names(&d, BOB).await, ["bob-desktop"]);
    assert_eq!(device_names(&laptop_a).await, ["alice-laptop"]);
    assert_eq!(get(&d, BOB, &b64(from_laptop.id())).await.code, Some(1));

    // Bob's laptop, paired with Bob's vault only, writes to Alice's vault: ignored before any vault sees it.
    laptop_b.daemon.stop().await.expect("stop bob's laptop");
    let identity = passmesh_daemon::pairing::device_identity(
        laptop_b.daemon.state_dir(),
        passmesh_daemon::custody::keystore::Choice::Software,
        &passmesh_daemon::custody::keystore::TpmOptions::default(),
    )
    .await
    .expect("bob's laptop identity");
    let desktop: transport::PeerId = sa["deviceId"].as_str().expect("id").parse().expect("peer");
    let (host, mut events) = crate::sync::own_host(&identity, desktop).await;
    let addr = sa["listenAddrs"][0].as_str().expect("listen addr");
    host.dial(format!("{addr}/p2p/{desktop}").parse().expect("multiaddr"))
        .await
        .expect("dial the desktop");
    let mut seen = Vec::new();
    let greeting = crate::sync::wait_event(&mut events, LIMIT, &mut seen, |e| {
        matches!(e, transport::Event::Message { .. })
    })
    .await
    .unwrap_or_else(|| panic!("the desktop never greeted bob's laptop: {seen:?}"));
    let transport::Event::Message { bytes, .. } = greeting else {
        unreachable!("matched above")
    };
    // What the desktop sends is framed with Bob's vault id, never Alice's.
    assert_eq!(bytes[..16], hex_bytes(sb["vaultId"].as_str().expect("id")));
    let mut forged = hex_bytes(sa["vaultId"].as_str().expect("id"));
    forged.extend_from_slice(&bytes[16..]);
    host.send(desktop, forged).await.expect("send");
    // Ignored before any vault sees it (the connection stays for Bob's vault).
    mesh::eventually(LIMIT, "the desktop ignores the forged frame", async || {
        d.log()
            .contains("a sync message was ignored: it is not for a vault this device shares")
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", d.log_tail()));
    host.shutdown().await.expect("shutdown");
    drop(events);
    assert_eq!(names(&d, ALICE).await, ["alice-laptop"]);
    assert_eq!(status(&d, ALICE).await["passkeys"], 1);

    // After a restart of the desktop, Alice's devices find each other again and keep syncing.
    d.restart().await.expect("restart");
    let again = crate::register_user(&mut ca, &rp, "alice-laptop-2").await;
    names_become(&d, ALICE, &["alice-laptop", "alice-laptop-2"]).await;
    get(&d, ALICE, &b64(again.id()))
        .await
        .expect_success("alice's second passkey signs on the desktop after its restart");
    assert_eq!(names(&d, BOB).await, ["bob-desktop"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_of_one_machine_cannot_share_a_vault_or_pair_with_each_other() {
    require_root();
    let d = system_daemon(None).await;
    let laptop = pairing::Device::start().await.expect("laptop");
    join_as(&d, ALICE, &laptop, "desktop").await;
    // Bob joining the same vault on the same machine is refused, and so is a code made on this machine.
    let mut invite = laptop.invite(&["--expires", "60"], "y\n").expect("invite");
    let uri = invite.uri().await.expect("code");
    let refused = cli(&d, BOB, &["join", &uri, "--name", "bob"], "").await;
    assert_ne!(refused.code, Some(0), "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("already on this device under another user"),
        "{refused:?}"
    );
    drop(invite);
    let opened = raw(
        &d,
        ALICE,
        &json!({"id": 1, "type": "pairInvite", "expiresSecs": 30}),
    )
    .await;
    let own = opened["uri"].as_str().unwrap_or_else(|| panic!("{opened}"));
    let refused = raw(&d, BOB, &json!({"id": 2, "type": "pairJoin", "uri": own})).await;
    assert_eq!(refused["ok"], false, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("made by this device")),
        "{refused}"
    );
    // Alice's pairing is hers: Bob sees none and cannot confirm it.
    let progress = raw(
        &d,
        BOB,
        &json!({"id": 3, "type": "pairProgress", "since": 0}),
    )
    .await;
    assert_eq!(progress["events"], json!([]), "{progress}");
    let confirm = raw(
        &d,
        BOB,
        &json!({"id": 4, "type": "pairConfirm", "accept": true}),
    )
    .await;
    assert_eq!(confirm["ok"], false, "{confirm}");
    assert!(names(&d, BOB).await.is_empty());
    assert!(
        status(&d, BOB).await["peers"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "bob has no devices"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keystore_migrate_system_moves_every_vault_and_the_machine_identity_to_the_tpm() {
    require_root();
    let tpm = passmesh_tests::Swtpm::start().unwrap_or_else(|e| panic!("swtpm: {e:#}"));
    let tcti = tpm.tcti();
    let mut d = system_daemon(None).await;
    let a = create(&d, ALICE, "alice").await;
    let b = create(&d, BOB, "bob").await;
    let before = status(&d, ALICE).await;
    assert_eq!(before["keystore"], "software", "{before}");
    let state = d.state_dir().to_owned();
    // `passmesh --json keystore migrate --to tpm --system` on the state in `dir`.
    let migrate_in = async |dir: &Path| {
        passmesh_tests::run_cli(
            Path::new("/nonexistent.sock"),
            &[
                "--json",
                "keystore",
                "migrate",
                "--to",
                "tpm",
                "--system",
                "--state-dir",
                dir.to_str().expect("utf-8"),
                "--tpm-tcti",
                &tcti,
            ],
            None,
        )
        .await
        .expect("cli")
    };
    let migrate = async || migrate_in(&state).await;

    // Run by another user than the state's owner, it refuses (the new files would not be the service's).
    let foreign = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(foreign.path().join("machine")).expect("mkdir");
    std::os::unix::fs::chown(foreign.path(), Some(ALICE), Some(ALICE)).expect("chown");
    let out = migrate_in(foreign.path()).await;
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("sudo -u passmesh"), "{out:?}");

    // While the service runs, nothing is touched.
    let refused = migrate().await;
    assert_ne!(refused.code, Some(0), "{refused:?}");
    assert!(refused.stderr.contains("in use"), "{refused:?}");
    d.stop().await.expect("stop");
    assert!(
        crate::tpm::files_containing(&state, crate::tpm::TPM_TAG).is_empty(),
        "something was sealed by the TPM while the service ran"
    );

    let out = migrate().await;
    let report = out.json("migrate");
    assert_eq!(report["ok"], true, "{out:?}");
    let mut resealed: Vec<Value> = report["resealed"]
        .as_array()
        .expect("resealed")
        .iter()
        .map(|r| r["uid"].clone())
        .collect();
    resealed.sort_by_key(Value::to_string);
    // uid 0's vault comes from the harness's readiness probe (run as root).
    assert_eq!(
        resealed,
        [json!(0), json!(ALICE), json!(BOB), Value::Null],
        "{report}"
    );
    // Nothing software-sealed is left anywhere in the state directory.
    assert_eq!(
        crate::tpm::files_containing(&state, crate::tpm::SOFTWARE_TAG),
        Vec::<std::path::PathBuf>::new()
    );
    assert!(!crate::tpm::files_containing(&state, crate::tpm::TPM_TAG).is_empty());

    // The service on the TPM: same device, every user's passkeys sign.
    let t = system_daemon_with(
        None,
        DaemonOptions {
            keystore: "tpm".to_owned(),
            state_dir: Some(state.clone()),
            extra_args: vec!["--tpm-tcti".to_owned(), tcti.clone()],
            ..DaemonOptions::default()
        },
    )
    .await;
    let after = status(&t, ALICE).await;
    assert_eq!(after["keystore"], "tpm", "{after}");
    assert_eq!(
        after["deviceId"], before["deviceId"],
        "the machine identity moved along"
    );
    assert_eq!(names(&t, ALICE).await, ["alice"]);
    assert_eq!(names(&t, BOB).await, ["bob"]);
    get(&t, ALICE, &a)
        .await
        .expect_success("alice signs after the move");
    get(&t, BOB, &b)
        .await
        .expect_success("bob signs after the move");
    drop(t);
    drop(d);
}
