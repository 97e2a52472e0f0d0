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
use std::time::{Duration, Instant};

use crate::proto::{Datum, Message, Relation, Tuple};

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

    /// Every transaction up to `seq` committed.
    pub fn committed_up_to(&mut self, seq: u64) {
        for q in &mut self.queues {
            q.retain(|s| *s > seq);
        }
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

/// The key columns of one remote relation, as far as ordering goes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RelKeys {
    /// Positions of the replica identity's columns.
    key: Vec<usize>,
    /// Changes to it are barriers: it is `spock.queue` (queued DDL, SQL and
    /// sequences act on anything).
    barrier: bool,
    /// The subscriber's other unique indexes: their id and the positions of their
    /// columns ([`FootprintBuilder::set_unique_keys`]).
    uniques: Vec<(u32, Vec<usize>)>,
}

/// Which row image of a change is noted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Image {
    /// The row an INSERT adds.
    Inserted,
    /// The new row of an UPDATE.
    New,
    /// The old key of an UPDATE or DELETE (other columns NULL).
    OldKey,
    /// The whole old row (REPLICA IDENTITY FULL).
    OldRow,
}

/// Builds the [`Footprint`] of each transaction from its messages, as the leader
/// receives them: keys from the replica identity columns the relation message
/// marks (old and new key of an UPDATE, the key of a DELETE), a barrier for
/// TRUNCATE, `spock.queue`, an UPDATE or DELETE of a table without a key, a key
/// column left in the provider's TOAST, a relation whose key changed, a message
/// outside the transaction's own, and transactions forwarded from another origin.
///
/// An INSERT into a table without a key adds nothing: such a table only receives
/// inserts (without a key an UPDATE or DELETE cannot be replicated), and inserts
/// that no key ties together commute; they still commit in the provider's order.
///
/// Values are hashed as they travel (text or binary, one form per type within a
/// stream). Two values a unique index holds equal but that travel differently
/// (numeric 1.0 and 1.00, a case-insensitive collation) hash apart: such a missed
/// dependency is met by the writers as a lock wait, which the apply resolves by
/// applying again serially.
#[derive(Debug, Clone, Default)]
pub struct FootprintBuilder {
    rels: HashMap<u32, RelKeys>,
    current: Footprint,
    provider: u16,
}

impl FootprintBuilder {
    /// A builder for a stream from provider node `provider`.
    pub fn new(provider: u16) -> FootprintBuilder {
        FootprintBuilder { provider, ..FootprintBuilder::default() }
    }

    /// Notes one message of the stream (relation messages also between
    /// transactions).
    pub fn note(&mut self, m: &Message) {
        match m {
            Message::Relation(r) => self.relation(r),
            Message::Origin(o) if o.origin_id != 0 && o.origin_id != self.provider => self.current.barrier = true,
            Message::Insert(i) => self.tuple(i.relid, &i.new, Image::Inserted),
            Message::Update(u) => {
                if let Some(old) = &u.old {
                    self.tuple(u.relid, &old.tuple, old_image(old));
                }
                self.tuple(u.relid, &u.new, Image::New);
            }
            Message::Delete(d) => self.tuple(d.relid, &d.old.tuple, old_image(&d.old)),
            Message::Truncate(_) => self.current.barrier = true,
            Message::LogicalMessage(l) if !l.transactional => self.current.barrier = true,
            _ => {}
        }
    }

    fn relation(&mut self, r: &Relation) {
        let key: Vec<usize> = r.columns.iter().enumerate().filter(|(_, c)| c.is_identity()).map(|(i, _)| i).collect();
        let barrier = crate::ddl::is_queue_table(&r.nspname, &r.relname);
        let uniques = self.rels.get(&r.relid).map(|k| k.uniques.clone()).unwrap_or_default();
        let keys = RelKeys { key, barrier, uniques };
        if let Some(old) = self.rels.insert(r.relid, keys.clone()) {
            if old.key != keys.key || old.barrier != keys.barrier {
                // Keys hashed before and after would not meet.
                self.current.barrier = true;
            }
        }
    }

    /// The subscriber's unique indexes of relation `relid` besides its identity:
    /// each index's id and the positions of its columns in the relation message
    /// (call after the relation's message). An INSERT, the new row of an UPDATE
    /// and a whole old row then also count the values of each (unless one is
    /// NULL, which conflicts with nothing). An old key alone does not carry them:
    /// a DELETE followed by an INSERT of the same unique value in another key is
    /// left to the writers' lock waits.
    pub fn set_unique_keys(&mut self, relid: u32, uniques: Vec<(u32, Vec<usize>)>) {
        if let Some(k) = self.rels.get_mut(&relid) {
            k.uniques = uniques;
        }
    }

    /// Notes row image `image` of a change to `relid`.
    fn tuple(&mut self, relid: u32, t: &Tuple, image: Image) {
        let Some(rel) = self.rels.get(&relid) else {
            self.current.barrier = true;
            return;
        };
        if rel.barrier || (rel.key.is_empty() && image != Image::Inserted) {
            self.current.barrier = true;
            return;
        }
        let mut hashes = Vec::new();
        if !rel.key.is_empty() {
            match values(t, &rel.key) {
                Some(columns) => hashes.push(key_hash(relid, 0, columns)),
                None => {
                    self.current.barrier = true;
                    return;
                }
            }
        }
        if image != Image::OldKey {
            for (index, cols) in &rel.uniques {
                // NULL conflicts with nothing; a value left in TOAST did not change.
                if let Some(columns) = values(t, cols).filter(|c| c.iter().all(Option::is_some)) {
                    hashes.push(key_hash(relid, *index, columns));
                }
            }
        }
        for h in hashes {
            if !self.current.keys.contains(&h) {
                self.current.keys.push(h);
            }
        }
    }

    /// The footprint of the transaction noted since the last call.
    pub fn take(&mut self) -> Footprint {
        std::mem::take(&mut self.current)
    }
}

/// The image an old tuple carries.
fn old_image(old: &crate::proto::OldTuple) -> Image {
    match old.kind {
        crate::proto::OldTupleKind::Key => Image::OldKey,
        crate::proto::OldTupleKind::Full => Image::OldRow,
    }
}

/// The values of columns `cols` of `t` (NULL as `None`); `None` when one is left
/// in the provider's TOAST or missing.
fn values<'a>(t: &'a Tuple, cols: &[usize]) -> Option<Vec<Option<&'a [u8]>>> {
    cols.iter()
        .map(|&i| match t.columns.get(i)? {
            Datum::Null => Some(None),
            Datum::Text(b) | Datum::Binary(b) | Datum::Internal(b) => Some(Some(&b[..])),
            Datum::UnchangedToast => None,
        })
        .collect()
}

/// What the leader sends a writer through its queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unit {
    /// A message every writer applies at once, in stream order (the startup and
    /// relation messages).
    Message(bytes::Bytes),
    /// A whole transaction (its protocol messages from BEGIN to COMMIT, as
    /// received) with its sequence number.
    Transaction {
        /// Its place in the provider's commit order.
        seq: u64,
        /// Its messages.
        messages: Vec<bytes::Bytes>,
    },
}

/// A unit that does not parse (a bug: the leader wrote it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed parallel apply unit: {0}")]
pub struct UnitError(&'static str);

impl Unit {
    /// The bytes of a [`Unit::Message`].
    pub fn encode_message(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(payload.len() + 1);
        out.push(b'M');
        out.extend_from_slice(payload);
        out
    }

    /// The bytes of a [`Unit::Transaction`]: its sequence number, then each
    /// message framed by its length.
    pub fn encode_transaction(seq: u64, messages: &[bytes::Bytes]) -> Vec<u8> {
        let len: usize = messages.iter().map(|m| m.len() + 4).sum();
        let mut out = Vec::with_capacity(len + 9);
        out.push(b'T');
        out.extend_from_slice(&seq.to_le_bytes());
        for m in messages {
            out.extend_from_slice(&(m.len() as u32).to_le_bytes());
            out.extend_from_slice(m);
        }
        out
    }

    /// Parses a unit (copying it out of the queue's buffer).
    pub fn decode(buf: &[u8]) -> Result<Unit, UnitError> {
        let (&kind, rest) = buf.split_first().ok_or(UnitError("empty"))?;
        match kind {
            b'M' => Ok(Unit::Message(bytes::Bytes::copy_from_slice(rest))),
            b'T' => {
                let (seq, mut rest) = rest.split_at_checked(8).ok_or(UnitError("short sequence number"))?;
                let seq = u64::from_le_bytes(seq.try_into().map_err(|_| UnitError("sequence number"))?);
                let all = bytes::Bytes::copy_from_slice(rest);
                let mut messages = Vec::new();
                let mut at = 0usize;
                while !rest.is_empty() {
                    let (len, tail) = rest.split_at_checked(4).ok_or(UnitError("short length"))?;
                    let len = u32::from_le_bytes(len.try_into().map_err(|_| UnitError("length"))?) as usize;
                    if tail.len() < len {
                        return Err(UnitError("message beyond the end"));
                    }
                    messages.push(all.slice(at + 4..at + 4 + len));
                    at += 4 + len;
                    rest = &tail[len..];
                }
                Ok(Unit::Transaction { seq, messages })
            }
            _ => Err(UnitError("unknown kind")),
        }
    }
}

/// Who applies the next transactions of a subscription with writers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Handed to the writers.
    Writers,
    /// Applied by the leader itself, as serial apply does.
    Alone,
}

impl Mode {
    fn index(self) -> usize {
        match self {
            Mode::Writers => 0,
            Mode::Alone => 1,
        }
    }

    fn other(self) -> Mode {
        match self {
            Mode::Writers => Mode::Alone,
            Mode::Alone => Mode::Writers,
        }
    }
}

/// Writers are kept only when they apply at least this much faster than the
/// leader alone (measurements are noisy, and alone costs less memory and latency).
pub const WRITERS_MARGIN: f64 = 1.10;
/// A decision stands this long before the mode not chosen is measured again.
pub const SETTLE: Duration = Duration::from_secs(60);
/// Fewest transactions a measurement needs.
const MIN_TRANSACTIONS: u64 = 100;

/// Chooses between the writers and the leader alone by measured throughput.
///
/// Writers pay only where the hand-over between them (each transaction waits for
/// the one before it to commit, then wakes the next) costs less than the apply
/// work they share out: transactions of some size, and cores to spare beside the
/// walsender and the leader. Where they do not (small transactions on a machine
/// of two cores: docs/benchmarks.md), they are slower than the leader alone. So
/// while a backlog is applied the leader measures both: windows of fixed length
/// count the transactions begun in each mode, a window counts only if the whole of
/// it had a backlog (else the provider, not the apply, set the pace), and the
/// faster mode is kept (writers by [`WRITERS_MARGIN`]) for [`SETTLE`], after which
/// the other is measured again. It starts with the writers.
#[derive(Debug, Clone)]
pub struct Chooser {
    mode: Mode,
    window: Duration,
    started: Option<Instant>,
    begun: u64,
    backlog_throughout: bool,
    /// The last measured transactions per second of each mode ([`Mode::index`]).
    rate: [Option<f64>; 2],
    decided_at: Option<Instant>,
    /// Both modes were measured at the last window's end (see [`Chooser::take_decided`]).
    decided_now: bool,
}

impl Chooser {
    /// Measuring in windows of `window`.
    pub fn new(window: Duration) -> Chooser {
        Chooser {
            mode: Mode::Writers,
            window,
            started: None,
            begun: 0,
            backlog_throughout: true,
            rate: [None, None],
            decided_at: None,
            decided_now: false,
        }
    }

    /// Whether a measurement of both modes was completed since the last call (the
    /// moment to say which one was kept).
    pub fn take_decided(&mut self) -> bool {
        std::mem::take(&mut self.decided_now)
    }

    /// The mode in force.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The last measurements: transactions per second with the writers and alone.
    pub fn rates(&self) -> (Option<f64>, Option<f64>) {
        (self.rate[0], self.rate[1])
    }

    /// A transaction begins at `now`; `backlog`: the provider had written well past
    /// it; `completed`: transactions applied and committed since the last call
    /// (with the writers, their commits: what they were handed but have not
    /// committed does not count; alone, the one before this). Returns who applies
    /// it, and whether the mode changed with it. A window starts at the first
    /// transaction after a change (once the writers' queue drained, for the leader
    /// alone).
    pub fn begin(&mut self, now: Instant, backlog: bool, completed: u64) -> (Mode, bool) {
        let before = self.mode;
        let Some(started) = self.started else {
            self.started = Some(now);
            self.begun = 0;
            self.backlog_throughout = backlog;
            return (self.mode, false);
        };
        self.backlog_throughout &= backlog;
        self.begun += completed;
        let elapsed = now.saturating_duration_since(started);
        if elapsed >= self.window {
            if self.backlog_throughout && self.begun >= MIN_TRANSACTIONS {
                self.rate[self.mode.index()] = Some(self.begun as f64 / elapsed.as_secs_f64());
                self.decide(now);
            }
            self.started = (self.mode == before).then_some(now);
            self.begun = 0;
            self.backlog_throughout = backlog;
        }
        (self.mode, self.mode != before)
    }

    /// After a measurement: measure the mode not measured yet, or keep the faster.
    fn decide(&mut self, now: Instant) {
        if self.decided_at.is_some_and(|t| now.saturating_duration_since(t) >= SETTLE) {
            // Time to look at the other mode again.
            self.rate[self.mode.other().index()] = None;
            self.decided_at = None;
        }
        match self.rate {
            [Some(w), Some(a)] => {
                if self.decided_at.is_none() {
                    self.decided_at = Some(now);
                    self.decided_now = true;
                }
                self.mode = if w >= a * WRITERS_MARGIN { Mode::Writers } else { Mode::Alone };
            }
            [None, _] => self.mode = Mode::Writers,
            [_, None] => self.mode = Mode::Alone,
        }
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
    fn rel(relid: u32, name: &str, key: &[bool]) -> Message {
        use crate::proto::RelColumn;
        let columns = key
            .iter()
            .enumerate()
            .map(|(i, k)| RelColumn {
                flags: if *k { crate::proto::message::COLUMN_FLAG_REPLICA_IDENTITY } else { 0 },
                name: format!("c{i}"),
                type_oid: 23,
                typmod: -1,
            })
            .collect();
        let (nspname, relname) = name.split_once('.').unwrap();
        Message::Relation(Relation { flags: 0, relid, nspname: nspname.into(), relname: relname.into(), columns })
    }

    fn row(vals: &[&str]) -> Tuple {
        Tuple::new(vals.iter().map(|v| Datum::Text(bytes::Bytes::copy_from_slice(v.as_bytes()))).collect())
    }

    fn insert(relid: u32, vals: &[&str]) -> Message {
        Message::Insert(crate::proto::Insert { flags: 0, relid, new: row(vals) })
    }

    #[test]
    fn footprints_hash_identity_columns_only() {
        let mut b = FootprintBuilder::new(7);
        b.note(&rel(1, "public.t", &[true, false]));
        b.note(&insert(1, &["1", "a"]));
        let f1 = b.take();
        b.note(&insert(1, &["1", "b"]));
        let f2 = b.take();
        b.note(&insert(1, &["2", "a"]));
        let f3 = b.take();
        assert!(!f1.barrier && !f2.barrier && !f3.barrier);
        assert_eq!(f1.keys, f2.keys, "same key, other non-key value");
        assert_ne!(f1.keys, f3.keys);
        assert_eq!(f1.keys.len(), 1);
    }

    #[test]
    fn an_update_counts_its_old_and_new_key_and_a_delete_its_key() {
        use crate::proto::{Delete, OldTuple, OldTupleKind, Update};
        let mut b = FootprintBuilder::new(7);
        b.note(&rel(1, "public.t", &[true, false]));
        let old = OldTuple { kind: OldTupleKind::Key, tuple: row(&["1", ""]) };
        b.note(&Message::Update(Update { flags: 0, relid: 1, old: Some(old), new: row(&["2", "x"]) }));
        let up = b.take();
        assert_eq!(up.keys.len(), 2);
        b.note(&insert(1, &["2", "y"]));
        assert_eq!(b.take().keys[0], up.keys[1]);
        let old = OldTuple { kind: OldTupleKind::Key, tuple: row(&["1", ""]) };
        b.note(&Message::Delete(Delete { flags: 0, relid: 1, old }));
        assert_eq!(b.take().keys[0], up.keys[0]);
    }

    #[test]
    fn barriers_truncate_queue_keyless_changes_unknown_toasted_key_forwarded_and_changed_keys() {
        use crate::proto::{Origin, Truncate, Update};
        let mut b = FootprintBuilder::new(7);
        b.note(&rel(1, "public.t", &[true, false]));
        b.note(&rel(2, "public.nokey", &[false, false]));
        b.note(&rel(3, "spock.queue", &[true, false]));
        b.note(&Message::Truncate(Truncate { cascade: false, restart_seqs: false, relids: vec![1] }));
        assert!(b.take().barrier, "TRUNCATE");
        b.note(&insert(2, &["1", "2"]));
        assert_eq!(b.take(), Footprint::default(), "an insert without a key ties nothing");
        let old = crate::proto::OldTuple { kind: crate::proto::OldTupleKind::Full, tuple: row(&["1", "2"]) };
        b.note(&Message::Delete(crate::proto::Delete { flags: 0, relid: 2, old }));
        assert!(b.take().barrier, "a delete without a key");
        b.note(&insert(3, &["1", "2"]));
        assert!(b.take().barrier, "spock.queue");
        b.note(&insert(9, &["1"]));
        assert!(b.take().barrier, "unknown relation");
        let new = Tuple::new(vec![Datum::UnchangedToast, Datum::Null]);
        b.note(&Message::Update(Update { flags: 0, relid: 1, old: None, new }));
        assert!(b.take().barrier, "key left in TOAST");
        b.note(&Message::Origin(Origin { origin_lsn: 0, origin_id: 7, origin_name: None }));
        b.note(&insert(1, &["1", "2"]));
        assert!(!b.take().barrier, "the provider's own");
        b.note(&Message::Origin(Origin { origin_lsn: 0, origin_id: 8, origin_name: None }));
        assert!(b.take().barrier, "forwarded");
        b.note(&rel(1, "public.t", &[true, false]));
        assert!(!b.take().barrier, "the same relation again");
        b.note(&rel(1, "public.t", &[true, true]));
        assert!(b.take().barrier, "the key changed");
    }
    #[test]
    fn units_round_trip_and_bad_ones_are_errors() {
        let m = Unit::encode_message(b"Rabc");
        assert_eq!(Unit::decode(&m), Ok(Unit::Message(bytes::Bytes::from_static(b"Rabc"))));
        let msgs = vec![bytes::Bytes::from_static(b"B1"), bytes::Bytes::new(), bytes::Bytes::from_static(b"C123")];
        let t = Unit::encode_transaction(42, &msgs);
        assert_eq!(Unit::decode(&t), Ok(Unit::Transaction { seq: 42, messages: msgs }));
        assert!(Unit::decode(&[]).is_err());
        assert!(Unit::decode(b"X").is_err());
        assert!(Unit::decode(&t[..5]).is_err());
        assert!(Unit::decode(&t[..t.len() - 1]).is_err());
    }
    #[test]
    fn unique_indexes_tie_inserts_and_new_rows_but_not_old_keys_or_nulls() {
        use crate::proto::{Delete, OldTuple, OldTupleKind, Update};
        let mut b = FootprintBuilder::new(7);
        b.note(&rel(1, "public.u", &[true, false, false]));
        b.set_unique_keys(1, vec![(500, vec![1])]);
        b.note(&insert(1, &["1", "7", "x"]));
        let a = b.take();
        b.note(&insert(1, &["2", "7", "y"]));
        let c = b.take();
        assert_eq!(a.keys.len(), 2);
        assert!(a.keys.iter().any(|k| c.keys.contains(k)), "same unique value, other keys: tied");
        let nulls = Tuple::new(vec![
            Datum::Text(bytes::Bytes::from_static(b"3")),
            Datum::Null,
            Datum::Text(bytes::Bytes::from_static(b"z")),
        ]);
        b.note(&Message::Insert(crate::proto::Insert { flags: 0, relid: 1, new: nulls.clone() }));
        assert_eq!(b.take().keys.len(), 1, "NULL ties nothing");
        let old = OldTuple { kind: OldTupleKind::Key, tuple: row(&["1", "", ""]) };
        b.note(&Message::Delete(Delete { flags: 0, relid: 1, old }));
        assert_eq!(b.take().keys.len(), 1, "an old key carries no unique value");
        let old = OldTuple { kind: OldTupleKind::Full, tuple: row(&["1", "7", "x"]) };
        b.note(&Message::Update(Update { flags: 0, relid: 1, old: Some(old), new: row(&["1", "8", "x"]) }));
        let up = b.take();
        assert!(up.keys.iter().any(|k| a.keys.contains(k) && c.keys.contains(k)), "the old row's unique value");
        assert_eq!(up.keys.len(), 3, "key once, old and new unique values");
        b.note(&rel(1, "public.u", &[true, false, false]));
        assert!(!b.take().barrier, "the relation again keeps its unique keys");
        b.note(&insert(1, &["4", "7", "w"]));
        assert_eq!(b.take().keys.len(), 2);
    }

    fn run(c: &mut Chooser, t: &mut Instant, secs: f64, rate: f64, backlog: bool) -> Vec<Mode> {
        let n = (secs * rate) as u64;
        let step = Duration::from_secs_f64(1.0 / rate);
        (0..n)
            .map(|_| {
                *t += step;
                c.begin(*t, backlog, 1).0
            })
            .collect()
    }

    #[test]
    fn the_leader_applies_alone_where_it_is_faster_and_measures_again_later() {
        let mut c = Chooser::new(Duration::from_secs(2));
        let mut t = Instant::now();
        // Writers first: 20k tx/s over a window; then alone is measured: 40k tx/s.
        let first = run(&mut c, &mut t, 1.99, 20_000.0, true);
        assert!(first.iter().all(|m| *m == Mode::Writers));
        run(&mut c, &mut t, 0.1, 20_000.0, true);
        assert_eq!(c.mode(), Mode::Alone, "the other mode is measured next");
        run(&mut c, &mut t, 2.1, 40_000.0, true);
        assert_eq!(c.mode(), Mode::Alone, "alone is faster");
        assert!(c.take_decided() && !c.take_decided(), "said once");
        let (w, a) = c.rates();
        assert!(w.unwrap() < a.unwrap());
        // It stays alone, re-measuring itself, until the decision has settled.
        run(&mut c, &mut t, 50.0, 40_000.0, true);
        assert_eq!(c.mode(), Mode::Alone);
        run(&mut c, &mut t, 10.5, 40_000.0, true);
        assert_eq!(c.mode(), Mode::Writers, "after SETTLE the writers are measured again");
        // Now writers are much faster (a bigger machine, larger transactions).
        run(&mut c, &mut t, 2.1, 90_000.0, true);
        assert_eq!(c.mode(), Mode::Writers);
    }

    #[test]
    fn without_a_backlog_nothing_is_measured_and_writers_win_only_by_the_margin() {
        let mut c = Chooser::new(Duration::from_secs(1));
        let mut t = Instant::now();
        run(&mut c, &mut t, 10.0, 500.0, false);
        assert_eq!(c.rates(), (None, None), "the provider set the pace");
        assert_eq!(c.mode(), Mode::Writers);
        // A window with a moment without backlog does not count either.
        run(&mut c, &mut t, 0.5, 20_000.0, true);
        run(&mut c, &mut t, 0.1, 20_000.0, false);
        run(&mut c, &mut t, 0.5, 20_000.0, true);
        assert_eq!(c.rates(), (None, None));
        run(&mut c, &mut t, 1.1, 21_000.0, true);
        run(&mut c, &mut t, 1.1, 20_000.0, true);
        assert_eq!(c.mode(), Mode::Alone, "5 % faster is within the noise: alone");
        let mut c = Chooser::new(Duration::from_secs(1));
        run(&mut c, &mut t, 1.1, 30_000.0, true);
        run(&mut c, &mut t, 1.1, 20_000.0, true);
        assert_eq!(c.mode(), Mode::Writers);
    }
}
