//! Helpers of the table-sync functions (`spock.sub_alter_sync`).

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::error::PgError;
use crate::libpq::Connection;

/// The provider's tables in replication sets `sets` (schema, table), read over a
/// normal connection to `dsn`.
#[pg_extern(volatile, name = "_provider_tables")]
fn provider_tables(
    dsn: &str,
    sets: Vec<String>,
) -> TableIterator<'static, (name!(nspname, String), name!(relname, String))> {
    crate::privilege::require_superuser("connect to a provider");
    let conn = Connection::connect(dsn, &[("application_name", "spock sub_alter_sync")]).unwrap_or_else(|e| {
        PgError::new(PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE, format!("could not connect to the provider: {e}"))
            .raise()
    });
    let list = sets.iter().map(|s| conn.literal(s)).collect::<Vec<_>>().join(", ");
    let rows = conn
        .query(&format!(
            "SELECT DISTINCT n.nspname::text, c.relname::text
               FROM spock.replication_set s
               JOIN spock.replication_set_table rt ON rt.set_id = s.set_id
               JOIN pg_catalog.pg_class c ON c.oid = rt.set_reloid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE s.set_name = ANY (ARRAY[{list}]::text[]) AND c.relkind = 'r'
              ORDER BY 1, 2"
        ))
        .unwrap_or_else(|e| {
            PgError::new(
                PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
                format!("could not list the provider's tables: {e}"),
            )
            .raise()
        });
    TableIterator::new(
        rows.into_iter().filter_map(|r| Some((r.first().cloned().flatten()?, r.get(1).cloned().flatten()?))),
    )
}
