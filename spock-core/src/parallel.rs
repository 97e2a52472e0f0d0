//! Parallel apply, the rules that need no server: which remote transactions may be
//! applied at the same time by different writers, and which writer takes each.
//!
//! The leader reads the stream and gives every transaction, in the provider's
//! commit order, a sequence number and a [`Footprint`]: hashes of the keys it
//! touches (its replica identity and every unique index, per table) or a barrier
//! (TRUNCATE, DDL and SQL from the queue, sequences, sync events, a table without
//! a usable key, a table sync: anything whose effects a key does not describe).
//! [`Dependencies::admit`] says which earlier transaction it must wait for: the
//! newest one in flight that shares a key with it, or, for a barrier, the one just
//! before it (and every later transaction waits for the barrier). Writers commit in
//! sequence order whatever the dependencies, so the replication origin moves as in
//! serial apply and a restart resumes at the same place.
//!
//! [`Assigner::assign`] picks the writer: the one that already holds the
//! transaction it depends on, when there is one (its queue runs in order, so the
//! dependency is met without a wait between writers), otherwise the least busy one.
//!
//! Hash collisions only add dependencies (two different keys with one hash are
//! applied in order), never remove one.

use std::collections::HashMap;

/// A key of one table, hashed with its table and the unique index it belongs to.
pub type KeyHash = u64;

/// FNV-1a over the table, the index and each column value (with its length, so
/// that column boundaries count).
pub fn key_hash<'a>(relid: u32, index: u32, columns: impl IntoIterator<Item = Option<&'a [u8]>>) -> KeyHash {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    };
    eat(&relid.to_le_bytes());
    eat(&index.to_le_bytes());
    for c in columns {
        match c {
            None => eat(&[0xff, 0xff, 0xff, 0xff, 0xfe]),
            Some(v) => {
                eat(&(v.len() as u32).to_le_bytes());
                eat(v);
            }
        }
    }
    h
}

/// What one transaction touches, as far as ordering goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Hashes of the keys it writes (old and new values of an UPDATE that changes a
    /// key both count).
    pub keys: Vec<KeyHash>,
    /// It must run alone: after everything before it, before everything after it.
    pub barrier: bool,
}

/// Key dependencies between transactions in commit order.
#[derive(Debug, Clone, Default)]
pub struct Dependencies {
    /// The last transaction that wrote each key (only those not known committed).
    last_writer: HashMap<KeyHash, u64>,
    /// The last barrier admitted.
    last_barrier: u64,
    /// Every transaction up to this one has committed.
    committed: u64,
    /// The sequence number of the last transaction admitted.
    last: u64,
}

/// Entries kept before committed ones are forgotten.
const PRUNE_AT: usize = 64 * 1024;

impl Dependencies {
    /// Nothing admitted yet; sequence numbers start at 1.
    pub fn new() -> Dependencies {
        Dependencies::default()
    }

    /// Admits the next transaction: its sequence number, and the newest earlier one
    /// that must have committed before it starts (`None`: it may start at once).
    pub fn admit(&mut self, f: &Footprint) -> (u64, Option<u64>) {
        self.last += 1;
        let seq = self.last;
        let in_flight = |s: u64| (s > self.committed).then_some(s);
        let wait = if f.barrier {
            self.last_barrier = seq;
            in_flight(seq - 1)
        } else {
            let by_key = f.keys.iter().filter_map(|k| self.last_writer.get(k).copied()).max();
            by_key.into_iter().chain(std::iter::once(self.last_barrier)).filter_map(in_flight).max()
        };
        for k in &f.keys {
            self.last_writer.insert(*k, seq);
        }
        (seq, wait)
    }

    /// Every transaction up to `seq` has committed.
    pub fn committed_up_to(&mut self, seq: u64) {
        self.committed = self.committed.max(seq);
        if self.last_writer.len() >= PRUNE_AT {
            let done = self.committed;
            self.last_writer.retain(|_, s| *s > done);
        }
    }

    /// Keys remembered (for memory accounting and tests).
    pub fn tracked_keys(&self) -> usize {
        self.last_writer.len()
    }
}

/// Which writer applies which transaction.
#[derive(Debug, Clone)]
pub struct Assigner {
    /// Per writer: the sequence numbers given to it and not yet committed, in order.
    queues: Vec<Vec<u64>>,
}

impl Assigner {
    /// `writers` writers (at least one).
    pub fn new(writers: usize) -> Assigner {
        Assigner { queues: vec![Vec::new(); writers.max(1)] }
    }

    /// The writer for transaction `seq` that waits for `wait_for`: the writer that
    /// holds `wait_for` if one does (it starts `seq` after committing `wait_for`),
    /// else the one with the shortest queue (the lowest index among equals; the
    /// dependency, if any, has committed). Waiting for the newest dependency is
    /// enough: writers commit in sequence order, so once it has committed every
    /// earlier transaction has.
    pub fn assign(&mut self, seq: u64, wait_for: Option<u64>) -> usize {
        let holder = wait_for.and_then(|w| self.queues.iter().position(|q| q.contains(&w)));
        let writer =
            holder.unwrap_or_else(|| (0..self.queues.len()).min_by_key(|&i| (self.queues[i].len(), i)).unwrap_or(0));
        self.queues[writer].push(seq);
        writer
    }

    /// Transaction `seq` committed.
    pub fn committed(&mut self, seq: u64) {
        for q in &mut self.queues {
            q.retain(|s| *s != seq);
        }
    }

    /// Transactions given to each writer and not committed.
    pub fn in_flight(&self) -> Vec<usize> {
        self.queues.iter().map(Vec::len).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ks: &[u64]) -> Footprint {
        Footprint { keys: ks.to_vec(), barrier: false }
    }

    #[test]
    fn keys_hash_apart_by_table_index_value_and_column_boundary() {
        let a = key_hash(1, 10, [Some(&b"ab"[..]), Some(&b"c"[..])]);
        assert_ne!(a, key_hash(1, 10, [Some(&b"a"[..]), Some(&b"bc"[..])]), "column boundaries count");
        assert_ne!(a, key_hash(2, 10, [Some(&b"ab"[..]), Some(&b"c"[..])]), "tables count");
        assert_ne!(a, key_hash(1, 11, [Some(&b"ab"[..]), Some(&b"c"[..])]), "indexes count");
        assert_ne!(key_hash(1, 10, [None]), key_hash(1, 10, [Some(&b""[..])]), "NULL is not empty");
        assert_eq!(a, key_hash(1, 10, [Some(&b"ab"[..]), Some(&b"c"[..])]));
    }

    #[test]
    fn a_transaction_waits_for_the_newest_one_in_flight_that_shares_a_key() {
        let mut d = Dependencies::new();
        assert_eq!(d.admit(&keys(&[1, 2])), (1, None));
        assert_eq!(d.admit(&keys(&[3])), (2, None), "no shared key");
        assert_eq!(d.admit(&keys(&[2, 3])), (3, Some(2)), "the newest of 1 and 2");
        d.committed_up_to(3);
        assert_eq!(d.admit(&keys(&[1, 2, 3])), (4, None), "everything it shares has committed");
    }

    #[test]
    fn a_barrier_waits_for_everything_before_it_and_everything_after_waits_for_it() {
        let mut d = Dependencies::new();
        d.admit(&keys(&[1]));
        d.admit(&keys(&[2]));
        assert_eq!(d.admit(&Footprint { keys: vec![], barrier: true }), (3, Some(2)));
        assert_eq!(d.admit(&keys(&[9])), (4, Some(3)), "unrelated keys wait for the barrier");
        d.committed_up_to(3);
        assert_eq!(d.admit(&keys(&[8])), (5, None));
        assert_eq!(d.admit(&keys(&[8])), (6, Some(5)));
    }

    #[test]
    fn committed_keys_are_forgotten_once_there_are_many() {
        let mut d = Dependencies::new();
        for k in 0..PRUNE_AT as u64 {
            d.admit(&keys(&[k]));
        }
        assert_eq!(d.tracked_keys(), PRUNE_AT);
        d.committed_up_to(PRUNE_AT as u64 - 10);
        assert_eq!(d.tracked_keys(), 10, "only those in flight stay");
        assert_eq!(d.admit(&keys(&[PRUNE_AT as u64 - 1])).1, Some(PRUNE_AT as u64));
    }

    #[test]
    fn a_dependent_transaction_goes_to_the_writer_that_holds_its_dependency() {
        let mut a = Assigner::new(3);
        assert_eq!(a.assign(1, None), 0);
        assert_eq!(a.assign(2, None), 1);
        assert_eq!(a.assign(3, Some(1)), 0, "behind 1 on writer 0");
        assert_eq!(a.assign(4, None), 2, "the idle writer");
        assert_eq!(a.in_flight(), vec![2, 1, 1]);
        a.committed(1);
        a.committed(2);
        assert_eq!(a.assign(5, Some(2)), 1, "2 committed: the least busy (writer 1, first of equals)");
        assert_eq!(a.in_flight(), vec![1, 1, 1]);
    }
}
