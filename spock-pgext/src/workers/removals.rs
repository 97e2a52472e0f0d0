//! What bounds the commit timestamps of the rows removed on this server, for the
//! horizon of deleted row versions (spock_core::retention::removal_bound; the
//! keeper: workers::retention).
//!
//! A deleted version must stay while some subscription may still bring a change
//! older than its removal. Bounding removals by the clock works, but holds every
//! version made while a subscription catches up, until it is done: the rows it
//! updates then carry its provider's older timestamps, and nothing else removes
//! rows. So the server counts what removes rows:
//!
//! * local statements: an executor hook marks a transaction that runs an UPDATE,
//!   DELETE, MERGE or INSERT ... ON CONFLICT DO UPDATE on a table outside spock's
//!   own schema and the system catalogs; at its pre-commit it joins the local
//!   removers that are committing, and when its commit (or abort) is over it
//!   leaves them and publishes the time as the latest local removal;
//! * apply workers (which change rows without the executor's statements): before
//!   each commit, the provider's commit timestamp ([`note_applied`]).
//!
//! Rows removed by anything else (another extension writing through the heap
//! directly, PostgreSQL's own logical replication into the same database) are not
//! counted: with those, set `spock.deleted_version_retention` knowing that.
//! With `max_prepared_transactions` above zero, a prepared transaction's removal
//! time is taken as the current time.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::OnceLock;

use pgrx::atomics::PgAtomic;
use pgrx::pg_sys;
use pgrx::prelude::*;
use spock_core::retention::Removers;

/// Local removing transactions between their pre-commit and the end of their commit.
static COMMITTING: PgAtomic<AtomicU32> = unsafe { PgAtomic::new(c"spock local removers committing") };
/// The latest time a local removing transaction ended its commit (PostgreSQL
/// microseconds).
static LOCAL_LAST: PgAtomic<AtomicI64> = unsafe { PgAtomic::new(c"spock latest local removal") };
/// The newest provider commit timestamp an apply worker committed with.
static APPLIED_LAST: PgAtomic<AtomicI64> = unsafe { PgAtomic::new(c"spock latest applied removal") };

/// This backend's transaction ran a statement that may remove rows.
static REMOVING: AtomicBool = AtomicBool::new(false);
/// It joined COMMITTING at its pre-commit.
static COUNTED: AtomicBool = AtomicBool::new(false);

/// The executor hook that was installed before ours.
static PREVIOUS_EXECUTOR_START: OnceLock<pg_sys::ExecutorStart_hook_type> = OnceLock::new();

/// Requests the shared counters; with [`install`], from `_PG_init` while preloading.
#[allow(unexpected_cfgs)]
pub fn init_shmem() {
    pgrx::pg_shmem_init!(COMMITTING);
    pgrx::pg_shmem_init!(LOCAL_LAST);
    pgrx::pg_shmem_init!(APPLIED_LAST);
}

/// Installs the executor hook and the transaction callback (in the postmaster:
/// every backend inherits them).
pub fn install() {
    // SAFETY: _PG_init of a preloaded library, single-threaded: chains the hook and
    // registers a callback for the life of the process.
    unsafe {
        if PREVIOUS_EXECUTOR_START.set(pg_sys::ExecutorStart_hook).is_ok() {
            pg_sys::ExecutorStart_hook = Some(executor_start);
            pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
        }
    }
}

/// An apply worker is about to commit a transaction its provider committed at
/// `commit_ts`.
pub fn note_applied(commit_ts: i64) {
    if crate::workers::shmem::preloaded() {
        APPLIED_LAST.get().fetch_max(commit_ts, Ordering::SeqCst);
    }
}

/// The counters, read right after the candidate horizon was taken; `floor` is the
/// keeper's own.
pub fn removers(floor: i64) -> Removers {
    // SAFETY: reads a setting as text (a static string of the GUC machinery).
    let prepared = unsafe {
        let v = pg_sys::GetConfigOption(c"max_prepared_transactions".as_ptr(), true, false);
        !v.is_null() && std::ffi::CStr::from_ptr(v).to_bytes() != b"0"
    };
    // COMMITTING first: a transaction leaves it after publishing its time.
    let committing = COMMITTING.get().load(Ordering::SeqCst) > 0 || prepared;
    Removers {
        local_committing: committing,
        local_last: LOCAL_LAST.get().load(Ordering::SeqCst),
        applied_last: APPLIED_LAST.get().load(Ordering::SeqCst),
        floor,
    }
}

// `standard_ExecutorStart` itself, not pgrx's wrapper of it (see the hook).
unsafe extern "C-unwind" {
    #[link_name = "standard_ExecutorStart"]
    fn standard_executor_start(query: *mut pg_sys::QueryDesc, eflags: std::ffi::c_int);
}

/// The ExecutorStart hook: note a removing statement, then start the executor.
///
/// Not `#[pg_guard]`, and the executor does not start through `pg_sys`, for the
/// reason given at AutoDDL's ProcessUtility hook: an ERROR raised while the executor
/// starts (a function run by initial partition pruning, say) must reach the handler
/// above us as raised, with its CONTEXT, position and SQLSTATE. This frame holds
/// nothing to drop and no `catch_unwind`, and cannot panic; our own work runs in
/// [`note_removal`].
///
/// SAFETY: called by PostgreSQL with the arguments of `ExecutorStart`.
unsafe extern "C-unwind" fn executor_start(query: *mut pg_sys::QueryDesc, eflags: std::ffi::c_int) {
    // SAFETY: the executor's own query descriptor, before it is started.
    unsafe { note_removal(query) };
    let run = PREVIOUS_EXECUTOR_START.get().copied().flatten().unwrap_or(standard_executor_start);
    // SAFETY: the arguments we were given, forwarded.
    unsafe { run(query, eflags) };
}

/// Marks the transaction as removing rows if this statement may.
///
/// SAFETY: `query` is the executor's query descriptor, with its plan.
#[pg_guard]
unsafe extern "C-unwind" fn note_removal(query: *mut pg_sys::QueryDesc) {
    // spock.readonly: this session's transaction may have to be read-only first.
    // SAFETY: the executor runs inside a transaction.
    unsafe { crate::readonly::enforce() };
    // SAFETY: as the caller guarantees.
    if !REMOVING.load(Ordering::Relaxed) && unsafe { may_remove(query) } {
        REMOVING.store(true, Ordering::Relaxed);
    }
}

/// Whether the statement may remove rows of a table outside spock's schema and the
/// system catalogs (when in doubt: yes).
///
/// SAFETY: `query` is a valid query descriptor with its plan.
unsafe fn may_remove(query: *mut pg_sys::QueryDesc) -> bool {
    // SAFETY: plan fields and range table entries of a valid plan; syscache reads.
    unsafe {
        let stmt = (*query).plannedstmt;
        if stmt.is_null() {
            return false;
        }
        let removes = match (*query).operation {
            pg_sys::CmdType::CMD_UPDATE | pg_sys::CmdType::CMD_DELETE | pg_sys::CmdType::CMD_MERGE => true,
            pg_sys::CmdType::CMD_INSERT => {
                let top = (*stmt).planTree;
                (*stmt).hasModifyingCTE
                    || top.is_null()
                    || (*top).type_ != pg_sys::NodeTag::T_ModifyTable
                    || (*top.cast::<pg_sys::ModifyTable>()).onConflictAction
                        == pg_sys::OnConflictAction::ONCONFLICT_UPDATE
            }
            pg_sys::CmdType::CMD_SELECT => (*stmt).hasModifyingCTE,
            _ => false,
        };
        if !removes {
            return false;
        }
        let spock = pg_sys::get_namespace_oid(c"spock".as_ptr(), true);
        let results = (*stmt).resultRelations;
        let n = if results.is_null() { 0 } else { (*results).length };
        if n == 0 {
            return true;
        }
        (0..n).any(|i| {
            let index = pg_sys::list_nth_int(results, i);
            let rte = pg_sys::list_nth((*stmt).rtable, index - 1).cast::<pg_sys::RangeTblEntry>();
            if rte.is_null() {
                return true;
            }
            let ns = pg_sys::get_rel_namespace((*rte).relid);
            ns != pg_sys::Oid::from(pg_sys::PG_CATALOG_NAMESPACE) && (ns != spock || spock == pg_sys::InvalidOid)
        })
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    if !crate::workers::shmem::preloaded() {
        return;
    }
    match event {
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT => {
            // SAFETY: reads this backend's transaction state.
            let has_xid = unsafe { pg_sys::GetTopTransactionIdIfAny() } != pg_sys::InvalidTransactionId;
            if REMOVING.load(Ordering::Relaxed) && has_xid && !COUNTED.load(Ordering::Relaxed) {
                COMMITTING.get().fetch_add(1, Ordering::SeqCst);
                COUNTED.store(true, Ordering::Relaxed);
            }
        }
        pg_sys::XactEvent::XACT_EVENT_COMMIT
        | pg_sys::XactEvent::XACT_EVENT_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PREPARE
        | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT
        | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT => {
            if COUNTED.load(Ordering::Relaxed) {
                // SAFETY: reads the clock.
                let now = unsafe { pg_sys::GetCurrentTimestamp() };
                LOCAL_LAST.get().fetch_max(now, Ordering::SeqCst);
                COMMITTING.get().fetch_sub(1, Ordering::SeqCst);
                COUNTED.store(false, Ordering::Relaxed);
            }
            REMOVING.store(false, Ordering::Relaxed);
        }
        _ => {}
    }
}
