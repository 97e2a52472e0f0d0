//! `spock.node` and `spock.local_node`.

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::error::spi_failed;

/// The local node's id; 55000 when the current database is not a spock node
/// (`spock._local_node_id`'s check and message).
pub fn local_node_id() -> u32 {
    let id = Spi::get_one::<pg_sys::Oid>("SELECT spock._local_node_id()")
        .unwrap_or_else(|e| spi_failed("looking up the local node", e))
        .unwrap_or_else(|| super::unexpected("spock.local_node.node_id", "NULL"));
    u32::from(id)
}

/// The tiebreaker of node `node` (`info->>'tiebreaker'`, else its id; its id also
/// when the node is unknown here).
pub fn tiebreaker(node: u16) -> i64 {
    super::at_most_one(Spi::get_one_with_args::<i64>(
        "SELECT coalesce((info->>'tiebreaker')::int8, node_id::int8) FROM spock.node WHERE node_id = $1::int8::oid",
        &[i64::from(node).into()],
    ))
    .unwrap_or_else(|e| spi_failed("reading a node's tiebreaker", e))
    .unwrap_or(i64::from(node))
}
