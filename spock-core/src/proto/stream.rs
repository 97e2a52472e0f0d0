//! The order of stream messages (`s`, `x`, `e`, `c`, `a`) a subscriber accepts: a
//! pure state machine the apply worker runs before acting on a message, so a
//! provider (or a damaged stream) that breaks the order gets a clear error instead
//! of a change applied to the wrong transaction.
//!
//! Rules: changes `x` only inside a block (`s` .. `e`); no block inside a block; a
//! block of a transaction whose first segment was not seen is an error; commit and
//! abort only between blocks and only for transactions seen; no other message
//! inside a block.

use std::collections::HashSet;

use super::Message;

/// A stream message out of order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamOrderError {
    /// `s` while another block is open.
    #[error("stream start for transaction {xid} while the stream block of transaction {open} is open")]
    StartInsideBlock {
        /// The transaction of the new block.
        xid: u32,
        /// The transaction whose block is open.
        open: u32,
    },
    /// `s` without the first-segment flag for a transaction not seen before.
    #[error("stream block of transaction {0}, whose first segment was not received")]
    UnknownContinuation(u32),
    /// `x` outside a block.
    #[error("stream change outside a stream block")]
    ChangeOutsideBlock,
    /// `e` outside a block.
    #[error("stream stop without stream start")]
    StopOutsideBlock,
    /// `c` or `a` inside a block.
    #[error("stream {what} of transaction {xid} inside a stream block")]
    EndInsideBlock {
        /// "commit" or "abort".
        what: &'static str,
        /// The transaction.
        xid: u32,
    },
    /// `c` or `a` for a transaction whose stream was not received.
    #[error("stream {what} for unknown transaction {xid}")]
    UnknownTransaction {
        /// "commit" or "abort".
        what: &'static str,
        /// The transaction.
        xid: u32,
    },
    /// A message that is not a stream change inside a block.
    #[error("message '{0}' inside a stream block")]
    MessageInsideBlock(char),
}

/// Tracks which streamed transactions are open and whether a block is.
#[derive(Debug, Clone, Default)]
pub struct StreamOrder {
    block: Option<u32>,
    open: HashSet<u32>,
}

impl StreamOrder {
    /// No stream seen yet.
    pub fn new() -> StreamOrder {
        StreamOrder::default()
    }

    /// The transaction whose block is open.
    pub fn block(&self) -> Option<u32> {
        self.block
    }

    /// Whether any streamed transaction is open (seen, not committed or aborted).
    pub fn any_open(&self) -> bool {
        !self.open.is_empty()
    }

    /// How many streamed transactions are open.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// Checks that `m` may come now and records its effect.
    pub fn accept(&mut self, m: &Message) -> Result<(), StreamOrderError> {
        match m {
            Message::StreamStart(s) => {
                if let Some(open) = self.block {
                    return Err(StreamOrderError::StartInsideBlock { xid: s.xid, open });
                }
                if !s.first_segment && !self.open.contains(&s.xid) {
                    return Err(StreamOrderError::UnknownContinuation(s.xid));
                }
                self.open.insert(s.xid);
                self.block = Some(s.xid);
            }
            Message::StreamChange(_) => {
                if self.block.is_none() {
                    return Err(StreamOrderError::ChangeOutsideBlock);
                }
            }
            Message::StreamStop(_) => {
                if self.block.take().is_none() {
                    return Err(StreamOrderError::StopOutsideBlock);
                }
            }
            Message::StreamCommit(c) => self.end("commit", c.xid, true)?,
            Message::StreamAbort(a) => self.end("abort", a.xid, a.xid == a.subxid)?,
            other => {
                if self.block.is_some() {
                    return Err(StreamOrderError::MessageInsideBlock(other.letter() as char));
                }
            }
        }
        Ok(())
    }

    fn end(&mut self, what: &'static str, xid: u32, whole: bool) -> Result<(), StreamOrderError> {
        if self.block.is_some() {
            return Err(StreamOrderError::EndInsideBlock { what, xid });
        }
        if !self.open.contains(&xid) {
            return Err(StreamOrderError::UnknownTransaction { what, xid });
        }
        if whole {
            self.open.remove(&xid);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{
        Begin, Commit, Insert, StreamAbort, StreamChange, StreamCommit, StreamStart, StreamStop, Tuple,
    };

    fn start(xid: u32, first: bool) -> Message {
        Message::StreamStart(StreamStart { xid, first_segment: first })
    }
    fn change(xid: u32) -> Message {
        Message::StreamChange(StreamChange {
            xid,
            message: Box::new(Message::Insert(Insert { flags: 0, relid: 1, new: Tuple::new(vec![]) })),
        })
    }
    fn stop() -> Message {
        Message::StreamStop(StreamStop::default())
    }
    fn commit(xid: u32) -> Message {
        Message::StreamCommit(StreamCommit {
            xid,
            commit_lsn: 1,
            end_lsn: 2,
            commit_time: 3,
            origin_lsn: 0,
            origin_id: 1,
            origin_name: None,
        })
    }
    fn abort(xid: u32, subxid: u32) -> Message {
        Message::StreamAbort(StreamAbort { xid, subxid })
    }
    fn begin() -> Message {
        Message::Begin(Begin { flags: 0, final_lsn: 1, commit_time: 1, xid: 9 })
    }

    #[test]
    fn a_valid_sequence() {
        let mut o = StreamOrder::new();
        for m in [
            start(10, true),
            change(10),
            change(11),
            stop(),
            begin(),
            Message::Commit(Commit { flags: 0, commit_lsn: 1, end_lsn: 2, commit_time: 3 }),
            start(20, true),
            change(20),
            stop(),
            abort(10, 11),
            start(10, false),
            change(10),
            stop(),
            commit(10),
            abort(20, 20),
        ] {
            o.accept(&m).unwrap_or_else(|e| panic!("{m:?}: {e}"));
        }
        assert!(!o.any_open());
    }

    #[test]
    fn violations_are_errors() {
        let mut o = StreamOrder::new();
        assert_eq!(o.accept(&change(1)), Err(StreamOrderError::ChangeOutsideBlock));
        assert_eq!(o.accept(&stop()), Err(StreamOrderError::StopOutsideBlock));
        assert_eq!(o.accept(&commit(5)), Err(StreamOrderError::UnknownTransaction { what: "commit", xid: 5 }));
        assert_eq!(o.accept(&abort(5, 6)), Err(StreamOrderError::UnknownTransaction { what: "abort", xid: 5 }));
        assert_eq!(o.accept(&start(5, false)), Err(StreamOrderError::UnknownContinuation(5)));
        o.accept(&start(5, true)).unwrap();
        assert_eq!(o.accept(&start(6, true)), Err(StreamOrderError::StartInsideBlock { xid: 6, open: 5 }));
        assert_eq!(o.accept(&begin()), Err(StreamOrderError::MessageInsideBlock('B')));
        assert_eq!(o.accept(&commit(5)), Err(StreamOrderError::EndInsideBlock { what: "commit", xid: 5 }));
        o.accept(&stop()).unwrap();
        o.accept(&commit(5)).unwrap();
        // Committed: gone.
        assert_eq!(o.accept(&commit(5)), Err(StreamOrderError::UnknownTransaction { what: "commit", xid: 5 }));
        assert!(o.accept(&commit(5)).unwrap_err().to_string().contains("unknown transaction 5"));
    }
}
