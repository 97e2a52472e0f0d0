//! Changes a subscriber skips after a table sync: a table copied at LSN `S` (the
//! copy's consistent point) already holds every change of transactions that
//! committed before `S`, so the stream skips those and applies the rest; a table
//! waiting for its copy ([`WAITING_FOR_COPY`]) skips every change (the copy will
//! hold them all). Once the stream has applied a transaction committed at or after
//! `S`, the table has caught up.

use crate::proto::Lsn;

/// The copy position of a table whose copy has not started yet.
pub const WAITING_FOR_COPY: Lsn = Lsn::MAX;

/// Whether a change is already in a table's copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InCopy {
    /// No: apply it.
    No,
    /// Yes: skip it.
    Yes,
    /// Not known before the transaction's commit LSN is (a stream applied eagerly).
    Unknown,
}

/// Whether a change of a transaction committed at `commit_lsn` (None: not known
/// yet) is in the copy of its table made at `copied_at`.
pub fn in_copy(copied_at: Lsn, commit_lsn: Option<Lsn>) -> InCopy {
    match commit_lsn {
        Some(l) if l < copied_at => InCopy::Yes,
        Some(_) => InCopy::No,
        None if copied_at == WAITING_FOR_COPY => InCopy::Yes,
        None if copied_at > 0 => InCopy::Unknown,
        None => InCopy::No,
    }
}

/// Whether a table copied at `copied_at` has caught up once the transaction that
/// committed at `applied` is applied.
pub fn caught_up(copied_at: Lsn, applied: Lsn) -> bool {
    copied_at <= applied
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_before_the_copy_point_are_in_the_copy() {
        assert_eq!(in_copy(100, Some(99)), InCopy::Yes);
        assert_eq!(in_copy(100, Some(100)), InCopy::No);
        assert_eq!(in_copy(100, Some(101)), InCopy::No);
        assert_eq!(in_copy(WAITING_FOR_COPY, Some(u64::MAX - 1)), InCopy::Yes);
    }

    #[test]
    fn an_unknown_commit_lsn_is_known_only_against_a_copy_not_started() {
        assert_eq!(in_copy(WAITING_FOR_COPY, None), InCopy::Yes);
        assert_eq!(in_copy(100, None), InCopy::Unknown);
        assert_eq!(in_copy(0, None), InCopy::No);
    }

    #[test]
    fn caught_up_at_the_copy_point() {
        assert!(!caught_up(100, 99));
        assert!(caught_up(100, 100));
        assert!(caught_up(100, 200));
        assert!(!caught_up(WAITING_FOR_COPY, u64::MAX - 1));
    }
}
