//! How long a node keeps deleted row versions: until every peer's changes that
//! committed before the delete have been applied here.
//!
//! A remote UPDATE or INSERT that is older than a local DELETE of the same key must
//! find the deleted version (its commit timestamp and origin) to lose against it;
//! one that is newer wins with or without it. So a deleted version is needed until
//! every provider's transactions that committed before the delete have been applied
//! and made durable here. Two halves keep it:
//!
//! * the apply worker of each subscription asks its provider, now and then, for a
//!   WAL position and the provider's clock at the same moment (a [`Probe`]); once
//!   everything up to that position is applied and durable here, every provider
//!   transaction that committed before that time (less [`MARGIN_US`]) is applied:
//!   that time is the subscription's *safe time* ([`ProbeState`]);
//! * the manager of the database notes, every second, the oldest transaction still
//!   running (a [`Candidate`]: every transaction older than it committed before that
//!   moment) with a bound on the commit timestamps of what those transactions
//!   removed ([`removal_bound`]: the node's own removals, at most the time of the
//!   candidate, and what its apply workers applied, which carries the providers'
//!   older timestamps while a subscription catches up), and holds the server's
//!   removal horizon at the newest candidate whose bound every subscription's safe
//!   time has passed ([`Horizon`]), never longer than a cap, after which it lets go
//!   and says so.
//!
//! Times are compared across nodes as last-update-wins compares them: the clocks
//! are assumed synchronised, with [`MARGIN_US`] of slack.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::proto::{Lsn, PgTimestamp};

/// Slack subtracted from a probe's provider time: covers the gap between the moment
/// a provider transaction takes its commit timestamp and the moment its commit
/// record enters the WAL, and a small clock difference between nodes.
pub const MARGIN_US: i64 = 1_000_000;

/// A provider's answer: a WAL position and its clock, taken together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// A position at or after the commit record of every transaction that
    /// committed before `provider_time`.
    pub lsn: Lsn,
    /// The provider's clock when `lsn` was taken.
    pub provider_time: PgTimestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Nothing asked.
    Idle,
    /// Asked, no answer yet.
    Sent,
    /// Answered; waiting until everything up to it is applied and durable.
    Answered(Probe),
}

/// The probe cycle of one subscription's apply worker: ask, wait for the answer,
/// wait until the stream has been applied and flushed past it, report the safe
/// time, and ask again after an interval.
#[derive(Debug, Clone)]
pub struct ProbeState {
    step: Step,
    last_sent: Option<Instant>,
    interval: Duration,
}

impl ProbeState {
    /// A cycle that asks at most every `interval`.
    pub fn new(interval: Duration) -> ProbeState {
        ProbeState { step: Step::Idle, last_sent: None, interval }
    }

    /// Whether a new probe should be sent now.
    pub fn due(&self, now: Instant) -> bool {
        self.step == Step::Idle && self.last_sent.is_none_or(|t| now.duration_since(t) >= self.interval)
    }

    /// A probe was sent at `now`.
    pub fn sent(&mut self, now: Instant) {
        self.step = Step::Sent;
        self.last_sent = Some(now);
    }

    /// Whether a probe waits for its answer.
    pub fn awaiting_answer(&self) -> bool {
        self.step == Step::Sent
    }

    /// The provider answered.
    pub fn answered(&mut self, probe: Probe) {
        if self.step == Step::Sent {
            self.step = Step::Answered(probe);
        }
    }

    /// The probe failed (connection lost, error): the next one is due after the
    /// interval.
    pub fn failed(&mut self) {
        self.step = Step::Idle;
    }

    /// Everything up to `flushed` is applied and durable here: if that covers the
    /// answered probe, returns the subscription's new safe time and starts over.
    pub fn covered(&mut self, flushed: Lsn) -> Option<PgTimestamp> {
        match self.step {
            Step::Answered(p) if flushed >= p.lsn => {
                self.step = Step::Idle;
                Some(p.provider_time.saturating_sub(MARGIN_US))
            }
            _ => None,
        }
    }
}

/// The safe time a subscription has once a transaction its provider committed at
/// `commit_ts` (its own, not forwarded) is applied and durable here: the provider
/// sends its transactions in commit order, so every one that committed before,
/// less [`MARGIN_US`] (the gap between taking a commit timestamp and writing the
/// commit record), came first. While a subscription catches up this moves with it,
/// where a probe only answers at the end of the backlog.
pub fn safe_after_applied(commit_ts: PgTimestamp) -> PgTimestamp {
    commit_ts.saturating_sub(MARGIN_US)
}

/// A possible removal horizon: `xid` was the oldest transaction still running at
/// `taken_at` (local clock), so every transaction older than it had committed (or
/// aborted) by then, and whatever they removed carries a commit timestamp no later
/// than `removed_before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The horizon (a 32-bit transaction id).
    pub xid: u32,
    /// When it was taken.
    pub taken_at: PgTimestamp,
    /// A bound on the commit timestamps of the removals older than `xid`: the
    /// candidate can be installed once every subscription's safe time has passed
    /// it. `taken_at` always is one (see [`removal_bound`]).
    pub removed_before: PgTimestamp,
}

impl Candidate {
    /// A candidate whose removals are bounded only by the time it was taken.
    pub fn at(xid: u32, taken_at: PgTimestamp) -> Candidate {
        Candidate { xid, taken_at, removed_before: taken_at }
    }
}

/// What bounds the commit timestamps of removals made before a candidate was
/// taken, read right after its horizon: the node's own removing transactions and
/// the transactions its apply workers applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removers {
    /// A local transaction that removes rows is committing (between its pre-commit
    /// and the end of its commit): its timestamp is not known yet.
    pub local_committing: bool,
    /// The latest end of a committed local transaction that removed rows (local
    /// clock, at or after its commit timestamp).
    pub local_last: PgTimestamp,
    /// The newest provider commit timestamp an apply worker committed with,
    /// published before its commit.
    pub applied_last: PgTimestamp,
    /// What is not known otherwise (transactions from before the manager started
    /// counting, prepared transactions): at least this.
    pub floor: PgTimestamp,
}

/// The bound on removal commit timestamps of a candidate taken at `now`: the
/// newest of the local and the applied removals and the floor, or `now` while a
/// local removal's timestamp is not known yet.
pub fn removal_bound(r: Removers, now: PgTimestamp) -> PgTimestamp {
    let local = if r.local_committing { now } else { r.local_last };
    local.max(r.applied_last).max(r.floor)
}

/// How far the subscriptions of a database have applied their providers' changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// No subscription: nothing can arrive late.
    NoSubscriptions,
    /// Every provider transaction that committed before this time is applied (the
    /// least safe time over the subscriptions; `i64::MIN` when one is unknown).
    Before(PgTimestamp),
}

impl Applied {
    /// The least of the subscriptions' safe times (`None`: not known yet, e.g. a
    /// disabled subscription or one whose worker has not answered a probe).
    pub fn of(safe_times: impl IntoIterator<Item = Option<PgTimestamp>>) -> Applied {
        safe_times.into_iter().fold(Applied::NoSubscriptions, |acc, t| {
            let t = t.unwrap_or(i64::MIN);
            match acc {
                Applied::NoSubscriptions => Applied::Before(t),
                Applied::Before(a) => Applied::Before(a.min(t)),
            }
        })
    }

    /// Whether every subscription has applied what its provider committed before `at`.
    pub fn passed(self, at: PgTimestamp) -> bool {
        match self {
            Applied::NoSubscriptions => true,
            Applied::Before(t) => t >= at,
        }
    }
}

/// Whether nothing needs keeping at all: every removal made before `fresh` (a
/// candidate just taken) is older than what every subscription has applied. The
/// keeper then lets the horizon go instead of holding it at `fresh`, and the next
/// transaction that removes rows holds it again before it commits (from the
/// horizon of the moment it was let go, which is no newer than that transaction):
/// a node whose writes remove nothing (updates of non-key columns, inserts) keeps
/// no old versions at all, as without spock.
pub fn nothing_to_keep(applied: Applied, fresh: Candidate) -> bool {
    applied.passed(fresh.removed_before)
}

/// What [`Horizon::advance`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advance {
    /// The new horizon to install, if it moves.
    pub install: Option<Candidate>,
    /// The cap moved it: some subscription has not applied what it must, and
    /// deleted versions it may still need are let go.
    pub capped: bool,
}

/// The manager's side: candidates in the order they were taken, the horizon in force.
#[derive(Debug, Clone, Default)]
pub struct Horizon {
    candidates: VecDeque<Candidate>,
    installed: Option<Candidate>,
}

impl Horizon {
    /// An empty horizon (nothing installed yet).
    pub fn new() -> Horizon {
        Horizon::default()
    }

    /// The horizon in force.
    pub fn installed(&self) -> Option<Candidate> {
        self.installed
    }

    /// Candidates waiting.
    pub fn waiting(&self) -> usize {
        self.candidates.len()
    }

    /// The oldest candidate waiting: what the horizon moves to next.
    pub fn oldest_waiting(&self) -> Option<Candidate> {
        self.candidates.front().copied()
    }

    /// The horizon was let go ([`nothing_to_keep`]): every candidate waiting is
    /// passed, none is in force.
    pub fn release(&mut self) {
        self.candidates.clear();
        self.installed = None;
    }

    /// Notes a candidate taken now. Candidates come in time order with horizons
    /// that never go back; one that repeats the last horizon adds nothing (the
    /// older one is installed sooner).
    pub fn note(&mut self, c: Candidate) {
        let last = self.candidates.back().or(self.installed.as_ref());
        if last.is_some_and(|l| l.xid == c.xid) {
            return;
        }
        self.candidates.push_back(c);
    }

    /// Moves the horizon to the newest candidate that `applied` has passed, or,
    /// when the horizon in force is older than `cap_us` at `now`, to the newest
    /// candidate taken at least `cap_us` ago.
    pub fn advance(&mut self, applied: Applied, now: PgTimestamp, cap_us: i64) -> Advance {
        let limit = now.saturating_sub(cap_us);
        let mut install = None;
        let mut capped = false;
        while let Some(c) = self.candidates.front().copied() {
            let normal = applied.passed(c.removed_before);
            if !normal && c.taken_at > limit {
                break;
            }
            capped |= !normal;
            install = Some(c);
            self.candidates.pop_front();
        }
        if install.is_some() {
            self.installed = install;
        }
        Advance { install, capped }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn a_probe_reports_its_time_less_the_margin_once_the_stream_is_flushed_past_it() {
        let t0 = Instant::now();
        let mut p = ProbeState::new(Duration::from_secs(1));
        assert!(p.due(t0));
        p.sent(t0);
        assert!(!p.due(t0 + Duration::from_secs(5)), "one probe at a time");
        assert!(p.awaiting_answer());
        assert_eq!(p.covered(u64::MAX), None, "no answer yet");
        p.answered(Probe { lsn: 100, provider_time: 50 * S });
        assert_eq!(p.covered(99), None);
        assert_eq!(p.covered(100), Some(50 * S - MARGIN_US));
        assert_eq!(p.covered(200), None, "reported once");
        assert!(!p.due(t0 + Duration::from_millis(500)), "the interval counts from the send");
        assert!(p.due(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn a_failed_probe_is_asked_again_after_the_interval_and_a_late_answer_is_ignored() {
        let t0 = Instant::now();
        let mut p = ProbeState::new(Duration::from_secs(2));
        p.sent(t0);
        p.failed();
        p.answered(Probe { lsn: 1, provider_time: 1 });
        assert_eq!(p.covered(10), None);
        assert!(!p.due(t0 + Duration::from_secs(1)));
        assert!(p.due(t0 + Duration::from_secs(2)));
    }

    #[test]
    fn applied_is_the_least_safe_time_and_unknown_holds_everything() {
        assert_eq!(Applied::of([]), Applied::NoSubscriptions);
        assert_eq!(Applied::of([Some(5), Some(3), Some(9)]), Applied::Before(3));
        assert_eq!(Applied::of([Some(5), None]), Applied::Before(i64::MIN));
    }

    fn c(xid: u32, secs: i64) -> Candidate {
        Candidate::at(xid, secs * S)
    }

    #[test]
    fn the_horizon_moves_to_the_newest_candidate_every_subscription_has_passed() {
        let mut h = Horizon::new();
        for (x, t) in [(10, 1), (12, 2), (15, 3), (20, 4)] {
            h.note(c(x, t));
        }
        let cap = 600 * S;
        assert_eq!(h.advance(Applied::Before(0), 5 * S, cap), Advance { install: None, capped: false });
        assert_eq!(h.advance(Applied::Before(2 * S), 5 * S, cap), Advance { install: Some(c(12, 2)), capped: false });
        assert_eq!(h.installed(), Some(c(12, 2)));
        assert_eq!(h.waiting(), 2);
        assert_eq!(h.advance(Applied::NoSubscriptions, 5 * S, cap), Advance { install: Some(c(20, 4)), capped: false });
        assert_eq!(h.waiting(), 0);
        assert_eq!(h.advance(Applied::NoSubscriptions, 6 * S, cap).install, None, "nothing new");
    }

    #[test]
    fn a_repeated_horizon_is_not_noted_again() {
        let mut h = Horizon::new();
        h.note(c(10, 1));
        h.note(c(10, 2));
        h.note(c(11, 3));
        assert_eq!(h.waiting(), 2);
        h.advance(Applied::NoSubscriptions, 4 * S, 600 * S);
        h.note(c(11, 5));
        assert_eq!(h.waiting(), 0, "already installed");
    }

    #[test]
    fn the_cap_lets_go_of_what_is_older_than_it_and_says_so() {
        let mut h = Horizon::new();
        for t in 1..=10 {
            h.note(c(100 + t as u32, t));
        }
        // One subscription never answered: only the cap moves the horizon, and
        // only up to the candidates taken at least the cap ago.
        let a = h.advance(Applied::Before(i64::MIN), 10 * S, 4 * S);
        assert_eq!(a, Advance { install: Some(c(106, 6)), capped: true });
        assert_eq!(h.advance(Applied::Before(i64::MIN), 10 * S, 4 * S).install, None);
        // Caught up again: moves normally, not capped.
        let a = h.advance(Applied::Before(8 * S), 10 * S, 4 * S);
        assert_eq!(a, Advance { install: Some(c(108, 8)), capped: false });
    }

    #[test]
    fn removals_are_bounded_by_what_removed_rows_not_by_the_clock() {
        let quiet = Removers { local_committing: false, local_last: 3 * S, applied_last: 7 * S, floor: S };
        assert_eq!(removal_bound(quiet, 100 * S), 7 * S, "only applied removals since 7 s");
        let local = Removers { local_last: 9 * S, ..quiet };
        assert_eq!(removal_bound(local, 100 * S), 9 * S);
        let committing = Removers { local_committing: true, ..quiet };
        assert_eq!(removal_bound(committing, 100 * S), 100 * S, "a local removal of unknown time: now");
        let floor = Removers { floor: 50 * S, ..quiet };
        assert_eq!(removal_bound(floor, 100 * S), 50 * S);
    }

    #[test]
    fn nothing_is_kept_once_every_removal_before_now_is_applied_everywhere() {
        let fresh = Candidate { xid: 30, taken_at: 100 * S, removed_before: 40 * S };
        assert!(nothing_to_keep(Applied::Before(40 * S), fresh));
        assert!(!nothing_to_keep(Applied::Before(39 * S), fresh), "a subscription still owes a change");
        assert!(!nothing_to_keep(Applied::of([Some(50 * S), None]), fresh), "one not known holds");
        assert!(nothing_to_keep(Applied::NoSubscriptions, fresh));
        // A local removal committing now bounds at now: held until applied past it.
        let committing = Candidate { removed_before: 100 * S, ..fresh };
        assert!(!nothing_to_keep(Applied::Before(99 * S), committing));
        let mut h = Horizon::new();
        h.note(c(10, 1));
        h.note(c(20, 2));
        h.release();
        assert_eq!((h.waiting(), h.installed()), (0, None));
    }

    #[test]
    fn a_subscription_catching_up_passes_candidates_bounded_by_what_it_applied() {
        // Nothing here removes rows but the subscription's own apply, which is 60 s
        // behind: a candidate taken now is bounded by the provider time it applied,
        // so the horizon follows the catch-up instead of waiting for its end.
        let mut h = Horizon::new();
        h.note(Candidate { xid: 10, taken_at: 100 * S, removed_before: 40 * S });
        h.note(Candidate { xid: 20, taken_at: 101 * S, removed_before: 45 * S });
        let a = h.advance(Applied::Before(44 * S), 101 * S, 600 * S);
        assert_eq!(a.install.map(|c| c.xid), Some(10));
        assert_eq!(h.waiting(), 1);
    }
}
