//! Measures the vault at 10,000 passkeys: insert, save, load, incremental save, sync, memory.
//!
//! Run in release: `cargo run --release -p passmesh-crdt --example vault_bench [N]`.

use std::error::Error;
use std::time::{Duration, Instant};

use passmesh_crdt::{Epoch, Keyring, NewPasskey, SyncState, Vault, VaultId, VaultKey};
use rand::RngExt;
use zeroize::Zeroizing;

fn passkey(i: usize) -> NewPasskey {
    let mut rng = rand::rng();
    NewPasskey {
        credential_id: rng.random::<[u8; 32]>().to_vec(),
        rp_id: format!("site{}.example.com", i % 500),
        user_handle: rng.random::<[u8; 32]>().to_vec(),
        user_name: format!("user{i}@example.com"),
        user_display_name: format!("User Number {i}"),
        private_key: Zeroizing::new(rng.random::<[u8; 32]>().to_vec()),
        created_at_ms: 1_700_000_000_000 + i as u64,
    }
}

/// What the sealed values of one record weigh: the core (version, six u16-length-prefixed fields, creation
/// time) and the update time, each with a 24-byte nonce and a 16-byte tag.
fn sealed_size(p: &NewPasskey) -> usize {
    let fields = [
        p.credential_id.len(),
        p.rp_id.len(),
        p.user_handle.len(),
        p.user_name.len(),
        p.user_display_name.len(),
        p.private_key.len(),
    ];
    let core = 1 + fields.iter().map(|l| l + 2).sum::<usize>() + 8;
    (core + 40) + (8 + 40)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs the sync protocol between two replicas until both are quiet; returns (messages, bytes).
fn sync(
    a: &mut Vault,
    sa: &mut SyncState,
    b: &mut Vault,
    sb: &mut SyncState,
) -> Result<(usize, usize), Box<dyn Error>> {
    let (mut messages, mut bytes) = (0, 0);
    loop {
        let m1 = a.generate_sync_message(sa);
        if let Some(m) = &m1 {
            messages += 1;
            bytes += m.len();
            b.receive_sync_message(sb, m)?;
        }
        let m2 = b.generate_sync_message(sb);
        if let Some(m) = &m2 {
            messages += 1;
            bytes += m.len();
            a.receive_sync_message(sa, m)?;
        }
        if m1.is_none() && m2.is_none() {
            return Ok((messages, bytes));
        }
    }
}

/// Child mode: loads the vault in `path` with the key in `key_hex` and reports resident memory.
fn rss_child(path: &str, key_hex: &str) -> Result<(), Box<dyn Error>> {
    let bytes = std::fs::read(path)?;
    let mut key = [0u8; 32];
    for (k, pair) in key.iter_mut().zip(key_hex.as_bytes().chunks(2)) {
        *k = u8::from_str_radix(std::str::from_utf8(pair)?, 16)?;
    }
    let before = rss_kib().unwrap_or(0);
    let vault = Vault::load(&bytes, Keyring::new(Epoch(0), VaultKey::from_bytes(key)))?;
    drop(bytes);
    let after = rss_kib().unwrap_or(0);
    println!(
        "resident set of a fresh process: {} MiB before load, {} MiB holding the {}-passkey vault (+{} MiB)",
        before / 1024,
        after / 1024,
        vault.len(),
        after.saturating_sub(before) / 1024
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, mode, path, key] = args.as_slice()
        && mode == "--rss-child"
    {
        return rss_child(path, key);
    }
    let n: usize = args
        .get(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    let keyring = Keyring::new(Epoch(0), VaultKey::generate());
    let vault_id = VaultId::random();
    println!("vault_bench: {n} passkeys");

    // Insert, one change per passkey, as the daemon does.
    let inputs: Vec<NewPasskey> = (0..n).map(passkey).collect();
    let sealed_total: usize = inputs.iter().map(sealed_size).sum();
    let creds: Vec<Vec<u8>> = inputs.iter().map(|p| p.credential_id.clone()).collect();
    let mut vault = Vault::create(vault_id, keyring.clone())?;
    let mut per_insert = Vec::with_capacity(n);
    let start = Instant::now();
    for (i, p) in inputs.into_iter().enumerate() {
        let t = Instant::now();
        vault.insert(p, 1_700_000_000_000 + i as u64)?;
        per_insert.push(t.elapsed());
    }
    let total = start.elapsed();
    println!(
        "insert x{n}: total {}, median {}, p99 {}",
        ms(total),
        us(median(per_insert.clone())),
        us(pct(per_insert, 0.99))
    );

    // Full save.
    let t = Instant::now();
    let saved = vault.save();
    println!(
        "save: {} bytes ({:.0} B/passkey; the sealed values alone {} bytes), {}",
        saved.len(),
        saved.len() as f64 / n as f64,
        sealed_total,
        ms(t.elapsed())
    );

    // Load: the whole vault, and the automerge part alone.
    let mut loads = Vec::new();
    let mut am_loads = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let v = Vault::load(&saved, keyring.clone())?;
        loads.push(t.elapsed());
        assert_eq!(v.len(), n);
        let t = Instant::now();
        let doc = automerge::Automerge::load(&saved)?;
        am_loads.push(t.elapsed());
        drop(doc);
    }
    println!(
        "load: median {} (min {}, max {}); automerge::Automerge::load alone: median {}",
        ms(median(loads.clone())),
        ms(loads.iter().min().copied().unwrap_or_default()),
        ms(loads.iter().max().copied().unwrap_or_default()),
        ms(median(am_loads))
    );

    // Memory of a process holding nothing but the loaded vault.
    let path = std::env::temp_dir().join(format!("vault_bench_{}.bin", std::process::id()));
    std::fs::write(&path, &saved)?;
    let key_hex: String = keyring
        .current_key()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let child = std::process::Command::new(std::env::current_exe()?)
        .arg("--rss-child")
        .arg(&path)
        .arg(&key_hex)
        .output();
    let _ = std::fs::remove_file(&path);
    print!("{}", String::from_utf8_lossy(&child?.stdout));

    // Reads from the index.
    let loaded = Vault::load(&saved, keyring.clone())?;
    let t = Instant::now();
    let mut found = 0;
    for c in &creds {
        found += usize::from(loaded.find_by_credential_id(c).is_some());
    }
    let per_find = t.elapsed() / n as u32;
    let t = Instant::now();
    let rp_hits: usize = (0..500)
        .map(|i| loaded.find_by_rp(&format!("site{i}.example.com")).count())
        .sum();
    let per_rp = t.elapsed() / 500;
    println!(
        "find_by_credential_id: {} per lookup ({found} found); find_by_rp: {} per rp ({rp_hits} hits)",
        us(per_find),
        us(per_rp)
    );
    drop(loaded);

    // Insert + save_incremental on the full vault, as the daemon persists each create.
    let _ = vault.save_incremental();
    let mut per_op = Vec::new();
    let mut chunk_bytes = 0;
    for i in 0..1_000 {
        let t = Instant::now();
        vault.insert(passkey(n + i), 1)?;
        let chunk = vault.save_incremental();
        per_op.push(t.elapsed());
        chunk_bytes += chunk.len();
    }
    println!(
        "insert + save_incremental at {n}: median {}, p99 {}, {} bytes per chunk",
        us(median(per_op.clone())),
        us(pct(per_op, 0.99)),
        chunk_bytes / 1_000
    );

    // A new device syncs the whole vault.
    let mut fresh = Vault::create(vault_id, keyring.clone())?;
    let (mut s_old, mut s_new) = (SyncState::new(), SyncState::new());
    let t = Instant::now();
    let (messages, bytes) = sync(&mut vault, &mut s_old, &mut fresh, &mut s_new)?;
    let elapsed = t.elapsed();
    assert_eq!(fresh.len(), vault.len());
    println!(
        "initial sync of {} passkeys: {}, {messages} messages, {bytes} bytes on the wire ({:.2}x the sealed values)",
        vault.len(),
        ms(elapsed),
        bytes as f64 / (sealed_total as f64 * vault.len() as f64 / n as f64)
    );

    // One new passkey reaches an up-to-date replica over a live connection (sync states kept).
    let mut per_sync = Vec::new();
    for i in 0..200 {
        vault.insert(passkey(2 * n + i), 1)?;
        let t = Instant::now();
        sync(&mut vault, &mut s_old, &mut fresh, &mut s_new)?;
        per_sync.push(t.elapsed());
    }
    println!(
        "one new passkey into a {}-passkey replica, live sync states: median {}, p99 {}",
        fresh.len(),
        ms(median(per_sync.clone())),
        ms(pct(per_sync, 0.99))
    );
    // The same after a reconnect: fresh states exchange bloom filters over the whole history.
    let mut per_sync = Vec::new();
    for i in 0..20 {
        vault.insert(passkey(3 * n + i), 1)?;
        let t = Instant::now();
        sync(
            &mut vault,
            &mut SyncState::new(),
            &mut fresh,
            &mut SyncState::new(),
        )?;
        per_sync.push(t.elapsed());
    }
    println!(
        "the same with fresh sync states (after a reconnect): median {}, p99 {}",
        ms(median(per_sync.clone())),
        ms(pct(per_sync, 0.99))
    );
    Ok(())
}
