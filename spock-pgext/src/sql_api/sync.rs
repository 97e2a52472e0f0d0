//! Helpers of the table-sync functions (`spock.sub_alter_sync`).

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::catalog::provider;
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
    TableIterator::new(provider::tables(&conn, &sets))
}
