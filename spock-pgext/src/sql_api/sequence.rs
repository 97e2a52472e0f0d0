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
