//! The relation cache of an apply session: the remote relations (`R` messages)
//! by remote id, each with its local mapping ([`LocalRelation`], built at its first
//! change) and the executor state of its table ([`TableWriter`], kept across
//! changes and transactions until the table is invalidated). It owns the writers'
//! resource owner and memory; nothing else of the session lives here, so a change
//! borrows its table's writer and mapping from this cache while the handler
//! borrows the rest of the session.

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use rustc_hash::FxHashMap;
use spock_core::proto;

use super::executor::{LocalRelation, TableWriter};
use crate::error::PgError;

/// A remote relation and, once used, its local mapping and its table's executor
/// state.
struct RemoteRel {
    msg: proto::Relation,
    local: Option<LocalRelation>,
    writer: Option<Box<TableWriter>>,
}

/// The remote relations of one session and their writers.
pub(super) struct Relations {
    rels: FxHashMap<u32, RemoteRel>,
    /// Resource owner of the relation references of the kept executor states.
    owner: pg_sys::ResourceOwner,
    /// Memory of the kept executor states.
    cxt: pg_sys::MemoryContext,
}

impl Relations {
    /// An empty cache with its own resource owner and memory.
    pub(super) fn new() -> Relations {
        // SAFETY: a session-lived resource owner (no parent) and memory context.
        let (owner, cxt) = unsafe {
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
        Relations { rels: FxHashMap::default(), owner, cxt }
    }

    /// A relation message: replaces what was known of the relation.
    pub(super) fn insert(&mut self, msg: proto::Relation) {
        self.rels.insert(msg.relid, RemoteRel { msg, local: None, writer: None });
    }

    /// The relation message of remote relation `relid`.
    pub(super) fn remote(&self, relid: u32) -> Option<&proto::Relation> {
        self.rels.get(&relid).map(|r| &r.msg)
    }

    /// `schema.table` of remote relation `relid`, for messages.
    pub(super) fn label(&self, relid: Option<u32>) -> String {
        relid.and_then(|r| self.remote(r)).map_or_else(|| "?".to_string(), |r| format!("{}.{}", r.nspname, r.relname))
    }

    /// Drops the mappings of relations invalidated since the last call; returns
    /// whether local table `local_relid` was among them.
    fn forget_invalidated(&mut self, local_relid: pg_sys::Oid) -> bool {
        let (all, changed) = crate::invalidation::drain();
        if all || !changed.is_empty() {
            for r in self.rels.values_mut() {
                if all || r.local.as_ref().is_some_and(|l| changed.contains(&l.relid)) {
                    r.writer = None;
                    r.local = None;
                }
            }
        }
        all || changed.contains(&local_relid)
    }

    /// The local mapping of remote relation `relid`, built if needed.
    ///
    /// SAFETY: inside the apply transaction.
    pub(super) unsafe fn local(&mut self, relid: u32) -> &LocalRelation {
        // A local ALTER TABLE (or any relcache invalidation) rebuilds the mapping.
        self.forget_invalidated(pg_sys::InvalidOid);
        let Some(r) = self.rels.get_mut(&relid) else {
            PgError::new(
                PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION,
                format!("spock: change for relation {relid} before its relation message"),
            )
            .raise();
        };
        // SAFETY: forwarded.
        r.local.get_or_insert_with(|| unsafe { LocalRelation::build(&r.msg) })
    }

    /// The executor state of the local table of remote relation `relid`, ready for
    /// local transaction `txn`, with its mapping: the one kept from earlier changes,
    /// or a new one. Taking the table's lock brings news of a concurrent local ALTER
    /// TABLE: the mapping and state are then rebuilt before use.
    ///
    /// SAFETY: inside the apply transaction with an active snapshot.
    pub(super) unsafe fn writer(&mut self, relid: u32, txn: u64) -> (&mut TableWriter, &LocalRelation) {
        // SAFETY: forwarded.
        let local = unsafe { self.local(relid) }.relid;
        let (owner, cxt) = (self.owner, self.cxt);
        let r = self.rels.get_mut(&relid).expect("mapped just now");
        let rebuild = match r.writer.as_mut() {
            Some(w) if w.txn == txn => false,
            Some(w) => {
                // SAFETY: inside transaction `txn`.
                unsafe { w.begin_transaction(txn) };
                self.forget_invalidated(local)
            }
            None => {
                // SAFETY: forwarded.
                r.writer = Some(Box::new(unsafe { TableWriter::open(local, owner, cxt, txn) }));
                self.forget_invalidated(local)
            }
        };
        if rebuild {
            // The table changed (forget_invalidated closed its writer): map and open
            // again.
            // SAFETY: forwarded.
            let local = unsafe { self.local(relid) }.relid;
            let r = self.rels.get_mut(&relid).expect("mapped just now");
            // SAFETY: forwarded.
            r.writer = Some(Box::new(unsafe { TableWriter::open(local, owner, cxt, txn) }));
        }
        let r = self.rels.get_mut(&relid).expect("mapped just now");
        match (r.writer.as_deref_mut(), r.local.as_ref()) {
            (Some(w), Some(map)) => (w, map),
            _ => unreachable!("the writer and mapping were just made"),
        }
    }

    /// Closes the executor state of remote relation `relid`, if any.
    pub(super) fn close(&mut self, relid: u32) {
        if let Some(r) = self.rels.get_mut(&relid) {
            r.writer = None;
        }
    }

    /// Drops the kept tables' slots of the current transaction before it commits.
    pub(super) fn end_transaction(&mut self) {
        for w in self.rels.values_mut().filter_map(|r| r.writer.as_deref_mut()) {
            // SAFETY: inside the transaction the writers were made ready for.
            unsafe { w.end_transaction() };
        }
    }

    /// On a rollback (just before or after it): the kept tables' transaction parts
    /// go with it and are forgotten; the rest is closed, so no executor state that
    /// took part in a failed change survives it.
    pub(super) fn forget_transaction(&mut self) {
        for r in self.rels.values_mut() {
            if let Some(w) = r.writer.as_deref_mut() {
                w.forget_transaction();
            }
            r.writer = None;
        }
    }

    /// Closes the kept tables (before queued DDL or a TRUNCATE, which refuse tables
    /// in use, and around a subtransaction, whose resources must not outlive it).
    pub(super) fn close_all(&mut self) {
        for r in self.rels.values_mut() {
            r.writer = None;
        }
    }

    /// Forgets every local mapping (after a rollback: rebuilt at the next change).
    pub(super) fn forget_mappings(&mut self) {
        for r in self.rels.values_mut() {
            r.local = None;
        }
    }
}
