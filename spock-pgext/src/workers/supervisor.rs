//! The supervisor: keeps a manager running for every database where spock is used.
//!
//! It is connected to no database; it reads `pg_database` (a shared catalog)
//! directly. A manager that finds no spock extension in its database exits; its
//! database is then left alone until something wakes the supervisor
//! (`spock._wake_workers()`, called by node and subscription functions) or the server
//! restarts, so databases without spock cost nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, DynamicBackgroundWorker, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::{shmem, MANAGER_TYPE, SUPERVISOR_TYPE};

/// How often the supervisor looks at its managers when nothing wakes it.
const NAPTIME: Duration = Duration::from_secs(2);
/// How long a crashed manager waits before it is started again.
const MANAGER_RESTART_DELAY: Duration = Duration::from_secs(5);

/// Databases that accept connections and are not templates.
fn connectable_databases() -> Vec<pg_sys::Oid> {
    let mut out = Vec::new();
    // SAFETY: a catalog heap scan of pg_database inside a transaction, as the
    // autovacuum launcher does; the form struct is read while the tuple is pinned.
    unsafe {
        pg_sys::StartTransactionCommand();
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        loop {
            let tup = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tup.is_null() {
                break;
            }
            let form = &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tup);
            if form.datallowconn && !form.datistemplate {
                out.push(form.oid);
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        pg_sys::CommitTransactionCommand();
    }
    out
}

fn start_manager(db: pg_sys::Oid) -> Option<DynamicBackgroundWorker> {
    // SAFETY: reading our own pid.
    let me = unsafe { pg_sys::MyProcPid };
    BackgroundWorkerBuilder::new(&format!("{MANAGER_TYPE} {}", u32::from(db)))
        .set_type(MANAGER_TYPE)
        .set_library("spock")
        .set_function("spock_manager_main")
        .set_argument(Some(pg_sys::Datum::from(db)))
        .enable_spi_access()
        .set_restart_time(None)
        .set_notify_pid(me)
        .load_dynamic()
        .map_err(|_| {
            pgrx::warning!(
                "spock supervisor: could not start a manager for database {}: no background worker slot free",
                u32::from(db)
            );
        })
        .ok()
}

/// Entry point of the supervisor.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn spock_supervisor_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // SAFETY: connect to no database: only shared catalogs are read.
    unsafe { pg_sys::BackgroundWorkerInitializeConnection(std::ptr::null(), std::ptr::null(), 0) };
    pgrx::log!("{SUPERVISOR_TYPE} started");

    let mut managers: HashMap<pg_sys::Oid, DynamicBackgroundWorker> = HashMap::new();
    let mut failed_at: HashMap<pg_sys::Oid, Instant> = HashMap::new();
    loop {
        super::reload_config_if_asked();
        // Forget managers that ended: either their database has no spock (they said
        // so in shared memory) or they failed and are started again after a delay.
        managers.retain(|db, handle| match handle.pid() {
            Ok(_) | Err(pgrx::bgworkers::BackgroundWorkerStatus::NotYetStarted) => true,
            Err(_) => {
                if !shmem::has_no_spock(*db) {
                    failed_at.insert(*db, Instant::now());
                }
                false
            }
        });
        let databases = connectable_databases();
        // The slot that keeps deleted row versions belongs to a database's manager.
        super::retention::drop_orphans(&databases);
        failed_at.retain(|db, _| databases.contains(db));
        for db in databases {
            if managers.contains_key(&db) || shmem::has_no_spock(db) {
                continue;
            }
            if failed_at.get(&db).is_some_and(|t| t.elapsed() < MANAGER_RESTART_DELAY) {
                continue;
            }
            failed_at.remove(&db);
            if let Some(h) = start_manager(db) {
                managers.insert(db, h);
            }
        }
        if !super::sleep(NAPTIME) {
            break;
        }
    }
    pgrx::log!("{SUPERVISOR_TYPE} exiting");
}
