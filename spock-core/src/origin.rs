//! Origins: which transactions a provider sends to a subscriber, and which origin a
//! transaction is announced with. This is what keeps a mesh free of loops: a change
//! that node B applied from node A carries A's origin on B, and B does not send it on
//! (unless the subscription asked to forward foreign origins).

/// A replication origin id (`RepOriginId`); 0 means "committed locally".
pub type OriginId = u16;

/// `InvalidRepOriginId`: the transaction was committed by a local session.
pub const LOCAL_ORIGIN: OriginId = 0;

/// Which transactions that came from other nodes a subscription wants
/// (`spock.forward_origins` / `sub_forward_origins`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardOrigins {
    /// Only transactions committed on the provider itself (the default, and what a
    /// full mesh needs).
    #[default]
    None,
    /// Every transaction, whatever node it came from (cascading replication).
    All,
}

impl ForwardOrigins {
    /// From the origin names of a subscription: empty means none, `{all}` means all.
    /// Any other name is not supported (Spock has the same restriction) and is
    /// returned as the error.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<ForwardOrigins, String> {
        let mut result = ForwardOrigins::None;
        for n in names {
            if n.as_ref() == "all" {
                result = ForwardOrigins::All;
            } else {
                return Err(n.as_ref().to_string());
            }
        }
        Ok(result)
    }
}

/// Whether a transaction whose commit carries `txn_origin` goes to a subscriber
/// that asked for `forward`. Local transactions always do.
pub fn should_send(txn_origin: OriginId, forward: ForwardOrigins) -> bool {
    txn_origin == LOCAL_ORIGIN || forward == ForwardOrigins::All
}

/// The replication origin under which a subscriber writes the deleted version it
/// keeps for a DELETE of a row it never had (a row inserted and deleted at once,
/// only there to be found by later changes of that key). Its id is reserved by
/// creating the origin; nothing replicates under it.
pub const TOMBSTONE_ORIGIN_NAME: &str = "spock_tombstone";

/// Whether a change written under `change_origin` goes to a subscriber that asked
/// for `forward`: as [`should_send`], but never a change written under the
/// tombstone origin (`tombstone`, 0 when it does not exist yet).
pub fn should_send_change(change_origin: OriginId, forward: ForwardOrigins, tombstone: OriginId) -> bool {
    (tombstone == LOCAL_ORIGIN || change_origin != tombstone) && should_send(change_origin, forward)
}

/// The origin the `O` message names for a transaction: its own origin when it came
/// from another node, else the provider's node id.
pub fn announced_origin(txn_origin: OriginId, local_node_id: OriginId) -> OriginId {
    if txn_origin == LOCAL_ORIGIN {
        local_node_id
    } else {
        txn_origin
    }
}

#[cfg(test)]
mod tombstone_tests {
    use super::*;

    #[test]
    fn changes_under_the_tombstone_origin_are_never_sent() {
        assert!(!should_send_change(7, ForwardOrigins::All, 7));
        assert!(should_send_change(8, ForwardOrigins::All, 7));
        assert!(!should_send_change(8, ForwardOrigins::None, 7));
        assert!(should_send_change(LOCAL_ORIGIN, ForwardOrigins::None, 7));
        // No tombstone origin yet: only the forwarding rule.
        assert!(should_send_change(LOCAL_ORIGIN, ForwardOrigins::None, LOCAL_ORIGIN));
        assert!(should_send_change(3, ForwardOrigins::All, LOCAL_ORIGIN));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_transactions_always_pass() {
        assert!(should_send(LOCAL_ORIGIN, ForwardOrigins::None));
        assert!(should_send(LOCAL_ORIGIN, ForwardOrigins::All));
    }

    #[test]
    fn foreign_transactions_only_when_forwarding() {
        assert!(!should_send(4711, ForwardOrigins::None));
        assert!(should_send(4711, ForwardOrigins::All));
    }

    #[test]
    fn forward_origin_names() {
        assert_eq!(ForwardOrigins::from_names::<&str>(&[]), Ok(ForwardOrigins::None));
        assert_eq!(ForwardOrigins::from_names(&["all"]), Ok(ForwardOrigins::All));
        assert_eq!(ForwardOrigins::from_names(&["n1"]), Err("n1".to_string()));
    }

    #[test]
    fn announced_origin_is_local_node_for_local_transactions() {
        assert_eq!(announced_origin(LOCAL_ORIGIN, 42), 42);
        assert_eq!(announced_origin(7, 42), 7);
    }
}
