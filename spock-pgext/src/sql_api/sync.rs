//! Helpers of the table-sync functions (`spock.sub_alter_sync`) and of
//! `spock.sync_event()`.

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

/// The payload of a sync event written by node `node_id`, byte for byte as Spock
/// writes it on this machine (spock_core::proto::wal_message).
#[pg_extern(immutable, parallel_safe, strict, name = "_sync_event_payload")]
fn sync_event_payload(node_id: pgrx::pg_sys::Oid) -> Vec<u8> {
    spock_core::proto::wal_message::SyncEvent { origin: u32::from(node_id) }.encode().to_vec()
}

/// The payload of `spock.repair_mode(on)`'s WAL message, as Spock writes it.
#[pg_extern(immutable, parallel_safe, strict, name = "_repair_mode_payload")]
fn repair_mode_payload(enabled: bool) -> Vec<u8> {
    spock_core::proto::wal_message::repair_mode_payload(enabled).to_vec()
}
