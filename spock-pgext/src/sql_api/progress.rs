//! `spock.apply_group_progress()`: apply progress of this server's subscriptions,
//! from the workers' shared state (behind the views `spock.progress` and
//! `spock.lag_tracker`). Declared in `sql/api/progress.sql` with pg_lsn and timestamptz
//! columns: both are 8-byte pass-by-value types, which is what the i64 values here
//! are (LSNs as bits, timestamps as microseconds since 2000).

use pgrx::prelude::*;

use crate::workers::shmem;

fn opt<T: Into<i64> + Copy + PartialEq + Default>(v: T) -> Option<i64> {
    (v != T::default()).then(|| v.into())
}

/// One row per subscription that had an apply worker since the server started.
#[pg_extern(sql = false, volatile)]
#[allow(clippy::type_complexity)]
fn apply_group_progress() -> TableIterator<
    'static,
    (
        name!(dbid, pgrx::pg_sys::Oid),
        name!(node_id, pgrx::pg_sys::Oid),
        name!(remote_node_id, pgrx::pg_sys::Oid),
        name!(remote_commit_ts, Option<i64>),
        name!(prev_remote_ts, Option<i64>),
        name!(remote_commit_lsn, Option<i64>),
        name!(remote_insert_lsn, Option<i64>),
        name!(received_lsn, Option<i64>),
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
                opt(p.remote_commit_lsn as i64),
                opt(p.remote_insert_lsn as i64),
                opt(p.received_lsn as i64),
                opt(p.last_updated_ts),
                false,
            )
        })
        .collect();
    TableIterator::new(rows)
}
