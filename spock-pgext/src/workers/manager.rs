//! The manager of one database: keeps one apply worker per enabled subscription,
//! restarts workers that fail (after `spock.restart_delay_default`), stops workers of
//! disabled or dropped subscriptions, holds the removal horizon for deleted row
//! versions ([`super::retention`]), and ends (stopping its workers) when the
//! extension is dropped.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, DynamicBackgroundWorker, SignalWakeFlags,
};
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::{retention, shmem, APPLY_TYPE, MANAGER_TYPE};
use crate::catalog::{subscriptions, system};
use crate::gucs;

/// How often the manager checks the catalog when nothing wakes it.
const NAPTIME: Duration = Duration::from_secs(1);

/// How often `spock.resolutions` is trimmed.
const RESOLUTIONS_CLEANUP_EVERY: Duration = Duration::from_secs(24 * 3600);

/// `spock.cleanup_resolutions()` with the configured retention; a failure is a
/// WARNING (tried again the next day), never the manager's end.
fn trim_resolutions() {
    if gucs::RESOLUTIONS_RETENTION_DAYS.get() <= 0 {
        return;
    }
    BackgroundWorker::transaction(|| {
        let _ = Spi::run(
            "DO $$BEGIN
                 PERFORM spock.cleanup_resolutions();
             EXCEPTION WHEN OTHERS THEN
                 RAISE WARNING 'spock: trimming spock.resolutions failed: %', SQLERRM;
             END$$",
        );
    });
}

struct Worker {
    handle: DynamicBackgroundWorker,
    /// When it was started (PostgreSQL timestamp).
    started: i64,
}

/// Records in `spock.subscription_error` the error the worker of `sub_id` ended
/// with, and when the next attempt starts (none when the subscription is no longer
/// enabled). A failure to record is a WARNING, never the manager's end.
fn record_failure(sub_id: u32, e: &shmem::WorkerError, next_attempt_in: Option<Duration>) {
    BackgroundWorker::transaction(|| {
        let exists = Spi::get_one::<bool>("SELECT pg_catalog.to_regclass('spock.subscription_error') IS NOT NULL")
            .ok()
            .flatten()
            .unwrap_or(false);
        if !exists {
            return;
        }
        let (sqlstate, message) = (e.sqlstate(), e.message());
        let r = super::record_subscription_error(&super::SubscriptionError {
            sub_id,
            sqlstate: &sqlstate,
            message: &message,
            at: Some(e.at),
            next_attempt_ms: next_attempt_in.map(|d| d.as_millis() as i64),
            reason: None,
            slot: (None, None),
        });
        if let Err(err) = r {
            pgrx::warning!("spock manager: could not record the error of subscription {sub_id}: {err}");
        }
    });
}

fn start_apply(db: pg_sys::Oid, sub_id: u32, sub_name: &str) -> Option<DynamicBackgroundWorker> {
    // SAFETY: reading our own pid.
    let me = unsafe { pg_sys::MyProcPid };
    BackgroundWorkerBuilder::new(&format!("{APPLY_TYPE} {sub_name}"))
        .set_type(APPLY_TYPE)
        .set_library("spock")
        .set_function("spock_apply_main")
        .set_argument(Some(pg_sys::Datum::from(db)))
        .set_extra(&sub_id.to_string())
        .enable_spi_access()
        .set_restart_time(None)
        .set_notify_pid(me)
        .load_dynamic()
        .map_err(|_| {
            pgrx::warning!("spock manager: could not start the apply worker of subscription {sub_name}: no background worker slot free (max_worker_processes)");
        })
        .ok()
}

/// How long after its last failure the worker of `sub_id` starts again
/// (spock_core::status::restart_delay).
fn restart_delay(db: pg_sys::Oid, sub_id: u32, failures: &HashMap<u32, u32>) -> Duration {
    // A worker stopped by an exception comes back sooner to replay the failed
    // transaction per spock.exception_behaviour.
    if shmem::has_pending_exception(u32::from(db), sub_id) {
        return Duration::from_millis(gucs::RESTART_DELAY_ON_EXCEPTION.get().max(0) as u64);
    }
    let n = failures.get(&sub_id).copied().unwrap_or(1);
    Duration::from_millis(spock_core::status::restart_delay(gucs::restart_delay_ms(), gucs::restart_delay_max_ms(), n))
}

/// Entry point of a manager; the argument is the database oid.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn spock_manager_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = pg_sys::Oid::from(arg.value() as u32);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(db), None);
    super::pin_search_path();

    if !BackgroundWorker::transaction(system::extension_installed) {
        shmem::mark_no_spock(db);
        // CREATE EXTENSION may have committed (and its functions cleared the mark)
        // between the check and the mark: look again so the mark never sticks to a
        // database that has spock.
        if !BackgroundWorker::transaction(system::extension_installed) {
            return;
        }
        shmem::clear_no_spock(db);
    }
    pgrx::log!("{MANAGER_TYPE} started for database {}", u32::from(db));

    let mut workers: HashMap<u32, Worker> = HashMap::new();
    let mut failed_at: HashMap<u32, Instant> = HashMap::new();
    // Failures in a row per subscription (see FAILURES_RESET_AFTER).
    let mut failures: HashMap<u32, u32> = HashMap::new();
    let mut keeper = retention::Keeper::new(db);
    let mut readonly_logged = false;
    // spock.resolutions is trimmed to spock.resolutions_retention_days once a day,
    // the first time a minute after the manager starts.
    let mut resolutions_trimmed = Instant::now().checked_sub(RESOLUTIONS_CLEANUP_EVERY - Duration::from_secs(60));
    loop {
        super::reload_config_if_asked();
        let (installed, subs) = BackgroundWorker::transaction(|| {
            let installed = system::extension_installed();
            (installed, if installed { subscriptions::all_subscriptions() } else { Vec::new() })
        });
        // spock.readonly = all: the apply workers stay connected and apply nothing
        // until it changes (apply::receiver holds them).
        let readonly = crate::readonly::stops_apply();
        if readonly != readonly_logged {
            readonly_logged = readonly;
            if readonly {
                pgrx::log!(
                    "{MANAGER_TYPE}: spock.readonly is \"all\": the apply workers of database {} apply nothing until it changes",
                    u32::from(db)
                );
            }
        }
        let enabled: Vec<(u32, String)> =
            subs.iter().filter(|(_, _, enabled)| *enabled).map(|(id, name, _)| (*id, name.clone())).collect();
        let wanted: Vec<(u32, String)> = enabled.clone();
        // Stop workers of subscriptions no longer enabled; forget ended ones.
        let ids: Vec<u32> = workers.keys().copied().collect();
        for sub_id in ids {
            let enabled = installed && wanted.iter().any(|(id, _)| *id == sub_id);
            let running = matches!(workers[&sub_id].handle.pid(), Ok(_) | Err(BackgroundWorkerStatus::NotYetStarted));
            if running && enabled {
                continue;
            }
            let w = workers.remove(&sub_id).expect("key from the map");
            if running {
                let _ = w.handle.terminate();
                continue;
            }
            let error = shmem::take_worker_error(u32::from(db), sub_id);
            let retried = enabled && !shmem::take_stopped_on_request(u32::from(db), sub_id);
            if retried {
                // Ended by an error: start again after the restart delay, longer
                // after each failure in a row. A worker stopped on request
                // (spock._stop_apply_worker) comes back at once.
                failed_at.insert(sub_id, Instant::now());
                // A worker that got as far as streaming starts the count again.
                let n = if shmem::streamed_since(u32::from(db), sub_id, w.started) {
                    1
                } else {
                    failures.get(&sub_id).copied().unwrap_or(0).saturating_add(1)
                };
                failures.insert(sub_id, n);
            }
            if let Some(e) = error {
                record_failure(sub_id, &e, retried.then(|| restart_delay(db, sub_id, &failures)));
            }
        }
        // (the shared state of subscriptions stopped by spock.readonly stays)
        shmem::retain_progress(
            u32::from(db),
            &subs.iter().map(|(id, _, _)| *id).collect::<Vec<_>>(),
            &enabled.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        );
        if !installed {
            pgrx::log!("{MANAGER_TYPE}: extension spock was dropped in database {}; stopping", u32::from(db));
            shmem::mark_no_spock(db);
            keeper.stop();
            break;
        }
        keeper.step(&subs);
        if resolutions_trimmed.is_none_or(|t| t.elapsed() >= RESOLUTIONS_CLEANUP_EVERY) {
            resolutions_trimmed = Some(Instant::now());
            trim_resolutions();
        }
        for (sub_id, name) in &wanted {
            // A transaction that stopped the worker is still changing the subscription.
            if workers.contains_key(sub_id) || shmem::is_held(u32::from(db), *sub_id) {
                continue;
            }
            let delay = restart_delay(db, *sub_id, &failures);
            if failed_at.get(sub_id).is_some_and(|t| t.elapsed() < delay) {
                continue;
            }
            failed_at.remove(sub_id);
            if let Some(handle) = start_apply(db, *sub_id, name) {
                // SAFETY: reads the clock.
                workers.insert(*sub_id, Worker { handle, started: unsafe { pg_sys::GetCurrentTimestamp() } });
            }
        }
        if !super::sleep(NAPTIME) {
            break;
        }
    }
    for (_, w) in workers {
        let _ = w.handle.terminate();
    }
}
