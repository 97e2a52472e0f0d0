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
