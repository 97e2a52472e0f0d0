//! Least privilege for applied changes: a change runs as the owner of the table it
//! writes, inside a security-restricted operation, as PostgreSQL's own apply does
//! since version 16 (docs/apply.md, "Whose rights a change runs with").
//!
//! The apply worker is connected as the bootstrap superuser. Without a switch, code
//! a table's owner attached to the table (an ENABLE ALWAYS or ENABLE REPLICA
//! trigger, a column default, a CHECK or domain constraint, an index expression)
//! would run as superuser whenever a remote change arrives. [`OwnerSwitch`] becomes
//! the owner for the duration of one change (or one COPY) with
//! `SECURITY_RESTRICTED_OPERATION`, so that code cannot `SET ROLE`, create
//! temporary objects or otherwise outlive the change, and with a GUC nesting level
//! of its own, so that a setting it changes (`set_config(..., false)`) is undone
//! when the change ends instead of staying for the worker's next statements.
//! `spock.run_as_owner = on` turns the switch off (everything runs as the worker's
//! user, as before).

use pgrx::pg_sys;

use crate::gucs;

/// Who a change runs as while it runs as a table's owner: the worker's own user and
/// security context, the GUC nesting level opened for the change, and the owner.
#[derive(Clone, Copy, Debug)]
pub struct Switched {
    worker_user: pg_sys::Oid,
    worker_context: i32,
    guc_level: i32,
    owner: pg_sys::Oid,
}

/// Security context flags of a change running as a table's owner.
const OWNER_CONTEXT: i32 = (pg_sys::SECURITY_RESTRICTED_OPERATION | pg_sys::SECURITY_LOCAL_USERID_CHANGE) as i32;

/// Whether changes to tables owned by `owner` run as their owner: not when
/// `spock.run_as_owner` is on (the opt-out), and not when the worker's user `worker`
/// is the owner already (no switch needed).
pub fn must_switch(owner: pg_sys::Oid, worker: pg_sys::Oid) -> bool {
    owner != worker && owner != pg_sys::InvalidOid && !gucs::RUN_AS_OWNER.get()
}

/// Runs as a table's owner until dropped. Dropping restores the worker's user and
/// security context; normally it also undoes settings changed meanwhile (their GUC
/// nesting level). While an ERROR unwinds it only restores the user (plain
/// assignments that cannot fail): the abort of the (sub)transaction that the
/// error leads to undoes the settings, as it would for any function.
pub struct OwnerSwitch {
    state: Switched,
}

impl OwnerSwitch {
    /// Becomes `owner` in a security-restricted operation, unless [`must_switch`]
    /// says no (None).
    ///
    /// SAFETY: inside a transaction (a GUC nesting level belongs to it).
    pub unsafe fn enter(owner: pg_sys::Oid, worker: pg_sys::Oid) -> Option<OwnerSwitch> {
        if !must_switch(owner, worker) {
            return None;
        }
        let mut worker_user = pg_sys::InvalidOid;
        let mut worker_context = 0;
        // SAFETY: reads the backend's current user and security context, opens a GUC
        // nesting level and sets the user id and context (plain globals); undone on
        // drop, and by any transaction abort.
        let guc_level = unsafe {
            pg_sys::GetUserIdAndSecContext(&mut worker_user, &mut worker_context);
            let level = pg_sys::NewGUCNestLevel();
            pg_sys::SetUserIdAndSecContext(owner, worker_context | OWNER_CONTEXT);
            level
        };
        Some(OwnerSwitch { state: Switched { worker_user, worker_context, guc_level, owner } })
    }

    /// What [`WorkerSwitch`] needs to step out of it.
    pub fn state(&self) -> Switched {
        self.state
    }
}

impl Drop for OwnerSwitch {
    fn drop(&mut self) {
        let s = self.state;
        // SAFETY: closes the GUC level opened in `enter` (settings changed in it are
        // reset) unless an ERROR is unwinding, and restores the user and context read
        // in `enter`.
        unsafe {
            if !std::thread::panicking() {
                pg_sys::AtEOXact_GUC(false, s.guc_level);
            }
            pg_sys::SetUserIdAndSecContext(s.worker_user, s.worker_context);
        }
    }
}

/// Steps out of an [`OwnerSwitch`] for the worker's own bookkeeping during a change
/// (conflict resolution reads spock's catalogs and writes `spock.resolutions`,
/// which the owner may not touch): the worker's user and context, and settings as
/// they were before the change (the owner's code may have changed `search_path`).
/// Dropping it becomes the owner again, with a new GUC nesting level.
pub struct WorkerSwitch {
    state: Switched,
}

impl WorkerSwitch {
    /// Back to the worker's user while it lives.
    ///
    /// SAFETY: while the [`OwnerSwitch`] that `state` came from is in force.
    pub unsafe fn enter(state: Switched) -> WorkerSwitch {
        // SAFETY: undoes the owner's settings (closing the level the switch opened)
        // and restores the worker's user and context.
        unsafe {
            pg_sys::AtEOXact_GUC(false, state.guc_level);
            pg_sys::SetUserIdAndSecContext(state.worker_user, state.worker_context);
        }
        WorkerSwitch { state }
    }
}

impl Drop for WorkerSwitch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The OwnerSwitch further up restores the worker's user anyway.
            return;
        }
        let s = self.state;
        // SAFETY: opens the GUC level again (the same number: the one closed in
        // `enter` was the innermost, so OwnerSwitch's drop closes the right one) and
        // becomes the owner again.
        unsafe {
            let level = pg_sys::NewGUCNestLevel();
            debug_assert_eq!(level, s.guc_level);
            pg_sys::SetUserIdAndSecContext(s.owner, s.worker_context | OWNER_CONTEXT);
        }
    }
}

/// The owner of table `relid` (InvalidOid if it does not exist).
///
/// SAFETY: inside a transaction.
pub unsafe fn table_owner(relid: pg_sys::Oid) -> pg_sys::Oid {
    // SAFETY: a syscache lookup, released before returning.
    unsafe {
        let tup = pg_sys::SearchSysCache1(pg_sys::SysCacheIdentifier::RELOID as i32, pg_sys::Datum::from(relid));
        if tup.is_null() {
            return pg_sys::InvalidOid;
        }
        let owner = (*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_class>(tup)).relowner;
        pg_sys::ReleaseSysCache(tup);
        owner
    }
}

/// The worker's own user (the bootstrap superuser apply workers connect as).
pub fn worker_user() -> pg_sys::Oid {
    // SAFETY: reads the current user id, a plain global.
    unsafe { pg_sys::GetUserId() }
}

/// Runs `f` as the owner of table `relid` (see [`OwnerSwitch`]), or as the worker
/// when no switch is needed.
///
/// SAFETY: inside a transaction.
pub unsafe fn as_table_owner<T>(relid: pg_sys::Oid, f: impl FnOnce() -> T) -> T {
    // SAFETY: forwarded.
    let _switch = unsafe { OwnerSwitch::enter(table_owner(relid), worker_user()) };
    f()
}
