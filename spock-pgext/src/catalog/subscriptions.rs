//! `spock.subscription` (with `spock.local_node`).

use pgrx::prelude::*;

use super::required;
use crate::error::spi_failed;

/// Every subscription of this node: (sub_id, sub_name, sub_enabled), by sub_id.
pub fn all_subscriptions() -> Vec<(u32, String, bool)> {
    Spi::connect(|client| {
        client
            .select(
                "SELECT s.sub_id, s.sub_name::text, s.sub_enabled FROM spock.subscription s
                   JOIN spock.local_node l ON l.node_id = s.sub_target
                  ORDER BY s.sub_id",
                None,
                &[],
            )
            .unwrap_or_else(|e| spi_failed("reading the subscriptions", e))
            .map(|r| {
                (
                    u32::from(required::<pgrx::pg_sys::Oid>(&r, 1, "spock.subscription.sub_id")),
                    required::<String>(&r, 2, "spock.subscription.sub_name"),
                    required::<bool>(&r, 3, "spock.subscription.sub_enabled"),
                )
            })
            .collect()
    })
}

/// The provider node of the subscription whose replication origin is `origin_name`
/// (one of the origins a subscription keeps per originating node), if any.
pub fn provider_of_origin(origin_name: &str) -> Option<u16> {
    super::at_most_one(Spi::get_one_with_args::<i64>(
        "SELECT sub_origin::int8 FROM spock.subscription WHERE spock._is_subscription_origin(sub_slot_name, $1)",
        &[origin_name.into()],
    ))
    .unwrap_or_else(|e| spi_failed("reading the subscription of a replication origin", e))
    .map(|n| n as u16)
}
