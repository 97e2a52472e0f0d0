//! One handler per protocol message, dispatched from one `match`
//! ([`ApplySession::handle`]). Each remote transaction is applied in one local
//! transaction under the replication origin of the node it came from, and that
//! origin's progress is committed with it (exactly once after a crash). Conflicts
//! are decided by `spock_core::conflict`.

use std::collections::{HashMap, HashSet, VecDeque};

use rustc_hash::FxHashMap;
use std::ffi::CString;

use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};
use spock_core::conflict::{self, ConflictKind, Decision, RowVersion, Tiebreakers};
use spock_core::exception::{self as exc, ReplayMode};
use spock_core::names;
use spock_core::proto::{self, Decoded, Message};

mod conflicts;
use conflicts::find_with_retries;
mod exceptions;
mod table_skips;

pub use exceptions::describe_error;

use super::executor::{LocalRelation, LocalVersion, TableWriter};
use super::owner::{self, OwnerSwitch, Switched};
use super::subscription::SubscriptionInfo;
use crate::error::{spi_failed, PgError};
use crate::gucs;
use crate::workers::shmem::ExceptionSlot;

/// A remote relation and, once used, its local mapping and the executor state of
/// its table (kept across transactions until the mapping goes).
struct RemoteRel {
    msg: proto::Relation,
    local: Option<LocalRelation>,
    /// A boxed [`TableWriter`] or null: a raw pointer because a change uses it while
    /// the session is borrowed (the box is freed only between changes).
    writer: *mut TableWriter,
}

impl RemoteRel {
    fn new(msg: proto::Relation) -> RemoteRel {
        RemoteRel { msg, local: None, writer: std::ptr::null_mut() }
    }

    /// Closes the table's executor state, if any.
    fn close_writer(&mut self) {
        if !self.writer.is_null() {
            // SAFETY: made by Box::into_raw in open_writer, not in use between changes.
            drop(unsafe { Box::from_raw(self.writer) });
            self.writer = std::ptr::null_mut();
        }
    }

    /// The executor state, if any.
    fn writer(&mut self) -> Option<&mut TableWriter> {
        // SAFETY: a live box or null.
        unsafe { self.writer.as_mut() }
    }
}

impl Drop for RemoteRel {
    fn drop(&mut self) {
        self.close_writer();
    }
}

/// Apply state of one subscription's stream.
pub struct ApplySession {
    sub: SubscriptionInfo,
    rels: FxHashMap<u32, RemoteRel>,
    /// Replication origins by originating node id.
    origins: HashMap<u16, pg_sys::RepOriginId>,
    /// Node id and tiebreaker for local origin ids (0 = this node).
    origin_nodes: HashMap<pg_sys::RepOriginId, (u16, i64)>,
    session_origin: pg_sys::RepOriginId,
    /// The remote transaction being received.
    remote: Option<RemoteTxn>,
    /// Local commit end → remote end LSN of applied transactions not yet flushed.
    pending: VecDeque<(u64, u64)>,
    /// Memory for one change, reset after it.
    change_cxt: pg_sys::MemoryContext,
    /// This subscription's entry in the shared progress table.
    progress_slot: Option<usize>,
    /// The provider's insert position last reported.
    pub remote_insert_lsn: u64,
    /// A transaction that failed before and is replayed per
    /// `spock.exception_behaviour` when it arrives again.
    exception: Option<ExceptionSlot>,
    /// Resource owner of the relation references of the kept executor states.
    writer_owner: pg_sys::ResourceOwner,
    /// Memory of the kept executor states.
    writer_cxt: pg_sys::MemoryContext,
    /// Number of the current (or last) local transaction.
    txn: u64,
    /// The change being applied (1-based; 0 between changes): where an error struck.
    current_change: u32,
    /// Set after a replayed transaction: the worker reconnects (binary transfer again).
    pub reconnect: bool,
    /// Set when the subscription was disabled by an exception: the worker stops.
    pub stop: bool,
    /// Tables copied by a table sync at an LSN the stream has not passed: changes
    /// to them from transactions that committed before it are in the copy.
    table_skips: HashMap<(String, String), u64>,
    /// The rows of the conflict being decided (local, remote; null when absent),
    /// for spock.resolutions.
    conflict_rows: (*mut pg_sys::TupleTableSlot, *mut pg_sys::TupleTableSlot),
    /// Eager apply of a streamed transaction (apply::stream): its commit timestamp is
    /// not known yet, so a conflict only sets `eager_conflict` and the transaction
    /// is rolled back and replayed from its spill file at commit.
    pub eager: bool,
    /// A conflict was met during eager apply.
    pub eager_conflict: bool,
    /// Local tables where an INSERT met an existing key: inserts into them search
    /// for the key first (as every insert did before). Others are inserted without
    /// a search, the key checked by the index as the row goes in.
    careful_tables: HashSet<pg_sys::Oid>,
    /// An INSERT inserted without a search met an existing key: the local
    /// transaction must be rolled back and the remote one applied again, searching
    /// (the rest of its changes are ignored until then).
    pub insert_retry: bool,
    /// Set at the commit of a transaction that needs `insert_retry` and arrived
    /// from the provider (not from a spill file): the worker reconnects at once, so
    /// that the provider sends it again.
    pub retry_now: bool,
    /// The worker's own user: changes to tables owned by another role run as that
    /// owner (apply::owner).
    worker_user: pg_sys::Oid,
    /// Set while a change runs as its table's owner: how conflict bookkeeping steps
    /// back to the worker's user.
    as_owner: Option<Switched>,
}

/// A row change of the remote transaction.
#[derive(Clone, Copy)]
enum Change<'a> {
    Insert(&'a proto::Insert),
    Update(&'a proto::Update),
    Delete(&'a proto::Delete),
    Truncate(&'a proto::Truncate),
}

impl<'a> Change<'a> {
    fn operation(&self) -> &'static str {
        match self {
            Change::Insert(_) => "INSERT",
            Change::Update(_) => "UPDATE",
            Change::Delete(_) => "DELETE",
            Change::Truncate(_) => "TRUNCATE",
        }
    }

    fn relid(&self) -> Option<u32> {
        match self {
            Change::Insert(i) => Some(i.relid),
            Change::Update(u) => Some(u.relid),
            Change::Delete(d) => Some(d.relid),
            Change::Truncate(t) => t.relids.first().copied(),
        }
    }

    fn old_tuple(&self) -> Option<&'a proto::Tuple> {
        match self {
            Change::Update(u) => u.old.as_ref().map(|o| &o.tuple),
            Change::Delete(d) => Some(&d.old.tuple),
            _ => None,
        }
    }

    fn new_tuple(&self) -> Option<&'a proto::Tuple> {
        match self {
            Change::Insert(i) => Some(&i.new),
            Change::Update(u) => Some(&u.new),
            _ => None,
        }
    }
}

struct RemoteTxn {
    commit_time: i64,
    /// The provider's transaction id and commit LSN (for spock.resolutions).
    xid: u32,
    final_lsn: u64,
    origin_node: u16,
    local_started: bool,
    /// The transaction is skipped (`sub_alter_skiplsn`).
    skip: bool,
    /// Set when this transaction failed before: how it is replayed.
    replay: Option<ReplayMode>,
    /// Changes seen so far.
    changes: u32,
}

impl ApplySession {
    /// A session for `sub`.
    pub fn new(sub: SubscriptionInfo) -> ApplySession {
        // SAFETY: a long-lived child of TopMemoryContext for per-change allocations.
        let change_cxt = unsafe {
            pg_sys::AllocSetContextCreateInternal(
                pg_sys::TopMemoryContext,
                c"spock apply change".as_ptr(),
                0,
                8 * 1024,
                8 * 1024 * 1024,
            )
        };
        // SAFETY: a session-lived resource owner (no parent) and memory context.
        let (writer_owner, writer_cxt) = unsafe {
            (
                pg_sys::ResourceOwnerCreate(std::ptr::null_mut(), c"spock apply tables".as_ptr()),
                pg_sys::AllocSetContextCreateInternal(
                    pg_sys::TopMemoryContext,
                    c"spock apply tables".as_ptr(),
                    0,
                    8 * 1024,
                    8 * 1024 * 1024,
                ),
            )
        };
        ApplySession {
            writer_owner,
            writer_cxt,
            txn: 0,
            sub,
            rels: FxHashMap::default(),
            origins: HashMap::new(),
            origin_nodes: HashMap::new(),
            session_origin: 0,
            remote: None,
            pending: VecDeque::new(),
            change_cxt,
            progress_slot: None,
            remote_insert_lsn: 0,
            exception: None,
            current_change: 0,
            reconnect: false,
            stop: false,
            table_skips: HashMap::new(),
            conflict_rows: (std::ptr::null_mut(), std::ptr::null_mut()),
            eager: false,
            eager_conflict: false,
            careful_tables: HashSet::new(),
            insert_retry: false,
            retry_now: false,
            worker_user: owner::worker_user(),
            as_owner: None,
        }
    }

    /// Lets go of the replication origin (a table sync sets it up for its copy, see
    /// `copy_from::commit_as_provider`); the next transaction takes it again.
    pub fn release_origin(&mut self) {
        if self.session_origin != 0 {
            // SAFETY: between transactions; resets this session's origin.
            unsafe {
                pg_sys::replorigin_session_reset();
                pg_sys::replorigin_session_origin = 0;
            }
            self.session_origin = 0;
        }
    }

    /// Before a remote transaction: waits while `spock.pause_apply_workers()` holds
    /// this database's workers, then marks this worker as inside a transaction.
    fn wait_while_paused(&mut self) {
        let Some(i) = self.progress_slot else { return };
        while !crate::workers::shmem::try_enter_transaction(i) {
            // SAFETY: a short sleep; interrupts are checked after it.
            unsafe { pg_sys::pg_usleep(1000) };
            pgrx::check_for_interrupts!();
        }
    }

    /// Attaches to the shared progress table.
    pub fn attach_progress(&mut self, dbid: u32) {
        if crate::workers::shmem::preloaded() {
            self.progress_slot = crate::workers::shmem::progress_slot(dbid, self.sub.id);
            let (node, remote) = (self.sub.local_node_id, self.sub.provider_node_id);
            if let Some(i) = self.progress_slot {
                crate::workers::shmem::update_progress(i, |p| {
                    p.node_id = node;
                    p.remote_node_id = remote;
                    p.in_txn = false;
                    p.stopped_on_request = false;
                });
                self.exception = crate::workers::shmem::pending_exception(i);
            }
        }
    }

    /// Tells the manager that this worker stops because it was asked to (SIGTERM):
    /// no restart delay for the next one.
    pub fn note_stopped_on_request(&self) {
        if let Some(i) = self.progress_slot {
            crate::workers::shmem::note_stopped_on_request(i);
        }
    }

    /// Records the last position received from the provider.
    pub fn note_received(&mut self, lsn: u64) {
        if let Some(i) = self.progress_slot {
            let insert = self.remote_insert_lsn;
            crate::workers::shmem::update_progress(i, |p| {
                p.received_lsn = p.received_lsn.max(lsn);
                p.remote_insert_lsn = p.remote_insert_lsn.max(insert);
            });
        }
    }

    /// Rolls back the local transaction of the remote transaction being applied and
    /// forgets it (eager apply of a stream that must be replayed at commit instead).
    pub fn abandon_remote(&mut self) {
        self.forget_transaction_writers();
        if let Some(r) = self.remote.take() {
            if r.local_started {
                // SAFETY: aborts the apply transaction this session started.
                unsafe { pg_sys::AbortCurrentTransaction() };
            }
        }
        for r in self.rels.values_mut() {
            r.local = None;
        }
        self.eager = false;
        self.eager_conflict = false;
        if let Some(i) = self.progress_slot {
            crate::workers::shmem::leave_transaction(i);
        }
    }

    /// Whether a remote transaction is open.
    pub fn in_remote_transaction(&self) -> bool {
        self.remote.is_some()
    }

    /// The remote end LSN up to which applied transactions are durable here.
    pub fn flushed_remote_lsn(&mut self) -> Option<u64> {
        // SAFETY: reads the WAL flush position.
        let flushed = unsafe { pg_sys::GetFlushRecPtr(std::ptr::null_mut()) };
        let mut out = None;
        while let Some(&(local, remote)) = self.pending.front() {
            if local > flushed {
                break;
            }
            out = Some(remote);
            self.pending.pop_front();
        }
        out
    }

    /// Whether applied transactions still wait for their local commit to be flushed.
    pub fn has_unflushed(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Applies one message.
    pub fn handle(&mut self, d: Decoded) {
        if let Some(l) = d.remote_insert_lsn {
            self.remote_insert_lsn = self.remote_insert_lsn.max(l);
        }
        match d.message {
            Message::Startup(s) => self.handle_startup(&s),
            Message::Begin(b) => {
                self.wait_while_paused();
                self.handle_begin(&b)
            }
            Message::Origin(o) => self.handle_origin(&o),
            Message::CommitOrder(_) => {}
            Message::Relation(r) => self.handle_relation(r),
            Message::Insert(i) => self.change(Change::Insert(&i)),
            Message::Update(u) => self.change(Change::Update(&u)),
            Message::Delete(del) => self.change(Change::Delete(&del)),
            Message::Truncate(t) => self.change(Change::Truncate(&t)),
            Message::Commit(c) => {
                let final_lsn = self.remote.as_ref().map_or(0, |r| r.final_lsn);
                self.handle_commit(&c);
                self.note_tables_caught_up(final_lsn);
                if let Some(i) = self.progress_slot {
                    crate::workers::shmem::leave_transaction(i);
                }
            }
            Message::LogicalMessage(m) => self.handle_message(&m),
            // Stream messages are taken by apply::stream before they get here.
            Message::StreamStart(_)
            | Message::StreamStop(_)
            | Message::StreamChange(_)
            | Message::StreamCommit(_)
            | Message::StreamAbort(_) => {
                PgError::new(PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION, "spock: unexpected stream message").raise()
            }
        }
    }

    /// A sync event (`spock.sync_event()`) outside a transaction: the provider has
    /// passed `lsn`, so has this subscription (wait_for_sync_event looks at the
    /// origin's progress). Transactional ones are covered by their commit.
    fn handle_message(&mut self, m: &proto::LogicalMessage) {
        if m.transactional || m.prefix != "Spock" || self.remote.is_some() {
            return;
        }
        let provider = self.sub.provider_node_id;
        self.use_origin(provider);
        // SAFETY: advances this session's origin in memory; safe because every
        // transaction committed before the message was sent (and applied) before it.
        unsafe { pg_sys::replorigin_session_advance(m.lsn, pg_sys::InvalidXLogRecPtr as u64) };
    }

    fn handle_startup(&mut self, s: &proto::Startup) {
        // SAFETY: reads the database encoding name.
        let ours =
            unsafe { std::ffi::CStr::from_ptr(pg_sys::GetDatabaseEncodingName()) }.to_string_lossy().into_owned();
        if let Some(enc) = s.get("encoding") {
            if !enc.eq_ignore_ascii_case(&ours) {
                PgError::new(
                    PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!(
                        "spock subscription {}: provider sends encoding {enc}, this database uses {ours}",
                        self.sub.name
                    ),
                )
                .raise();
            }
        }
        pgrx::debug1!(
            "spock subscription {}: provider {} speaks protocol {}",
            self.sub.name,
            s.get("pg_version").unwrap_or("?"),
            s.get("proto_version").unwrap_or("4")
        );
    }

    fn handle_begin(&mut self, b: &proto::Begin) {
        let skip = self.sub.skip_lsn != 0 && b.final_lsn == self.sub.skip_lsn;
        if skip {
            pgrx::log!(
                "spock subscription {}: skipping remote transaction {} with commit LSN {} (sub_alter_skiplsn)",
                self.sub.name,
                b.xid,
                proto::format_lsn(b.final_lsn)
            );
        }
        let replay =
            self.exception.filter(|e| !skip && e.final_lsn == b.final_lsn).and_then(|e| ReplayMode::from_code(e.mode));
        if let Some(mode) = replay {
            pgrx::log!(
                "spock subscription {}: replaying remote transaction {} (commit LSN {}) that failed before, in {} mode",
                self.sub.name,
                b.xid,
                proto::format_lsn(b.final_lsn),
                match mode {
                    ReplayMode::Discard => "discard",
                    ReplayMode::LogOnly => "transdiscard",
                    ReplayMode::Disable => "sub_disable",
                }
            );
        }
        self.remote = Some(RemoteTxn {
            commit_time: b.commit_time,
            xid: b.xid,
            final_lsn: b.final_lsn,
            origin_node: self.sub.provider_node_id,
            local_started: false,
            skip,
            replay,
            changes: 0,
        });
    }

    /// The replication origin for transactions that came from `node`.
    fn origin_for(&mut self, node: u16) -> pg_sys::RepOriginId {
        if let Some(o) = self.origins.get(&node) {
            return *o;
        }
        let name = if node == self.sub.provider_node_id {
            self.sub.slot_name.clone()
        } else {
            names::forwarded_origin_name(&self.sub.slot_name, node)
        };
        let c = CString::new(name).unwrap_or_default();
        // SAFETY: origin lookup/creation in its own short transaction, outside any
        // apply transaction (the O message precedes every change).
        let id = unsafe {
            pg_sys::StartTransactionCommand();
            let mut id = pg_sys::replorigin_by_name(c.as_ptr(), true);
            if id == 0 {
                id = pg_sys::replorigin_create(c.as_ptr());
            }
            pg_sys::CommitTransactionCommand();
            id
        };
        self.origins.insert(node, id);
        id
    }

    fn handle_origin(&mut self, o: &proto::Origin) {
        let node = if o.origin_id == 0 { self.sub.provider_node_id } else { o.origin_id };
        self.use_origin(node);
        if let Some(r) = self.remote.as_mut() {
            r.origin_node = node;
        }
    }

    /// Makes the session apply under the origin of transactions from `node`.
    fn use_origin(&mut self, node: u16) {
        let origin = self.origin_for(node);
        if origin != self.session_origin {
            // SAFETY: no local transaction is open yet (changes start it); switching
            // the session's origin between transactions is allowed.
            unsafe {
                if self.session_origin != 0 {
                    pg_sys::replorigin_session_reset();
                }
                pg_sys::replorigin_session_setup(origin, 0);
                pg_sys::replorigin_session_origin = origin;
            }
            self.session_origin = origin;
        }
    }

    fn handle_relation(&mut self, r: proto::Relation) {
        self.rels.insert(r.relid, RemoteRel::new(r));
    }

    /// One row change: applied, or (replaying a transaction that failed before)
    /// applied on its own or only logged.
    fn change(&mut self, c: Change<'_>) {
        let Some(remote) = self.remote.as_mut() else {
            PgError::new(PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION, "spock: change outside a transaction").raise();
        };
        if remote.skip || self.insert_retry {
            return;
        }
        let final_lsn = remote.final_lsn;
        if self.eager {
            // Eager apply of a stream: the commit LSN is not known, so whether a
            // table copy holds this change is not either (unless its copy has not
            // even started): replay at commit instead.
            if self.in_table_copy(&c, u64::MAX - 1) {
                return;
            }
            if self.in_table_copy(&c, 0) {
                self.eager_conflict = true;
                return;
            }
        } else if self.in_table_copy(&c, final_lsn) {
            return;
        }
        let Some(remote) = self.remote.as_mut() else { return };
        remote.changes += 1;
        let n = remote.changes;
        let replay = remote.replay;
        self.current_change = n;
        match replay {
            None if self.eager => {
                // An error while a stream is applied eagerly: its transaction is
                // rolled back and replayed at commit, where errors are handled as
                // for any transaction (exception_behaviour).
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.in_change(|s| s.apply(c))));
                if r.is_err() {
                    self.forget_transaction_writers();
                    // SAFETY: leaves the error state; the transaction is aborted by
                    // the fallback (abandon_remote) right after this change.
                    unsafe {
                        pg_sys::FlushErrorState();
                        pg_sys::MemoryContextReset(self.change_cxt);
                    }
                    self.eager_conflict = true;
                }
            }
            None => self.in_change(|s| s.apply(c)),
            Some(ReplayMode::Discard) => {
                // SAFETY: called inside the apply transaction (in_change_isolated
                // starts it); the closure is a complete change.
                if let Err(error) = self.in_change_isolated(|s| s.apply(c)) {
                    pgrx::warning!(
                        "spock subscription {}: discarding change {n} ({} on {}) of remote transaction {}: {error}",
                        self.sub.name,
                        c.operation(),
                        self.relation_label(c.relid()),
                        self.remote.as_ref().map_or(0, |r| r.xid)
                    );
                    if ReplayMode::Discard.logs(gucs::exception_logging(), true) {
                        self.log_exception(Some(c), n, &error);
                    }
                }
            }
            Some(mode) => {
                let (failed_change, error) =
                    self.exception.map_or((0, String::new()), |e| (e.failed_change, e.message()));
                let failed = n == failed_change;
                if mode.logs(gucs::exception_logging(), failed) {
                    let msg: String = if failed { error } else { exc::collateral_message(mode, failed_change, &error) };
                    self.log_exception(Some(c), n, &msg);
                }
            }
        }
        if self.insert_retry && self.eager {
            // An eagerly applied stream is replayed from its spill file at commit,
            // searching for keys this time.
            self.insert_retry = false;
            self.eager_conflict = true;
        }
        self.current_change = 0;
        self.conflict_rows = (std::ptr::null_mut(), std::ptr::null_mut());
    }

    fn apply(&mut self, c: Change<'_>) {
        match c {
            Change::Insert(i) => self.handle_insert(i),
            Change::Update(u) => self.handle_update(u),
            Change::Delete(d) => self.handle_delete(d),
            Change::Truncate(t) => self.handle_truncate(t),
        }
    }

    /// Starts the local transaction of the remote one, if not started yet.
    fn ensure_local_transaction(&mut self) {
        let Some(remote) = self.remote.as_mut() else { return };
        if !remote.local_started {
            self.txn += 1;
            // SAFETY: starts a transaction between replication steps (worker.c).
            unsafe {
                pg_sys::StartTransactionCommand();
                // Rows keep the remote commit time as the origin timestamp.
                pg_sys::replorigin_session_origin_timestamp = remote.commit_time;
            }
            remote.local_started = true;
        }
    }

    /// `schema.table` of remote relation `relid`, for messages.
    fn relation_label(&self, relid: Option<u32>) -> String {
        relid
            .and_then(|r| self.rels.get(&r))
            .map_or_else(|| "?".to_string(), |r| format!("{}.{}", r.msg.nspname, r.msg.relname))
    }

    /// Runs a row change inside the local transaction, with a snapshot and the
    /// per-change memory context.
    fn in_change(&mut self, f: impl FnOnce(&mut Self)) {
        self.ensure_local_transaction();
        // SAFETY: the usual begin/end of one replication step (worker.c).
        unsafe {
            pg_sys::SetCurrentStatementStartTimestamp();
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            let old = pg_sys::MemoryContextSwitchTo(self.change_cxt);
            f(self);
            pg_sys::MemoryContextSwitchTo(old);
            if !(*self.change_cxt).isReset {
                pg_sys::MemoryContextReset(self.change_cxt);
            }
            pg_sys::PopActiveSnapshot();
            pg_sys::CommandCounterIncrement();
        }
    }

    /// Drops the mappings of relations invalidated since the last call; returns
    /// whether local table `local_relid` was among them.
    fn forget_invalidated(&mut self, local_relid: pg_sys::Oid) -> bool {
        let (all, changed) = crate::invalidation::drain();
        if all || !changed.is_empty() {
            for r in self.rels.values_mut() {
                if all || r.local.as_ref().is_some_and(|l| changed.contains(&l.relid)) {
                    r.close_writer();
                    r.local = None;
                }
            }
        }
        all || changed.contains(&local_relid)
    }

    /// The executor state of the local table of remote relation `relid`, ready for
    /// the current transaction, with its mapping: the one kept from earlier changes,
    /// or a new one. Taking the table's lock brings news of a concurrent local ALTER
    /// TABLE: the mapping and state are then rebuilt before use.
    ///
    /// SAFETY: inside the apply transaction with an active snapshot; the returned
    /// state and mapping live in self.rels until the next call.
    unsafe fn open_writer(&mut self, relid: u32) -> (*mut TableWriter, *const LocalRelation) {
        let map = self.local_relation(relid) as *const LocalRelation;
        // SAFETY: forwarded; the mapping is alive (just looked up).
        let local = unsafe { (*map).relid };
        let txn = self.txn;
        let kept = self.rels.get_mut(&relid).map_or(std::ptr::null_mut(), |r| r.writer);
        if !kept.is_null() {
            // SAFETY: a live writer of this session.
            unsafe {
                if (*kept).txn == txn {
                    return (kept, map);
                }
                (*kept).begin_transaction(txn);
            }
            if !self.forget_invalidated(local) {
                return (kept, map);
            }
        } else {
            // SAFETY: forwarded.
            let w =
                Box::into_raw(Box::new(unsafe { TableWriter::open(local, self.writer_owner, self.writer_cxt, txn) }));
            if let Some(r) = self.rels.get_mut(&relid) {
                r.writer = w;
            }
            if !self.forget_invalidated(local) {
                return (w, map);
            }
        }
        // The table changed (forget_invalidated closed its writer): map and open again.
        let map = self.local_relation(relid) as *const LocalRelation;
        // SAFETY: as above.
        let w = Box::into_raw(Box::new(unsafe {
            TableWriter::open((*map).relid, self.writer_owner, self.writer_cxt, txn)
        }));
        if let Some(r) = self.rels.get_mut(&relid) {
            r.close_writer();
            r.writer = w;
        }
        (w, map)
    }

    /// Applies one change to the table of remote relation `relid` with `f`, as the
    /// table's owner (apply::owner: its triggers, defaults and constraints run with
    /// the owner's rights, not the worker's); the table's executor state stays for
    /// the next changes.
    ///
    /// SAFETY: inside the apply transaction with an active snapshot.
    unsafe fn with_writer<T>(
        &mut self,
        relid: u32,
        f: impl FnOnce(&mut Self, &mut TableWriter, &LocalRelation) -> T,
    ) -> T {
        // SAFETY: forwarded; the writer and mapping live in self.rels, untouched while
        // `f` applies the change (nothing in it drains invalidations, closes writers
        // or replaces relations). On an error the writer stays where it is; the
        // handler of the error forgets its transaction part, and the switch to the
        // owner is undone as the error unwinds through here.
        unsafe {
            let (w, map) = self.open_writer(relid);
            let w = &mut *w;
            // The owner as the open relation knows it: no catalog lookup per change;
            // an ALTER TABLE ... OWNER TO invalidates the relation, which rebuilds
            // this entry before the next change (or closes the writer).
            let switch = OwnerSwitch::enter((*(*w.rel).rd_rel).relowner, self.worker_user);
            self.as_owner = switch.as_ref().map(OwnerSwitch::state);
            w.begin_change();
            let out = f(self, w, &*map);
            w.end_change();
            self.as_owner = None;
            drop(switch);
            if w.has_extras() {
                // Trigger slots or relations of this transaction: not kept.
                if let Some(r) = self.rels.get_mut(&relid) {
                    r.close_writer();
                }
            }
            out
        }
    }

    /// Drops the kept tables' slots of the current transaction before it commits.
    fn end_transaction_writers(&mut self) {
        for r in self.rels.values_mut() {
            if let Some(w) = r.writer() {
                // SAFETY: inside the transaction the writers were made ready for.
                unsafe { w.end_transaction() };
            }
        }
    }

    /// On a rollback (just before or after it): the kept tables' transaction parts
    /// go with it and are forgotten; the rest is closed, so no executor state that
    /// took part in a failed change survives it.
    fn forget_transaction_writers(&mut self) {
        self.as_owner = None;
        for r in self.rels.values_mut() {
            if let Some(w) = r.writer() {
                w.forget_transaction();
            }
            r.close_writer();
        }
    }

    /// Closes the kept tables (before queued DDL or a TRUNCATE, which refuse tables
    /// in use, and around a subtransaction, whose resources must not outlive it).
    fn close_writers(&mut self) {
        for r in self.rels.values_mut() {
            r.close_writer();
        }
    }

    fn local_relation(&mut self, relid: u32) -> &LocalRelation {
        // A local ALTER TABLE (or any relcache invalidation) rebuilds the mapping.
        self.forget_invalidated(pg_sys::InvalidOid);
        let Some(r) = self.rels.get_mut(&relid) else {
            PgError::new(
                PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION,
                format!("spock: change for relation {relid} before its relation message"),
            )
            .raise();
        };
        if r.local.is_none() {
            // SAFETY: inside the apply transaction.
            r.local = Some(unsafe { LocalRelation::build(&r.msg) });
        }
        r.local.as_ref().expect("just built")
    }

    fn handle_insert(&mut self, i: &proto::Insert) {
        // SAFETY: inside the apply transaction with an active snapshot.
        let queued = unsafe {
            self.with_writer(i.relid, |s, w, map| {
                map.fill_slot(w.remote, &i.new, None, w.econtext);
                let has_key = map.identity_index != pg_sys::InvalidOid;
                // Search first only where a duplicate key was met before, or when
                // replaying a failed transaction change by change.
                let unsearched = has_key
                    && !s.careful_tables.contains(&map.relid)
                    && s.remote.as_ref().is_some_and(|r| r.replay.is_none())
                    && w.can_insert_unsearched(map.identity_index);
                if unsearched {
                    if !w.insert_reporting_duplicate(map.identity_index) {
                        pgrx::debug1!(
                            "spock subscription {}: an INSERT into {} met an existing key; the transaction is applied again, searching for keys",
                            s.sub.name,
                            map.qualified
                        );
                        s.careful_tables.insert(map.relid);
                        s.insert_retry = true;
                        return None;
                    }
                    return super::queue::is_queue(map).then(|| super::queue::QueuedRow::from_slot(w.remote));
                }
                if has_key && w.find(map, w.remote) {
                    let local = match w.local_row_version() {
                        LocalVersion::Committed { commit_ts, origin } => Some(RowVersion { commit_ts, origin }),
                        LocalVersion::ThisTransaction | LocalVersion::Unknown => None,
                    };
                    s.conflict_rows = (w.local, w.remote);
                    let apply = match local {
                        None => true,
                        Some(l) => s.decide(ConflictKind::InsertExists, Some(l), &map.qualified).applies_remote(),
                    };
                    if apply {
                        map.fill_slot(w.new, &i.new, Some(w.local), w.econtext);
                        w.update(w.new);
                    }
                    return None;
                }
                w.insert();
                // spock.queue: act on the queued message in this transaction (apply/queue.rs).
                super::queue::is_queue(map).then(|| super::queue::QueuedRow::from_slot(w.remote))
            })
        };
        if let Some(row) = queued {
            // Queued DDL may alter any table: none may be open.
            self.close_writers();
            super::queue::handle_queued_row(&self.sub, row);
        }
    }

    fn handle_update(&mut self, u: &proto::Update) {
        // SAFETY: inside the apply transaction with an active snapshot.
        unsafe {
            self.with_writer(u.relid, |s, w, map| {
                let key = u.old.as_ref().map_or(&u.new, |o| &o.tuple);
                map.fill_search_slot(w.search, key, w.econtext);
                if !find_with_retries(w, map, w.search) {
                    s.conflict_rows = (std::ptr::null_mut(), w.search);
                    s.decide(ConflictKind::UpdateMissing, None, &map.qualified);
                    return;
                }
                map.fill_slot(w.new, &u.new, Some(w.local), w.econtext);
                s.conflict_rows = (w.local, w.new);
                let apply =
                    s.remote_wins_over(w.local_row_version(), ConflictKind::UpdateOriginDiffers, &map.qualified);
                if apply {
                    w.update(w.new);
                }
            })
        }
    }

    fn handle_delete(&mut self, d: &proto::Delete) {
        // SAFETY: inside the apply transaction with an active snapshot.
        unsafe {
            self.with_writer(d.relid, |s, w, map| {
                map.fill_search_slot(w.search, &d.old.tuple, w.econtext);
                if !find_with_retries(w, map, w.search) {
                    s.conflict_rows = (std::ptr::null_mut(), w.search);
                    s.decide(ConflictKind::DeleteMissing, None, &map.qualified);
                    return;
                }
                s.conflict_rows = (w.local, w.search);
                let apply =
                    s.remote_wins_over(w.local_row_version(), ConflictKind::DeleteOriginDiffers, &map.qualified);
                if apply {
                    w.delete();
                }
            })
        }
    }

    fn handle_truncate(&mut self, t: &proto::Truncate) {
        // TRUNCATE refuses tables in use.
        self.close_writers();
        let mut oids = Vec::new();
        for relid in &t.relids {
            oids.push(i64::from(u32::from(self.local_relation(*relid).relid)));
        }
        // The tables' names, and their owner when they have only one.
        let (list, owner): (Option<String>, Option<pg_sys::Oid>) = Spi::get_two_with_args(
            "SELECT string_agg(format('%I.%I', n.nspname, c.relname), ', '),
                    CASE WHEN count(DISTINCT c.relowner) = 1 THEN min(c.relowner) END
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.oid = ANY ($1::int8[]::oid[])",
            &[oids.into()],
        )
        .unwrap_or_else(|e| spi_failed("naming truncated tables", e));
        let Some(list) = list else { return };
        let sql = format!(
            "TRUNCATE ONLY {list}{}{}",
            if t.restart_seqs { " RESTART IDENTITY" } else { "" },
            if t.cascade { " CASCADE" } else { "" }
        );
        // As the tables' owner (their TRUNCATE triggers run with its rights); tables
        // of several owners in one TRUNCATE run as the worker, as PostgreSQL's apply
        // runs every TRUNCATE (docs/apply.md).
        // SAFETY: inside the apply transaction; undone when the statement ends or fails.
        let _switch = owner.and_then(|o| unsafe { OwnerSwitch::enter(o, self.worker_user) });
        Spi::run(&sql).unwrap_or_else(|e| spi_failed("applying TRUNCATE", e));
    }

    fn handle_commit(&mut self, c: &proto::Commit) {
        let Some(remote) = self.remote.take() else {
            PgError::new(PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION, "spock: COMMIT without BEGIN").raise();
        };
        if self.insert_retry {
            // Nothing of it stays; the origin does not move; the provider sends it
            // again after the reconnect.
            self.remote = Some(remote);
            self.abandon_remote();
            self.insert_retry = false;
            self.retry_now = true;
            return;
        }
        if remote.skip {
            // Record the skip: clear sub_skip_lsn in a transaction that carries the
            // origin's progress past the skipped transaction.
            // SAFETY: a catalog update committed with the origin's new position.
            unsafe {
                pg_sys::StartTransactionCommand();
                pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            }
            Spi::run_with_args(
                "UPDATE spock.subscription SET sub_skip_lsn = '0/0' WHERE sub_id = $1::int8::oid",
                &[i64::from(self.sub.id).into()],
            )
            .unwrap_or_else(|e| spi_failed("clearing sub_skip_lsn", e));
            self.sub.skip_lsn = 0;
            // SAFETY: as below.
            unsafe {
                pg_sys::PopActiveSnapshot();
                pg_sys::replorigin_session_origin_lsn = c.end_lsn;
                pg_sys::replorigin_session_origin_timestamp = c.commit_time;
                pg_sys::CommitTransactionCommand();
                self.pending.push_back((pg_sys::XactLastCommitEnd, c.end_lsn));
            }
            self.forget_exception(c.end_lsn);
            return;
        }
        let remote = match remote.replay {
            None => remote,
            Some(ReplayMode::Disable) => {
                self.disable_after_exception(remote);
                return;
            }
            Some(_) => {
                // The replayed transaction commits (what applied of it, and its
                // exception_log rows) and moves the origin past it.
                self.remote = Some(remote);
                self.ensure_local_transaction();
                self.forget_exception(c.end_lsn);
                self.reconnect = true;
                self.remote.take().expect("just put back")
            }
        };
        if !remote.local_started {
            return;
        }
        self.end_transaction_writers();
        // SAFETY: the origin's progress is set to the remote end LSN and committed in
        // the same commit record as the applied rows.
        unsafe {
            pg_sys::replorigin_session_origin_lsn = c.end_lsn;
            pg_sys::replorigin_session_origin_timestamp = c.commit_time;
            pg_sys::CommitTransactionCommand();
            self.pending.push_back((pg_sys::XactLastCommitEnd, c.end_lsn));
            pg_sys::pgstat_report_stat(false);
        }
        if let Some(i) = self.progress_slot {
            let insert = self.remote_insert_lsn;
            // SAFETY: reads the clock.
            let now = unsafe { pg_sys::GetCurrentTimestamp() };
            crate::workers::shmem::update_progress(i, |p| {
                p.prev_remote_ts = p.remote_commit_ts;
                p.remote_commit_ts = c.commit_time;
                p.remote_commit_lsn = c.end_lsn;
                p.remote_insert_lsn = p.remote_insert_lsn.max(insert);
                p.received_lsn = p.received_lsn.max(c.end_lsn);
                p.last_updated_ts = now;
            });
        }
    }
}
