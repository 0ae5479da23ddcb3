//! Replication of one vault with its paired devices, sans-IO: it takes the CRDT ([`Vault`]) and a small
//! store of per-peer state ([`PeerStore`]) and returns what to send to whom ([`Action`]); it never touches a
//! socket, a channel or the disk. The vault actor drives it and the network moves its bytes.
//!
//! Per paired peer it keeps one automerge sync state (persisted by the [`PeerStore`], so an exchange resumes
//! after a restart), whether the peer is connected, and whether a message is due. The order of a round is:
//! a peer's message is applied ([`Replication::receive`]), the actor persists the document, and only then
//! [`Replication::push`] generates the replies: no heads are announced that a crash could still lose. A failed
//! persist takes every exchange back to its persisted state ([`Replication::persist_failed`]) and pauses sync:
//! for 1 s after the first failure, doubling up to a minute while writes keep failing (a full or read-only
//! disk), so a peer's changes are not applied, lost and asked for again in a tight loop. A successful write
//! ends the pause; the exchanges resume with the first [`Replication::push`] after it.
//!
//! It also derives the BS ("backed up") flag: a record counts as held by another device once that device's
//! announced heads include the change that created it. Only devices in the table count: one removed from the
//! table no longer holds anything and leaves the paired set.

use std::collections::{HashMap, HashSet};

use passmesh_crdt::{RecordId, SyncState, Vault};
use passmesh_transport::PeerId;

use super::PeerStatus;
use crate::ids;

/// Where the per-peer replication state is persisted: the vault's sled store in the daemon.
pub trait PeerStore {
    /// The persisted sync state with `peer`; a fresh one if there is none or it does not decode.
    fn sync_state(&self, peer: &PeerId) -> SyncState;
    /// When a message from `peer` was last applied (ms since the Unix epoch).
    fn last_sync(&self, peer: &PeerId) -> Option<u64>;
    /// Records the sync state with `peer` after applying its message at `now_ms`. It may be lost in a crash
    /// (the exchange then starts over from the previous state); the next flush makes it durable.
    fn save(&mut self, peer: &PeerId, state: &SyncState, now_ms: u64);
}

/// What the replication wants done on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a sync message to a paired peer.
    Send {
        /// The peer.
        peer: PeerId,
        /// The crdt sync message.
        bytes: Vec<u8>,
    },
    /// The paired set (the device table minus this device) is now this.
    Paired(HashSet<PeerId>),
    /// The peer sent something that is not a sync message of this vault: drop its connection.
    Drop(PeerId),
}

/// What applying a peer's message did.
#[derive(Debug, Default)]
pub struct Received {
    /// The document changed: it must be persisted before [`Replication::push`].
    pub changed: bool,
    /// What to do at once (drop the peer, a new paired set).
    pub actions: Vec<Action>,
}

/// The first pause of sync after a failed write, in ms.
const FIRST_HOLD_MS: u64 = 1_000;
/// The longest pause, in ms.
const MAX_HOLD_MS: u64 = 60_000;

/// The pause of sync after failed writes.
#[derive(Debug, Default)]
struct Hold {
    /// No message is applied or sent before this (ms since the Unix epoch).
    until_ms: u64,
    /// The next pause, should the next write fail too (0: the last write succeeded).
    next_ms: u64,
    /// The pause has not been followed by a round of messages yet.
    resume: bool,
}

/// One paired peer's replication state.
#[derive(Debug)]
struct Peer {
    state: SyncState,
    connected: bool,
    address: Option<String>,
    last_sync_ms: Option<u64>,
    /// A message may be due once what is applied is on disk.
    wants_send: bool,
    bytes_sent: u64,
    bytes_received: u64,
}

/// The replication state of one vault: its peers' exchanges and what each is known to hold.
#[derive(Debug)]
pub struct Replication {
    me: PeerId,
    /// Peers seen since start.
    peers: HashMap<PeerId, Peer>,
    /// Records each device of the table is known to hold (the BS flag).
    held_by: HashMap<PeerId, HashSet<RecordId>>,
    hold: Hold,
}

/// The active devices of `vault` (valid entries, not removed) minus `me`, as peer ids; nothing if this device
/// itself was removed.
pub fn paired(vault: &Vault, me: &PeerId) -> HashSet<PeerId> {
    if vault.local_device().is_some_and(|id| {
        !matches!(
            vault.member_state(id),
            Some(passmesh_crdt::MemberState::Active) | None
        )
    }) {
        return HashSet::new();
    }
    vault
        .active_devices()
        .iter()
        .filter_map(|d| ids::peer_id(&d.id))
        .filter(|p| p != me)
        .collect()
}

impl Replication {
    /// The replication of device `me`, with the BS flags derived from the persisted common heads of every
    /// paired peer.
    pub fn start(me: PeerId, vault: &Vault, store: &impl PeerStore) -> Replication {
        let mut held_by: HashMap<PeerId, HashSet<RecordId>> = HashMap::new();
        for peer in paired(vault, &me) {
            let shared = store.sync_state(&peer).shared_heads();
            if !shared.is_empty() {
                held_by
                    .entry(peer)
                    .or_default()
                    .extend(vault.records_held_at(&shared));
            }
        }
        Replication {
            me,
            peers: HashMap::new(),
            held_by,
            hold: Hold::default(),
        }
    }

    /// The paired set of `vault` as this device sees it.
    pub fn paired(&self, vault: &Vault) -> HashSet<PeerId> {
        paired(vault, &self.me)
    }

    /// Whether a device still in the device table is known to hold `record`.
    pub fn held(&self, record: &RecordId) -> bool {
        self.held_by.values().any(|h| h.contains(record))
    }

    fn entry(&mut self, peer: PeerId, store: &impl PeerStore) -> &mut Peer {
        self.peers.entry(peer).or_insert_with(|| Peer {
            state: store.sync_state(&peer),
            connected: false,
            address: None,
            last_sync_ms: store.last_sync(&peer),
            wants_send: false,
            bytes_sent: 0,
            bytes_received: 0,
        })
    }

    /// A paired peer connected at `addr`: the exchange starts from the persisted state with a first message.
    /// A peer the device table does not list (the network's paired set can lag behind the table, e.g. after a
    /// failed write rolled an added device back) gets nothing.
    pub fn connected(&mut self, vault: &Vault, peer: PeerId, addr: String, store: &impl PeerStore) {
        if !self.paired(vault).contains(&peer) {
            tracing::warn!(%peer, "a device outside the device table connected; nothing is sent to it");
            return;
        }
        let state = store.sync_state(&peer);
        let p = self.entry(peer, store);
        p.state = state;
        p.connected = true;
        p.address = Some(addr);
        p.wants_send = true;
    }

    /// The peer's last connection closed.
    pub fn disconnected(&mut self, peer: PeerId, store: &impl PeerStore) {
        let state = store.sync_state(&peer);
        let p = self.entry(peer, store);
        p.connected = false;
        p.wants_send = false;
        p.state = state;
    }

    /// A message to the peer was lost: start over from the persisted state.
    pub fn reset(&mut self, peer: PeerId, store: &impl PeerStore) {
        let state = store.sync_state(&peer);
        let p = self.entry(peer, store);
        p.state = state;
        p.wants_send = p.connected;
    }

    /// Applies a sync message from `peer` to `vault` at `now_ms`.
    pub fn receive(
        &mut self,
        vault: &mut Vault,
        peer: PeerId,
        bytes: &[u8],
        now_ms: u64,
        store: &mut impl PeerStore,
    ) -> Received {
        let mut out = Received::default();
        if now_ms < self.hold.until_ms {
            // The peer hears from us again when the pause ends.
            tracing::debug!(%peer, "sync is paused after a failed write; a message was not applied");
            return out;
        }
        if !self.paired(vault).contains(&peer) {
            tracing::warn!(%peer, "dropped a sync message from a device outside the device table");
            return out;
        }
        let devices_before = vault.active_devices();
        let heads_before = vault.heads();
        let p = self.entry(peer, store);
        p.bytes_received += bytes.len() as u64;
        let result = vault.receive_sync_message(&mut p.state, bytes);
        out.changed = vault.heads() != heads_before;
        if let Err(e) = &result {
            tracing::warn!(%peer, error = %e, "a sync message was refused; dropping the connection");
            if !out.changed {
                p.state = SyncState::new();
                out.actions.push(Action::Drop(peer));
                return out;
            }
        }
        p.last_sync_ms = Some(now_ms);
        p.wants_send = true;
        let their = p.state.their_heads();
        store.save(&peer, &p.state, now_ms);
        if out.changed {
            // The sender learns that its changes arrived (and are on disk) only from our heads.
            p.state.acknowledge();
            self.local_change();
        }
        if let Some(their) = their {
            let known = self.held_by.get(&peer);
            if vault
                .passkeys()
                .any(|p| !known.is_some_and(|h| h.contains(&p.record_id)))
            {
                let held = vault.records_held_at(&their);
                self.held_by.entry(peer).or_default().extend(held);
            }
        }
        if vault.active_devices() != devices_before {
            let paired = self.paired(vault);
            self.peers.retain(|p, _| paired.contains(p));
            // A removed device no longer counts as holding anything (the BS flag falls back).
            self.held_by.retain(|p, _| paired.contains(p));
            out.actions.push(Action::Paired(paired));
        }
        out
    }

    /// The document changed locally (or by a peer): every connected peer is due a message.
    pub fn local_change(&mut self) {
        for p in self.peers.values_mut() {
            p.wants_send |= p.connected;
        }
    }

    /// Persisting failed at `now_ms` and the document went back to what is on disk: every exchange starts over
    /// from its persisted state, after a pause that grows while writes keep failing.
    pub fn persist_failed(&mut self, now_ms: u64, store: &impl PeerStore) {
        for (peer, p) in self.peers.iter_mut() {
            p.state = store.sync_state(peer);
            p.wants_send = p.connected;
        }
        let pause = self.hold.next_ms.max(FIRST_HOLD_MS);
        self.hold = Hold {
            until_ms: now_ms.saturating_add(pause),
            next_ms: pause.saturating_mul(2).min(MAX_HOLD_MS),
            resume: true,
        };
    }

    /// A write succeeded: the next failure pauses sync for the shortest time again.
    pub fn persisted(&mut self) {
        self.hold.next_ms = 0;
    }

    /// The messages due to connected peers at `now_ms`. Call only when everything applied is on disk.
    pub fn push(&mut self, vault: &mut Vault, now_ms: u64) -> Vec<Action> {
        if now_ms < self.hold.until_ms {
            return Vec::new();
        }
        if std::mem::take(&mut self.hold.resume) {
            self.local_change();
        }
        let mut due = Vec::new();
        for (peer, p) in self.peers.iter_mut() {
            if !(p.connected && p.wants_send) {
                continue;
            }
            p.wants_send = false;
            if let Some(bytes) = vault.generate_sync_message(&mut p.state) {
                p.bytes_sent += bytes.len() as u64;
                due.push(Action::Send { peer: *peer, bytes });
            }
        }
        due
    }

    /// Forgets every exchange (this device now holds another vault).
    pub fn clear(&mut self) {
        self.peers.clear();
        self.held_by.clear();
    }

    /// What `status` shows of each paired device.
    pub fn status(&self, vault: &Vault, store: &impl PeerStore) -> Vec<PeerStatus> {
        vault
            .active_devices()
            .into_iter()
            .filter_map(|d| {
                let peer = ids::peer_id(&d.id)?;
                if peer == self.me {
                    return None;
                }
                let live = self.peers.get(&peer);
                let heads =
                    live.and_then(|p| p.state.their_heads())
                        .unwrap_or_else(|| match live {
                            Some(p) => p.state.shared_heads(),
                            None => store.sync_state(&peer).shared_heads(),
                        });
                Some(PeerStatus {
                    device_id: d.id.to_string(),
                    name: d.name.clone(),
                    connected: live.is_some_and(|p| p.connected),
                    address: live.and_then(|p| p.address.clone()),
                    last_sync_ms: live
                        .and_then(|p| p.last_sync_ms)
                        .or_else(|| store.last_sync(&peer)),
                    pending_changes: vault.changes_missing_at(&heads) as u64,
                    bytes_sent: live.map_or(0, |p| p.bytes_sent),
                    bytes_received: live.map_or(0, |p| p.bytes_received),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use passmesh_crdt::{Device, Epoch, Keyring, NewPasskey, VaultId, VaultKey};
    use zeroize::Zeroizing;

    use super::*;

    /// The sync states as a store keeps them: encoded, so a reload sees only what was saved.
    #[derive(Default)]
    struct MemoryStore {
        states: HashMap<PeerId, Vec<u8>>,
        synced: HashMap<PeerId, u64>,
    }

    impl PeerStore for MemoryStore {
        fn sync_state(&self, peer: &PeerId) -> SyncState {
            self.states
                .get(peer)
                .and_then(|b| SyncState::decode(b).ok())
                .unwrap_or_default()
        }
        fn last_sync(&self, peer: &PeerId) -> Option<u64> {
            self.synced.get(peer).copied()
        }
        fn save(&mut self, peer: &PeerId, state: &SyncState, now_ms: u64) {
            self.states.insert(*peer, state.encode());
            self.synced.insert(*peer, now_ms);
        }
    }

    /// The tests' clock at start (ms).
    const NOW: u64 = 1_000_000;

    /// One device: its replica, its replication and its store; `saved` is the document as last persisted;
    /// `now` is its clock.
    struct Replica {
        id: PeerId,
        vault: Vault,
        replication: Replication,
        store: MemoryStore,
        saved: Vec<u8>,
        now: u64,
    }

    fn device(id: &PeerId) -> Device {
        Device {
            id: ids::device_id(id),
            name: format!("device {id}"),
            x25519_public: [1; 32],
            added_by: None,
            added_at_ms: 1,
            kind: passmesh_crdt::MemberKind::Device,
            signature: None,
        }
    }

    fn keyring() -> Keyring {
        Keyring::new(Epoch(0), VaultKey::from_bytes([5; 32]))
    }

    /// Devices of one vault, every one listing all of `ids` in its device table (one document, as pairing
    /// leaves it).
    fn replicas(ids: &[PeerId]) -> Vec<Replica> {
        let mut genesis = Vault::create(VaultId::from_bytes([9; 16]), keyring()).unwrap();
        for id in ids {
            genesis.add_device(device(id)).unwrap();
        }
        let saved = genesis.save();
        ids.iter()
            .map(|me| {
                let vault = Vault::load(&saved, keyring()).unwrap();
                let saved = saved.clone();
                let store = MemoryStore::default();
                Replica {
                    id: *me,
                    replication: Replication::start(*me, &vault, &store),
                    vault,
                    store,
                    saved,
                    now: NOW,
                }
            })
            .collect()
    }

    fn passkey(n: u8) -> NewPasskey {
        NewPasskey {
            credential_id: vec![n; 16],
            rp_id: "example.com".into(),
            user_handle: vec![n],
            user_name: format!("user{n}"),
            user_display_name: format!("User {n}"),
            private_key: Zeroizing::new(vec![n; 32]),
            created_at_ms: 1,
        }
    }

    impl Replica {
        /// Applies `bytes` from `from` and persists (a successful write), as the actor does.
        fn deliver(&mut self, from: PeerId, bytes: &[u8]) -> Received {
            let received =
                self.replication
                    .receive(&mut self.vault, from, bytes, self.now, &mut self.store);
            if received.changed {
                self.saved = self.vault.save();
            }
            received
        }

        fn sends(&mut self) -> Vec<(PeerId, Vec<u8>)> {
            self.replication
                .push(&mut self.vault, self.now)
                .into_iter()
                .filter_map(|a| match a {
                    Action::Send { peer, bytes } => Some((peer, bytes)),
                    _ => None,
                })
                .collect()
        }
    }

    /// Connects `a` and `b` (both sides see the connection).
    fn connect(r: &mut [Replica], a: usize, b: usize) {
        let (ida, idb) = (r[a].id, r[b].id);
        for (me, other) in [(a, idb), (b, ida)] {
            let side = &mut r[me];
            side.replication
                .connected(&side.vault, other, "addr".into(), &side.store);
        }
    }

    /// Moves messages between the replicas until none is due; returns how many moved.
    fn settle(r: &mut [Replica]) -> usize {
        let mut moved = 0;
        for _ in 0..50 {
            let mut any = false;
            for i in 0..r.len() {
                for (to, bytes) in r[i].sends() {
                    let from = r[i].id;
                    let j = r.iter().position(|x| x.id == to).unwrap();
                    r[j].deliver(from, &bytes);
                    moved += 1;
                    any = true;
                }
            }
            if !any {
                return moved;
            }
        }
        panic!("the exchange did not settle");
    }

    #[test]
    fn bs_turns_on_only_once_the_peer_holds_the_creating_change() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut r = replicas(&[a, b]);
        let record = r[0].vault.insert(passkey(1), 1).unwrap();
        r[0].saved = r[0].vault.save();
        r[0].replication.local_change();
        assert!(!r[0].replication.held(&record), "nobody else has it yet");
        connect(&mut r, 0, 1);

        // A's first message goes out; B has not answered, so A knows nothing of B's heads yet.
        let first = r[0].sends();
        assert_eq!(first.len(), 1);
        assert!(!r[0].replication.held(&record));
        // B's own first message announces heads without the record: still not held.
        let from_b = r[1].sends();
        r[0].deliver(b, &from_b[0].1);
        assert!(!r[0].replication.held(&record));

        // Once B has applied A's changes and says so, A counts the record as held.
        r[1].deliver(a, &first[0].1);
        settle(&mut r);
        assert!(r[1].vault.passkey(&record).is_some());
        assert!(r[0].replication.held(&record));
        // B holds it because it has it, not because A does: B's own flag follows A's heads.
        assert!(r[1].replication.held(&record));

        // A record made after the exchange is not held until it travels too.
        let later = r[0].vault.insert(passkey(2), 2).unwrap();
        assert!(!r[0].replication.held(&later));
        r[0].replication.local_change();
        settle(&mut r);
        assert!(r[0].replication.held(&later));
    }

    #[test]
    fn the_bs_flag_is_derived_again_at_start_from_persisted_heads() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut r = replicas(&[a, b]);
        let record = r[0].vault.insert(passkey(1), 1).unwrap();
        connect(&mut r, 0, 1);
        settle(&mut r);
        assert!(r[0].replication.held(&record));
        let restarted = Replication::start(a, &r[0].vault, &r[0].store);
        assert!(restarted.held(&record));
        let forgetful = Replication::start(a, &r[0].vault, &MemoryStore::default());
        assert!(!forgetful.held(&record));
    }

    #[test]
    fn a_failed_persist_resets_that_exchange_and_the_change_still_arrives() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut r = replicas(&[a, b]);
        connect(&mut r, 0, 1);
        settle(&mut r);
        let record = r[0].vault.insert(passkey(1), 1).unwrap();
        r[0].saved = r[0].vault.save();
        r[0].replication.local_change();
        let to_b = r[0].sends();
        assert_eq!(to_b.len(), 1);

        // B applies A's change but cannot store it: the document goes back to what is on disk, and the
        // exchange with A to the sync state the store holds.
        let b_side = &mut r[1];
        let received =
            b_side
                .replication
                .receive(&mut b_side.vault, a, &to_b[0].1, NOW, &mut b_side.store);
        assert!(received.changed);
        b_side.vault = Vault::load(&b_side.saved, keyring()).unwrap();
        assert!(b_side.vault.passkey(&record).is_none());
        b_side.replication.persist_failed(NOW, &b_side.store);

        // Once the pause is over, B's next message starts from the persisted state, so A sends the change
        // again and B gets it.
        assert_eq!(settle(&mut r), 0, "sync waits out the pause");
        r[1].now = NOW + FIRST_HOLD_MS;
        settle(&mut r);
        assert!(r[1].vault.passkey(&record).is_some());
        assert!(r[0].replication.held(&record));
    }

    #[test]
    fn writes_that_keep_failing_pause_sync_longer_each_time_until_one_succeeds() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut r = replicas(&[a, b]);
        connect(&mut r, 0, 1);
        settle(&mut r);
        r[0].vault.insert(passkey(1), 1).unwrap();
        r[0].replication.local_change();
        let to_b = r[0].sends();
        let b_side = &mut r[1];
        let heads = b_side.vault.heads();
        let mut failed_at = NOW;
        for pause in [1_000, 2_000, 4_000, 8_000] {
            b_side.replication.persist_failed(failed_at, &b_side.store);
            b_side.vault = Vault::load(&b_side.saved, keyring()).unwrap();
            // During the pause nothing is sent and a peer's message is not applied.
            assert!(
                b_side
                    .replication
                    .push(&mut b_side.vault, failed_at + pause - 1)
                    .is_empty()
            );
            let received = b_side.replication.receive(
                &mut b_side.vault,
                a,
                &to_b[0].1,
                failed_at + pause - 1,
                &mut b_side.store,
            );
            assert!(!received.changed);
            assert_eq!(b_side.vault.heads(), heads);
            // At its end the exchange resumes with a message to the peer.
            failed_at += pause;
            assert_eq!(
                b_side.replication.push(&mut b_side.vault, failed_at).len(),
                1
            );
        }
        // The pause stops growing at a minute, and a successful write makes it short again.
        for _ in 0..10 {
            b_side.replication.persist_failed(failed_at, &b_side.store);
        }
        assert_eq!(b_side.replication.hold.until_ms - failed_at, MAX_HOLD_MS);
        b_side.replication.persisted();
        b_side.replication.persist_failed(failed_at, &b_side.store);
        assert_eq!(b_side.replication.hold.until_ms - failed_at, FIRST_HOLD_MS);
    }

    #[test]
    fn a_device_removed_from_the_table_leaves_the_paired_set_and_holds_nothing() {
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut r = replicas(&[a, b, c]);
        assert_eq!(r[0].replication.paired(&r[0].vault), HashSet::from([b, c]));
        let record = r[0].vault.insert(passkey(1), 1).unwrap();
        connect(&mut r, 0, 2);
        settle(&mut r);
        assert!(r[0].replication.held(&record), "C holds it");

        // B removes C from the table; A learns it from B.
        assert!(r[1].vault.remove_device(&ids::device_id(&c)).unwrap());
        r[1].replication.local_change();
        connect(&mut r, 0, 1);
        let from_b = r[1].sends();
        let mut paired_updates = Vec::new();
        for (_, bytes) in from_b {
            paired_updates.extend(r[0].deliver(b, &bytes).actions);
        }
        // Keep going until the table change has arrived.
        for _ in 0..10 {
            if !paired_updates.is_empty() {
                break;
            }
            for (to, bytes) in r[0].sends() {
                if to == b {
                    r[1].deliver(a, &bytes);
                }
            }
            for (_, bytes) in r[1].sends() {
                paired_updates.extend(r[0].deliver(b, &bytes).actions);
            }
        }
        assert_eq!(paired_updates, vec![Action::Paired(HashSet::from([b]))]);
        assert_eq!(r[0].replication.paired(&r[0].vault), HashSet::from([b]));
        // C no longer counts as holding the record; only B (once it has it) can.
        assert!(!r[0].replication.held_by.contains_key(&c));
        assert!(!r[0].replication.peers.contains_key(&c));
        let shown: Vec<String> = r[0]
            .replication
            .status(&r[0].vault, &r[0].store)
            .into_iter()
            .map(|p| p.device_id)
            .collect();
        assert_eq!(shown, vec![b.to_string()]);

        // C's messages are no longer applied.
        r[2].vault.insert(passkey(3), 3).unwrap();
        let msg = r[2]
            .vault
            .generate_sync_message(&mut SyncState::new())
            .unwrap();
        let heads = r[0].vault.heads();
        let a_side = &mut r[0];
        let received = a_side
            .replication
            .receive(&mut a_side.vault, c, &msg, 8, &mut a_side.store);
        assert!(!received.changed);
        assert!(received.actions.is_empty());
        assert_eq!(r[0].vault.heads(), heads);
    }

    #[test]
    fn a_device_outside_the_table_that_connects_is_sent_nothing() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut r = replicas(&[a, b]);
        r[0].vault.insert(passkey(1), 1).unwrap();
        r[0].replication.local_change();
        let stranger = PeerId::random();
        let a_side = &mut r[0];
        a_side
            .replication
            .connected(&a_side.vault, stranger, "addr".into(), &a_side.store);
        assert!(a_side.sends().is_empty());
        assert!(
            !a_side
                .replication
                .status(&a_side.vault, &a_side.store)
                .iter()
                .any(|p| p.device_id == stranger.to_string())
        );
    }

    #[test]
    fn a_message_that_is_not_sync_drops_the_peer_and_changes_nothing() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut r = replicas(&[a, b]);
        connect(&mut r, 0, 1);
        let heads = r[0].vault.heads();
        let received = r[0].deliver(b, b"not a sync message");
        assert!(!received.changed);
        assert_eq!(received.actions, vec![Action::Drop(b)]);
        assert_eq!(r[0].vault.heads(), heads);
    }
}
