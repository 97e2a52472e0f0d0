//! The walsender's framing of a logical replication stream (PostgreSQL's streaming
//! replication protocol, inside CopyBoth): what a subscriber reads and writes around
//! the plugin's own messages, and when it owes the walsender feedback.
//!
//! * `w` XLogData: start LSN, end LSN, send time (8 bytes each), then the plugin's
//!   message (or a batch of them).
//! * `k` primary keepalive: end LSN, send time, and whether a reply is wanted now.
//! * `r` standby status update (ours): written, flushed and applied LSNs, our clock,
//!   and whether we want a reply.

use std::time::Duration;

use crate::proto::{Lsn, PgTimestamp};

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
}
