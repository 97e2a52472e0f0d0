//! A provider's catalogs, read over a libpq connection (`sql_api/subscription.rs`,
//! `sql_api/sync.rs`). Values arrive as text; a NULL or unparsable one is an error
//! naming the column, not a silent default.

use pgrx::PgSqlErrorCode;

use crate::error::PgError;
use crate::libpq::{Connection, LibpqError, Rows};

/// Column `n` (0-based) of a provider row, parsed as a `T`.
fn column<T: std::str::FromStr>(row: &[Option<String>], n: usize, what: &str) -> T {
    match row.get(n).cloned().flatten() {
        Some(v) => v.parse().unwrap_or_else(|_| unexpected(what, format!("\"{v}\""))),
        None => unexpected(what, "NULL"),
    }
}

fn unexpected(what: &str, found: impl std::fmt::Display) -> ! {
    PgError::new(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("the provider's {what} holds an unexpected value: {found}"),
    )
    .hint("The provider runs an incompatible version of spock, or its catalog was changed by hand.")
    .raise()
}

fn query(conn: &Connection, sql: &str, what: &str) -> Rows {
    conn.query(sql).unwrap_or_else(|e| provider_error(what, e))
}

/// 08006 for a provider that cannot be queried.
pub fn provider_error(what: &str, e: impl std::fmt::Display) -> ! {
    PgError::new(PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE, format!("could not {what}: {e}"))
        .hint("Check provider_dsn: the provider must accept normal and replication connections from this node.")
        .raise()
}

/// Whether the provider has extension spock.
pub fn has_spock(conn: &Connection) -> bool {
    !query(conn, "SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'spock'", "query the provider").is_empty()
}

/// The provider's node: (node id, node name), from its `spock.node_info()`.
pub fn node(conn: &Connection) -> Result<(i64, String), LibpqError> {
    let rows = conn.query("SELECT node_id::int8, node_name FROM spock.node_info()")?;
    let Some(row) = rows.first() else {
        PgError::new(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, "the provider is not a spock node")
            .raise()
    };
    Ok((column(row, 0, "spock.node_info().node_id"), column(row, 1, "spock.node_info().node_name")))
}

/// The names of the provider's replication sets, sorted.
pub fn sets(conn: &Connection) -> Vec<String> {
    query(
        conn,
        "SELECT s.set_name::text FROM spock.replication_set s JOIN spock.local_node l ON l.node_id = s.set_nodeid ORDER BY 1",
        "read the provider's replication sets",
    )
    .iter()
    .map(|r| column(r, 0, "spock.replication_set.set_name"))
    .collect()
}

/// The provider's tables in replication sets `sets`: (schema, table), sorted.
pub fn tables(conn: &Connection, sets: &[String]) -> Vec<(String, String)> {
    let list = sets.iter().map(|s| conn.literal(s)).collect::<Vec<_>>().join(", ");
    query(
        conn,
        &format!(
            "SELECT DISTINCT n.nspname::text, c.relname::text
               FROM spock.replication_set s
               JOIN spock.replication_set_table rt ON rt.set_id = s.set_id
               JOIN pg_catalog.pg_class c ON c.oid = rt.set_reloid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE s.set_name = ANY (ARRAY[{list}]::text[]) AND c.relkind = 'r'
              ORDER BY 1, 2"
        ),
        "list the provider's tables",
    )
    .iter()
    .map(|r| (column(r, 0, "pg_namespace.nspname"), column(r, 1, "pg_class.relname")))
    .collect()
}
