//! What bounds the commit timestamps of the rows removed on this server, for the
//! horizon of deleted row versions (spock_core::retention::removal_bound; the
//! keeper: workers::retention).
//!
//! A deleted version must stay while some subscription may still bring a change
//! older than its removal. A *removal* is what makes a key disappear from a table:
//! a DELETE, or an UPDATE that changes a key (the versions a later change of that
//! key looks for, apply::executor's `find_deleted`); an UPDATE of other columns
//! leaves the key live, and its old versions are never looked for. Bounding
//! removals by the clock works, but holds every version made while a subscription
//! catches up, until it is done: the rows it changes then carry its provider's
//! older timestamps. So the server counts what removes rows:
//!
//! * local statements: an executor hook marks a transaction that runs a DELETE or
//!   MERGE, or an UPDATE or INSERT ... ON CONFLICT DO UPDATE that may change an
//!   indexed column (the statement's updated columns against the table's indexed
//!   ones; any BEFORE UPDATE row trigger, stored generated column or partitioned
//!   target counts as may), on a table outside spock's own schema and the system
//!   catalogs; at its pre-commit it joins the local removers that are committing,
//!   and when its commit (or abort) is over it leaves them and publishes the time
//!   as the latest local removal;
//! * apply workers (which change rows without the executor's statements): a
//!   transaction that deleted a row, left a deleted version, or changed a row's
//!   identity ([`note_apply_removal`]) publishes its provider's commit timestamp
//!   before it commits ([`note_applied`]).
//!
//! When nothing removed since every subscription last caught up, the keeper lets
//! the horizon go altogether (spock_core::retention::nothing_to_keep): the slot's
//! effective xmin is cleared, its stored xmin stays at the horizon of that moment.
//! A removing transaction then holds it again at its pre-commit ([`hold_horizon`]),
//! before its versions can be pruned; a counter of removing commits
//! ([`quiet_since`]) keeps the keeper from letting go while one is on its way.
//!
//! Rows removed by anything else (another extension writing through the heap
//! directly, PostgreSQL's own logical replication into the same database) are not
//! counted: with those, set `spock.deleted_version_retention` knowing that.
//! With `max_prepared_transactions` above zero, a prepared transaction's removal
//! time is taken as the current time (and the horizon is never let go).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
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

/// Removing transactions that reached their pre-commit, ever: the keeper lets the
/// horizon go only while this has not moved since it looked (see [`quiet_since`]).
static GENERATION: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"spock removing commits") };

/// This process's apply transaction removed a row (see [`note_apply_removal`]).
static APPLIED_REMOVAL: AtomicBool = AtomicBool::new(false);

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
    pgrx::pg_shmem_init!(GENERATION);
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

/// The apply transaction in progress deleted a row, left a deleted version or
/// changed a row's key.
pub fn note_apply_removal() {
    APPLIED_REMOVAL.store(true, Ordering::Relaxed);
}

/// An apply worker is about to commit a transaction its provider committed at
/// `commit_ts`: if it removed rows, that is the newest applied removal.
pub fn note_applied(commit_ts: i64) {
    if APPLIED_REMOVAL.load(Ordering::Relaxed) && crate::workers::shmem::preloaded() {
        APPLIED_LAST.get().fetch_max(commit_ts, Ordering::SeqCst);
    }
}

/// The count of removing commits, read by the keeper before it takes a candidate.
pub fn generation() -> u64 {
    GENERATION.get().load(Ordering::SeqCst)
}

/// No removing transaction reached its pre-commit since [`generation`] returned
/// `seen`, and none is committing. Read by the keeper under its slot's mutex,
/// where a removing transaction looks after counting itself ([`hold_horizon`]):
/// either the keeper sees the count move, or the transaction sees the horizon
/// let go and holds it again.
pub fn quiet_since(seen: u64) -> bool {
    GENERATION.get().load(Ordering::SeqCst) == seen && COMMITTING.get().load(Ordering::SeqCst) == 0
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
        // What the statement does to its result relations: Some(true) removes,
        // Some(false) updates (removes only what changes an indexed column), None
        // nothing.
        let removes = match (*query).operation {
            pg_sys::CmdType::CMD_DELETE | pg_sys::CmdType::CMD_MERGE => Some(true),
            pg_sys::CmdType::CMD_UPDATE => Some((*stmt).hasModifyingCTE),
            pg_sys::CmdType::CMD_INSERT => {
                let top = (*stmt).planTree;
                if (*stmt).hasModifyingCTE || top.is_null() || (*top).type_ != pg_sys::NodeTag::T_ModifyTable {
                    Some(true)
                } else if (*top.cast::<pg_sys::ModifyTable>()).onConflictAction
                    == pg_sys::OnConflictAction::ONCONFLICT_UPDATE
                {
                    Some(false)
                } else {
                    None
                }
            }
            pg_sys::CmdType::CMD_SELECT => (*stmt).hasModifyingCTE.then_some(true),
            _ => None,
        };
        let Some(removes) = removes else {
            return false;
        };
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
            let user_table =
                ns != pg_sys::Oid::from(pg_sys::PG_CATALOG_NAMESPACE) && (ns != spock || spock == pg_sys::InvalidOid);
            user_table && (removes || update_may_change_key(stmt, rte))
        })
    }
}

/// Whether an UPDATE of result relation `rte` may change a column some index of
/// the table holds (so a key may disappear): its updated columns against the
/// table's indexed ones; yes when a BEFORE UPDATE row trigger or a stored generated
/// column may change more, for a partitioned table or a partition reached through
/// its parent (their columns are not listed here), and when in doubt.
///
/// SAFETY: `stmt` is a valid planned statement and `rte` one of its result
/// relations, locked by the planner.
unsafe fn update_may_change_key(stmt: *mut pg_sys::PlannedStmt, rte: *mut pg_sys::RangeTblEntry) -> bool {
    // SAFETY: plan fields; the relation cache entry is referenced and released here.
    unsafe {
        let index = (*rte).perminfoindex;
        if index == 0 || (*stmt).permInfos.is_null() {
            return true;
        }
        let perm = pg_sys::list_nth((*stmt).permInfos, index as i32 - 1).cast::<pg_sys::RTEPermissionInfo>();
        let rel = pg_sys::RelationIdGetRelation((*rte).relid);
        if perm.is_null() || rel.is_null() {
            return true;
        }
        let kind = (*(*rel).rd_rel).relkind as u8;
        let triggers = (*rel).trigdesc;
        let constr = (*(*rel).rd_att).constr;
        let may = kind != pg_sys::RELKIND_RELATION
            || (!triggers.is_null() && (*triggers).trig_update_before_row)
            || (!constr.is_null() && (*constr).has_generated_stored)
            || {
                let indexed = pg_sys::RelationGetIndexAttrBitmap(
                    rel,
                    pg_sys::IndexAttrBitmapKind::INDEX_ATTR_BITMAP_HOT_BLOCKING,
                );
                let overlap = pg_sys::bms_overlap((*perm).updatedCols, indexed);
                pg_sys::bms_free(indexed);
                overlap
            };
        pg_sys::RelationClose(rel);
        may
    }
}

/// Holds this database's horizon of deleted versions again if its keeper let it
/// go (the slot's effective xmin cleared): back at the xmin the slot kept, the
/// horizon of the moment it was let go, which is no newer than this transaction
/// (it was running then or started later), and published to the server before
/// this transaction commits (workers::retention::hold_xmin). Called at the
/// pre-commit of a removing transaction, after it counted itself in
/// [`GENERATION`]; costs a look under the slot's mutex while the horizon is held.
///
/// SAFETY: in a backend connected to a database, inside its transaction.
unsafe fn hold_horizon() {
    static NAME: OnceLock<(pg_sys::Oid, std::ffi::CString)> = OnceLock::new();
    // SAFETY: reads this backend's database.
    let db = unsafe { pg_sys::MyDatabaseId };
    let (named_db, name) = NAME.get_or_init(|| {
        let name = crate::workers::retention::slot_name(db);
        (db, std::ffi::CString::new(name).expect("no NUL in a slot name"))
    });
    if *named_db != db {
        return;
    }
    // SAFETY: the slot array lives in shared memory for the life of the server; a
    // slot found is checked under its mutex to still be ours (in use, same name)
    // before its xmin is read or written, and the horizon is recomputed after.
    unsafe {
        let slot = pg_sys::SearchNamedReplicationSlot(name.as_ptr(), true);
        if slot.is_null() {
            return;
        }
        let ours = |s: &pg_sys::ReplicationSlot| {
            s.in_use && std::ffi::CStr::from_ptr(s.data.name.data.as_ptr()) == name.as_c_str()
        };
        crate::workers::retention::hold_xmin(slot, None, ours);
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
            let local = REMOVING.load(Ordering::Relaxed);
            if (local || APPLIED_REMOVAL.load(Ordering::Relaxed)) && has_xid {
                if local && !COUNTED.load(Ordering::Relaxed) {
                    COMMITTING.get().fetch_add(1, Ordering::SeqCst);
                    COUNTED.store(true, Ordering::Relaxed);
                }
                GENERATION.get().fetch_add(1, Ordering::SeqCst);
                // SAFETY: inside the committing transaction of a connected backend.
                unsafe { hold_horizon() };
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
            APPLIED_REMOVAL.store(false, Ordering::Relaxed);
        }
        _ => {}
    }
}
