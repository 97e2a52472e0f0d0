//! One handler per protocol message, dispatched from one `match`
//! ([`ApplySession::handle`]), each telling the receiver what to do next
//! ([`Outcome`]). Each remote transaction is applied in one local transaction under
//! the replication origin of the node it came from, and that origin's progress is
//! committed with it (exactly once after a crash). Conflicts are decided by
//! `spock_core::conflict`.
//!
//! A row change borrows its table's writer and mapping from the session's
//! relation cache ([`Relations`](super::writers::Relations)) and the rest of the
//! session ([`SessionState`]) beside it.

use std::collections::HashMap;

use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};
use spock_core::conflict::{self, ConflictKind, Decision, RowVersion, Tiebreakers};
use spock_core::exception::{self as exc, ReplayMode};
use spock_core::names;
use spock_core::proto::wal_message::{self, WalMessage};
use spock_core::proto::{self, Decoded, Message};
use spock_core::table_skip::InCopy;

mod conflicts;
use conflicts::find_with_retries;
mod exceptions;
mod table_skips;

pub use exceptions::{describe_error, log_caught_error};

use super::executor::{LocalRelation, LocalVersion, TableWriter};
use super::owner::OwnerSwitch;
use super::session::{ApplySession, Outcome, SessionState};
use super::transaction::{Change, RemoteTxn};
use crate::error::{spi_failed, PgError};
use crate::gucs;

impl ApplySession {
    /// Applies one message.
    pub fn handle(&mut self, d: Decoded) -> Outcome {
        if let Some(l) = d.remote_insert_lsn {
            self.s.remote_insert_lsn = self.s.remote_insert_lsn.max(l);
        }
        match d.message {
            Message::Startup(s) => self.s.handle_startup(&s),
            Message::Begin(b) => {
                if !self.s.writer {
                    self.s.wait_while_paused();
                }
                self.s.handle_begin(&b)
            }
            Message::Origin(o) => self.s.handle_origin(&o),
            Message::CommitOrder(_) => {}
            Message::Relation(r) => self.rels.insert(r),
            Message::Insert(i) => return self.change(Change::Insert(&i)),
            Message::Update(u) => return self.change(Change::Update(&u)),
            Message::Delete(del) => return self.change(Change::Delete(&del)),
            Message::Truncate(t) => return self.change(Change::Truncate(&t)),
            Message::Commit(c) => {
                let final_lsn = self.s.txn.remote.as_ref().map_or(0, |r| r.final_lsn);
                let outcome = self.handle_commit(&c);
                self.s.note_tables_caught_up(final_lsn);
                self.s.leave_transaction_mark();
                return outcome;
            }
            Message::LogicalMessage(m) => self.s.handle_message(&m),
            // Stream messages are taken by apply::stream before they get here.
            Message::StreamStart(_)
            | Message::StreamStop(_)
            | Message::StreamChange(_)
            | Message::StreamCommit(_)
            | Message::StreamAbort(_) => {
                PgError::new(PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION, "spock: unexpected stream message").raise()
            }
        }
        Outcome::Continue
    }

    /// One row change: applied, or (replaying a transaction that failed before)
    /// applied on its own or only logged.
    fn change(&mut self, c: Change<'_>) -> Outcome {
        let Some(remote) = self.s.txn.remote.as_ref() else {
            PgError::new(PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION, "spock: change outside a transaction").raise();
        };
        if remote.skip || remote.apply_again {
            return Outcome::Continue;
        }
        let eager = remote.eager;
        // Eager apply of a stream: the commit LSN is not known, so whether a table
        // copy holds this change is not either (unless its copy has not even
        // started): replay at commit instead.
        let commit_lsn = (!eager).then_some(remote.final_lsn);
        match self.s.in_table_copy(c.relid().and_then(|r| self.rels.remote(r)), commit_lsn) {
            InCopy::Yes => return Outcome::Continue,
            InCopy::Unknown => return Outcome::NeedsCommit,
            InCopy::No => {}
        }
        let Some(remote) = self.s.txn.remote.as_mut() else { return Outcome::Continue };
        remote.changes += 1;
        let n = remote.changes;
        let replay = remote.replay;
        self.s.txn.current_change = n;
        self.s.txn.current_is_update = matches!(c, Change::Update(_));
        match replay {
            None if eager => {
                // An error while a stream is applied eagerly: its transaction is
                // rolled back and replayed at commit, where errors are handled as
                // for any transaction (exception_behaviour).
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.in_change(|s| s.apply(c))));
                if r.is_err() {
                    self.s.txn.as_owner = None;
                    self.rels.forget_transaction();
                    // SAFETY: leaves the error state; the transaction is aborted by
                    // the fallback (abandon_remote) right after this change.
                    unsafe {
                        pg_sys::FlushErrorState();
                        pg_sys::MemoryContextReset(self.s.change_cxt);
                    }
                    self.s.txn.end_change();
                    return Outcome::NeedsCommit;
                }
            }
            None => self.in_change(|s| s.apply(c)),
            Some(ReplayMode::Discard) => {
                // SAFETY: called inside the apply transaction (in_change_isolated
                // starts it); the closure is a complete change.
                if let Err(error) = self.in_change_isolated(|s| s.apply(c)) {
                    pgrx::warning!(
                        "spock subscription {}: discarding change {n} ({} on {}) of remote transaction {}: {error}",
                        self.s.sub.name,
                        c.operation(),
                        self.rels.label(c.relid()),
                        self.s.txn.remote.as_ref().map_or(0, |r| r.xid)
                    );
                    if ReplayMode::Discard.logs(gucs::exception_logging(), true) {
                        self.log_exception(Some(c), n, &error);
                    }
                }
            }
            Some(mode) => {
                let (failed_change, error) =
                    self.s.exception.map_or((0, String::new()), |e| (e.failed_change, e.message()));
                let failed = n == failed_change;
                if mode.logs(gucs::exception_logging(), failed) {
                    let msg: String = if failed { error } else { exc::collateral_message(mode, failed_change, &error) };
                    self.log_exception(Some(c), n, &msg);
                }
            }
        }
        self.s.txn.end_change();
        let Some(remote) = self.s.txn.remote.as_mut() else { return Outcome::Continue };
        if remote.eager && (remote.needs_commit || remote.apply_again) {
            // A conflict needs the commit timestamp, or an eagerly applied stream
            // must be applied again searching for keys: replayed from its spill
            // file at commit.
            return Outcome::NeedsCommit;
        }
        if remote.apply_again {
            return Outcome::ApplyAgain;
        }
        Outcome::Continue
    }

    fn apply(&mut self, c: Change<'_>) {
        match c {
            Change::Insert(i) => self.handle_insert(i),
            Change::Update(u) => self.handle_update(u),
            Change::Delete(d) => self.handle_delete(d),
            Change::Truncate(t) => self.handle_truncate(t),
        }
    }

    /// Runs a row change inside the local transaction, with a snapshot and the
    /// per-change memory context.
    fn in_change(&mut self, f: impl FnOnce(&mut Self)) {
        self.s.ensure_local_transaction();
        let cxt = self.s.change_cxt;
        // SAFETY: the usual begin/end of one replication step (worker.c).
        unsafe {
            pg_sys::SetCurrentStatementStartTimestamp();
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            let old = pg_sys::MemoryContextSwitchTo(cxt);
            f(self);
            pg_sys::MemoryContextSwitchTo(old);
            if !(*cxt).isReset {
                pg_sys::MemoryContextReset(cxt);
            }
            pg_sys::PopActiveSnapshot();
            pg_sys::CommandCounterIncrement();
        }
    }

    /// Applies one change to the table of remote relation `relid` with `f`, as the
    /// table's owner (apply::owner: its triggers, defaults and constraints run with
    /// the owner's rights, not the worker's); the table's executor state stays for
    /// the next changes. `f` gets the session state, the table's writer and mapping
    /// (borrowed from the relation cache, which `f` cannot reach).
    ///
    /// SAFETY: inside the apply transaction with an active snapshot.
    unsafe fn with_writer<T>(
        &mut self,
        relid: u32,
        f: impl FnOnce(&mut SessionState, &mut TableWriter, &LocalRelation) -> T,
    ) -> T {
        let s = &mut self.s;
        // SAFETY: forwarded. On an error the writer stays in the cache; the handler
        // of the error forgets its transaction part, and the switch to the owner is
        // undone as the error unwinds through here.
        let (out, keep) = unsafe {
            let (w, map) = self.rels.writer(relid, s.txn.local_txns);
            // The owner as the open relation knows it: no catalog lookup per change;
            // an ALTER TABLE ... OWNER TO invalidates the relation, which rebuilds
            // this entry before the next change (or closes the writer).
            let switch = OwnerSwitch::enter((*(*w.rel).rd_rel).relowner, s.worker_user);
            s.txn.as_owner = switch.as_ref().map(OwnerSwitch::state);
            w.begin_change();
            let out = f(s, w, map);
            w.end_change();
            s.txn.as_owner = None;
            drop(switch);
            // Trigger slots or relations of this transaction: not kept.
            (out, !w.has_extras())
        };
        if !keep {
            self.rels.close(relid);
        }
        out
    }

    fn handle_insert(&mut self, i: &proto::Insert) {
        // SAFETY: inside the apply transaction with an active snapshot.
        let queued = unsafe {
            self.with_writer(i.relid, |s, w, map| {
                map.fill_slot(w.remote, &i.new, None, w.econtext);
                let has_key = map.identity_index != pg_sys::InvalidOid;
                // Search first only where a duplicate key was met before, or when
                // replaying a failed transaction change by change.
                let check_all_unique = crate::gucs::CHECK_ALL_UC_INDEXES.get();
                let unsearched = has_key
                    && !check_all_unique
                    && !s.careful_tables.contains(&map.relid)
                    && s.txn.remote.as_ref().is_some_and(|r| r.replay.is_none())
                    && w.can_insert_unsearched(map.identity_index)
                    // Only a key of which no version is here: a deleted version is
                    // one the INSERT must be decided against (below), and a live
                    // one would make the unique check report a duplicate, which
                    // costs applying the whole transaction again.
                    && !w.key_versions(map, w.remote).any;
                if unsearched {
                    if !w.insert_reporting_duplicate(map.identity_index) {
                        pgrx::debug1!(
                            "spock subscription {}: an INSERT into {} met an existing key; the transaction is applied again, searching for keys",
                            s.sub.name,
                            map.qualified
                        );
                        s.careful_tables.insert(map.relid);
                        if let Some(r) = s.txn.remote.as_mut() {
                            r.apply_again = true;
                        }
                        return None;
                    }
                    return super::queue::is_queue(map).then(|| super::queue::QueuedRow::from_slot(w.remote));
                }
                // (spock.check_all_uc_indexes: a row another unique index finds is the
                // row this INSERT meets, decided and overwritten as one with its key.)
                if (has_key && w.find(map, w.remote)) || (check_all_unique && w.find_by_other_unique_index(map)) {
                    let local = match w.local_row_version() {
                        LocalVersion::Committed { commit_ts, origin } => Some(RowVersion { commit_ts, origin }),
                        LocalVersion::ThisTransaction | LocalVersion::Unknown => None,
                    };
                    s.txn.conflict_rows = (w.local, w.remote);
                    let apply = match local {
                        None => true,
                        Some(l) => s.decide(ConflictKind::InsertExists, Some(l), &map.qualified).applies_remote(),
                    };
                    if apply {
                        map.fill_slot(w.new, &i.new, Some(w.local), w.econtext);
                        w.update(map, w.new);
                    }
                    return None;
                }
                if let Some((commit_ts, origin)) = w.find_deleted(map, w.remote) {
                    // The key was deleted here: the DELETE is a version too.
                    s.txn.conflict_rows = (w.local, w.remote);
                    let deleted = RowVersion { commit_ts, origin };
                    if !s.remote_wins_over_deleted(deleted, ConflictKind::InsertDeleted, &map.qualified) {
                        return None;
                    }
                }
                w.insert();
                // spock.queue: act on the queued message in this transaction (apply/queue.rs).
                super::queue::is_queue(map).then(|| super::queue::QueuedRow::from_slot(w.remote))
            })
        };
        if let Some(row) = queued {
            // Queued DDL may alter any table: none may be open.
            self.rels.close_all();
            super::queue::handle_queued_row(&self.s.sub, row);
        }
    }

    fn handle_update(&mut self, u: &proto::Update) {
        // SAFETY: inside the apply transaction with an active snapshot.
        unsafe {
            self.with_writer(u.relid, |s, w, map| {
                let key = u.old.as_ref().map_or(&u.new, |o| &o.tuple);
                map.fill_search_slot(w.search, key, w.econtext);
                if !find_with_retries(w, map, w.search) {
                    // No row: decided against its DELETE when a deleted version is
                    // here, else applied as an INSERT when the UPDATE carries the
                    // whole row (spock_core::conflict::decide_update_missing).
                    let apply = match w.find_deleted(map, w.search) {
                        Some((commit_ts, origin)) => {
                            // What the UPDATE left in TOAST comes from the deleted row.
                            map.fill_slot(w.remote, &u.new, Some(w.local), w.econtext);
                            s.txn.conflict_rows = (w.local, w.remote);
                            let deleted = RowVersion { commit_ts, origin };
                            s.remote_wins_over_deleted(deleted, ConflictKind::UpdateDeleted, &map.qualified)
                        }
                        None if u.new.is_complete() => {
                            map.fill_slot(w.remote, &u.new, None, w.econtext);
                            s.txn.conflict_rows = (std::ptr::null_mut(), w.remote);
                            s.decide_update_missing(true, &map.qualified).applies_remote()
                        }
                        None => {
                            s.txn.conflict_rows = (std::ptr::null_mut(), w.search);
                            s.decide_update_missing(false, &map.qualified).applies_remote()
                        }
                    };
                    if apply {
                        w.insert();
                    }
                    return;
                }
                map.fill_slot(w.new, &u.new, Some(w.local), w.econtext);
                // Delta-apply columns (crate::delta) take local + (new - old), with
                // the old row the provider logs for REPLICA IDENTITY FULL.
                let delta = match u.old.as_ref() {
                    Some(old) if map.has_deltas() && old.kind == proto::OldTupleKind::Full => {
                        map.fill_slot(w.remote, &old.tuple, Some(w.local), w.econtext);
                        map.apply_deltas(w.new, w.remote, w.local)
                    }
                    _ => false,
                };
                s.txn.conflict_rows = (w.local, w.new);
                let apply =
                    s.remote_wins_over(w.local_row_version(), ConflictKind::UpdateOriginDiffers, &map.qualified);
                if apply {
                    w.update(map, w.new);
                } else if delta {
                    // The local row stays, but for the additions.
                    map.keep_local_but_deltas(w.remote, w.local, w.new);
                    w.update(map, w.remote);
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
                    s.txn.conflict_rows = (std::ptr::null_mut(), w.search);
                    s.decide(ConflictKind::DeleteMissing, None, &map.qualified);
                    // The DELETE is a version all the same: an older INSERT or
                    // UPDATE of the key that arrives later loses to it.
                    w.leave_deleted_version(map, w.search, s.tombstone_origin);
                    return;
                }
                s.txn.conflict_rows = (w.local, w.search);
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
        self.rels.close_all();
        let mut oids = Vec::new();
        for relid in &t.relids {
            // SAFETY: inside the apply transaction.
            oids.push(i64::from(u32::from(unsafe { self.rels.local(*relid) }.relid)));
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
        let _switch = owner.and_then(|o| unsafe { OwnerSwitch::enter(o, self.s.worker_user) });
        Spi::run(&sql).unwrap_or_else(|e| spi_failed("applying TRUNCATE", e));
    }

    fn handle_commit(&mut self, c: &proto::Commit) -> Outcome {
        let Some(remote) = self.s.txn.remote.take() else {
            PgError::new(PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION, "spock: COMMIT without BEGIN").raise();
        };
        if remote.apply_again {
            // Nothing of it stays; the origin does not move; the provider sends it
            // again after the reconnect.
            self.s.txn.remote = Some(remote);
            self.abandon_remote();
            return Outcome::RetryNow;
        }
        if remote.skip {
            self.s.commit_skipped(c);
            return Outcome::Continue;
        }
        let (remote, outcome) = match remote.replay {
            None => (remote, Outcome::Continue),
            Some(ReplayMode::Disable) => {
                self.disable_after_exception(remote);
                return Outcome::Stop;
            }
            Some(_) => {
                // The replayed transaction commits (what applied of it, and its
                // exception_log rows) and moves the origin past it.
                self.s.txn.remote = Some(remote);
                self.s.ensure_local_transaction();
                self.s.forget_exception();
                (self.s.txn.remote.take().expect("just put back"), Outcome::Reconnect)
            }
        };
        if !remote.local_started {
            return outcome;
        }
        self.rels.end_transaction();
        // The provider's own transactions tell how far its clock is applied.
        let own = remote.origin_node == self.s.sub.provider_node_id;
        self.s.commit_applied(c, own);
        outcome
    }
}

impl SessionState {
    /// Clears this worker's in-transaction mark in the progress table (a writer of a
    /// parallel apply leaves it to the leader).
    pub(super) fn leave_transaction_mark(&self) {
        if let (Some(i), false) = (self.progress_slot, self.writer) {
            crate::workers::shmem::leave_transaction(i);
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

    /// A sync event (`spock.sync_event()`) outside a transaction: the provider has
    /// passed `lsn`, so has this subscription (wait_for_sync_event looks at the
    /// origin's progress). Transactional ones are covered by their commit.
    /// Either layout is read (Spock's, and spock-rs 0.1.0's big-endian one); a
    /// message of another kind is skipped with a warning (Spock errors, and so
    /// would stop at it forever).
    fn handle_message(&mut self, m: &proto::LogicalMessage) {
        if m.prefix != wal_message::PREFIX {
            return;
        }
        match WalMessage::parse(&m.content) {
            WalMessage::SyncEvent(_) => {}
            other => {
                pgrx::warning!(
                    "spock: skipping a \"Spock\" message at {} that is not a sync event ({other:?})",
                    proto::format_lsn(m.lsn)
                );
                return;
            }
        }
        if m.transactional || self.txn.remote.is_some() {
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
        self.txn.remote = Some(RemoteTxn::new(b, self.sub.provider_node_id, skip, replay));
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
        // Outside any apply transaction: the O message precedes every change.
        let id = super::origin_named(&name);
        self.origins.insert(node, id);
        id
    }

    fn handle_origin(&mut self, o: &proto::Origin) {
        let node = if o.origin_id == 0 { self.sub.provider_node_id } else { o.origin_id };
        self.use_origin(node);
        if let Some(r) = self.txn.remote.as_mut() {
            r.origin_node = node;
        }
    }

    /// Makes the session apply under the origin of transactions from `node`.
    pub(super) fn use_origin(&mut self, node: u16) {
        let origin = self.origin_for(node);
        if origin != self.session_origin {
            if self.writer {
                // The leader applies forwarded transactions itself (they are
                // barriers: spock_core::parallel::FootprintBuilder).
                PgError::new(
                    PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                    format!(
                        "spock subscription {}: a parallel apply writer was given a transaction from node {node}",
                        self.sub.name
                    ),
                )
                .raise();
            }
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

    /// Starts the local transaction of the remote one, if not started yet.
    pub(super) fn ensure_local_transaction(&mut self) {
        let Some(remote) = self.txn.remote.as_mut() else { return };
        if !remote.local_started {
            self.txn.local_txns += 1;
            // SAFETY: starts a transaction between replication steps (worker.c).
            unsafe {
                pg_sys::StartTransactionCommand();
                // Rows keep the remote commit time as the origin timestamp.
                pg_sys::replorigin_session_origin_timestamp = remote.commit_time;
            }
            remote.local_started = true;
        }
    }

    /// Records the skip of a transaction (`sub_alter_skiplsn`): clears sub_skip_lsn
    /// in a transaction that carries the origin's progress past it.
    fn commit_skipped(&mut self, c: &proto::Commit) {
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
        // SAFETY: as in commit_applied.
        unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::replorigin_session_origin_lsn = c.end_lsn;
            pg_sys::replorigin_session_origin_timestamp = c.commit_time;
            pg_sys::CommitTransactionCommand();
            self.pending.push(pg_sys::XactLastCommitEnd, c.end_lsn);
        }
        self.forget_exception();
    }

    /// Commits the local transaction of an applied remote one, with the origin's
    /// progress, and shows it in the shared progress table. `own`: the provider
    /// wrote the transaction itself (not forwarded from another origin), so its
    /// commit timestamp is from the provider's clock.
    fn commit_applied(&mut self, c: &proto::Commit, own: bool) {
        // What it removed carries the provider's timestamp (workers::removals).
        crate::workers::removals::note_applied(c.commit_time);
        // SAFETY: the origin's progress is set to the remote end LSN and committed in
        // the same commit record as the applied rows.
        unsafe {
            pg_sys::replorigin_session_origin_lsn = c.end_lsn;
            pg_sys::replorigin_session_origin_timestamp = c.commit_time;
            pg_sys::CommitTransactionCommand();
            if own {
                self.pending.push_stamped(pg_sys::XactLastCommitEnd, c.end_lsn, c.commit_time);
            } else {
                self.pending.push(pg_sys::XactLastCommitEnd, c.end_lsn);
            }
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
