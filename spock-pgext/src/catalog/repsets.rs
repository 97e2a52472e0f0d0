//! `spock.replication_set`.

use pgrx::prelude::*;

use crate::error::spi_failed;

/// Raises 42704 unless every one of `sets` is a replication set of the local node
/// (and 55000 when there is no local node): `spock._repset`'s checks.
pub fn require_local_sets(sets: &[String]) {
    for set in sets {
        Spi::run_with_args("SELECT spock._repset($1)", &[set.as_str().into()])
            .unwrap_or_else(|e| spi_failed("looking up a replication set", e));
    }
}
