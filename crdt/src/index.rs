//! The in-memory index of decrypted records: reads never decrypt or touch automerge.

use std::collections::{BTreeSet, HashMap};

use crate::{Error, Passkey, RecordId};

/// Sort key of the list: creation time, then id (a total order every replica agrees on).
type SortKey = (u64, RecordId);

#[derive(Default)]
pub(crate) struct Index {
    by_id: HashMap<RecordId, Passkey>,
    order: BTreeSet<SortKey>,
    /// Almost always one record per credential id, so a sorted vector rather than a set.
    by_credential: HashMap<Vec<u8>, Vec<SortKey>>,
    by_rp: HashMap<String, BTreeSet<SortKey>>,
    /// Trashed records (in `by_id`, in none of the lookups above), by the time they were trashed.
    trashed: BTreeSet<SortKey>,
    /// Records present in the document but unreadable, sorted by id.
    problems: Vec<(RecordId, Error)>,
}

impl Index {
    /// Adds or replaces a readable record.
    pub(crate) fn upsert(&mut self, p: Passkey) {
        self.remove(&p.record_id);
        if let Some(at) = p.trashed_at_ms {
            self.trashed.insert((at, p.record_id));
            self.by_id.insert(p.record_id, p);
            return;
        }
        let key = (p.created_at_ms, p.record_id);
        self.order.insert(key);
        let same_credential = self
            .by_credential
            .entry(p.credential_id.clone())
            .or_default();
        if let Err(i) = same_credential.binary_search(&key) {
            same_credential.insert(i, key);
        }
        self.by_rp.entry(p.rp_id.clone()).or_default().insert(key);
        self.by_id.insert(p.record_id, p);
    }

    /// Records `id` as present but unreadable.
    pub(crate) fn set_problem(&mut self, id: RecordId, e: Error) {
        self.remove(&id);
        match self.problems.binary_search_by(|(p, _)| p.cmp(&id)) {
            Ok(i) => self.problems[i].1 = e,
            Err(i) => self.problems.insert(i, (id, e)),
        }
    }

    /// Forgets `id` entirely (readable or not).
    pub(crate) fn remove(&mut self, id: &RecordId) {
        if let Ok(i) = self.problems.binary_search_by(|(p, _)| p.cmp(id)) {
            self.problems.remove(i);
        }
        let Some(p) = self.by_id.remove(id) else {
            return;
        };
        if let Some(at) = p.trashed_at_ms {
            self.trashed.remove(&(at, p.record_id));
            return;
        }
        let key = (p.created_at_ms, p.record_id);
        self.order.remove(&key);
        if let Some(same_credential) = self.by_credential.get_mut(p.credential_id.as_slice()) {
            same_credential.retain(|k| k != &key);
            if same_credential.is_empty() {
                self.by_credential.remove(p.credential_id.as_slice());
            }
        }
        remove_from(&mut self.by_rp, &p.rp_id, &key);
    }

    pub(crate) fn clear(&mut self) {
        *self = Self::default();
    }

    /// A readable record, live or trashed.
    pub(crate) fn get(&self, id: &RecordId) -> Option<&Passkey> {
        self.by_id.get(id)
    }

    /// Live records.
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    /// Every readable record, live or trashed, in no particular order.
    pub(crate) fn all(&self) -> impl Iterator<Item = &Passkey> {
        self.by_id.values()
    }

    /// Trashed records, oldest trashing first.
    pub(crate) fn trashed(&self) -> impl Iterator<Item = &Passkey> {
        self.resolve(self.trashed.iter())
    }

    pub(crate) fn trashed_len(&self) -> usize {
        self.trashed.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Passkey> {
        self.resolve(self.order.iter())
    }

    pub(crate) fn by_rp(&self, rp_id: &str) -> impl Iterator<Item = &Passkey> {
        self.resolve(self.by_rp.get(rp_id).into_iter().flatten())
    }

    /// The first (oldest) record with this credential id; two can only share one through an import or a
    /// peer's bug, and every replica picks the same.
    pub(crate) fn by_credential(&self, credential_id: &[u8]) -> Option<&Passkey> {
        self.resolve(self.by_credential.get(credential_id).into_iter().flatten())
            .next()
    }

    pub(crate) fn problems(&self) -> &[(RecordId, Error)] {
        &self.problems
    }

    pub(crate) fn problem(&self, id: &RecordId) -> Option<&Error> {
        self.problems
            .binary_search_by(|(p, _)| p.cmp(id))
            .ok()
            .map(|i| &self.problems[i].1)
    }

    fn resolve<'a>(
        &'a self,
        keys: impl Iterator<Item = &'a SortKey> + 'a,
    ) -> impl Iterator<Item = &'a Passkey> + 'a {
        keys.filter_map(|(_, id)| self.by_id.get(id))
    }
}

fn remove_from<K, Q>(map: &mut HashMap<K, BTreeSet<SortKey>>, k: &Q, key: &SortKey)
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(set) = map.get_mut(k) {
        set.remove(key);
        if set.is_empty() {
            map.remove(k);
        }
    }
}
