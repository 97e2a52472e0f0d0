//! Relation-cache invalidation, shared by the output plugin (its relation entries)
//! and the apply worker (its relation map and kept writers): PostgreSQL calls our
//! callback
//! when a relation's definition (or its replication-set membership, which the SQL
//! API signals the same way) changes; the next callback that looks a relation up
//! drops the stale entries so they are rebuilt and their `R` message re-sent.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};

use pgrx::pg_sys;
use pgrx::prelude::*;

thread_local! {
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
    static ALL: Cell<bool> = const { Cell::new(false) };
    static PENDING: RefCell<HashSet<pg_sys::Oid>> = RefCell::new(HashSet::new());
}

#[pg_guard]
unsafe extern "C-unwind" fn spock_relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    if relid == pg_sys::InvalidOid {
        ALL.with(|a| a.set(true));
    } else {
        PENDING.with(|p| {
            p.borrow_mut().insert(relid);
        });
    }
}

/// Registers the callback once per backend (callbacks cannot be unregistered).
pub fn register() {
    if REGISTERED.with(|r| r.replace(true)) {
        return;
    }
    // SAFETY: registers a static function; the backend keeps a fixed-size table.
    unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(spock_relcache_callback), pg_sys::Datum::from(0)) };
}

/// Takes the invalidations seen since the last call: (everything?, relation oids).
pub fn drain() -> (bool, Vec<pg_sys::Oid>) {
    let all = ALL.with(|a| a.replace(false));
    let rels = PENDING.with(|p| p.borrow_mut().drain().collect());
    (all, rels)
}

/// Drops the entries PostgreSQL invalidated since the last call.
pub fn apply<V, S: std::hash::BuildHasher>(cache: &mut HashMap<pg_sys::Oid, V, S>) {
    if ALL.with(|a| a.replace(false)) {
        cache.clear();
        PENDING.with(|p| p.borrow_mut().clear());
        return;
    }
    PENDING.with(|p| {
        for relid in p.borrow_mut().drain() {
            cache.remove(&relid);
        }
    });
}
