//! Rust helpers behind the sequence SQL API (`sql/api/sequence.sql`): the margin
//! `spock.sync_seq` adds and the `S` messages it queues, both spock-core's.

use pgrx::pg_sys;
use pgrx::prelude::*;
use spock_core::ddl::{LocalSequence, QueuedMessage, SEQUENCE_SYNC_MARGIN};

use crate::catalog::system;

/// `spock._sequence_sync_margin()`: the initial `sequence_state.cache_size`, how far
/// ahead `spock.sync_seq` announces a sequence.
#[pg_extern(immutable, parallel_safe, name = "_sequence_sync_margin")]
fn sequence_sync_margin() -> i32 {
    SEQUENCE_SYNC_MARGIN
}

/// `spock._sequence_sync_target(last_value, increment, min_value, max_value, margin)`:
/// the value `spock.sync_seq` announces ([`spock_core::ddl::sequence_sync_target`]).
#[pg_extern(immutable, strict, parallel_safe, name = "_sequence_sync_target")]
fn sequence_sync_target(last_value: i64, increment: i64, min_value: i64, max_value: i64, margin: i64) -> i64 {
    spock_core::ddl::sequence_sync_target(LocalSequence { last_value, increment, min_value, max_value }, margin)
}

/// `spock._queue_sequence(sets, sequence, last_value)`: queues an `S` message (the
/// sequence has reached `last_value`) for the subscribers of `sets`, to be applied
/// as the current user.
#[pg_extern(volatile, strict, name = "_queue_sequence")]
fn queue_sequence(sets: Vec<String>, sequence: pg_sys::Oid, last_value: i64) {
    let (schema, name) = system::relation_name(sequence);
    crate::ddl::queue_message(
        Some(&sets),
        &system::current_user_name(),
        &QueuedMessage::Sequence { schema, name, last_value },
    );
}

/// `spock._global_sequence_first(floor, node_id)`: the first id a global sequence of
/// node `node_id` hands out above `floor` ([`spock_core::global_ids::first_after`]);
/// 22003 when none is left.
#[pg_extern(immutable, strict, parallel_safe, name = "_global_sequence_first")]
fn global_sequence_first(floor: i64, node_id: i32) -> i64 {
    let node = u16::try_from(node_id).unwrap_or_else(|_| {
        crate::error::PgError::new(
            pgrx::PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("node id {node_id} is not a 16-bit node id"),
        )
        .raise()
    });
    spock_core::global_ids::first_after(floor, node).unwrap_or_else(|| {
        crate::error::PgError::new(
            pgrx::PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
            format!("no global id is left above {floor} for node id {node}"),
        )
        .raise()
    })
}
