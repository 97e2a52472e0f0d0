//! Eager apply of streamed transactions: which streamed transaction a subscriber
//! applies as it arrives (besides spilling it), and when it gives that up, rolls
//! the eager local transaction back and replays the spill file at commit instead.
//!
//! A stream is applied eagerly when it begins while nothing else is in flight (no
//! other stream open, no remote transaction being applied), for a subscription
//! whose transactions all come from its provider and that has nothing that needs
//! the commit first ([`allowed`]). It falls back ([`FallBack`]) as soon as anything
//! else arrives, the transaction or one of its subtransactions aborts, it commits
//! under another origin, or one of its changes cannot be applied before the commit
//! (a conflict, whose resolution needs the commit timestamp; see the apply session).

/// Why an eagerly applied transaction is rolled back and replayed at commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallBack {
    /// Another transaction is streamed.
    AnotherStreamed,
    /// A subtransaction or the transaction aborted.
    Aborted,
    /// Another transaction commits first.
    AnotherCommits,
    /// The transaction commits under an origin other than the provider's.
    OtherOrigin,
    /// A non-streamed transaction or another message arrived.
    AnotherArrived,
    /// A change needs the commit (its timestamp or LSN) to be applied.
    NeedsCommit,
}

impl std::fmt::Display for FallBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FallBack::AnotherStreamed => "another transaction is streamed",
            FallBack::Aborted => "a subtransaction or the transaction aborted",
            FallBack::AnotherCommits => "another transaction commits first",
            FallBack::OtherOrigin => "it commits under another origin",
            FallBack::AnotherArrived => "another transaction arrived",
            FallBack::NeedsCommit => "a change needs the commit timestamp",
        })
    }
}

/// Whether eager apply may be tried for a subscription at all: not when it
/// forwards other nodes' transactions (the origin is known only at commit), has a
/// `sub_alter_skiplsn` pending (so is whether to skip), replays a failed
/// transaction (exception handling needs the commit), or delays apply.
pub fn allowed(forwards_origins: bool, skip_pending: bool, replaying_failed: bool, apply_delayed: bool) -> bool {
    !forwards_origins && !skip_pending && !replaying_failed && !apply_delayed
}

/// What to do at a stream's commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitPlan {
    /// Commit the eagerly applied local transaction.
    CommitEager,
    /// Replay the spill file, after rolling the eager transaction back when there
    /// is one (`fall_back`).
    Replay {
        /// Why an eager transaction is given up first.
        fall_back: Option<FallBack>,
    },
}

/// The eager state of one subscription's stream receiver.
#[derive(Debug, Clone)]
pub struct EagerApply {
    allowed: bool,
    provider_node: u16,
    current: Option<u32>,
}

impl EagerApply {
    /// `allowed` from [`allowed`]; `provider_node` is the node whose transactions
    /// may be applied eagerly (origin id 0 in a commit stands for it).
    pub fn new(allowed: bool, provider_node: u16) -> EagerApply {
        EagerApply { allowed, provider_node, current: None }
    }

    /// The node whose transactions are applied eagerly (their origin).
    pub fn provider_node(&self) -> u16 {
        self.provider_node
    }

    /// The streamed transaction being applied eagerly.
    pub fn current(&self) -> Option<u32> {
        self.current
    }

    /// Whether a change of stream block `block` is applied eagerly.
    pub fn applies(&self, block: Option<u32>) -> bool {
        self.current.is_some() && self.current == block
    }

    /// A stream block of `xid` starts. Gives the fallback of another eager
    /// transaction, and whether `xid` is now applied eagerly: its first block, with
    /// `open_streams` (counting it) 1, no remote transaction being applied and
    /// eager apply `enabled` (the setting).
    pub fn start(
        &mut self,
        xid: u32,
        first_segment: bool,
        open_streams: usize,
        in_remote_transaction: bool,
        enabled: bool,
    ) -> (Option<FallBack>, bool) {
        let fall_back = self.current.filter(|&x| x != xid).map(|_| FallBack::AnotherStreamed);
        if fall_back.is_some() {
            self.current = None;
        }
        let begin = first_segment
            && self.current.is_none()
            && open_streams == 1
            && !in_remote_transaction
            && self.allowed
            && enabled;
        if begin {
            self.current = Some(xid);
        }
        (fall_back, begin)
    }

    /// A change of the eager transaction could not be applied before its commit.
    pub fn change_needs_commit(&mut self) -> Option<FallBack> {
        self.current.take().map(|_| FallBack::NeedsCommit)
    }

    /// `xid` (or one of its subtransactions) aborted.
    pub fn abort(&mut self, xid: u32) -> Option<FallBack> {
        if self.current == Some(xid) {
            self.current = None;
            return Some(FallBack::Aborted);
        }
        None
    }

    /// Streamed transaction `xid` commits under origin `origin_id` (0: the provider).
    pub fn commit(&mut self, xid: u32, origin_id: u16) -> CommitPlan {
        match self.current.take() {
            Some(x) if x == xid && (origin_id == 0 || origin_id == self.provider_node) => CommitPlan::CommitEager,
            Some(x) if x == xid => CommitPlan::Replay { fall_back: Some(FallBack::OtherOrigin) },
            Some(_) => CommitPlan::Replay { fall_back: Some(FallBack::AnotherCommits) },
            None => CommitPlan::Replay { fall_back: None },
        }
    }

    /// A message outside the streams arrived (a transaction, a sync event, ...).
    pub fn other_message(&mut self) -> Option<FallBack> {
        self.current.take().map(|_| FallBack::AnotherArrived)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_only_without_forwarding_skips_replays_or_delay() {
        assert!(allowed(false, false, false, false));
        assert!(!allowed(true, false, false, false));
        assert!(!allowed(false, true, false, false));
        assert!(!allowed(false, false, true, false));
        assert!(!allowed(false, false, false, true));
    }

    #[test]
    fn a_lone_stream_is_applied_eagerly_and_commits() {
        let mut e = EagerApply::new(true, 7);
        assert_eq!(e.provider_node(), 7);
        assert_eq!(e.start(10, true, 1, false, true), (None, true));
        assert!(e.applies(Some(10)));
        assert!(!e.applies(Some(11)));
        assert!(!e.applies(None));
        // Its next block.
        assert_eq!(e.start(10, false, 1, false, true), (None, false));
        assert_eq!(e.current(), Some(10));
        assert_eq!(e.commit(10, 0), CommitPlan::CommitEager);
        assert_eq!(e.current(), None);
        assert_eq!(e.start(11, true, 1, false, true), (None, true));
        assert_eq!(e.commit(11, 7), CommitPlan::CommitEager, "the provider's own id");
    }

    #[test]
    fn not_eager_when_anything_else_is_in_flight_or_off() {
        let mut e = EagerApply::new(true, 7);
        assert_eq!(e.start(10, true, 2, false, true), (None, false), "another stream open");
        assert_eq!(e.start(10, true, 1, true, true), (None, false), "a transaction being applied");
        assert_eq!(e.start(10, false, 1, false, true), (None, false), "not its first block");
        assert_eq!(e.start(10, true, 1, false, false), (None, false), "spock.stream_eager_apply off");
        let mut off = EagerApply::new(false, 7);
        assert_eq!(off.start(10, true, 1, false, true), (None, false));
        assert_eq!(off.commit(10, 0), CommitPlan::Replay { fall_back: None });
    }

    #[test]
    fn falls_back_when_anything_else_happens() {
        let mut e = EagerApply::new(true, 7);
        e.start(10, true, 1, false, true);
        assert_eq!(e.start(11, true, 2, false, true), (Some(FallBack::AnotherStreamed), false));
        assert_eq!(e.current(), None);

        e.start(12, true, 1, false, true);
        assert_eq!(e.abort(99), None);
        assert_eq!(e.abort(12), Some(FallBack::Aborted));
        assert_eq!(e.abort(12), None);

        e.start(13, true, 1, false, true);
        assert_eq!(e.commit(14, 0), CommitPlan::Replay { fall_back: Some(FallBack::AnotherCommits) });

        e.start(15, true, 1, false, true);
        assert_eq!(e.commit(15, 3), CommitPlan::Replay { fall_back: Some(FallBack::OtherOrigin) });

        e.start(16, true, 1, false, true);
        assert_eq!(e.other_message(), Some(FallBack::AnotherArrived));
        assert_eq!(e.other_message(), None);

        e.start(17, true, 1, false, true);
        assert_eq!(e.change_needs_commit(), Some(FallBack::NeedsCommit));
        assert_eq!(e.change_needs_commit(), None);
        assert!(!e.applies(Some(17)));
    }

    #[test]
    fn reasons_read_as_sentences() {
        assert_eq!(FallBack::NeedsCommit.to_string(), "a change needs the commit timestamp");
    }
}
