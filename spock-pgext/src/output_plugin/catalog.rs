//! The output plugin's reads of spock's catalog tables through SPI: at
//! startup (normal snapshot) and on relation-cache misses (historic snapshot: the
//! tables read then are user catalog tables).

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::PgSqlErrorCode;
use spock_core::repset::{Membership, RepSet};

use crate::catalog::{optional, required};
use crate::error::{spi_failed, PgError};

/// Runs `f` (which uses SPI) with an active snapshot. A walsender has none, neither
/// in the startup callback nor while decoding; during decoding the transaction
/// snapshot PostgreSQL hands out is the historic one of the decoded change.
fn with_snapshot<R>(f: impl FnOnce() -> R) -> R {
    super::allow_table_scans_while_streaming(|| {
        // SAFETY: plain snapshot-stack calls inside a transaction; the snapshot pushed
        // here is popped before returning (an ERROR aborts the transaction, which
        // resets the stack).
        unsafe {
            if pg_sys::ActiveSnapshotSet() {
                return f();
            }
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            let r = f();
            pg_sys::PopActiveSnapshot();
            r
        }
    })
}

/// The node this database is.
pub struct LocalNode {
    /// 16-bit node id.
    pub id: u16,
    /// Node name.
    pub name: String,
}

fn first_row<T, F>(client: &SpiClient<'_>, sql: &str, args: &[pgrx::datum::DatumWithOid<'_>], f: F) -> Option<T>
where
    F: FnOnce(&pgrx::spi::SpiHeapTupleData<'_>) -> T,
{
    let table = client.select(sql, Some(1), args).unwrap_or_else(|e| spi_failed(sql, e));
    table.into_iter().next().map(|row| f(&row))
}

/// The local node, or an error telling the user to create it.
pub fn local_node() -> LocalNode {
    with_snapshot(|| {
        Spi::connect(|client| {
            first_row(
                client,
                "SELECT n.node_id::int8, n.node_name::text FROM spock.local_node l JOIN spock.node n USING (node_id)",
                &[],
                |row| LocalNode {
                    id: required::<i64>(row, 1, "spock.node.node_id") as u16,
                    name: required(row, 2, "spock.node.node_name"),
                },
            )
        })
    })
    .unwrap_or_else(|| {
        PgError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "current database is not configured as spock node",
        )
        .hint("create a spock node first with spock.node_create()")
        .raise()
    })
}

/// Every row of a catalog query, each turned into a `T` by `f`.
fn rows<T>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid<'_>],
    what: &str,
    f: impl Fn(&pgrx::spi::SpiHeapTupleData<'_>) -> T,
) -> Vec<T> {
    with_snapshot(|| {
        Spi::connect(|client| {
            let table = client.select(sql, None, args).unwrap_or_else(|e| spi_failed(what, e));
            table.into_iter().map(|row| f(&row)).collect()
        })
    })
}

/// Every replication set of node `node_id`.
pub fn node_repsets(node_id: u16) -> Vec<RepSet> {
    rows(
        "SELECT set_id::int8, set_name::text, replicate_insert, replicate_update, replicate_delete, \
                replicate_truncate FROM spock.replication_set WHERE set_nodeid = $1::int8::oid",
        &[i64::from(node_id).into()],
        "reading replication sets",
        |row| RepSet {
            id: required::<i64>(row, 1, "spock.replication_set.set_id") as u32,
            name: required(row, 2, "spock.replication_set.set_name"),
            replicate_insert: required(row, 3, "spock.replication_set.replicate_insert"),
            replicate_update: required(row, 4, "spock.replication_set.replicate_update"),
            replicate_delete: required(row, 5, "spock.replication_set.replicate_delete"),
            replicate_truncate: required(row, 6, "spock.replication_set.replicate_truncate"),
        },
    )
}

/// A table's memberships in replication sets, with row filters as node strings.
pub fn table_memberships(relid: pg_sys::Oid) -> Vec<Membership<String>> {
    rows(
        "SELECT set_id::int8, set_att_list, set_row_filter::text FROM spock.replication_set_table \
         WHERE set_reloid = $1::int8::oid",
        &[i64::from(u32::from(relid)).into()],
        "reading replication set tables",
        |row| Membership {
            set_id: required::<i64>(row, 1, "spock.replication_set_table.set_id") as u32,
            columns: optional(row, 2, "spock.replication_set_table.set_att_list"),
            row_filter: optional(row, 3, "spock.replication_set_table.set_row_filter"),
        },
    )
}

/// The name of node `node_id`, when known.
pub fn node_name(node_id: u16) -> Option<String> {
    with_snapshot(|| {
        Spi::connect(|client| {
            first_row(
                client,
                "SELECT node_name::text FROM spock.node WHERE node_id = $1::int8::oid",
                &[i64::from(node_id).into()],
                |row| required::<String>(row, 1, "spock.node.node_name"),
            )
        })
    })
}
