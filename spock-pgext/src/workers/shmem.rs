//! The little shared state workers need: which databases have no spock (so the
//! supervisor does not start managers there again and again).

use pgrx::lwlock::PgLwLock;
use pgrx::prelude::*;
use pgrx::pg_sys;
use pgrx::shmem::PGRXSharedMemory;
use std::sync::atomic::{AtomicBool, Ordering};

const MAX_DATABASES: usize = 256;

/// Databases whose manager found no spock extension.
#[derive(Copy, Clone)]
pub struct WorkerState {
    no_spock: [u32; MAX_DATABASES],
    n: usize,
}

impl Default for WorkerState {
    fn default() -> Self {
        WorkerState { no_spock: [0; MAX_DATABASES], n: 0 }
    }
}

// SAFETY: a plain-old-data struct without pointers.
unsafe impl PGRXSharedMemory for WorkerState {}

/// The shared state, initialised when spock is preloaded.
// SAFETY: the name is unique to spock; pg_shmem_init! registers it in _PG_init.
pub static WORKER_STATE: PgLwLock<WorkerState> = unsafe { PgLwLock::new(c"spock worker state") };

/// Set in the postmaster when spock is preloaded; inherited by every backend.
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// Requests the shared memory; called from `_PG_init` while preloading.
#[allow(unexpected_cfgs)]
pub fn init() {
    pgrx::pg_shmem_init!(WORKER_STATE);
    PRELOADED.store(true, Ordering::Relaxed);
}

/// Whether spock was preloaded (so workers and shared state exist).
pub fn preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

/// Records that database `db` has no spock.
pub fn mark_no_spock(db: pg_sys::Oid) {
    let mut s = WORKER_STATE.exclusive();
    let id = u32::from(db);
    if s.no_spock[..s.n].contains(&id) {
        return;
    }
    if s.n < MAX_DATABASES {
        let n = s.n;
        s.no_spock[n] = id;
        s.n += 1;
    }
}

/// Forgets that database `db` has no spock (it may have now).
pub fn clear_no_spock(db: pg_sys::Oid) {
    let mut s = WORKER_STATE.exclusive();
    let id = u32::from(db);
    let n = s.n;
    if let Some(pos) = s.no_spock[..n].iter().position(|&x| x == id) {
        s.no_spock[pos] = s.no_spock[n - 1];
        s.n -= 1;
    }
}

/// Whether database `db` is known to have no spock.
pub fn has_no_spock(db: pg_sys::Oid) -> bool {
    let s = WORKER_STATE.share();
    s.no_spock[..s.n].contains(&u32::from(db))
}
