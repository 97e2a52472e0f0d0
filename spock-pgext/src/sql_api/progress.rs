//! `spock.apply_group_progress()`: apply progress of this server's subscriptions,
//! from the workers' shared state (behind the views `spock.progress` and
//! `spock.lag_tracker`, declared in `sql/api/progress.sql`). The declaration is
//! written out below because its pg_lsn and timestamptz columns have no pgrx type:
//! both are 8-byte pass-by-value types, which is what the i64 values here are (LSNs
//! as bits, timestamps as microseconds since 2000); pgrx fills in the C symbol.

use pgrx::prelude::*;

use crate::workers::shmem;

fn opt<T: Into<i64> + Copy + PartialEq + Default>(v: T) -> Option<i64> {
    (v != T::default()).then(|| v.into())
}

/// One row per subscription that had an apply worker since the server started;
/// LSNs not known yet are 0/0 (as Spock's), timestamps NULL.
#[pg_extern(
    volatile,
    sql = "CREATE FUNCTION spock.apply_group_progress(OUT dbid oid, OUT node_id oid, OUT remote_node_id oid,
    OUT remote_commit_ts timestamptz, OUT prev_remote_ts timestamptz, OUT remote_commit_lsn pg_lsn,
    OUT remote_insert_lsn pg_lsn, OUT received_lsn pg_lsn, OUT last_updated_ts timestamptz,
    OUT updated_by_decode bool)
RETURNS SETOF record VOLATILE LANGUAGE c SET search_path = pg_catalog, pg_temp AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';"
)]
#[allow(clippy::type_complexity)]
fn apply_group_progress() -> TableIterator<
    'static,
    (
        name!(dbid, pgrx::pg_sys::Oid),
        name!(node_id, pgrx::pg_sys::Oid),
        name!(remote_node_id, pgrx::pg_sys::Oid),
        name!(remote_commit_ts, Option<i64>),
        name!(prev_remote_ts, Option<i64>),
        name!(remote_commit_lsn, i64),
        name!(remote_insert_lsn, i64),
        name!(received_lsn, i64),
        name!(last_updated_ts, Option<i64>),
        name!(updated_by_decode, bool),
    ),
> {
    let rows: Vec<_> = shmem::all_progress()
        .into_iter()
        .map(|p| {
            (
                pgrx::pg_sys::Oid::from(p.dbid),
                pgrx::pg_sys::Oid::from(u32::from(p.node_id)),
                pgrx::pg_sys::Oid::from(u32::from(p.remote_node_id)),
                opt(p.remote_commit_ts),
                opt(p.prev_remote_ts),
                p.remote_commit_lsn as i64,
                p.remote_insert_lsn as i64,
                p.received_lsn as i64,
                opt(p.last_updated_ts),
                false,
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// `spock._conflict_counts(subid)`: the subscription's conflict counters in the
/// order of Spock's statistics columns, then when they were last reset
/// (microseconds since 2000-01-01, 0 when never); `spock.get_subscription_stats`
/// shows them. Counted in shared memory since the server started.
#[pg_extern(name = "_conflict_counts", stable, strict, parallel_safe)]
fn conflict_counts(subid: pg_sys::Oid) -> Vec<i64> {
    // SAFETY: reads this backend's database id.
    let db = u32::from(unsafe { pg_sys::MyDatabaseId });
    let (counts, reset) = crate::workers::shmem::conflict_stats(db, u32::from(subid));
    counts.iter().map(|c| i64::try_from(*c).unwrap_or(i64::MAX)).chain(std::iter::once(reset)).collect()
}

/// `spock.reset_subscription_stats(subid)`: sets the conflict counters of
/// subscription `subid` (NULL: of every subscription of this database) to zero.
#[pg_extern(name = "reset_subscription_stats", volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn reset_subscription_stats(subid: default!(Option<pg_sys::Oid>, "NULL")) {
    // SAFETY: reads this backend's database id and the statement's start time.
    let (db, now) = unsafe { (u32::from(pg_sys::MyDatabaseId), pg_sys::GetCurrentTimestamp()) };
    crate::workers::shmem::reset_conflict_stats(db, subid.map(u32::from), now);
}

/// `spock._slot_status()`: per subscription of this database whose apply worker
/// ran since the server started, the provider slot's `wal_status` and
/// `safe_wal_size` as the worker last read them (NULL when not known), and when
/// (microseconds since 2000-01-01); `spock.sub_show_status` shows them.
#[pg_extern(name = "_slot_status", stable, parallel_safe)]
#[allow(clippy::type_complexity)]
fn slot_status() -> TableIterator<
    'static,
    (
        name!(sub_id, pg_sys::Oid),
        name!(wal_status, Option<String>),
        name!(safe_wal_size, Option<i64>),
        name!(checked_at, Option<i64>),
    ),
> {
    // SAFETY: reads this backend's database id.
    let db = u32::from(unsafe { pg_sys::MyDatabaseId });
    let rows: Vec<_> = crate::workers::shmem::all_progress()
        .into_iter()
        .filter(|p| p.dbid == db && p.slot_checked_at != 0)
        .map(|p| {
            (
                pg_sys::Oid::from(p.sub_id),
                spock_core::status::WalStatus::from_code(p.slot_wal_status).name().map(String::from),
                p.slot_safe_wal_size,
                Some(p.slot_checked_at),
            )
        })
        .collect();
    TableIterator::new(rows)
}
