//! Convergence of three replicas under random operations and sync steps.
//!
//! Three replicas of one vault (same id and key) insert, remove, rename, add and remove devices, exchange sync
//! messages one at a time in random directions (each with its own per-peer sync state), merge, and replay old
//! messages. At the end, syncing every pair until nobody has anything to say must leave all three with the same
//! heads and the same visible state, and each index must equal one rebuilt from the saved document.

use passmesh_crdt::{
    Device, DeviceId, Epoch, Error, Keyring, NewPasskey, Passkey, RecordId, SyncState, Vault,
    VaultId, VaultKey,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use zeroize::Zeroizing;

const REPLICAS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Insert {
        at: usize,
        rp: u8,
    },
    Remove {
        at: usize,
        pick: usize,
    },
    Rename {
        at: usize,
        pick: usize,
        label: u8,
    },
    AddDevice {
        at: usize,
        device: u8,
        name: u8,
    },
    RemoveDevice {
        at: usize,
        device: u8,
    },
    /// One sync message from `from` to `to`, if `from` has one.
    Sync {
        from: usize,
        to: usize,
    },
    /// `to` receives again an earlier message from `from`.
    Replay {
        from: usize,
        to: usize,
        back: usize,
    },
    /// `to` merges all of `from` directly.
    Merge {
        from: usize,
        to: usize,
    },
}

fn replica() -> impl Strategy<Value = usize> {
    0..REPLICAS
}

fn pair() -> impl Strategy<Value = (usize, usize)> {
    (replica(), 1..REPLICAS).prop_map(|(from, d)| (from, (from + d) % REPLICAS))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (replica(), 0..4u8).prop_map(|(at, rp)| Op::Insert { at, rp }),
        1 => (replica(), any::<usize>()).prop_map(|(at, pick)| Op::Remove { at, pick }),
        2 => (replica(), any::<usize>(), 0..3u8).prop_map(|(at, pick, label)| Op::Rename { at, pick, label }),
        1 => (replica(), 0..3u8, 0..3u8).prop_map(|(at, device, name)| Op::AddDevice { at, device, name }),
        1 => (replica(), 0..3u8).prop_map(|(at, device)| Op::RemoveDevice { at, device }),
        6 => pair().prop_map(|(from, to)| Op::Sync { from, to }),
        1 => (pair(), any::<usize>()).prop_map(|((from, to), back)| Op::Replay { from, to, back }),
        1 => pair().prop_map(|(from, to)| Op::Merge { from, to }),
    ]
}

struct World {
    vaults: Vec<Vault>,
    /// `states[i][j]`: replica i's sync state for peer j.
    states: Vec<Vec<SyncState>>,
    /// `sent[i][j]`: every message i sent to j.
    sent: Vec<Vec<Vec<Vec<u8>>>>,
    clock: u64,
}

fn keyring() -> Keyring {
    Keyring::new(Epoch(0), VaultKey::from_bytes([0x5a; 32]))
}

/// Everything a user of a replica can observe, plus its heads.
type Visible = (
    Vec<Passkey>,
    Vec<Passkey>,
    Vec<(RecordId, Error)>,
    Vec<Device>,
    Vec<[u8; 32]>,
);

fn visible(v: &Vault) -> Visible {
    (
        v.passkeys().cloned().collect(),
        v.trashed().cloned().collect(),
        v.problems().to_vec(),
        v.devices(),
        v.heads(),
    )
}

impl World {
    fn new() -> Self {
        let id = VaultId::random();
        World {
            vaults: (0..REPLICAS)
                .map(|_| Vault::create(id, keyring()).expect("create"))
                .collect(),
            states: (0..REPLICAS)
                .map(|_| (0..REPLICAS).map(|_| SyncState::new()).collect())
                .collect(),
            sent: vec![vec![Vec::new(); REPLICAS]; REPLICAS],
            clock: 0,
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn pick(&self, at: usize, pick: usize) -> Option<RecordId> {
        let ids: Vec<RecordId> = self.vaults[at].passkeys().map(|p| p.record_id).collect();
        (!ids.is_empty()).then(|| ids[pick % ids.len()])
    }

    /// Sends one message from `from` to `to`; whether there was one.
    fn sync_step(&mut self, from: usize, to: usize) -> bool {
        let Some(msg) = self.vaults[from].generate_sync_message(&mut self.states[from][to]) else {
            return false;
        };
        self.vaults[to]
            .receive_sync_message(&mut self.states[to][from], &msg)
            .expect("a replica's message is accepted");
        self.sent[from][to].push(msg);
        true
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Insert { at, rp } => {
                let now = self.tick();
                let p = NewPasskey {
                    credential_id: now.to_be_bytes().to_vec(),
                    rp_id: format!("rp{rp}.example"),
                    user_handle: vec![rp; 8],
                    user_name: format!("user{now}"),
                    user_display_name: format!("User {now}"),
                    private_key: Zeroizing::new(vec![rp ^ 0x55; 32]),
                    created_at_ms: now,
                };
                self.vaults[at].insert(p, now).expect("insert");
            }
            Op::Remove { at, pick } => {
                // Even picks go to the trash (and odd ones of the trash come back), the others are purged.
                let now = self.tick();
                let trashed: Vec<RecordId> =
                    self.vaults[at].trashed().map(|p| p.record_id).collect();
                if pick % 4 == 3 && !trashed.is_empty() {
                    let id = trashed[pick % trashed.len()];
                    self.vaults[at].restore(&id, now).expect("restore");
                    assert!(
                        self.vaults[at]
                            .find_by_credential_id(
                                &self.vaults[at]
                                    .passkey(&id)
                                    .expect("restored")
                                    .credential_id
                            )
                            .is_some()
                    );
                } else if let Some(id) = self.pick(at, pick) {
                    if pick % 2 == 0 {
                        self.vaults[at].trash(&id, now).expect("trash");
                        assert!(self.vaults[at].passkeys().all(|p| p.record_id != id));
                    } else {
                        assert_eq!(self.vaults[at].purge(&[id], now, None).expect("purge").0, 1);
                        assert!(self.vaults[at].passkey(&id).is_none());
                    }
                }
            }
            Op::Rename { at, pick, label } => {
                if let Some(id) = self.pick(at, pick) {
                    let now = self.tick();
                    self.vaults[at]
                        .rename(&id, &format!("label {label}"), now)
                        .expect("rename");
                }
            }
            Op::AddDevice { at, device, name } => {
                let now = self.tick();
                let d = Device {
                    id: DeviceId::new(format!("12D3KooW{device}")),
                    name: format!("device name {name}"),
                    x25519_public: [device; 32],
                    added_by: (at > 0).then(|| DeviceId::new(format!("12D3KooW{at}"))),
                    added_at_ms: now,
                    kind: passmesh_crdt::MemberKind::Device,
                    signature: None,
                };
                self.vaults[at].add_device(d).expect("add device");
            }
            Op::RemoveDevice { at, device } => {
                self.vaults[at]
                    .remove_device(&DeviceId::new(format!("12D3KooW{device}")))
                    .expect("remove device");
            }
            Op::Sync { from, to } => {
                self.sync_step(from, to);
            }
            Op::Replay { from, to, back } => {
                let history = &self.sent[from][to];
                if history.is_empty() {
                    return;
                }
                let msg = history[history.len() - 1 - back % history.len()].clone();
                let before = visible(&self.vaults[to]);
                self.vaults[to]
                    .receive_sync_message(&mut self.states[to][from], &msg)
                    .expect("a replayed message is accepted");
                assert_eq!(
                    visible(&self.vaults[to]),
                    before,
                    "a replayed message changed the replica"
                );
            }
            Op::Merge { from, to } => {
                let (a, b) = if from < to {
                    let (l, r) = self.vaults.split_at_mut(to);
                    (&mut l[from], &mut r[0])
                } else {
                    let (l, r) = self.vaults.split_at_mut(from);
                    (&mut r[0], &mut l[to])
                };
                b.merge(a).expect("merge");
            }
        }
    }

    /// Syncs all pairs until a whole round passes without a message.
    fn settle(&mut self) {
        for _ in 0..200 {
            let mut any = false;
            for from in 0..REPLICAS {
                for to in 0..REPLICAS {
                    if from != to {
                        any |= self.sync_step(from, to);
                    }
                }
            }
            if !any {
                return;
            }
        }
        panic!("sync did not become quiet");
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/convergence.txt"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn replicas_converge(ops in prop::collection::vec(op(), 1..40)) {
        let mut world = World::new();
        for op in &ops {
            world.apply(op);
        }
        world.settle();

        let reference = visible(&world.vaults[0]);
        prop_assert!(reference.2.is_empty(), "problems: {:?}", reference.2);
        for v in &world.vaults[1..] {
            prop_assert_eq!(&visible(v), &reference);
        }
        for v in &mut world.vaults {
            // Honest edits never alter what a passkey is.
            let lost = v.take_lost();
            prop_assert!(lost.iter().all(|l| !l.deleted_by.is_empty()), "altered: {:?}", lost);
            // The incrementally kept index equals a fresh one from the document.
            let reloaded = Vault::load(&v.save(), keyring()).expect("reload");
            prop_assert_eq!(&visible(&reloaded), &reference);
            // Every lookup agrees with the list.
            for p in &reference.0 {
                prop_assert_eq!(v.find_by_credential_id(&p.credential_id).map(|q| q.record_id), Some(p.record_id));
                prop_assert!(v.find_by_rp(&p.rp_id).any(|q| q.record_id == p.record_id));
            }
        }
        // Once settled, replaying any message changes nothing either.
        for from in 0..REPLICAS {
            for to in 0..REPLICAS {
                for msg in world.sent[from][to].clone() {
                    let before = visible(&world.vaults[to]);
                    world.vaults[to]
                        .receive_sync_message(&mut SyncState::new(), &msg)
                        .expect("a replayed message is accepted");
                    prop_assert_eq!(visible(&world.vaults[to]), before);
                }
            }
        }
    }
}
