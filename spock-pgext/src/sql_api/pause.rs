//! `spock.pause_apply_workers()` / `spock.resume_apply_workers()`: hold this
//! database's apply workers between two remote transactions, so that what they have
//! applied (their origins' progress) stays put while a joining node takes a
//! snapshot here and reads that progress. A pause ends by itself after
//! `spock.pause_timeout`.

use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};

use crate::error::PgError;
use crate::gucs;
use crate::workers::shmem;

fn my_db() -> u32 {
    // SAFETY: reads this backend's database oid.
    u32::from(unsafe { pg_sys::MyDatabaseId })
}

fn require_preload() {
    if !shmem::preloaded() {
        PgError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "spock apply workers need spock in shared_preload_libraries",
        )
        .raise();
    }
}

/// Pauses this database's apply workers and returns once none of them is in the
/// middle of a remote transaction. Obeys EXECUTE grants (not for PUBLIC): a
/// provider's replication role needs it, with resume_apply_workers and
/// _apply_workers_paused, to serve an initial copy (docs/security.md). Pausing
/// lasts spock.pause_timeout at most and makes the server connect nowhere.
#[pg_extern(volatile)]
fn pause_apply_workers() {
    require_preload();
    let timeout_us = i64::from(gucs::PAUSE_TIMEOUT.get()) * 1000;
    // SAFETY: reads the clock.
    let start = unsafe { pg_sys::GetCurrentTimestamp() };
    if !shmem::pause(my_db(), start + timeout_us) {
        PgError::new(
            PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            "too many databases with paused spock apply workers",
        )
        .raise();
    }
    while shmem::any_in_transaction(my_db()) {
        // SAFETY: reads the clock.
        if unsafe { pg_sys::GetCurrentTimestamp() } - start > timeout_us {
            shmem::resume(my_db());
            PgError::new(
                PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
                "spock apply workers did not reach a transaction boundary within spock.pause_timeout",
            )
            .raise();
        }
        // SAFETY: a short sleep; interrupts are checked after it.
        unsafe { pg_sys::pg_usleep(1000) };
        pgrx::check_for_interrupts!();
    }
}

/// Lets this database's apply workers go on.
#[pg_extern(volatile)]
fn resume_apply_workers() {
    require_preload();
    shmem::resume(my_db());
}

/// Whether this database's apply workers are paused now (a pause may have expired).
#[pg_extern(volatile, name = "_apply_workers_paused")]
fn apply_workers_paused() -> bool {
    shmem::is_paused(my_db())
}
