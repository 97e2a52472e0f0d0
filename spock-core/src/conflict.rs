//! Conflicts between a remote change and the local row it meets, and who wins.
//!
//! The apply worker gathers facts (the local row's commit timestamp and origin, the
//! remote transaction's commit timestamp and origin, the tiebreakers of the two
//! nodes) and asks [`decide`] what to do; nothing here touches a server.
//!
//! Rules (Spock's, extended with the policies Spock leaves disabled):
//! * `last_update_wins` (default): the newer commit timestamp wins. On equal
//!   timestamps the remote change wins when the local row came from the same origin;
//!   otherwise the version written by the node with the lower tiebreaker wins; equal
//!   tiebreakers apply the remote change and warn.
//!   Every node takes the same decision, so the cluster converges.
//! * `first_update_wins`: the same with the timestamp comparison inverted.
//! * `apply_remote` / `keep_local`: always that.
//! * `error`: every conflict stops the transaction (exception handling decides).
//! * `update_exists` (the new row violates another unique index) cannot be resolved
//!   by picking a row version and is always an error; `delete_missing` is skipped
//!   (logged) unless the policy is `error`.
//! * A DELETE is a row version too: an UPDATE or INSERT that meets a deleted version
//!   of its row (`update_deleted`, PostgreSQL 19's name, and `insert_deleted`) is
//!   decided against the DELETE's commit timestamp and origin like any other
//!   version: the newer side wins, so a delete racing an update or insert ends the
//!   same on every node. An UPDATE that finds neither row nor deleted version
//!   (`update_missing`) is applied as an INSERT when it carries the whole row
//!   ([`decide_update_missing`]).

use std::fmt;
use std::str::FromStr;

use crate::origin::{OriginId, LOCAL_ORIGIN};
use crate::proto::PgTimestamp;

/// The kinds of conflict, with PostgreSQL 18's names (and Spock's `delete_exists`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictKind {
    /// An INSERT met an existing row with the same key.
    InsertExists,
    /// An UPDATE met a row last changed by another origin.
    UpdateOriginDiffers,
    /// The updated row would violate a unique constraint other than the identity.
    UpdateExists,
    /// An UPDATE found no row.
    UpdateMissing,
    /// A DELETE met a row last changed by another origin.
    DeleteOriginDiffers,
    /// A DELETE found no row.
    DeleteMissing,
    /// A DELETE met a row changed later than the delete: the row stays.
    DeleteExists,
    /// An UPDATE found no row, but a deleted version of it: decided against the
    /// DELETE's commit timestamp (PostgreSQL 19's `update_deleted`).
    UpdateDeleted,
    /// An INSERT found no row with its key, but a deleted version of one: decided
    /// against the DELETE's commit timestamp.
    InsertDeleted,
}

impl ConflictKind {
    /// Every kind: Spock's, in the order of its statistics columns, then spock-rs's.
    pub const ALL: [ConflictKind; 9] = [
        ConflictKind::InsertExists,
        ConflictKind::UpdateOriginDiffers,
        ConflictKind::UpdateExists,
        ConflictKind::UpdateMissing,
        ConflictKind::DeleteOriginDiffers,
        ConflictKind::DeleteMissing,
        ConflictKind::DeleteExists,
        ConflictKind::UpdateDeleted,
        ConflictKind::InsertDeleted,
    ];

    /// The name used in logs and in `spock.resolutions.conflict_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictKind::InsertExists => "insert_exists",
            ConflictKind::UpdateOriginDiffers => "update_origin_differs",
            ConflictKind::UpdateExists => "update_exists",
            ConflictKind::UpdateMissing => "update_missing",
            ConflictKind::DeleteOriginDiffers => "delete_origin_differs",
            ConflictKind::DeleteMissing => "delete_missing",
            ConflictKind::DeleteExists => "delete_exists",
            ConflictKind::UpdateDeleted => "update_deleted",
            ConflictKind::InsertDeleted => "insert_deleted",
        }
    }

    /// Spock's numeric value (`SpockConflictType`): 0..=5 as in PostgreSQL 18, 101 for
    /// `delete_exists`; spock-rs's own kinds follow Spock's numbering (102, 103).
    pub fn spock_code(self) -> u32 {
        match self {
            ConflictKind::InsertExists => 0,
            ConflictKind::UpdateOriginDiffers => 1,
            ConflictKind::UpdateExists => 2,
            ConflictKind::UpdateMissing => 3,
            ConflictKind::DeleteOriginDiffers => 4,
            ConflictKind::DeleteMissing => 5,
            ConflictKind::DeleteExists => 101,
            ConflictKind::UpdateDeleted => 102,
            ConflictKind::InsertDeleted => 103,
        }
    }

    /// Position in per-kind statistics arrays (0..9).
    pub fn stat_index(self) -> usize {
        ConflictKind::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

impl fmt::Display for ConflictKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown name was given for a kind or policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value \"{0}\"")]
pub struct UnknownName(pub String);

impl FromStr for ConflictKind {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ConflictKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| UnknownName(s.to_string()))
    }
}

/// The values of `spock.conflict_resolution`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    /// Newer commit timestamp wins (the default).
    #[default]
    LastUpdateWins,
    /// Older commit timestamp wins.
    FirstUpdateWins,
    /// The remote change always wins.
    ApplyRemote,
    /// The local row always wins.
    KeepLocal,
    /// Any conflict is an error.
    Error,
}

impl ConflictPolicy {
    /// Every policy.
    pub const ALL: [ConflictPolicy; 5] = [
        ConflictPolicy::LastUpdateWins,
        ConflictPolicy::FirstUpdateWins,
        ConflictPolicy::ApplyRemote,
        ConflictPolicy::KeepLocal,
        ConflictPolicy::Error,
    ];

    /// The GUC value.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictPolicy::LastUpdateWins => "last_update_wins",
            ConflictPolicy::FirstUpdateWins => "first_update_wins",
            ConflictPolicy::ApplyRemote => "apply_remote",
            ConflictPolicy::KeepLocal => "keep_local",
            ConflictPolicy::Error => "error",
        }
    }
}

impl FromStr for ConflictPolicy {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ConflictPolicy::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| UnknownName(s.to_string()))
    }
}

/// What happens to the remote change (`spock.resolutions.conflict_resolution`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// The remote change is applied (an INSERT that met a row becomes an UPDATE).
    ApplyRemote,
    /// The local row stays as it is.
    KeepLocal,
    /// There is nothing to apply to; the change is skipped.
    Skip,
}

impl Resolution {
    /// The name Spock records.
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::ApplyRemote => "apply_remote",
            Resolution::KeepLocal => "keep_local",
            Resolution::Skip => "skip",
        }
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When and where a row version was committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowVersion {
    /// Commit timestamp (from `pg_commit_ts` for a local row; 0 when unknown, e.g. a
    /// frozen row, which then loses to any remote change).
    pub commit_ts: PgTimestamp,
    /// Origin of the commit ([`LOCAL_ORIGIN`] for local sessions).
    pub origin: OriginId,
}

/// The tiebreakers (`spock.node.info->>'tiebreaker'`, by default the node id) of the
/// nodes that wrote the two row versions: the node where the local row was committed
/// (this node when its origin is local) and the node the remote change came from.
///
/// Between two nodes this is exactly Spock's rule (applying node against sender).
/// With three or more nodes Spock compares the *applying* node with the sender, so a
/// third node that receives both versions can pick a different winner than the two
/// writers; comparing the writers makes every node pick the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiebreakers {
    /// Tiebreaker of the node that committed the local row version.
    pub local_node: i64,
    /// Tiebreaker of the node that committed the remote change.
    pub remote_node: i64,
}

/// Why a side won.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The remote change is newer (older under `first_update_wins`).
    RemoteTimestamp,
    /// The local row is newer (older under `first_update_wins`).
    LocalTimestamp,
    /// Equal timestamps, and the local row came from the same origin.
    SameOrigin,
    /// Equal timestamps, decided by the lower tiebreaker.
    Tiebreaker,
    /// Equal timestamps and equal tiebreakers: the remote change is applied and the
    /// operator should be warned to set distinct tiebreakers.
    EqualTiebreakers,
    /// The policy decides without comparing (`apply_remote`, `keep_local`).
    Policy,
    /// There was no row to apply the change to.
    NoLocalRow,
}

/// The outcome of resolving one conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The kind to report (a lost DELETE is reported as `delete_exists`).
    pub kind: ConflictKind,
    /// What happens to the remote change.
    pub resolution: Resolution,
    /// Why.
    pub reason: Reason,
}

impl Decision {
    /// Whether the remote change is applied.
    pub fn applies_remote(&self) -> bool {
        self.resolution == Resolution::ApplyRemote
    }

    /// Whether the operator should get a WARNING (equal tiebreakers).
    pub fn needs_warning(&self) -> bool {
        self.reason == Reason::EqualTiebreakers
    }

    /// Whether this is the normal flow of replication rather than a conflict to
    /// record: a row last written by another node, changed by a later remote
    /// change that applies (every write by a different node than the last one
    /// looks so). As in Spock 6, it is counted but neither logged nor saved in
    /// spock.resolutions; a remote change that loses (keep_local) is.
    pub fn is_normal_flow(&self) -> bool {
        matches!(self.kind, ConflictKind::UpdateOriginDiffers | ConflictKind::DeleteOriginDiffers)
            && self.resolution == Resolution::ApplyRemote
    }
}

/// The conflict kind a change's failure counts as in the statistics
/// (`get_subscription_stats`), as Spock counts it: an UPDATE that violates a unique
/// constraint here (a row another unique index finds) is `update_exists`; the
/// failure itself goes on to exception handling.
pub fn failure_counts_as(sqlstate: &str, is_update: bool) -> Option<ConflictKind> {
    (is_update && sqlstate == "23505").then_some(ConflictKind::UpdateExists)
}

/// A conflict that no row choice resolves: the transaction must fail and go to
/// exception handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("conflict {kind} cannot be resolved under conflict_resolution = {}", policy.as_str())]
pub struct Unresolvable {
    /// The conflict.
    pub kind: ConflictKind,
    /// The policy in force.
    pub policy: ConflictPolicy,
}

/// Resolves a remote change against a local row version by `policy`: the pure core
/// of `last_update_wins` and `first_update_wins`, used for `insert_exists`,
/// `update_origin_differs` and `delete_origin_differs`.
pub fn resolve(
    local: RowVersion,
    remote: RowVersion,
    policy: ConflictPolicy,
    tiebreakers: Tiebreakers,
) -> Result<(Resolution, Reason), ConflictPolicy> {
    let newest_wins = match policy {
        ConflictPolicy::LastUpdateWins => true,
        ConflictPolicy::FirstUpdateWins => false,
        ConflictPolicy::ApplyRemote => return Ok((Resolution::ApplyRemote, Reason::Policy)),
        ConflictPolicy::KeepLocal => return Ok((Resolution::KeepLocal, Reason::Policy)),
        ConflictPolicy::Error => return Err(policy),
    };
    let mut cmp = remote.commit_ts.cmp(&local.commit_ts);
    if !newest_wins {
        cmp = cmp.reverse();
    }
    Ok(match cmp {
        std::cmp::Ordering::Greater => (Resolution::ApplyRemote, Reason::RemoteTimestamp),
        std::cmp::Ordering::Less => (Resolution::KeepLocal, Reason::LocalTimestamp),
        std::cmp::Ordering::Equal => {
            if local.origin != LOCAL_ORIGIN && local.origin == remote.origin {
                (Resolution::ApplyRemote, Reason::SameOrigin)
            } else if tiebreakers.local_node == tiebreakers.remote_node {
                (Resolution::ApplyRemote, Reason::EqualTiebreakers)
            } else if tiebreakers.local_node < tiebreakers.remote_node {
                (Resolution::KeepLocal, Reason::Tiebreaker)
            } else {
                (Resolution::ApplyRemote, Reason::Tiebreaker)
            }
        }
    })
}

/// Whether an UPDATE or DELETE meeting `local` is a conflict at all: it is when the
/// local row was last written by a different origin than the remote change's.
pub fn origin_differs(local: RowVersion, remote: RowVersion) -> bool {
    local.origin != remote.origin
}

/// Decides a detected conflict of `kind`. `local` is the row version the change met:
/// the live row, the DELETE of a deleted one (`update_deleted`, `insert_deleted`),
/// `None` for the `*_missing` kinds. An applied `update_deleted` or `insert_deleted`
/// re-creates the row; a kept one leaves it deleted.
pub fn decide(
    kind: ConflictKind,
    local: Option<RowVersion>,
    remote: RowVersion,
    policy: ConflictPolicy,
    tiebreakers: Tiebreakers,
) -> Result<Decision, Unresolvable> {
    let unresolvable = Unresolvable { kind, policy };
    match kind {
        ConflictKind::UpdateExists => Err(unresolvable),
        ConflictKind::UpdateMissing | ConflictKind::DeleteMissing => {
            if policy == ConflictPolicy::Error {
                Err(unresolvable)
            } else {
                Ok(Decision { kind, resolution: Resolution::Skip, reason: Reason::NoLocalRow })
            }
        }
        ConflictKind::InsertExists
        | ConflictKind::UpdateOriginDiffers
        | ConflictKind::DeleteOriginDiffers
        | ConflictKind::DeleteExists
        | ConflictKind::UpdateDeleted
        | ConflictKind::InsertDeleted => {
            let Some(local) = local else {
                // Without a local row there is nothing to compare: the change applies.
                return Ok(Decision { kind, resolution: Resolution::ApplyRemote, reason: Reason::NoLocalRow });
            };
            let (resolution, reason) = resolve(local, remote, policy, tiebreakers).map_err(|_| unresolvable)?;
            let is_delete = matches!(kind, ConflictKind::DeleteOriginDiffers | ConflictKind::DeleteExists);
            let kind = match (is_delete, resolution) {
                (true, Resolution::KeepLocal) => ConflictKind::DeleteExists,
                (true, _) => ConflictKind::DeleteOriginDiffers,
                _ => kind,
            };
            Ok(Decision { kind, resolution, reason })
        }
    }
}

/// Decides an UPDATE that found neither its row nor a deleted version of it (after
/// `spock.read_retry_count` searches): the row never reached this node, or its
/// DELETE is older than what this node keeps. It is applied as an INSERT when it
/// carries the whole row (`complete_row`: no value left in the provider's TOAST) and
/// the policy lets a remote change win without a local row to compare with;
/// otherwise it is skipped.
pub fn decide_update_missing(complete_row: bool, policy: ConflictPolicy) -> Result<Decision, Unresolvable> {
    let kind = ConflictKind::UpdateMissing;
    let resolution = match policy {
        ConflictPolicy::Error => return Err(Unresolvable { kind, policy }),
        ConflictPolicy::KeepLocal => Resolution::Skip,
        _ if complete_row => Resolution::ApplyRemote,
        _ => Resolution::Skip,
    };
    Ok(Decision { kind, resolution, reason: Reason::NoLocalRow })
}

#[cfg(test)]
mod tests;
