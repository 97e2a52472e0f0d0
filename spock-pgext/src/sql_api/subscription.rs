//! Rust helpers behind the subscription SQL API (`sql/api/subscription.sql`): the calls
//! that talk to the provider.

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::catalog::provider::{self, provider_error};
use crate::error::PgError;
use crate::libpq::Connection;

/// `spock._is_subscription_origin(slot, origin)`: whether replication origin `origin`
/// belongs to the subscription with slot `slot`: the slot's own name (the provider's
/// transactions) or one it forwards from another node
/// ([`spock_core::names::origin_node_of`]).
#[pg_extern(immutable, strict, parallel_safe, name = "_is_subscription_origin")]
fn is_subscription_origin(slot: &str, origin: &str) -> bool {
    spock_core::names::origin_node_of(slot, origin).is_some()
}

/// `spock._provider_info(dsn)`: the provider's node id and name and its replication
/// sets, after checking that both a normal and a replication connection work.
#[pg_extern(volatile, name = "_provider_info")]
fn provider_info(
    dsn: &str,
) -> TableIterator<'static, (name!(node_id, i64), name!(node_name, String), name!(replication_sets, Vec<String>))> {
    crate::privilege::require_superuser("connect to a provider");
    let conn = Connection::connect(dsn, &[("application_name", "spock sub_create")])
        .unwrap_or_else(|e| provider_error("connect to the provider", e));
    if !provider::has_spock(&conn) {
        PgError::new(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, "the provider has no spock extension")
            .hint("Run CREATE EXTENSION spock and spock.node_create() on the provider first.")
            .raise();
    }
    let (id, name) = provider::node(&conn).unwrap_or_else(|e| {
        PgError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("the provider is not a spock node: {e}"),
        )
        .hint("Run spock.node_create() on the provider first.")
        .raise()
    });
    let sets = provider::sets(&conn);
    drop(conn);
    let repl = Connection::connect(dsn, &[("replication", "database"), ("application_name", "spock sub_create")])
        .unwrap_or_else(|e| provider_error("open a replication connection to the provider", e));
    repl.query("IDENTIFY_SYSTEM").unwrap_or_else(|e| provider_error("use the replication connection", e));
    TableIterator::once((id, name, sets))
}

/// `spock._drop_provider_slot(dsn, slot)`: drops the subscription's slot on the
/// provider, waiting up to 30 s for its walsender to go away. False when the
/// provider cannot be reached (the caller warns).
#[pg_extern(volatile, name = "_drop_provider_slot")]
fn drop_provider_slot(dsn: &str, slot: &str) -> bool {
    crate::privilege::require_superuser("drop a provider's replication slot");
    let Ok(conn) = Connection::connect(dsn, &[("application_name", "spock sub_drop"), ("connect_timeout", "10")])
    else {
        return false;
    };
    let sql = format!(
        "SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
        conn.literal(slot)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match conn.query(&sql) {
            Ok(_) => return true,
            Err(e) if e.sqlstate.as_deref() == Some("55006") && std::time::Instant::now() < deadline => {
                // The walsender still holds the slot: our worker just stopped.
                std::thread::sleep(std::time::Duration::from_millis(100));
                pgrx::check_for_interrupts!();
            }
            Err(e) => PgError::new(
                PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
                format!("could not drop slot {slot} on the provider: {e}"),
            )
            .raise(),
        }
    }
}
