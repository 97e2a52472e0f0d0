//! `spock.retention_horizon()`: per database, how long deleted row versions are
//! kept and which subscriptions hold them (workers::retention), from the managers'
//! shared state; behind the view `spock.retention` (sql/api/progress.sql). The
//! declaration is written out because timestamptz has no pgrx type here: the i64
//! values are microseconds since 2000, which is what the type holds.

use pgrx::prelude::*;

use crate::workers::shmem;

/// One row per database whose manager keeps deleted row versions.
#[pg_extern(
    volatile,
    sql = "CREATE FUNCTION spock.retention_horizon(OUT dbid oid, OUT kept_since timestamptz,
    OUT checked_at timestamptz, OUT held_by oid[], OUT removals_until timestamptz)
RETURNS SETOF record VOLATILE LANGUAGE c SET search_path = pg_catalog, pg_temp AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';"
)]
#[allow(clippy::type_complexity)]
fn retention_horizon() -> TableIterator<
    'static,
    (
        name!(dbid, pgrx::pg_sys::Oid),
        name!(kept_since, Option<i64>),
        name!(checked_at, i64),
        name!(held_by, Vec<pgrx::pg_sys::Oid>),
        name!(removals_until, Option<i64>),
    ),
> {
    let rows: Vec<_> = shmem::all_retention()
        .into_iter()
        .map(|r| {
            (
                pgrx::pg_sys::Oid::from(r.dbid),
                (r.kept_since != 0).then_some(r.kept_since),
                r.checked_at,
                r.held_by[..usize::from(r.n_held)].iter().map(|id| pgrx::pg_sys::Oid::from(*id)).collect(),
                (r.removals_until != 0).then_some(r.removals_until),
            )
        })
        .collect();
    TableIterator::new(rows)
}
