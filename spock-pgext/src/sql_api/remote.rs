//! `spock._remote_query(dsn, sql)`: runs a statement on another node and returns
//! the first column of its rows, for the procedures that act on several nodes
//! (spock.remove_node in sql/api/operations.sql), as Zodan's procedures use dblink.

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::error::PgError;
use crate::libpq::Connection;

/// Superusers only (as dblink to an arbitrary connection string): the server
/// connects as the string's role. Errors keep the remote SQLSTATE.
#[pg_extern(volatile, name = "_remote_query")]
fn remote_query(dsn: &str, sql: &str) -> SetOfIterator<'static, Option<String>> {
    crate::privilege::require_superuser("run a statement on another node");
    let conn = Connection::connect(dsn, &[("application_name", "spock remote")]).unwrap_or_else(|e| {
        PgError::new(PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE, format!("could not connect to another node: {e}"))
            .raise()
    });
    let rows = conn.query(sql).unwrap_or_else(|e| {
        let code = e.sqlstate.as_deref().map_or(PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE, |s| {
            PgSqlErrorCode::from(crate::error::sqlstate_code(s))
        });
        // libpq's message starts with the severity ("ERROR:  ").
        let message = ["ERROR:  ", "FATAL:  "].iter().find_map(|p| e.message.strip_prefix(p)).unwrap_or(&e.message);
        PgError::new(code, format!("on another node: {message}")).raise()
    });
    SetOfIterator::new(rows.into_iter().map(|r| r.into_iter().next().flatten()))
}
