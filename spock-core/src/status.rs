//! Why a subscription does not replicate, and what its apply worker does about it.
//!
//! An apply worker that fails is started again by its manager. Most failures pass
//! (the provider restarts, the network comes back): those are retried, each time a
//! little later ([`restart_delay`]). Some come back on every attempt until someone
//! acts: the provider invalidated or lost the subscription's slot, the provider is
//! no longer a spock node, a replication set the subscription uses was dropped.
//! Retrying those forever only fills the logs; [`classify`] recognises them from the
//! provider's error, and the worker then disables the subscription with the reason
//! (`spock.sub_show_status` shows it) instead.

/// A failure that retrying cannot cure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permanent {
    /// The provider invalidated the slot (`wal_removed`, `idle_timeout`, ...): the
    /// changes the subscription still needs are gone from its WAL.
    SlotInvalidated,
    /// The slot does not exist on the provider (dropped by hand, or the provider
    /// was restored from a backup without it).
    SlotMissing,
    /// The provider database is not a spock node (its node was dropped).
    ProviderNotANode,
    /// A replication set of the subscription does not exist on the provider.
    SetMissing,
}

impl Permanent {
    /// A short name of the reason (`spock.sub_show_status`'s `last_error_reason`).
    pub fn name(self) -> &'static str {
        match self {
            Permanent::SlotInvalidated => "slot_invalidated",
            Permanent::SlotMissing => "slot_missing",
            Permanent::ProviderNotANode => "provider_not_a_node",
            Permanent::SetMissing => "replication_set_missing",
        }
    }

    /// What to do, for the message that says the subscription was disabled.
    pub fn hint(self, subscription: &str) -> String {
        let q = crate::ident::quote_literal(subscription);
        match self {
            Permanent::SlotInvalidated | Permanent::SlotMissing => format!(
                "Changes of the provider since the subscription last applied may be gone. \
                 Run SELECT spock.sub_resync({q}); to create the slot again and merge the provider's rows into this node's \
                 (rows written here are kept), see docs/operations.md \"Falling behind\"."
            ),
            Permanent::ProviderNotANode => format!(
                "Create the provider's node again (spock.node_create) and run SELECT spock.sub_enable({q});, \
                 or drop the subscription with SELECT spock.sub_drop({q});."
            ),
            Permanent::SetMissing => format!(
                "Create the replication set on the provider again, or remove it from the subscription with \
                 spock.sub_remove_repset({q}, <set>); then run SELECT spock.sub_enable({q});."
            ),
        }
    }

    /// Whether the provider's slot must be created again (the way back is
    /// `spock.sub_resync`).
    pub fn slot_lost(self) -> bool {
        matches!(self, Permanent::SlotInvalidated | Permanent::SlotMissing)
    }
}

/// Whether the provider's answer to `START_REPLICATION` (its SQLSTATE and
/// message) is a failure that retrying cannot cure; `None` for everything else
/// (connection failures, a provider starting up or shutting down, timeouts,
/// authentication: they may pass, and are retried).
pub fn classify(sqlstate: Option<&str>, message: &str) -> Option<Permanent> {
    let m = message.to_ascii_lowercase();
    match sqlstate {
        // PostgreSQL: 'can no longer access replication slot "x"' (18), 'cannot
        // read from logical replication slot "x"' / 'This slot has been
        // invalidated because ...' (16, 17).
        Some("55000")
            if m.contains("replication slot")
                && (m.contains("no longer access") || m.contains("invalidated") || m.contains("cannot read from")) =>
        {
            Some(Permanent::SlotInvalidated)
        }
        Some("42704") if m.contains("replication slot") && m.contains("does not exist") => Some(Permanent::SlotMissing),
        Some("55000") if m.contains("not configured as spock node") => Some(Permanent::ProviderNotANode),
        Some("42704") if m.contains("replication set") && m.contains("not found") => Some(Permanent::SetMissing),
        _ => None,
    }
}

/// How long the manager waits before starting a worker that failed `failures`
/// times in a row (1 for the first failure): `base_ms`, doubled for each further
/// failure, at most `max_ms` (and never less than `base_ms`).
pub fn restart_delay(base_ms: u64, max_ms: u64, failures: u32) -> u64 {
    let doublings = failures.saturating_sub(1).min(20);
    base_ms.saturating_mul(1u64 << doublings).min(max_ms.max(base_ms))
}

/// A provider slot's `wal_status` (`pg_replication_slots`), as a small code for
/// shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WalStatus {
    /// Not known (not asked yet, or the provider did not say).
    #[default]
    Unknown,
    /// Within `max_wal_size`.
    Reserved,
    /// Beyond `max_wal_size`, kept by the slot (within `max_slot_wal_keep_size`, or
    /// without a limit).
    Extended,
    /// Beyond the limit: the slot will be invalidated at the next checkpoint unless
    /// the subscriber catches up first.
    Unreserved,
    /// Invalidated: the WAL it needs is gone.
    Lost,
}

impl WalStatus {
    /// Every status, in the order of their codes ([`WalStatus::code`]).
    const ALL: [WalStatus; 5] =
        [WalStatus::Unknown, WalStatus::Reserved, WalStatus::Extended, WalStatus::Unreserved, WalStatus::Lost];

    /// From `pg_replication_slots.wal_status`.
    pub fn parse(s: &str) -> WalStatus {
        WalStatus::ALL.into_iter().find(|w| w.name() == Some(s)).unwrap_or_default()
    }

    /// As `pg_replication_slots` writes it; `None` when unknown.
    pub fn name(self) -> Option<&'static str> {
        match self {
            WalStatus::Unknown => None,
            WalStatus::Reserved => Some("reserved"),
            WalStatus::Extended => Some("extended"),
            WalStatus::Unreserved => Some("unreserved"),
            WalStatus::Lost => Some("lost"),
        }
    }

    /// The code kept in shared memory (0: unknown).
    pub fn code(self) -> u8 {
        WalStatus::ALL.iter().position(|w| *w == self).unwrap_or(0) as u8
    }

    /// From [`WalStatus::code`].
    pub fn from_code(c: u8) -> WalStatus {
        WalStatus::ALL.get(usize::from(c)).copied().unwrap_or_default()
    }
}

/// Whether an error the apply worker ended with is worth recording as the
/// subscription's last error: not the worker being asked to stop.
pub fn is_failure(sqlstate: &str) -> bool {
    !matches!(sqlstate, "57P01" | "57P02" | "57P03")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_slots_are_permanent() {
        assert_eq!(
            classify(Some("55000"), "can no longer access replication slot \"spk_db_n1_sub\""),
            Some(Permanent::SlotInvalidated)
        );
        assert_eq!(
            classify(Some("55000"), "cannot read from logical replication slot \"s\""),
            Some(Permanent::SlotInvalidated)
        );
        assert_eq!(classify(Some("42704"), "replication slot \"s\" does not exist"), Some(Permanent::SlotMissing));
        assert!(Permanent::SlotInvalidated.slot_lost() && Permanent::SlotMissing.slot_lost());
    }

    #[test]
    fn provider_catalog_errors_are_permanent() {
        assert_eq!(
            classify(Some("55000"), "current database is not configured as spock node"),
            Some(Permanent::ProviderNotANode)
        );
        assert_eq!(
            classify(Some("42704"), "spock_output: replication set \"x\" not found"),
            Some(Permanent::SetMissing)
        );
        assert!(!Permanent::SetMissing.slot_lost());
    }

    #[test]
    fn everything_else_is_retried() {
        assert_eq!(classify(None, "could not connect to server: Connection refused"), None);
        assert_eq!(classify(Some("57P03"), "the database system is starting up"), None);
        assert_eq!(classify(Some("28P01"), "password authentication failed for user \"x\""), None);
        assert_eq!(classify(Some("55006"), "replication slot \"s\" is active for PID 12"), None);
        assert_eq!(classify(Some("53300"), "too many connections"), None);
        // The same words with another SQLSTATE are not the slot's state.
        assert_eq!(classify(Some("XX000"), "replication slot \"s\" does not exist"), None);
    }

    #[test]
    fn hints_name_the_subscription_quoted() {
        assert!(Permanent::SlotInvalidated.hint("it's").contains("spock.sub_resync('it''s')"));
        assert!(Permanent::ProviderNotANode.hint("s").contains("spock.sub_drop('s')"));
        assert!(Permanent::SetMissing.hint("s").contains("sub_remove_repset('s', <set>)"));
    }

    #[test]
    fn restart_delays_double_up_to_the_limit() {
        assert_eq!(restart_delay(5000, 60000, 1), 5000);
        assert_eq!(restart_delay(5000, 60000, 2), 10000);
        assert_eq!(restart_delay(5000, 60000, 4), 40000);
        assert_eq!(restart_delay(5000, 60000, 5), 60000);
        assert_eq!(restart_delay(5000, 60000, u32::MAX), 60000);
        assert_eq!(restart_delay(0, 60000, 9), 0);
        assert_eq!(restart_delay(5000, 1000, 3), 5000);
        assert_eq!(restart_delay(0, 0, 0), 0);
    }

    #[test]
    fn wal_status_round_trips() {
        for s in ["reserved", "extended", "unreserved", "lost"] {
            let w = WalStatus::parse(s);
            assert_eq!(w.name(), Some(s));
            assert_eq!(WalStatus::from_code(w.code()), w);
        }
        assert_eq!(WalStatus::parse("?").name(), None);
        assert!(!is_failure("57P01") && is_failure("08006") && is_failure("XX000"));
    }
}
