//! The apply session: everything one writer needs to apply a subscription's
//! stream, in two separate owners so that a change can borrow both at once:
//!
//! * [`Relations`] (writers.rs): the remote relations, their local mappings and
//!   the executor states kept for their tables;
//! * [`SessionState`]: the subscription, its replication origins, progress and
//!   exception bookkeeping, and the per-transaction state ([`TxnState`]).
//!
//! The receiver (receiver.rs) feeds it messages ([`ApplySession::handle`], in
//! handlers.rs) and acts on the [`Outcome`] each returns. A parallel apply gives
//! each writer a session of its own.

use std::collections::{HashMap, HashSet};

use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;
use spock_core::walsender::UnflushedCommits;

use super::owner;
use super::subscription::SubscriptionInfo;
use super::transaction::TxnState;
use super::writers::Relations;
use crate::workers::shmem::ExceptionSlot;

/// What the receiver does after a message was handled.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Go on with the next message.
    Continue,
    /// A change of an eagerly applied stream needs the transaction's commit (a
    /// conflict, a table being copied, an error): the eager local transaction is
    /// rolled back and the stream replayed from its file at commit.
    NeedsCommit,
    /// An INSERT that did not search first met an existing key: the transaction
    /// must be applied again, searching. The rest of it is ignored meanwhile; a
    /// replay from a spill file starts over at once, a transaction from the
    /// provider is rolled back at its commit ([`Outcome::RetryNow`]).
    ApplyAgain,
    /// The transaction was rolled back at its commit to be applied again: the
    /// worker reconnects at once so that the provider sends it again, and nothing
    /// after it is applied or reported before that.
    RetryNow,
    /// A replayed transaction committed: the worker reconnects once between
    /// transactions (back to binary transfer).
    Reconnect,
    /// The subscription was disabled by an exception: the worker stops.
    Stop,
}

/// Apply state of one subscription's stream.
pub struct ApplySession {
    /// The relation cache (mappings and kept executor states).
    pub(super) rels: Relations,
    /// The rest of the session, including the transaction being applied.
    pub(super) s: SessionState,
}

/// What an apply session holds besides its relations.
pub(super) struct SessionState {
    pub(super) sub: SubscriptionInfo,
    /// Replication origins by originating node id.
    pub(super) origins: HashMap<u16, pg_sys::RepOriginId>,
    /// Node id and tiebreaker for local origin ids (0 = this node).
    pub(super) origin_nodes: HashMap<pg_sys::RepOriginId, (u16, i64)>,
    pub(super) session_origin: pg_sys::RepOriginId,
    /// The transaction and change being applied.
    pub(super) txn: TxnState,
    /// Local commits of applied transactions not yet flushed.
    pub(super) pending: UnflushedCommits,
    /// Memory for one change, reset after it.
    pub(super) change_cxt: pg_sys::MemoryContext,
    /// This subscription's entry in the shared progress table.
    pub(super) progress_slot: Option<usize>,
    /// The provider's insert position last reported.
    pub(super) remote_insert_lsn: u64,
    /// A transaction that failed before and is replayed per
    /// `spock.exception_behaviour` when it arrives again.
    pub(super) exception: Option<ExceptionSlot>,
    /// Tables copied by a table sync at an LSN the stream has not passed: changes
    /// to them from transactions that committed before it are in the copy.
    pub(super) table_skips: HashMap<(String, String), u64>,
    /// Local tables where an INSERT met an existing key: inserts into them search
    /// for the key first (as every insert did before). Others are inserted without
    /// a search, the key checked by the index as the row goes in.
    pub(super) careful_tables: HashSet<pg_sys::Oid>,
    /// The worker's own user: changes to tables owned by another role run as that
    /// owner (apply::owner).
    pub(super) worker_user: pg_sys::Oid,
    /// Replication origin `spock_tombstone` (0 until reserved).
    pub(super) tombstone_origin: pg_sys::RepOriginId,
    /// This session is a writer of a parallel apply (apply::parallel): it shares
    /// the leader's origin and leaves pauses and the progress table's in-transaction
    /// mark to the leader.
    pub(super) writer: bool,
    /// Leader of a parallel apply: transactions whose commit LSN is at most this are
    /// applied by the leader alone (after writers met a lock wait between them).
    pub(super) serial_until: u64,
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
        ApplySession {
            rels: Relations::new(),
            s: SessionState {
                sub,
                origins: HashMap::new(),
                origin_nodes: HashMap::new(),
                session_origin: 0,
                txn: TxnState::new(),
                pending: UnflushedCommits::new(),
                change_cxt,
                progress_slot: None,
                remote_insert_lsn: 0,
                exception: None,
                table_skips: HashMap::new(),
                careful_tables: HashSet::new(),
                worker_user: owner::worker_user(),
                tombstone_origin: 0,
                writer: false,
                serial_until: 0,
            },
        }
    }

    /// Closes the tables the session keeps open: a table sync may TRUNCATE them,
    /// which refuses a table this session has open ("being used by active queries
    /// in this session").
    pub fn close_tables(&mut self) {
        let rels = &mut self.rels;
        BackgroundWorker::transaction(std::panic::AssertUnwindSafe(|| rels.close_all()));
    }

    /// Lets go of the replication origin (a table sync sets it up for its copy, see
    /// `copy_from::commit_as_provider`); the next transaction takes it again.
    pub fn release_origin(&mut self) {
        if self.s.session_origin != 0 {
            // SAFETY: between transactions; resets this session's origin.
            unsafe {
                pg_sys::replorigin_session_reset();
                pg_sys::replorigin_session_origin = 0;
            }
            self.s.session_origin = 0;
        }
    }

    /// Makes sure replication origin `spock_tombstone` exists (its id is where
    /// deleted versions of rows this node never had are written) and tells the
    /// output plugins its id.
    pub fn reserve_tombstone_origin(&mut self) {
        let id = super::origin_named(spock_core::origin::TOMBSTONE_ORIGIN_NAME);
        self.s.tombstone_origin = id;
        if crate::workers::shmem::preloaded() {
            crate::workers::shmem::set_tombstone_origin(id);
        }
    }

    /// This subscription's entry in the shared progress table.
    pub fn progress_slot(&self) -> Option<usize> {
        self.s.progress_slot
    }

    /// Attaches to the shared progress table.
    pub fn attach_progress(&mut self, dbid: u32) {
        let s = &mut self.s;
        if crate::workers::shmem::preloaded() {
            s.progress_slot = crate::workers::shmem::progress_slot(dbid, s.sub.id);
            let (node, remote) = (s.sub.local_node_id, s.sub.provider_node_id);
            if let Some(i) = s.progress_slot {
                crate::workers::shmem::update_progress(i, |p| {
                    p.node_id = node;
                    p.remote_node_id = remote;
                    p.in_txn = false;
                    p.stopped_on_request = false;
                });
                s.exception = crate::workers::shmem::pending_exception(i);
            }
        }
    }

    /// Tells the manager that this worker stops because it was asked to (SIGTERM):
    /// no restart delay for the next one.
    pub fn note_stopped_on_request(&self) {
        if let Some(i) = self.s.progress_slot {
            crate::workers::shmem::note_stopped_on_request(i);
        }
    }

    /// Between transactions, with everything received applied: tables whose copy
    /// LSN `received` passed are replicating.
    pub fn tables_caught_up_at(&mut self, received: u64) {
        self.s.note_tables_caught_up(received);
    }

    /// Records the last position received from the provider.
    pub fn note_received(&mut self, lsn: u64) {
        if let Some(i) = self.s.progress_slot {
            let insert = self.s.remote_insert_lsn;
            crate::workers::shmem::update_progress(i, |p| {
                p.received_lsn = p.received_lsn.max(lsn);
                p.remote_insert_lsn = p.remote_insert_lsn.max(insert);
            });
        }
    }

    /// The transaction just begun (apply::stream) is applied eagerly, while it is
    /// still streamed.
    pub fn mark_eager(&mut self) {
        if let Some(r) = self.s.txn.remote.as_mut() {
            r.eager = true;
        }
    }

    /// Rolls back the local transaction of the remote transaction being applied and
    /// forgets it (eager apply of a stream that must be replayed at commit instead,
    /// or a transaction to be applied again).
    pub fn abandon_remote(&mut self) {
        self.s.txn.as_owner = None;
        self.rels.forget_transaction();
        if let Some(r) = self.s.txn.remote.take() {
            if r.local_started {
                // SAFETY: aborts the apply transaction this session started.
                unsafe { pg_sys::AbortCurrentTransaction() };
            }
        }
        self.rels.forget_mappings();
        self.s.leave_transaction_mark();
    }

    /// Whether a remote transaction is open.
    pub fn in_remote_transaction(&self) -> bool {
        self.s.txn.remote.is_some()
    }

    /// The remote end LSN up to which applied transactions are durable here, if
    /// more of them became durable since the last call.
    pub fn flushed_remote_lsn(&mut self) -> Option<u64> {
        // SAFETY: reads the WAL flush position.
        let flushed = unsafe { pg_sys::GetFlushRecPtr(std::ptr::null_mut()) };
        self.s.pending.flushed_up_to(flushed)
    }

    /// The newest commit timestamp of the provider's own transactions applied and
    /// durable here.
    pub fn flushed_stamp(&self) -> Option<i64> {
        self.s.pending.flushed_stamp()
    }

    /// A writer of a parallel apply: applies under replication origin `origin`,
    /// which the leader (`leader_pid`) holds, and reports into the shared progress
    /// table of subscription `sub_id` of `dbid` without the leader's marks.
    pub fn attach_as_writer(&mut self, dbid: u32, origin: pg_sys::RepOriginId, leader_pid: i32) {
        let s = &mut self.s;
        s.writer = true;
        if crate::workers::shmem::preloaded() {
            s.progress_slot = crate::workers::shmem::progress_slot(dbid, s.sub.id);
        }
        // SAFETY: between transactions, no origin set up in this process yet; the
        // leader holds `origin` and commits are kept in order (apply::parallel).
        unsafe {
            pg_sys::replorigin_session_setup(origin, leader_pid);
            pg_sys::replorigin_session_origin = origin;
        }
        s.origins.insert(s.sub.provider_node_id, origin);
        s.session_origin = origin;
    }

    /// The leader of a parallel apply: holds the provider's replication origin
    /// (writers share it) and returns its id.
    pub fn hold_provider_origin(&mut self) -> pg_sys::RepOriginId {
        let provider = self.s.sub.provider_node_id;
        self.s.use_origin(provider);
        self.s.session_origin
    }

    /// A writer: starts the local transaction of the remote one begun and returns
    /// its transaction id (assigned at once, so that a writer waiting for this one
    /// to commit waits on its lock, where the deadlock detector sees it).
    pub fn start_local_xid(&mut self) -> u32 {
        self.s.ensure_local_transaction();
        // SAFETY: inside the transaction just started.
        unsafe { u32::from(pg_sys::GetCurrentTransactionId()) }
    }

    /// A commit made by a writer of a parallel apply (the leader keeps the list of
    /// commits waiting for their flush).
    pub fn note_writer_commit(&mut self, local_end: u64, remote_end: u64, commit_ts: i64) {
        self.s.pending.push_stamped(local_end, remote_end, commit_ts);
    }

    /// Transactions whose commit LSN is at most this are applied by the leader
    /// alone.
    pub fn serial_until(&self) -> u64 {
        self.s.serial_until
    }

    /// After a lock wait between writers: the leader applies transactions up to
    /// commit LSN `lsn` alone.
    pub fn apply_serially_until(&mut self, lsn: u64) {
        self.s.serial_until = self.s.serial_until.max(lsn);
    }

    /// Whether applied transactions still wait for their local commit to be flushed.
    pub fn has_unflushed(&self) -> bool {
        !self.s.pending.is_empty()
    }
}
