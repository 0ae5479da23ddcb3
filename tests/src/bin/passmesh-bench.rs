//! `passmesh-bench`: measures a real (release) `passmeshd` against the performance goals
//! of the product brief and prints one table.
//!
//! Run: `cargo run --release -p passmesh-tests --bin passmesh-bench [-- --quick]`.
//!
//! Measured: one raw ES256 signature (p256) as the floor; `get` over the socket with 1 and
//! 8 concurrent clients; durable `create`; a 10,000-passkey vault (load time, bytes on
//! disk, idle RSS, restart-to-serving time, RSS after restart); start-to-serving with the software keystore
//! and with the TPM keystore on a private swtpm (unbound and PCR-bound), with the daemon's own TPM timings.
//! Sync (also alone with `--sync`): propagation from a create on one paired daemon until `get` succeeds on the
//! other (loopback TCP), a fresh peer receiving a 10,000-passkey vault (time and sync bytes on the wire), and
//! removing a device from that vault: the key rotation with every record re-encrypted, and its sync bytes.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::Generate as _;
use passmesh_ipc::{
    Base64Url, Client, PublicKeyCredentialCreationOptionsJson,
    PublicKeyCredentialRequestOptionsJson,
};
use passmesh_tests::rp::{RegistrationOptions, RelyingParty, User, UserVerificationPolicy};
use passmesh_tests::{Daemon, DaemonOptions, Swtpm, mesh, ops};

const RP_ID: &str = "example.com";
const ORIGIN: &str = "https://login.example.com";
const CONCURRENT_CLIENTS: usize = 8;

struct Plan {
    sign_iterations: usize,
    get_duration: Duration,
    creates: usize,
    vault_size: usize,
    idle_wait: Duration,
    restarts: usize,
}

impl Plan {
    fn full() -> Plan {
        Plan {
            sign_iterations: 5_000,
            get_duration: Duration::from_secs(3),
            creates: 300,
            vault_size: 10_000,
            idle_wait: Duration::from_secs(2),
            restarts: 20,
        }
    }

    fn quick() -> Plan {
        Plan {
            sign_iterations: 500,
            get_duration: Duration::from_secs(1),
            creates: 50,
            vault_size: 1_000,
            idle_wait: Duration::from_millis(500),
            restarts: 5,
        }
    }
}

/// Latency samples with order statistics.
struct Samples(Vec<Duration>);

impl Samples {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    fn median(&self) -> Duration {
        self.percentile(0.5)
    }

    fn p99(&self) -> Duration {
        self.percentile(0.99)
    }
}

/// One line of the result table.
struct Row {
    metric: String,
    value: String,
    target: String,
    verdict: &'static str,
}

fn row(metric: impl Into<String>, value: impl Into<String>) -> Row {
    Row {
        metric: metric.into(),
        value: value.into(),
        target: "-".to_owned(),
        verdict: "",
    }
}

fn judged(
    metric: impl Into<String>,
    value: impl Into<String>,
    target: impl Into<String>,
    ok: bool,
) -> Row {
    Row {
        metric: metric.into(),
        value: value.into(),
        target: target.into(),
        verdict: if ok { "PASS" } else { "FAIL" },
    }
}

fn fmt_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 10_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else {
        format!("{:.2} s", ns as f64 / 1e9)
    }
}

fn fmt_bytes(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

/// A signature over as many bytes as an assertion signs: authenticatorData (37 bytes)
/// followed by the SHA-256 of clientDataJSON (32 bytes).
fn bench_raw_signature(iterations: usize) -> Samples {
    let key = SigningKey::generate();
    let mut message = [0u8; 69];
    let mut samples = Vec::with_capacity(iterations);
    for i in 0..iterations + iterations / 10 {
        message[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let start = Instant::now();
        let signature: Signature = key.sign(&message);
        let elapsed = start.elapsed();
        std::hint::black_box(signature);
        // The first tenth warms caches and CPU frequency.
        if i >= iterations / 10 {
            samples.push(elapsed);
        }
    }
    Samples(samples)
}

/// Request options with a fresh challenge per call, as a page would send.
fn with_challenge(
    base: &PublicKeyCredentialRequestOptionsJson,
    n: u64,
) -> PublicKeyCredentialRequestOptionsJson {
    let mut options = base.clone();
    let mut challenge = n.to_le_bytes().to_vec();
    challenge.resize(32, 0xc4);
    options.challenge = Base64Url(challenge);
    options
}

/// Creation options for user number `n`, from a template made once by the RP.
fn for_user(
    template: &PublicKeyCredentialCreationOptionsJson,
    n: u64,
) -> PublicKeyCredentialCreationOptionsJson {
    let mut options = template.clone();
    options.user.id = Base64Url(format!("bench-user-{n}").into_bytes());
    options.user.name = format!("user{n}@example.com");
    options.user.display_name = format!("User {n}");
    let mut challenge = n.to_be_bytes().to_vec();
    challenge.resize(32, 0x3a);
    options.challenge = Base64Url(challenge);
    options
}

/// Runs `get` back to back on one connection for `duration`.
async fn get_loop(
    mut client: Client,
    base: PublicKeyCredentialRequestOptionsJson,
    duration: Duration,
    seed: u64,
) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::new();
    let started = Instant::now();
    let mut n = seed;
    while started.elapsed() < duration {
        let options = with_challenge(&base, n);
        n += 1;
        let t = Instant::now();
        ops::get(&mut client, ORIGIN, options, None)
            .await
            .context("get failed during the benchmark")?;
        latencies.push(t.elapsed());
    }
    Ok(latencies)
}

/// `get` throughput and latency with `clients` concurrent connections.
async fn bench_get(
    daemon: &Daemon,
    base: &PublicKeyCredentialRequestOptionsJson,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<(Samples, f64)> {
    let mut tasks = Vec::new();
    for i in 0..clients {
        let client = daemon.client().await?;
        tasks.push(tokio::spawn(get_loop(
            client,
            base.clone(),
            duration,
            (i as u64) << 40,
        )));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.context("get task panicked")??);
    }
    let elapsed = started.elapsed();
    let rate = all.len() as f64 / elapsed.as_secs_f64();
    Ok((Samples(all), rate))
}

/// Sequential durable creates.
async fn bench_create(
    daemon: &Daemon,
    template: &PublicKeyCredentialCreationOptionsJson,
    count: usize,
) -> anyhow::Result<Samples> {
    let mut client = daemon.client().await?;
    let mut samples = Vec::with_capacity(count);
    for n in 0..count as u64 {
        let options = for_user(template, 1_000_000 + n);
        let t = Instant::now();
        ops::create(&mut client, ORIGIN, options, None)
            .await
            .context("create failed during the benchmark")?;
        samples.push(t.elapsed());
    }
    Ok(Samples(samples))
}

/// Creates `total` passkeys over `clients` parallel connections; returns the wall time.
async fn fill_vault(
    daemon: &Daemon,
    template: &PublicKeyCredentialCreationOptionsJson,
    total: usize,
    clients: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let mut client = daemon.client().await?;
        let template = template.clone();
        let share: Vec<u64> = (0..total as u64)
            .filter(|n| *n as usize % clients == i)
            .collect();
        tasks.push(tokio::spawn(async move {
            for n in share {
                ops::create(&mut client, ORIGIN, for_user(&template, n), None)
                    .await
                    .context("create failed while filling the vault")?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await.context("fill task panicked")??;
    }
    Ok(started.elapsed())
}

/// Request options for a `get` of exactly `credential_id`.
fn get_options(
    credential_id: &[u8],
    n: u64,
) -> anyhow::Result<PublicKeyCredentialRequestOptionsJson> {
    let mut challenge = n.to_le_bytes().to_vec();
    challenge.resize(32, 0x5e);
    Ok(serde_json::from_value(serde_json::json!({
        "challenge": passmesh_tests::rp::b64url(&challenge),
        "rpId": RP_ID,
        "allowCredentials": [{"type": "public-key", "id": passmesh_tests::rp::b64url(credential_id)}],
        "userVerification": "discouraged",
    }))?)
}

/// Propagation over paired loopback daemons, and a fresh peer receiving `plan.vault_size` passkeys.
async fn bench_sync(rows: &mut Vec<Row>, plan: &Plan) -> anyhow::Result<()> {
    let rp = RelyingParty::new(RP_ID, ORIGIN)?;
    let (template, _) =
        rp.begin_registration(&User::new("sync"), &RegistrationOptions::default())?;
    let mut nodes = mesh::paired(2).await?;
    mesh::all_connected(&[&nodes[0], &nodes[1]], Duration::from_secs(30)).await?;
    let mut ca = nodes[0].daemon.client().await?;
    let mut cb = nodes[1].daemon.client().await?;
    let propagations = plan.creates.min(200);
    let mut samples = Vec::with_capacity(propagations);
    for n in 0..propagations as u64 {
        let made = ops::create(&mut ca, ORIGIN, for_user(&template, 7_000_000 + n), None).await?;
        let acked = Instant::now();
        let request = get_options(&made.raw_id.0, n)?;
        loop {
            if ops::get(&mut cb, ORIGIN, request.clone(), None)
                .await
                .is_ok()
            {
                break;
            }
            if acked.elapsed() > Duration::from_secs(10) {
                bail!("passkey {n} did not reach the peer within 10 s");
            }
        }
        samples.push(acked.elapsed());
    }
    let samples = Samples(samples);
    rows.push(judged(
        format!("propagation create→usable on peer, median ({propagations})"),
        fmt_duration(samples.median()),
        "< 100 ms",
        samples.median() < Duration::from_millis(100),
    ));
    rows.push(row(
        "propagation create→usable on peer, p99",
        fmt_duration(samples.p99()),
    ));
    drop(nodes);

    // A fresh peer: B is paired but stopped while A fills its vault. C, stopped throughout, is removed below.
    nodes = mesh::paired(3).await?;
    nodes[1].daemon.stop().await?;
    nodes[2].daemon.stop().await?;
    let total = plan.vault_size;
    fill_vault(&nodes[0].daemon, &template, total, CONCURRENT_CLIENTS).await?;
    let mut ca = nodes[0].daemon.client().await?;
    let listed = ops::list(&mut ca, None).await?;
    let records = encrypted_records(&listed);
    let started = Instant::now();
    nodes[1].daemon.restart().await?;
    let b = &nodes[1];
    loop {
        if let Ok(s) = b.status().await
            && s.passkeys as usize >= total
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the fresh peer did not receive {total} passkeys within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    let s = nodes[0].status().await?;
    let wire: u64 = s
        .peers
        .iter()
        .map(|p| p.bytes_sent + p.bytes_received)
        .sum();
    rows.push(judged(
        format!("{total} passkeys to a fresh peer (incl. its start)"),
        fmt_duration(took),
        "< 3 s",
        took < Duration::from_secs(3),
    ));
    let ratio = wire as f64 / records.max(1) as f64;
    rows.push(judged(
        "  sync bytes on the wire (both ways) / encrypted records",
        format!("{} / {} = {ratio:.2}x", fmt_bytes(wire), fmt_bytes(records)),
        "≤ 1.5x",
        ratio <= 1.5,
    ));
    bench_rotation(rows, &nodes, total, records, wire).await
}

/// The encrypted records: each one's sealed core (credential id, rp id, user handle and names, private key,
/// creation and update times) with its 4-byte epoch, 24-byte nonce and 16-byte tag.
fn encrypted_records(listed: &[passmesh_ipc::PasskeyInfo]) -> u64 {
    listed
        .iter()
        .map(|p| {
            let core = p.credential_id.0.len()
                + p.rp_id.len()
                + p.user_handle.0.len()
                + p.user_name.len()
                + p.user_display_name.len()
                + 32
                + 16;
            (core + 4 + 40) as u64
        })
        .sum()
}

/// A backup made, read over the socket in chunks, written and fsynced, as `passmesh backup --out` does; the
/// time it took and the file.
async fn backup_to_file(
    c: &mut passmesh_ipc::Client,
    dir: &Path,
) -> anyhow::Result<(Duration, Vec<u8>)> {
    use passmesh_ipc::{RequestBody, ResponseBody};
    let started = Instant::now();
    let ResponseBody::Backup { size, .. } = c.call(RequestBody::Backup { pin: None }).await? else {
        bail!("unexpected answer to backup");
    };
    let mut file = Vec::with_capacity(size as usize);
    loop {
        let ResponseBody::BackupRead { data, end } = c
            .call(RequestBody::BackupRead {
                offset: file.len() as u64,
            })
            .await?
        else {
            bail!("unexpected answer to backupRead");
        };
        file.extend_from_slice(&data.0);
        if end {
            break;
        }
    }
    passmesh_daemon::backup::write_atomic(dir, "bench.age", &file)?;
    Ok((started.elapsed(), file))
}

/// Recovery with an `n`-passkey vault: recovery set up on the first day (before the passkeys), a backup to a
/// file, its size, restoring it on a fresh daemon with the phrase (handed over, opened, loaded and stored, as
/// `passmesh restore` does); then the phrase replaced (a key rotation) and the file's size again.
async fn bench_recovery(
    rows: &mut Vec<Row>,
    template: &PublicKeyCredentialCreationOptionsJson,
    n: usize,
) -> anyhow::Result<()> {
    use passmesh_ipc::{Base64Url, RequestBody, ResponseBody};
    let daemon = Daemon::start(DaemonOptions::default()).await?;
    let (code, setup, err) =
        passmesh_tests::recovery::setup(daemon.socket_path(), false, None, false).await?;
    if code != Some(0) {
        bail!("recovery setup failed: {err}");
    }
    eprintln!("recovery: filling a vault with {n} passkeys…");
    fill_vault(&daemon, template, n, CONCURRENT_CLIENTS).await?;
    let mut c = daemon.client().await?;
    let records = encrypted_records(&ops::list(&mut c, None).await?);
    let shelf = tempfile::tempdir()?;
    eprintln!("backup of {n} passkeys…");
    let (backup, file) = backup_to_file(&mut c, shelf.path()).await?;
    rows.push(judged(
        format!("backup of {n} passkeys to a file, durable"),
        fmt_duration(backup),
        "< 1 s",
        backup < Duration::from_secs(1),
    ));
    let ratio = file.len() as f64 / records.max(1) as f64;
    rows.push(judged(
        "  backup file / encrypted records",
        format!(
            "{} / {} = {ratio:.2}x",
            fmt_bytes(file.len() as u64),
            fmt_bytes(records)
        ),
        "< 1.5x",
        ratio < 1.5,
    ));
    let fresh = Daemon::start(DaemonOptions::default()).await?;
    let mut f = fresh.client().await?;
    eprintln!("restore of {n} passkeys…");
    let started = Instant::now();
    for (i, chunk) in file.chunks(passmesh_ipc::message::MAX_CHUNK).enumerate() {
        f.call(RequestBody::RestoreWrite {
            offset: (i * passmesh_ipc::message::MAX_CHUNK) as u64,
            data: Base64Url(chunk.to_vec()),
        })
        .await?;
    }
    let ResponseBody::Restore { passkeys, .. } = f
        .call(RequestBody::Restore {
            phrase: passmesh_ipc::Phrase::new(setup.phrase.clone()),
            name: None,
        })
        .await?
    else {
        bail!("unexpected answer to restore");
    };
    let restore = started.elapsed();
    if passkeys != n as u64 {
        bail!("the restore brought back {passkeys} passkeys, not {n}");
    }
    rows.push(judged(
        format!("restore of {n} passkeys from the file, durable"),
        fmt_duration(restore),
        "< 1 s",
        restore < Duration::from_secs(1),
    ));
    let phrase = passmesh_daemon::recovery::Phrase::parse(&setup.phrase)?;
    let started = Instant::now();
    phrase.derive()?;
    rows.push(row(
        "  of which the recovery key (argon2id, 64 MiB, 3 passes)",
        fmt_duration(started.elapsed()),
    ));
    drop(f);
    drop(fresh);
    // A key rotation re-encrypts every record; the document's history keeps the old ciphertexts too.
    let (code, _, err) =
        passmesh_tests::recovery::setup(daemon.socket_path(), true, None, false).await?;
    if code != Some(0) {
        bail!("recovery rotate failed: {err}");
    }
    let (_, file) = backup_to_file(&mut c, shelf.path()).await?;
    let ratio = file.len() as f64 / records.max(1) as f64;
    rows.push(row(
        "  after one key rotation: backup file / encrypted records",
        format!(
            "{} / {} = {ratio:.2}x",
            fmt_bytes(file.len() as u64),
            fmt_bytes(records)
        ),
    ));
    Ok(())
}

/// Removing device C from A's `total`-passkey vault: the new epoch and every record re-encrypted under it, on
/// disk before the answer; then until B holds all of it; and the sync bytes that took.
async fn bench_rotation(
    rows: &mut Vec<Row>,
    nodes: &[mesh::Node],
    total: usize,
    records: u64,
    wire_before: u64,
) -> anyhow::Result<()> {
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut ca = a.daemon.client().await?;
    eprintln!("rotating the key of {total} passkeys…");
    let started = Instant::now();
    match ca
        .call(passmesh_ipc::RequestBody::DeviceRemove {
            device_id: c.peer_id.clone(),
            pin: None,
        })
        .await?
    {
        passmesh_ipc::ResponseBody::DeviceRemove { epoch: Some(_) } => {}
        other => bail!("removing C answered {other:?}"),
    }
    let local = started.elapsed();
    loop {
        let s = a.status().await?;
        if s.peers
            .iter()
            .any(|p| p.device_id == b.peer_id && p.pending_changes == 0)
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the peer did not receive the rotation within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let everywhere = started.elapsed();
    let s = a.status().await?;
    let wire: u64 = s
        .peers
        .iter()
        .map(|p| p.bytes_sent + p.bytes_received)
        .sum::<u64>()
        .saturating_sub(wire_before);
    rows.push(judged(
        format!("remove a device: rotate and re-encrypt {total} passkeys, durable"),
        fmt_duration(local),
        "< 2 s",
        local < Duration::from_secs(2),
    ));
    rows.push(row(
        "  until the other device holds the new epoch",
        fmt_duration(everywhere),
    ));
    let ratio = wire as f64 / records.max(1) as f64;
    rows.push(judged(
        "  rotation sync bytes (both ways) / encrypted records",
        format!("{} / {} = {ratio:.2}x", fmt_bytes(wire), fmt_bytes(records)),
        "< 2x",
        ratio < 2.0,
    ));
    Ok(())
}

/// `us=N` values of the daemon's log lines containing `message`, as durations.
fn logged_micros(log: &str, message: &str) -> Samples {
    Samples(
        log.lines()
            .filter(|l| l.contains(message))
            .filter_map(|l| l.split("us=").nth(1))
            .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(Duration::from_micros)
            .collect(),
    )
}

/// Start-to-serving for each keystore: the first start (creating and sealing a new vault), then the median
/// and p99 of `restarts` restarts (unsealing). With the TPM, also the daemon's own TPM timings from its log.
async fn bench_keystores(rows: &mut Vec<Row>, restarts: usize) -> anyhow::Result<()> {
    let tpm = Swtpm::start()?;
    let software = DaemonOptions::default();
    let plain = tpm.daemon_options();
    let mut bound = tpm.daemon_options();
    bound.config_toml = Some("[tpm]\npcrs = [7, 14]\n".to_owned());
    for (name, options) in [
        ("software", software),
        ("TPM (swtpm)", plain),
        ("TPM (swtpm), PCRs 7+14", bound),
    ] {
        let mut d = Daemon::start(options).await?;
        let first = d.startup_time();
        let mut samples = Vec::with_capacity(restarts);
        for _ in 0..restarts {
            d.restart().await?;
            samples.push(d.startup_time());
        }
        let samples = Samples(samples);
        rows.push(row(
            format!("start to serving, {name}: first start (seal)"),
            fmt_duration(first),
        ));
        rows.push(judged(
            format!("start to serving, {name}: restart median (unseal)"),
            fmt_duration(samples.median()),
            "< 300 ms",
            samples.median() < Duration::from_millis(300),
        ));
        rows.push(row(
            format!("start to serving, {name}: restart p99"),
            fmt_duration(samples.p99()),
        ));
        let log = d.log();
        let ready = logged_micros(&log, "TPM ready");
        if !ready.0.is_empty() {
            let seal = logged_micros(&log, "sealed a secret with the TPM");
            let unseal = logged_micros(&log, "unsealed a secret with the TPM");
            rows.push(row(
                format!("  {name}: connect + flush + primary, median"),
                fmt_duration(ready.median()),
            ));
            if !seal.0.is_empty() {
                rows.push(row(
                    format!("  {name}: seal (create)"),
                    fmt_duration(seal.median()),
                ));
            }
            rows.push(row(
                format!("  {name}: unseal (load + unseal), median"),
                fmt_duration(unseal.median()),
            ));
        }
    }
    Ok(())
}

fn dir_size(path: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(path).with_context(|| format!("read {}", path.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS in /proc/PID/status")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("malformed VmRSS line")?
        .parse()?;
    Ok(kib * 1024)
}

/// The 1-minute load average: other work on the machine skews every number here.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

fn print_table(rows: &[Row]) {
    let w0 = rows
        .iter()
        .map(|r| r.metric.chars().count())
        .max()
        .unwrap_or(6)
        .max(6);
    let w1 = rows
        .iter()
        .map(|r| r.value.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let w2 = rows
        .iter()
        .map(|r| r.target.chars().count())
        .max()
        .unwrap_or(6)
        .max(6);
    println!(
        "| {:w0$} | {:>w1$} | {:w2$} | result |",
        "metric", "value", "target"
    );
    println!(
        "|{}|{}|{}|--------|",
        "-".repeat(w0 + 2),
        "-".repeat(w1 + 2),
        "-".repeat(w2 + 2)
    );
    for r in rows {
        println!(
            "| {:w0$} | {:>w1$} | {:w2$} | {:6} |",
            r.metric, r.value, r.target, r.verdict
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let sync_only = args.iter().any(|a| a == "--sync");
    let recovery_only = args.iter().any(|a| a == "--recovery");
    if let Some(other) = args
        .iter()
        .find(|a| !["--quick", "--sync", "--recovery"].contains(&a.as_str()))
    {
        bail!("unknown argument {other}; usage: passmesh-bench [--quick] [--sync | --recovery]");
    }
    let plan = if quick { Plan::quick() } else { Plan::full() };
    if sync_only {
        let mut rows = Vec::new();
        bench_sync(&mut rows, &plan).await?;
        print_table(&rows);
        return Ok(());
    }
    if recovery_only {
        let mut rows = Vec::new();
        let rp = RelyingParty::new(RP_ID, ORIGIN)?;
        let (template, _) =
            rp.begin_registration(&User::new("alice"), &RegistrationOptions::default())?;
        bench_recovery(&mut rows, &template, plan.vault_size).await?;
        print_table(&rows);
        return Ok(());
    }
    let load_before = load_average();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "passmesh-bench: {} run on {cores} cores; building/starting the daemon…",
        if quick { "quick" } else { "full" }
    );

    let mut rows = Vec::new();

    // 1. The floor: one raw ES256 signature.
    let raw_median = bench_raw_signature(plan.sign_iterations).median();
    rows.push(row("raw ES256 signature, median", fmt_duration(raw_median)));
    rows.push(row(
        "raw ES256 signatures/s (1 thread)",
        format!("{:.0}", 1.0 / raw_median.as_secs_f64()),
    ));

    // 2. get over the socket.
    let daemon = Daemon::start(DaemonOptions::default()).await?;
    rows.push(row(
        "start to serving, empty vault",
        fmt_duration(daemon.startup_time()),
    ));
    let rp = RelyingParty::new(RP_ID, ORIGIN)?;
    let mut client = daemon.client().await?;
    let alice = User::new("alice");
    let (creation, state) = rp.begin_registration(&alice, &RegistrationOptions::default())?;
    let template = creation.clone();
    let response = ops::create(&mut client, ORIGIN, creation, None).await?;
    let credential = rp.finish_registration(&response, &state)?;
    let (request, pending) = rp.begin_authentication(
        std::slice::from_ref(&credential),
        UserVerificationPolicy::Preferred,
    )?;
    // Benchmark only answers a relying party accepts.
    let assertion = ops::get(&mut client, ORIGIN, request.clone(), None).await?;
    rp.finish_authentication(&assertion, pending, &[])?;

    // Measured again right before the comparison, under the same machine load.
    let raw_median = bench_raw_signature(plan.sign_iterations).median();
    rows.push(row(
        "raw ES256 signature, median (before get)",
        fmt_duration(raw_median),
    ));
    eprintln!("get, 1 client…");
    let (one, one_rate) = bench_get(&daemon, &request, 1, plan.get_duration).await?;
    let ratio = one.median().as_secs_f64() / raw_median.as_secs_f64();
    rows.push(judged(
        "get, 1 client: median",
        fmt_duration(one.median()),
        format!("<= 3x raw ({})", fmt_duration(raw_median * 3)),
        ratio <= 3.0,
    ));
    rows.push(row(
        "get, 1 client: median / raw signature",
        format!("{ratio:.2}x"),
    ));
    rows.push(row("get, 1 client: p99", fmt_duration(one.p99())));
    rows.push(row("get, 1 client: ops/s", format!("{one_rate:.0}")));

    eprintln!("get, {CONCURRENT_CLIENTS} clients…");
    let (many, many_rate) =
        bench_get(&daemon, &request, CONCURRENT_CLIENTS, plan.get_duration).await?;
    rows.push(row(
        format!("get, {CONCURRENT_CLIENTS} clients: median"),
        fmt_duration(many.median()),
    ));
    rows.push(row(
        format!("get, {CONCURRENT_CLIENTS} clients: p99"),
        fmt_duration(many.p99()),
    ));
    rows.push(judged(
        format!("get, {CONCURRENT_CLIENTS} clients: total ops/s"),
        format!("{many_rate:.0}"),
        "> 4000/s",
        many_rate > 4000.0,
    ));

    // 3. Durable create.
    eprintln!("create x{}…", plan.creates);
    let creates = bench_create(&daemon, &template, plan.creates).await?;
    rows.push(judged(
        format!("durable create (x{}): median", plan.creates),
        fmt_duration(creates.median()),
        "< 5 ms",
        creates.median() < Duration::from_millis(5),
    ));
    rows.push(row(
        format!("durable create (x{}): p99", plan.creates),
        fmt_duration(creates.p99()),
    ));
    drop(client);
    drop(daemon);

    // 4. A large vault.
    let n = plan.vault_size;
    eprintln!("filling a vault with {n} passkeys…");
    let mut big = Daemon::start(DaemonOptions::default()).await?;
    let fill = fill_vault(&big, &template, n, CONCURRENT_CLIENTS).await?;
    let mut client = big.client().await?;
    let count = ops::status(&mut client).await?.passkeys;
    if count != n as u64 {
        bail!("the vault holds {count} passkeys after creating {n}");
    }
    drop(client);
    rows.push(row(
        format!("create {n} passkeys ({CONCURRENT_CLIENTS} clients)"),
        fmt_duration(fill),
    ));
    rows.push(row(
        "  creates/s while filling",
        format!("{:.0}", n as f64 / fill.as_secs_f64()),
    ));
    rows.push(row(
        format!("state dir size, {n} passkeys"),
        fmt_bytes(dir_size(big.state_dir())?),
    ));
    tokio::time::sleep(plan.idle_wait).await;
    let pid = big.pid().context("daemon pid")?;
    let rss = rss_bytes(pid)?;
    rows.push(judged(
        format!("idle RSS, {n} passkeys"),
        fmt_bytes(rss),
        "< 64 MiB",
        rss < 64 << 20,
    ));

    eprintln!("restarting…");
    big.restart().await?;
    let startup = big.startup_time();
    rows.push(judged(
        format!("restart: spawn to serving, {n} passkeys"),
        fmt_duration(startup),
        "< 300 ms",
        startup < Duration::from_millis(300),
    ));
    let mut client = big.client().await?;
    let count = ops::status(&mut client).await?.passkeys;
    if count != n as u64 {
        bail!("the vault holds {count} passkeys after a restart, not {n}");
    }
    drop(client);
    tokio::time::sleep(plan.idle_wait).await;
    let pid = big.pid().context("daemon pid")?;
    let rss = rss_bytes(pid)?;
    rows.push(judged(
        format!("RSS after restart, {n} passkeys"),
        fmt_bytes(rss),
        "< 64 MiB",
        rss < 64 << 20,
    ));
    drop(big);
    bench_recovery(&mut rows, &template, n).await?;

    // 5. Keystores: start to serving (first start seals, restarts unseal).
    eprintln!(
        "keystores: software and TPM (swtpm), {} restarts each…",
        plan.restarts
    );
    bench_keystores(&mut rows, plan.restarts).await?;

    println!(
        "\npassmesh-bench ({} run, {cores} cores, {} daemon, software keystore unless noted; \
         load average {load_before} before, {} after; the bench client shares the cores)\n",
        if quick { "quick" } else { "full" },
        // The daemon is built with the bench's own profile (see `bins`).
        if cfg!(debug_assertions) {
            "DEBUG"
        } else {
            "release"
        },
        load_average()
    );
    bench_sync(&mut rows, &plan).await?;
    print_table(&rows);
    Ok(())
}
