//! What an apply worker knows about its subscription, read from the catalog.

use pgrx::prelude::*;

use spock_core::proto::{format_lsn, parse_lsn};

use crate::error::spi_failed;

/// A subscription as the apply worker needs it.
#[derive(Debug, Clone)]
pub struct SubscriptionInfo {
    /// `sub_id`.
    pub id: u32,
    /// `sub_name`.
    pub name: String,
    /// `sub_slot_name`: the provider's slot and our replication origin.
    pub slot_name: String,
    /// The provider interface's DSN.
    pub provider_dsn: String,
    /// The provider node's id.
    pub provider_node_id: u16,
    /// The provider node's name.
    pub provider_name: String,
    /// This node's id.
    pub local_node_id: u16,
    /// This node's name.
    pub local_name: String,
    /// Replication sets subscribed to.
    pub replication_sets: Vec<String>,
    /// `sub_forward_origins`.
    pub forward_origins: Vec<String>,
    /// `sub_force_text_transfer`.
    pub force_text_transfer: bool,
    /// The subscription-level sync status (`local_sync_status.sync_status`).
    pub sync_status: char,
    /// `sub_skip_lsn`: the remote transaction with this commit LSN is skipped once.
    pub skip_lsn: u64,
    /// `sub_apply_delay` in microseconds: a transaction is applied no earlier than
    /// its commit time plus this.
    pub apply_delay_us: i64,
    /// `sub_parallel_apply_workers`: writers for this subscription (NULL: the
    /// node's `spock.parallel_apply_workers`).
    pub parallel_apply_workers: Option<i32>,
}

impl SubscriptionInfo {
    /// Writers to apply with (1: this worker alone).
    pub fn parallel_apply_workers(&self) -> usize {
        let n = self.parallel_apply_workers.unwrap_or_else(|| crate::gucs::PARALLEL_APPLY_WORKERS.get());
        n.clamp(1, super::MAX_WRITERS as i32) as usize
    }
}

/// Loads subscription `sub_id`; `None` when it does not exist (dropped meanwhile).
pub fn load(sub_id: u32) -> Option<SubscriptionInfo> {
    Spi::connect(|client| {
        let t = client
            .select(
                "SELECT s.sub_name::text, s.sub_slot_name::text, i.if_dsn, o.node_id::int8, o.node_name::text,
                        t.node_id::int8, t.node_name::text, coalesce(s.sub_replication_sets, '{}'),
                        coalesce(s.sub_forward_origins, '{}'), s.sub_force_text_transfer,
                        coalesce((SELECT y.sync_status::text FROM spock.local_sync_status y
                                   WHERE y.sync_subid = s.sub_id AND y.sync_nspname IS NULL), 'r'),
                        s.sub_skip_lsn::text,
                        (extract(epoch FROM coalesce(s.sub_apply_delay, '0')) * 1000000)::int8,
                        s.sub_parallel_apply_workers
                   FROM spock.subscription s
                   JOIN spock.node_interface i ON i.if_id = s.sub_origin_if
                   JOIN spock.node o ON o.node_id = s.sub_origin
                   JOIN spock.node t ON t.node_id = s.sub_target
                  WHERE s.sub_id = $1::int8::oid",
                Some(1),
                &[i64::from(sub_id).into()],
            )
            .unwrap_or_else(|e| spi_failed("reading the subscription", e));
        let row = t.into_iter().next()?;
        let text = |i: usize| row.get::<String>(i).ok().flatten().unwrap_or_default();
        Some(SubscriptionInfo {
            id: sub_id,
            name: text(1),
            slot_name: text(2),
            provider_dsn: text(3),
            provider_node_id: row.get::<i64>(4).ok().flatten().unwrap_or(0) as u16,
            provider_name: text(5),
            local_node_id: row.get::<i64>(6).ok().flatten().unwrap_or(0) as u16,
            local_name: text(7),
            replication_sets: row.get::<Vec<String>>(8).ok().flatten().unwrap_or_default(),
            forward_origins: row.get::<Vec<String>>(9).ok().flatten().unwrap_or_default(),
            force_text_transfer: row.get::<bool>(10).ok().flatten().unwrap_or(false),
            sync_status: text(11).chars().next().unwrap_or('r'),
            skip_lsn: parse_lsn(&text(12)).unwrap_or(0),
            apply_delay_us: row.get::<i64>(13).ok().flatten().unwrap_or(0).max(0),
            parallel_apply_workers: row.get::<i32>(14).ok().flatten(),
        })
    })
}

/// Sets the subscription-level sync status (and its LSN).
pub fn set_sync_status(sub_id: u32, status: char, lsn: u64) {
    Spi::connect_mut(|client| {
        client
            .update(
                "UPDATE spock.local_sync_status SET sync_status = $2::\"char\", sync_statuslsn = $3::text::pg_lsn
                  WHERE sync_subid = $1::int8::oid AND sync_nspname IS NULL",
                None,
                &[i64::from(sub_id).into(), status.to_string().into(), format_lsn(lsn).into()],
            )
            .unwrap_or_else(|e| spi_failed("updating the sync status", e));
    })
}
