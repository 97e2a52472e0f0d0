//! The walsender's framing of a logical replication stream (PostgreSQL's streaming
//! replication protocol, inside CopyBoth): what a subscriber reads and writes around
//! the plugin's own messages, and when it owes the walsender feedback.
//!
//! * `w` XLogData: start LSN, end LSN, send time (8 bytes each), then the plugin's
//!   message (or a batch of them).
//! * `k` primary keepalive: end LSN, send time, and whether a reply is wanted now.
//! * `r` standby status update (ours): written, flushed and applied LSNs, our clock,
//!   and whether we want a reply.
//!
//! [`Positions`] keeps what a subscriber has received and made durable and decides,
//! with a [`FeedbackPolicy`], when it tells the walsender; [`UnflushedCommits`]
//! maps local commits to the remote positions they make durable once flushed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::proto::{Lsn, PgTimestamp};

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 00:00:00 UTC).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// A PostgreSQL timestamp from the time since the Unix epoch (the clock in a status
/// update, commit times compared with `apply_delay`).
pub fn pg_timestamp(since_unix_epoch: Duration) -> PgTimestamp {
    i64::try_from(since_unix_epoch.as_micros()).unwrap_or(i64::MAX) - PG_EPOCH_OFFSET_US
}

/// One CopyData message from the walsender.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerMessage<'a> {
    /// `w`: a message of the plugin, sent as of WAL position `end`.
    XLogData {
        /// `dataStart`.
        start: Lsn,
        /// `walEnd`: the provider's position when it sent this.
        end: Lsn,
        /// The payload (after the 25-byte header).
        payload: &'a [u8],
    },
    /// `k`: nothing to send up to `end`; `reply_requested` asks for feedback now.
    Keepalive {
        /// `walEnd`.
        end: Lsn,
        /// The walsender wants a status update at once.
        reply_requested: bool,
    },
    /// Another message type (newer servers add some): ignored, as PostgreSQL's own
    /// apply worker ignores what it does not know.
    Other(u8),
}

/// A `w` or `k` message too short for its header, or an empty one: the stream is
/// broken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed replication message: {0}")]
pub struct FramingError(pub String);

/// The header length of `w`.
pub const XLOG_DATA_HEADER: usize = 25;

fn be_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_be_bytes(b)
}

/// Reads one CopyData message of the walsender.
pub fn parse(buf: &[u8]) -> Result<ServerMessage<'_>, FramingError> {
    match buf.first() {
        Some(b'w') if buf.len() >= XLOG_DATA_HEADER => Ok(ServerMessage::XLogData {
            start: be_u64(buf, 1),
            end: be_u64(buf, 9),
            payload: &buf[XLOG_DATA_HEADER..],
        }),
        Some(b'k') if buf.len() >= 18 => {
            Ok(ServerMessage::Keepalive { end: be_u64(buf, 1), reply_requested: buf[17] != 0 })
        }
        Some(b'w') | Some(b'k') => Err(FramingError(format!("'{}' message of {} bytes", buf[0] as char, buf.len()))),
        Some(other) => Ok(ServerMessage::Other(*other)),
        None => Err(FramingError("empty message".into())),
    }
}

/// The standby status update: `write` received, `flush` durable (and applied: a
/// subscriber applies before it flushes), our clock `now`, and `reply` to ask the
/// walsender for a keepalive back.
pub fn status_update(write: Lsn, flush: Lsn, now: PgTimestamp, reply: bool) -> [u8; 34] {
    let mut m = [0u8; 34];
    m[0] = b'r';
    m[1..9].copy_from_slice(&write.to_be_bytes());
    m[9..17].copy_from_slice(&flush.to_be_bytes());
    m[17..25].copy_from_slice(&flush.to_be_bytes());
    m[25..33].copy_from_slice(&now.to_be_bytes());
    m[33] = u8::from(reply);
    m
}

/// When a subscriber sends feedback: at once when asked, when its positions moved
/// (at most every `min_gap`: each update costs the walsender a read), and at least
/// every `interval` (the walsender drops a client that stays silent for
/// `wal_sender_timeout`).
#[derive(Debug, Clone, Copy)]
pub struct FeedbackPolicy {
    /// Least time between two updates that only report movement.
    pub min_gap: Duration,
    /// Most time between two updates.
    pub interval: Duration,
}

impl FeedbackPolicy {
    /// Whether an update is due now.
    pub fn due(&self, reply_requested: bool, moved: bool, since_last: Duration) -> bool {
        reply_requested || (moved && since_last >= self.min_gap) || since_last >= self.interval
    }
}

/// A subscriber's positions in the stream: `received` (the end of what the
/// walsender sent, applied or not), `flushed` (the remote position up to which
/// everything is applied and durable here), and the pair it last reported.
#[derive(Debug, Clone)]
pub struct Positions {
    received: Lsn,
    flushed: Lsn,
    reported: Option<(Lsn, Lsn)>,
    last_feedback: Instant,
}

impl Positions {
    /// Streaming starts at `start`: everything before it is applied and durable.
    /// Nothing is reported yet (the first update is due as soon as the policy lets).
    pub fn new(start: Lsn, now: Instant) -> Positions {
        Positions { received: start, flushed: start, reported: None, last_feedback: now }
    }

    /// The furthest position received.
    pub fn received(&self) -> Lsn {
        self.received
    }

    /// The furthest remote position applied and durable.
    pub fn flushed(&self) -> Lsn {
        self.flushed
    }

    /// A `w` message was applied, or a `k` message read: the walsender is at `end`.
    pub fn note_received(&mut self, end: Lsn) {
        self.received = self.received.max(end);
    }

    /// Applied transactions up to remote position `remote` are durable.
    pub fn note_flushed(&mut self, remote: Lsn) {
        self.flushed = self.flushed.max(remote);
    }

    /// Between transactions with every local commit flushed: everything received
    /// is applied and durable (what follows the last commit was keepalives or
    /// changes we do not apply).
    pub fn note_idle(&mut self) {
        self.flushed = self.flushed.max(self.received);
    }

    /// Whether the positions moved since the last update sent.
    pub fn moved(&self) -> bool {
        self.reported != Some((self.received, self.flushed))
    }

    /// The update (written, flushed) to send now under `policy`, `reply_requested`
    /// when the walsender asked for one; taken as sent.
    pub fn feedback_due(&mut self, policy: &FeedbackPolicy, reply_requested: bool, now: Instant) -> Option<(Lsn, Lsn)> {
        let since = now.saturating_duration_since(self.last_feedback);
        if !policy.due(reply_requested, self.moved(), since) {
            return None;
        }
        let update = (self.received, self.flushed);
        self.reported = Some(update);
        self.last_feedback = now;
        Some(update)
    }
}

/// Local commits not yet known to be flushed, in commit order, each with the
/// remote end position it applied. A remote position may be reported as flushed
/// only once the local commit that applied it is on disk (asynchronous commit).
/// A commit may carry the provider's commit timestamp (for the provider's own
/// transactions): the newest of those flushed is kept
/// ([`flushed_stamp`](Self::flushed_stamp)).
#[derive(Debug, Default, Clone)]
pub struct UnflushedCommits {
    queue: VecDeque<(Lsn, Lsn, Option<i64>)>,
    flushed_stamp: Option<i64>,
}

impl UnflushedCommits {
    /// None yet.
    pub fn new() -> UnflushedCommits {
        UnflushedCommits::default()
    }

    /// A local commit ending at `local_end` applied the remote transaction ending at
    /// `remote_end`.
    pub fn push(&mut self, local_end: Lsn, remote_end: Lsn) {
        self.queue.push_back((local_end, remote_end, None));
    }

    /// [`push`](Self::push) of a transaction the provider committed at `stamp`.
    pub fn push_stamped(&mut self, local_end: Lsn, remote_end: Lsn, stamp: i64) {
        self.queue.push_back((local_end, remote_end, Some(stamp)));
    }

    /// The local WAL is flushed up to `local_flush`: forgets the commits it covers
    /// and gives the remote end of the last of them.
    pub fn flushed_up_to(&mut self, local_flush: Lsn) -> Option<Lsn> {
        let mut out = None;
        while let Some(&(local, remote, stamp)) = self.queue.front() {
            if local > local_flush {
                break;
            }
            out = Some(remote);
            if stamp.is_some() {
                self.flushed_stamp = self.flushed_stamp.max(stamp);
            }
            self.queue.pop_front();
        }
        out
    }

    /// The newest provider commit timestamp among the commits flushed so far.
    pub fn flushed_stamp(&self) -> Option<i64> {
        self.flushed_stamp
    }

    /// Whether a commit waits for its flush.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xlog_data_and_keepalive_are_read() {
        let mut w = vec![b'w'];
        w.extend_from_slice(&0x10u64.to_be_bytes());
        w.extend_from_slice(&0x1_0000_0020u64.to_be_bytes());
        w.extend_from_slice(&7i64.to_be_bytes());
        w.extend_from_slice(b"BEGIN");
        assert_eq!(parse(&w), Ok(ServerMessage::XLogData { start: 0x10, end: 0x1_0000_0020, payload: b"BEGIN" }));
        let mut k = vec![b'k'];
        k.extend_from_slice(&0x30u64.to_be_bytes());
        k.extend_from_slice(&9i64.to_be_bytes());
        k.push(1);
        assert_eq!(parse(&k), Ok(ServerMessage::Keepalive { end: 0x30, reply_requested: true }));
        k[17] = 0;
        assert_eq!(parse(&k), Ok(ServerMessage::Keepalive { end: 0x30, reply_requested: false }));
    }

    #[test]
    fn short_or_unknown_messages_are_errors_not_panics() {
        assert!(parse(&[]).is_err());
        assert!(parse(b"w123").is_err());
        assert!(parse(&[b'k'; 17]).is_err());
        assert_eq!(parse(b"s123"), Ok(ServerMessage::Other(b's')));
        for len in 0..40 {
            for first in [b'w', b'k', b'r', 0] {
                let mut buf = vec![0u8; len];
                if let Some(b) = buf.first_mut() {
                    *b = first;
                }
                let _ = parse(&buf);
            }
        }
    }

    #[test]
    fn status_update_layout() {
        let m = status_update(0x0102, 0x0304, -5, true);
        assert_eq!(m[0], b'r');
        assert_eq!(&m[1..9], &0x0102u64.to_be_bytes());
        assert_eq!(&m[9..17], &0x0304u64.to_be_bytes());
        assert_eq!(&m[17..25], &0x0304u64.to_be_bytes());
        assert_eq!(&m[25..33], &(-5i64).to_be_bytes());
        assert_eq!(m[33], 1);
        assert_eq!(status_update(0, 0, 0, false)[33], 0);
    }

    #[test]
    fn feedback_timing() {
        let p = FeedbackPolicy { min_gap: Duration::from_millis(10), interval: Duration::from_secs(1) };
        assert!(p.due(true, false, Duration::ZERO), "asked: at once");
        assert!(!p.due(false, true, Duration::from_millis(5)), "moved, but too soon");
        assert!(p.due(false, true, Duration::from_millis(10)));
        assert!(!p.due(false, false, Duration::from_millis(999)));
        assert!(p.due(false, false, Duration::from_secs(1)), "at least every interval");
    }

    #[test]
    fn pg_timestamps_count_from_2000() {
        assert_eq!(pg_timestamp(Duration::from_secs(946_684_800)), 0);
        assert_eq!(pg_timestamp(Duration::from_secs(946_684_801)), 1_000_000);
        assert_eq!(pg_timestamp(Duration::ZERO), -PG_EPOCH_OFFSET_US);
    }

    #[test]
    fn positions_report_what_is_durable() {
        let p0 = Instant::now();
        let policy = FeedbackPolicy { min_gap: Duration::from_millis(50), interval: Duration::from_secs(1) };
        let mut p = Positions::new(100, p0);
        assert!(p.moved(), "nothing reported yet");
        assert_eq!(p.feedback_due(&policy, false, p0), None, "moved, but within min_gap");
        assert_eq!(p.feedback_due(&policy, false, p0 + Duration::from_millis(50)), Some((100, 100)));
        let t = p0 + Duration::from_millis(50);
        assert!(!p.moved());
        assert_eq!(p.feedback_due(&policy, false, t + Duration::from_millis(500)), None, "nothing new");
        // A transaction arrives and commits; its local commit is not flushed yet.
        p.note_received(200);
        p.note_received(150);
        assert_eq!(p.received(), 200);
        assert_eq!(p.feedback_due(&policy, false, t + Duration::from_millis(60)), Some((200, 100)));
        let t = t + Duration::from_millis(60);
        p.note_flushed(180);
        p.note_flushed(170);
        assert_eq!(p.flushed(), 180);
        assert_eq!(p.feedback_due(&policy, true, t), Some((200, 180)), "asked: at once");
        // Idle: everything received counts as durable.
        p.note_idle();
        assert_eq!(p.flushed(), 200);
        assert_eq!(p.feedback_due(&policy, false, t + Duration::from_secs(1)), Some((200, 200)));
        assert_eq!(
            p.feedback_due(&policy, false, t + Duration::from_secs(2)),
            Some((200, 200)),
            "at least every interval"
        );
    }

    #[test]
    fn unflushed_commits_free_remote_positions_in_order() {
        let mut q = UnflushedCommits::new();
        assert!(q.is_empty());
        assert_eq!(q.flushed_up_to(u64::MAX), None);
        q.push(10, 1000);
        q.push(20, 2000);
        q.push(30, 3000);
        assert_eq!(q.flushed_up_to(9), None);
        assert_eq!(q.flushed_up_to(20), Some(2000), "the last commit covered");
        assert!(!q.is_empty());
        assert_eq!(q.flushed_up_to(29), None);
        assert_eq!(q.flushed_up_to(31), Some(3000));
        assert_eq!(q.flushed_stamp(), None, "no stamp pushed");
        q.push_stamped(40, 4000, 77);
        q.push(50, 5000);
        assert_eq!(q.flushed_up_to(39), None);
        assert_eq!(q.flushed_stamp(), None, "not flushed yet");
        assert_eq!(q.flushed_up_to(60), Some(5000));
        assert_eq!(q.flushed_stamp(), Some(77));
        assert!(q.is_empty());
    }
}
