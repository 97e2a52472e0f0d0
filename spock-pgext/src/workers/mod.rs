//! Background workers: the supervisor (one per server, started from
//! `shared_preload_libraries`), a manager per database that runs spock, and an
//! apply worker per enabled subscription.
//!
//! ```text
//! postmaster ─ spock supervisor ─┬─ spock manager <db> ─┬─ spock apply <db> <sub>
//!                                 │                       └─ spock apply <db> <sub>
//!                                 └─ spock manager <db2> ...
//! ```
//!
//! Workers find each other through `pg_stat_activity` (`backend_type` is
//! "spock supervisor" / "spock manager" / "spock apply") and wake each other with
//! SIGUSR1, which sets the receiver's latch. Shared memory ([`shmem::WorkerState`],
//! one fixed-size struct under one LWLock) holds:
//! - the databases without spock (the supervisor starts no manager there again);
//! - per subscription that had an apply worker since the server started
//!   (`MAX_SUBSCRIPTIONS`): its progress (`spock.progress`), whether it is inside a
//!   remote transaction (for pauses), whether it last stopped on request (restart
//!   at once), and the transaction that failed to apply (replayed per
//!   `spock.exception_behaviour`);
//! - the databases whose apply workers are paused, with a deadline;
//! - the holds that keep a subscription's worker stopped while a transaction
//!   changes the subscription (`spock._hold_subscription`);
//! - per subscription, its safe time: how far its provider's changes are applied,
//!   from which the manager moves the horizon of deleted row versions
//!   ([`retention`]).

pub mod manager;
pub mod removals;
pub mod retention;
pub mod shmem;
pub mod supervisor;

use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::pg_sys;
use pgrx::prelude::*;

/// `backend_type` of the supervisor.
pub const SUPERVISOR_TYPE: &str = "spock supervisor";
/// `backend_type` of managers.
pub const MANAGER_TYPE: &str = "spock manager";
/// `backend_type` of apply workers.
pub const APPLY_TYPE: &str = "spock apply";
/// Background worker type of a parallel apply writer.
pub const WRITER_TYPE: &str = "spock apply writer";

/// Registers the supervisor; called from `_PG_init` while preloading.
pub fn register_supervisor() {
    BackgroundWorkerBuilder::new(SUPERVISOR_TYPE)
        .set_type(SUPERVISOR_TYPE)
        .set_library("spock")
        .set_function("spock_supervisor_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// Wakes the process `pid` (a spock worker) by setting its latch.
pub fn wake(pid: i32) {
    if pid > 0 {
        // SAFETY: SIGUSR1 to a PostgreSQL process runs its procsignal handler, which
        // sets its latch; a stale pid at worst wakes nothing.
        unsafe {
            libc::kill(pid, libc::SIGUSR1);
        }
    }
}

/// `spock._wake_workers()`: wakes the supervisor and the managers when the calling
/// transaction commits, so that catalog changes (a new node, subscription,
/// enable/disable) are acted on at once instead of at their next periodic check.
/// Waking them before the commit would let them read the catalog without the change
/// and sleep a full period.
#[pg_extern(volatile, name = "_wake_workers")]
fn wake_workers() {
    crate::privilege::require_superuser("wake spock workers");
    if !shmem::preloaded() {
        return;
    }
    // SAFETY: reading the current database id.
    shmem::clear_no_spock(unsafe { pg_sys::MyDatabaseId });
    let pids = crate::catalog::system::backend_pids(&[SUPERVISOR_TYPE, MANAGER_TYPE]);
    // Called inside a transaction (the SQL functions that change the catalog); the
    // callback runs after the commit is visible to other backends and only sends
    // signals, which cannot fail in a way that raises an error.
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, move || {
        for pid in pids {
            wake(pid);
        }
    });
}

/// Pins this worker's `search_path` to `pg_catalog, pg_temp`, over what the database
/// or role settings say: the worker runs as a superuser, so a schema that a database
/// owner puts on the path must not capture the names its queries use. User code the
/// worker runs (triggers, defaults) sees the same path, as under native logical
/// replication: it must qualify names or pin its own path. Set at session level, so
/// a function's own `SET search_path` still takes effect.
pub fn pin_search_path() {
    // SAFETY: sets a GUC of this backend, outside any transaction-level nesting.
    unsafe {
        pg_sys::SetConfigOption(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_SESSION,
        );
    }
}

/// Sleeps until the latch is set, `timeout` passes or the postmaster dies, and
/// returns whether the worker should go on (false after SIGTERM).
pub fn sleep(timeout: Duration) -> bool {
    let go_on = pgrx::bgworkers::BackgroundWorker::wait_latch(Some(timeout));
    if !go_on {
        SIGTERM_SEEN.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    go_on
}

/// The subscription (database, id) of this process when it is an apply worker or
/// a writer (0: neither), for the error hook (`crate::error_context`).
static WORKER_SUBSCRIPTION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Marks this process as working for subscription `sub_id` of `db`.
pub fn set_worker_subscription(db: u32, sub_id: u32) {
    WORKER_SUBSCRIPTION.store((u64::from(db) << 32) | u64::from(sub_id), std::sync::atomic::Ordering::Relaxed);
}

/// This process is a parallel apply writer (set with [`set_worker_subscription`]).
static IS_WRITER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Marks this process as a parallel apply writer.
pub fn set_writer() {
    IS_WRITER.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// See [`set_writer`].
pub fn is_writer() -> bool {
    IS_WRITER.load(std::sync::atomic::Ordering::Relaxed)
}

/// See [`set_worker_subscription`].
pub fn worker_subscription() -> Option<(u32, u32)> {
    let v = WORKER_SUBSCRIPTION.load(std::sync::atomic::Ordering::Relaxed);
    (v != 0).then_some(((v >> 32) as u32, v as u32))
}

/// Set once this worker has seen SIGTERM (pgrx's flag is reset when read).
static SIGTERM_SEEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether SIGTERM arrived since the last call (remembered for [`sigterm_seen`]).
pub fn sigterm_received() -> bool {
    let got = pgrx::bgworkers::BackgroundWorker::sigterm_received();
    if got {
        SIGTERM_SEEN.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    got
}

/// Whether this worker was ever asked to stop (SIGTERM).
pub fn sigterm_seen() -> bool {
    SIGTERM_SEEN.load(std::sync::atomic::Ordering::Relaxed)
}

/// Reloads the configuration after SIGHUP.
pub fn reload_config_if_asked() {
    if pgrx::bgworkers::BackgroundWorker::sighup_received() {
        // SAFETY: the standard reload call of a backend's main loop.
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
    }
}

/// `spock._hold_subscription(sub_id)`: until the calling transaction ends, the
/// manager starts no apply worker for the subscription, so a worker stopped by
/// `spock._stop_apply_worker` stays stopped while the transaction changes what it
/// depends on (drops its slot, changes its sets); at the end the managers are woken
/// to act on the outcome.
#[pg_extern(volatile, name = "_hold_subscription")]
fn hold_subscription(sub_id: pg_sys::Oid) {
    crate::privilege::require_superuser("stop an apply worker");
    if !shmem::preloaded() {
        return;
    }
    // SAFETY: reading this backend's database and pid.
    let (db, pid) = unsafe { (pg_sys::MyDatabaseId, pg_sys::MyProcPid) };
    if !shmem::hold(u32::from(db), u32::from(sub_id), pid) {
        crate::error::PgError::new(
            pgrx::PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            "too many transactions are changing spock subscriptions at once",
        )
        .hint("Retry when one of them has ended.")
        .raise();
    }
    let managers = crate::catalog::system::backend_pids(&[MANAGER_TYPE]);
    // The same at commit and abort; it only touches shared memory under its lock and
    // sends signals.
    let release = move || {
        shmem::release_holds(pid);
        managers.iter().for_each(|p| wake(*p));
    };
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, release.clone());
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Abort, release);
}

/// One error of a subscription's apply worker, for `spock.subscription_error`.
pub struct SubscriptionError<'a> {
    /// The subscription.
    pub sub_id: u32,
    /// SQLSTATE and message.
    pub sqlstate: &'a str,
    /// The message.
    pub message: &'a str,
    /// When (PostgreSQL timestamp); `None`: now.
    pub at: Option<i64>,
    /// In how many milliseconds the manager starts the worker again (`None`: it
    /// does not).
    pub next_attempt_ms: Option<i64>,
    /// Why the subscription was disabled (spock_core::status::Permanent::name);
    /// `None` for an error that is retried.
    pub reason: Option<&'a str>,
    /// The provider slot's `wal_status` and `invalidation_reason` then.
    pub slot: (Option<&'a str>, Option<&'a str>),
}

/// Records `e` as the last error of its subscription (nothing when the
/// subscription no longer exists), in the current transaction: `error_count`
/// and `first_at` go on while the same error (SQLSTATE, message and reason)
/// repeats.
pub fn record_subscription_error(e: &SubscriptionError<'_>) -> Result<(), pgrx::spi::SpiError> {
    Spi::run_with_args(
        "INSERT INTO spock.subscription_error AS e (sub_id, sqlstate, message, reason, first_at, last_at, error_count,
                                                    next_attempt_at, disabled, slot_wal_status, slot_invalidation_reason)
         SELECT s.sub_id, $2, $3, $4, t, t, 1, pg_catalog.clock_timestamp() + $6 * interval '1 millisecond',
                $4 IS NOT NULL, $7, $8
           FROM spock.subscription s,
                coalesce(pg_catalog.to_timestamp($5::float8 / 1000000 + 946684800), pg_catalog.now()) t
          WHERE s.sub_id = $1::int8::oid
         ON CONFLICT (sub_id) DO UPDATE SET
             first_at = CASE WHEN (e.sqlstate, e.message) = (EXCLUDED.sqlstate, EXCLUDED.message)
                                  AND e.reason IS NOT DISTINCT FROM EXCLUDED.reason
                             THEN e.first_at ELSE EXCLUDED.first_at END,
             error_count = CASE WHEN (e.sqlstate, e.message) = (EXCLUDED.sqlstate, EXCLUDED.message)
                                     AND e.reason IS NOT DISTINCT FROM EXCLUDED.reason
                                THEN e.error_count + 1 ELSE 1 END,
             sqlstate = EXCLUDED.sqlstate, message = EXCLUDED.message, reason = EXCLUDED.reason,
             last_at = EXCLUDED.last_at, next_attempt_at = EXCLUDED.next_attempt_at, disabled = EXCLUDED.disabled,
             slot_wal_status = EXCLUDED.slot_wal_status, slot_invalidation_reason = EXCLUDED.slot_invalidation_reason",
        &[
            i64::from(e.sub_id).into(),
            e.sqlstate.into(),
            e.message.into(),
            e.reason.into(),
            e.at.map(|t| t as f64).into(),
            e.next_attempt_ms.into(),
            e.slot.0.into(),
            e.slot.1.into(),
        ],
    )
}
