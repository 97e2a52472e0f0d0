//! The per-transaction state of an apply session: the remote transaction being
//! applied (its commit data, whether it is skipped, replayed, applied eagerly or
//! must be applied again) and the change being applied in it.

use pgrx::pg_sys;
use spock_core::exception::ReplayMode;
use spock_core::proto;

use super::owner::Switched;

/// The remote transaction being received.
pub(super) struct RemoteTxn {
    pub(super) commit_time: i64,
    /// The provider's transaction id and commit LSN (for spock.resolutions).
    pub(super) xid: u32,
    pub(super) final_lsn: u64,
    pub(super) origin_node: u16,
    pub(super) local_started: bool,
    /// The transaction is skipped (`sub_alter_skiplsn`).
    pub(super) skip: bool,
    /// Set when this transaction failed before: how it is replayed.
    pub(super) replay: Option<ReplayMode>,
    /// Changes seen so far.
    pub(super) changes: u32,
    /// Applied eagerly while it is streamed (apply::stream): its commit timestamp
    /// is not known yet, so a change that needs it ([`RemoteTxn::needs_commit`])
    /// makes the receiver roll it back and replay it at commit.
    pub(super) eager: bool,
    /// Eager apply met a change that needs the commit (a conflict, a table being
    /// copied, an error).
    pub(super) needs_commit: bool,
    /// An INSERT inserted without a search met an existing key: the local
    /// transaction must be rolled back and the remote one applied again, searching
    /// (the rest of its changes are ignored until then).
    pub(super) apply_again: bool,
}

impl RemoteTxn {
    /// A transaction that began (`B`), from the provider until an origin message
    /// says otherwise.
    pub(super) fn new(b: &proto::Begin, provider: u16, skip: bool, replay: Option<ReplayMode>) -> RemoteTxn {
        RemoteTxn {
            commit_time: b.commit_time,
            xid: b.xid,
            final_lsn: b.final_lsn,
            origin_node: provider,
            local_started: false,
            skip,
            replay,
            changes: 0,
            eager: false,
            needs_commit: false,
            apply_again: false,
        }
    }
}

/// What the session knows of the transaction and change being applied.
pub(super) struct TxnState {
    /// The remote transaction being received.
    pub(super) remote: Option<RemoteTxn>,
    /// Number of the current (or last) local transaction (writers are made ready
    /// per local transaction).
    pub(super) local_txns: u64,
    /// The change being applied (1-based; 0 between changes): where an error struck.
    pub(super) current_change: u32,
    /// The change being applied is an UPDATE (a unique violation then counts as
    /// update_exists).
    pub(super) current_is_update: bool,
    /// The rows of the conflict being decided (local, remote; null when absent),
    /// for spock.resolutions.
    pub(super) conflict_rows: (*mut pg_sys::TupleTableSlot, *mut pg_sys::TupleTableSlot),
    /// Set while a change runs as its table's owner: how conflict bookkeeping steps
    /// back to the worker's user.
    pub(super) as_owner: Option<Switched>,
}

impl TxnState {
    pub(super) fn new() -> TxnState {
        TxnState {
            remote: None,
            local_txns: 0,
            current_change: 0,
            current_is_update: false,
            conflict_rows: (std::ptr::null_mut(), std::ptr::null_mut()),
            as_owner: None,
        }
    }

    /// The change is over: forgets its rows.
    pub(super) fn end_change(&mut self) {
        self.current_change = 0;
        self.current_is_update = false;
        self.conflict_rows = (std::ptr::null_mut(), std::ptr::null_mut());
    }
}

/// A row change of the remote transaction.
#[derive(Clone, Copy)]
pub(super) enum Change<'a> {
    Insert(&'a proto::Insert),
    Update(&'a proto::Update),
    Delete(&'a proto::Delete),
    Truncate(&'a proto::Truncate),
}

impl<'a> Change<'a> {
    pub(super) fn operation(&self) -> &'static str {
        match self {
            Change::Insert(_) => "INSERT",
            Change::Update(_) => "UPDATE",
            Change::Delete(_) => "DELETE",
            Change::Truncate(_) => "TRUNCATE",
        }
    }

    pub(super) fn relid(&self) -> Option<u32> {
        match self {
            Change::Insert(i) => Some(i.relid),
            Change::Update(u) => Some(u.relid),
            Change::Delete(d) => Some(d.relid),
            Change::Truncate(t) => t.relids.first().copied(),
        }
    }

    pub(super) fn old_tuple(&self) -> Option<&'a proto::Tuple> {
        match self {
            Change::Update(u) => u.old.as_ref().map(|o| &o.tuple),
            Change::Delete(d) => Some(&d.old.tuple),
            _ => None,
        }
    }

    pub(super) fn new_tuple(&self) -> Option<&'a proto::Tuple> {
        match self {
            Change::Insert(i) => Some(&i.new),
            Change::Update(u) => Some(&u.new),
            _ => None,
        }
    }
}
