//! Batched transfer between spock-rs nodes (`spock_rs.batch`).
//!
//! Spock's protocol puts every message in its own CopyData packet. The walsender
//! sends each packet with its own system call, and the subscriber receives each
//! with its own allocation, so small row changes cost more in packets than in
//! work. A spock-rs subscriber asks for batches with the startup parameter
//! [`BATCH_PARAM`]; a spock-rs provider that agrees says so in its startup reply,
//! and from then on collects the messages of a transaction into packets of up to
//! [`BATCH_BYTES`], each message framed by its length (u32, big-endian), and sends
//! the packet when it is full or when a message ends the batch ([`ends_batch`]:
//! COMMIT, the end of a stream block, ...). Nothing waits for more data: what a
//! transaction writes is sent at its commit as before. The startup message itself
//! is never framed. A pgEdge Spock subscriber never asks and gets Spock's packets.

use bytes::Bytes;

use super::codec::{DecodeError, DecodeErrorKind};
use super::message::Message;

/// The startup parameter with which a spock-rs subscriber asks for batches; the
/// provider's reply carries it (`t`/`f`) only to a client that sent it.
pub const BATCH_PARAM: &str = "spock_rs.batch";

/// A packet is sent once it holds this many bytes of messages.
pub const BATCH_BYTES: usize = 64 * 1024;

/// Bytes of the length before each framed message.
pub const FRAME_HEADER: usize = 4;

/// Whether the provider sends the packet after `message` (the end of a transaction
/// or of a stream block, and messages outside transactions) rather than waiting
/// for the transaction's next message.
pub fn ends_batch(message: &Message) -> bool {
    match message {
        Message::LogicalMessage(m) => !m.transactional,
        Message::Begin(_) | Message::Origin(_) | Message::StreamStart(_) | Message::StreamChange(_) => false,
        other => !other.is_streamable(),
    }
}

/// Appends `message` (encoded) to `out` as one frame.
pub fn push_frame(out: &mut Vec<u8>, message: &[u8]) {
    out.extend_from_slice(&frame_header(message.len()));
    out.extend_from_slice(message);
}

/// The length prefix of a framed message of `len` bytes.
pub fn frame_header(len: usize) -> [u8; FRAME_HEADER] {
    (len as u32).to_be_bytes()
}

/// The messages of a batched packet's payload, in order; an error for a frame
/// that runs past the end (the rest is not read).
pub fn frames(payload: &Bytes) -> Frames<'_> {
    Frames { payload, at: 0 }
}

/// Iterator returned by [`frames`].
#[derive(Debug)]
pub struct Frames<'a> {
    payload: &'a Bytes,
    at: usize,
}

impl Iterator for Frames<'_> {
    type Item = Result<Bytes, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let left = self.payload.len() - self.at;
        if left == 0 {
            return None;
        }
        if left < FRAME_HEADER {
            self.at = self.payload.len();
            return Some(Err(DecodeError::new(
                self.payload.len(),
                DecodeErrorKind::Truncated { needed: FRAME_HEADER - left },
            )));
        }
        let mut len = [0u8; FRAME_HEADER];
        len.copy_from_slice(&self.payload[self.at..self.at + FRAME_HEADER]);
        let len = u32::from_be_bytes(len) as usize;
        let start = self.at + FRAME_HEADER;
        if len == 0 || len > self.payload.len() - start {
            let at = self.at;
            self.at = self.payload.len();
            return Some(Err(DecodeError::new(at, DecodeErrorKind::InvalidLength(len as i64))));
        }
        self.at = start + len;
        Some(Ok(self.payload.slice(start..start + len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Begin, Commit, LogicalMessage, StreamStop};

    #[test]
    fn frames_round_trip_in_order() {
        let mut out = Vec::new();
        push_frame(&mut out, b"first");
        push_frame(&mut out, b"x");
        push_frame(&mut out, &[7u8; 70_000]);
        let payload = Bytes::from(out);
        let got: Vec<Bytes> = frames(&payload).collect::<Result<_, _>>().unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(&got[0][..], b"first");
        assert_eq!(&got[1][..], b"x");
        assert_eq!(got[2].len(), 70_000);
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        // a length past the end
        let mut out = Vec::new();
        push_frame(&mut out, b"ok");
        out.extend_from_slice(&100u32.to_be_bytes());
        out.extend_from_slice(b"short");
        let payload = Bytes::from(out);
        let got: Vec<_> = frames(&payload).collect();
        assert_eq!(got.len(), 2);
        assert!(got[0].is_ok());
        assert_eq!(got[1].as_ref().unwrap_err().kind, DecodeErrorKind::InvalidLength(100));
        // a header cut short, and an empty frame
        for bytes in [vec![0u8, 0], vec![0u8, 0, 0, 0]] {
            let payload = Bytes::from(bytes);
            let got: Vec<_> = frames(&payload).collect();
            assert_eq!(got.len(), 1);
            assert!(got[0].is_err());
        }
        assert_eq!(frames(&Bytes::new()).count(), 0);
    }

    #[test]
    fn transactions_and_stream_blocks_end_batches() {
        let begin = Message::Begin(Begin { flags: 0, final_lsn: 1, commit_time: 2, xid: 3 });
        assert!(!ends_batch(&begin));
        let commit = Message::Commit(Commit { flags: 0, commit_lsn: 1, end_lsn: 2, commit_time: 3 });
        assert!(ends_batch(&commit));
        assert!(ends_batch(&Message::StreamStop(StreamStop { flags: 0 })));
        let msg = |transactional| {
            Message::LogicalMessage(LogicalMessage {
                xid: 1,
                lsn: 2,
                transactional,
                prefix: "p".into(),
                content: Bytes::new(),
            })
        };
        assert!(!ends_batch(&msg(true)));
        assert!(ends_batch(&msg(false)));
    }
}
