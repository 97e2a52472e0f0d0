//! Rust helpers behind the node SQL API (`sql/api/node.sql`): the rules of
//! spock-core that `spock.node_create` applies.

use pgrx::pg_sys;
use pgrx::prelude::*;
use spock_core::ddl::NODE_DEFAULT_SETS;

/// `spock._node_id_for_name(node_name)`: the id Spock gives a node
/// ([`spock_core::names::node_id_for_name`]).
#[pg_extern(immutable, strict, parallel_safe, name = "_node_id_for_name")]
fn node_id_for_name(node_name: &str) -> pg_sys::Oid {
    pg_sys::Oid::from(u32::from(spock_core::names::node_id_for_name(node_name)))
}

/// `spock._node_default_sets()`: the replication sets a new node gets
/// ([`spock_core::ddl::NODE_DEFAULT_SETS`]).
#[pg_extern(immutable, parallel_safe, name = "_node_default_sets")]
#[allow(clippy::type_complexity)]
fn node_default_sets() -> TableIterator<
    'static,
    (
        name!(set_name, String),
        name!(replicate_insert, bool),
        name!(replicate_update, bool),
        name!(replicate_delete, bool),
        name!(replicate_truncate, bool),
    ),
> {
    TableIterator::new(NODE_DEFAULT_SETS.iter().map(|s| {
        (s.name.to_string(), s.replicate_insert, s.replicate_update, s.replicate_delete, s.replicate_truncate)
    }))
}
