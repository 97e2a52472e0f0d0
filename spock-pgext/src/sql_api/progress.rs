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
