//! The subscriber's spill-file format for streamed transactions: a header, then
//! records framed by their length and CRC32, appended in arrival order.
//!
//! ```text
//! header  "SPKSPL01"                         8 bytes
//! record  len u32 | crc32(payload) u32 | payload (len bytes)   big-endian
//! ```
//!
//! The apply worker appends the stream changes of one remote transaction as they
//! arrive, truncates the file back to a record boundary when a subtransaction
//! aborts, and reads it back record by record when the transaction commits, so
//! memory stays bounded by the largest record. A file cut short or damaged gives a
//! [`SpillError`] with the byte offset, never a panic or a silently shorter replay.
//!
//! This module does no I/O of its own: it works on the `Read`/`Write` the caller
//! passes in.

use std::io::{self, Read, Write};

/// The first bytes of every spill file (format version 1).
pub const MAGIC: &[u8; 8] = b"SPKSPL01";

/// Length of the file header; the first record starts here.
pub const HEADER_LEN: u64 = MAGIC.len() as u64;

/// Length of a record's frame (length and CRC) before its payload.
pub const FRAME_LEN: u64 = 8;

/// Largest payload a record may have (one protocol message; PostgreSQL caps a
/// datum at 1 GB).
pub const MAX_RECORD_LEN: usize = 1 << 30;

/// What is wrong with a spill file.
#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    /// Reading or writing failed.
    #[error("spill file I/O error at byte {offset}: {source}")]
    Io {
        /// Where.
        offset: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file does not start with [`MAGIC`].
    #[error("not a spock spill file (bad header)")]
    BadHeader,
    /// The file ends inside a record.
    #[error("spill file truncated at byte {offset}: record needs {needed} more byte(s)")]
    Truncated {
        /// Start of the incomplete record.
        offset: u64,
        /// Bytes missing.
        needed: u64,
    },
    /// A record's payload does not match its CRC.
    #[error("spill file corrupt at byte {offset}: CRC {found:08x} does not match {expected:08x}")]
    CrcMismatch {
        /// Start of the record.
        offset: u64,
        /// CRC in the frame.
        expected: u32,
        /// CRC of the payload read.
        found: u32,
    },
    /// A record claims an impossible length.
    #[error("spill file corrupt at byte {offset}: record length {len} exceeds {MAX_RECORD_LEN}")]
    TooLarge {
        /// Start of the record.
        offset: u64,
        /// The length in the frame.
        len: u64,
    },
}

/// Appends records to a spill file; tracks the offset of the next record.
pub struct SpillWriter<W: Write> {
    inner: W,
    offset: u64,
}

impl<W: Write> SpillWriter<W> {
    /// Starts a new file: writes the header.
    pub fn create(mut inner: W) -> Result<SpillWriter<W>, SpillError> {
        inner.write_all(MAGIC).map_err(|source| SpillError::Io { offset: 0, source })?;
        Ok(SpillWriter { inner, offset: HEADER_LEN })
    }

    /// Where the next record will start.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Continues at `offset` (a record boundary), after the caller flushed, cut the
    /// underlying file back there and positioned it at `offset` (subtransaction abort).
    pub fn rewind(&mut self, offset: u64) {
        self.offset = offset.max(HEADER_LEN);
    }

    /// Appends one record; returns the offset where it starts.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, SpillError> {
        let at = self.offset;
        if payload.len() > MAX_RECORD_LEN {
            return Err(SpillError::TooLarge { offset: at, len: payload.len() as u64 });
        }
        let mut frame = [0u8; FRAME_LEN as usize];
        frame[..4].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        frame[4..].copy_from_slice(&crc32fast::hash(payload).to_be_bytes());
        let io = |source| SpillError::Io { offset: at, source };
        self.inner.write_all(&frame).map_err(io)?;
        self.inner.write_all(payload).map_err(|source| SpillError::Io { offset: at, source })?;
        self.offset += FRAME_LEN + payload.len() as u64;
        Ok(at)
    }

    /// Flushes buffered records to `inner`.
    pub fn flush(&mut self) -> Result<(), SpillError> {
        let at = self.offset;
        self.inner.flush().map_err(|source| SpillError::Io { offset: at, source })
    }

    /// The underlying writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Gives the underlying writer back.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

/// Reads records back in order.
pub struct SpillReader<R: Read> {
    inner: R,
    offset: u64,
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl<R: Read> SpillReader<R> {
    /// Opens a file: checks the header.
    pub fn open(mut inner: R) -> Result<SpillReader<R>, SpillError> {
        let mut magic = [0u8; MAGIC.len()];
        let n = read_up_to(&mut inner, &mut magic).map_err(|source| SpillError::Io { offset: 0, source })?;
        if n != magic.len() || &magic != MAGIC {
            return Err(SpillError::BadHeader);
        }
        Ok(SpillReader { inner, offset: HEADER_LEN })
    }

    /// Where the next record starts.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads the next record into `buf` (replacing its contents). `Ok(false)` at the
    /// clean end of the file.
    pub fn next_record(&mut self, buf: &mut Vec<u8>) -> Result<bool, SpillError> {
        let at = self.offset;
        let io = |source| SpillError::Io { offset: at, source };
        let mut frame = [0u8; FRAME_LEN as usize];
        let n = read_up_to(&mut self.inner, &mut frame).map_err(io)?;
        if n == 0 {
            return Ok(false);
        }
        if n < frame.len() {
            return Err(SpillError::Truncated { offset: at, needed: FRAME_LEN - n as u64 });
        }
        let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        let expected = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        if len > MAX_RECORD_LEN {
            return Err(SpillError::TooLarge { offset: at, len: len as u64 });
        }
        buf.clear();
        buf.resize(len, 0);
        let n = read_up_to(&mut self.inner, buf).map_err(|source| SpillError::Io { offset: at, source })?;
        if n < len {
            return Err(SpillError::Truncated { offset: at, needed: (len - n) as u64 });
        }
        let found = crc32fast::hash(buf);
        if found != expected {
            return Err(SpillError::CrcMismatch { offset: at, expected, found });
        }
        self.offset += FRAME_LEN + len as u64;
        Ok(true)
    }
}

/// Where each subtransaction's records start in one transaction's spill file, so a
/// subtransaction abort can cut the file back (PostgreSQL streams a transaction's
/// changes in WAL order; while a subtransaction is open every later change belongs to
/// it or to its children, so everything from its first record on goes with it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubxactMarks {
    toplevel: u32,
    marks: Vec<(u32, u64)>,
}

impl SubxactMarks {
    /// Marks for the transaction `toplevel`.
    pub fn new(toplevel: u32) -> SubxactMarks {
        SubxactMarks { toplevel, marks: Vec::new() }
    }

    /// Notes that a record of `xid` is about to be written at `offset`.
    pub fn note(&mut self, xid: u32, offset: u64) {
        if xid != self.toplevel && !self.marks.iter().any(|&(x, _)| x == xid) {
            self.marks.push((xid, offset));
        }
    }

    /// Subtransaction `xid` aborted: the offset to cut the file back to, if it wrote
    /// anything. Marks from that offset on are forgotten.
    pub fn abort(&mut self, xid: u32) -> Option<u64> {
        let at = self.marks.iter().find(|&&(x, _)| x == xid)?.1;
        self.marks.retain(|&(_, o)| o < at);
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    fn write_all(records: &[Vec<u8>]) -> Vec<u8> {
        let mut w = SpillWriter::create(Vec::new()).unwrap();
        for r in records {
            w.append(r).unwrap();
        }
        w.into_inner()
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Vec<u8>>, SpillError> {
        let mut r = SpillReader::open(Cursor::new(bytes))?;
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while r.next_record(&mut buf)? {
            out.push(buf.clone());
        }
        Ok(out)
    }

    #[test]
    fn golden_bytes() {
        let bytes = write_all(&[b"abc".to_vec(), Vec::new()]);
        let mut want = b"SPKSPL01".to_vec();
        want.extend_from_slice(&[0, 0, 0, 3]);
        want.extend_from_slice(&0x352441c2u32.to_be_bytes()); // crc32("abc")
        want.extend_from_slice(b"abc");
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]); // empty record, crc32("") = 0
        assert_eq!(bytes, want);
    }

    #[test]
    fn offsets_and_rewind_after_truncation() {
        let mut w = SpillWriter::create(Vec::new()).unwrap();
        assert_eq!(w.append(b"one").unwrap(), HEADER_LEN);
        let second = w.append(b"two").unwrap();
        assert_eq!(second, HEADER_LEN + FRAME_LEN + 3);
        w.append(b"three").unwrap();
        // A subtransaction abort cuts the file back to where "two" began.
        w.get_mut().truncate(second as usize);
        w.rewind(second);
        assert_eq!(w.append(b"four").unwrap(), second);
        assert_eq!(read_all(&w.into_inner()).unwrap(), vec![b"one".to_vec(), b"four".to_vec()]);
    }

    #[test]
    fn subxact_marks() {
        let mut m = SubxactMarks::new(100);
        m.note(100, 8); // top-level records never need a mark
        m.note(101, 20);
        m.note(101, 30);
        m.note(102, 40);
        m.note(103, 50);
        assert_eq!(m.abort(100), None);
        assert_eq!(m.abort(999), None);
        // ROLLBACK TO the savepoint of 102: 102 and 103 (a child) go.
        assert_eq!(m.abort(102), Some(40));
        assert_eq!(m.abort(103), None);
        assert_eq!(m.abort(101), Some(20));
        m.note(104, 20);
        assert_eq!(m.abort(104), Some(20));
    }

    #[test]
    fn empty_file_and_bad_header() {
        assert!(read_all(&write_all(&[])).unwrap().is_empty());
        assert!(matches!(read_all(b""), Err(SpillError::BadHeader)));
        assert!(matches!(read_all(b"SPKSPL0"), Err(SpillError::BadHeader)));
        assert!(matches!(read_all(b"XXXXXXXX"), Err(SpillError::BadHeader)));
    }

    #[test]
    fn truncation_reports_offset() {
        let bytes = write_all(&[b"hello".to_vec(), b"world".to_vec()]);
        let second = HEADER_LEN + FRAME_LEN + 5;
        // Cut inside the second record's frame and inside its payload.
        for (cut, missing) in [(second as usize + 3, 5), (bytes.len() - 1, 1)] {
            match read_all(&bytes[..cut]) {
                Err(SpillError::Truncated { offset, needed }) => {
                    assert_eq!(offset, second);
                    assert_eq!(needed, missing);
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn corruption_is_detected() {
        let mut bytes = write_all(&[b"hello".to_vec(), b"world".to_vec()]);
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        match read_all(&bytes) {
            Err(SpillError::CrcMismatch { offset, .. }) => assert_eq!(offset, HEADER_LEN + FRAME_LEN + 5),
            other => panic!("{other:?}"),
        }
        let mut huge = write_all(&[]);
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        assert!(matches!(read_all(&huge), Err(SpillError::TooLarge { offset: HEADER_LEN, .. })));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn round_trip(records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
            prop_assert_eq!(read_all(&write_all(&records)).unwrap(), records);
        }

        /// Any damage to a file (a flipped byte, or a cut) gives an error or, for a cut
        /// at a record boundary, a prefix of the records: never a panic, never a
        /// record that was not written.
        #[test]
        fn damage_never_panics(records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..32), 1..8), pos in any::<prop::sample::Index>(), flip in 1u8..=255, cut in any::<bool>()) {
            let mut bytes = write_all(&records);
            let i = pos.index(bytes.len());
            if cut {
                bytes.truncate(i);
                if let Ok(got) = read_all(&bytes) {
                    prop_assert!(records.starts_with(&got));
                }
            } else {
                bytes[i] ^= flip;
                if let Ok(got) = read_all(&bytes) {
                    // A flip in a length field can only be accepted if the CRC still
                    // matches, which crc32 rules out for the small records here.
                    prop_assert_eq!(got, records);
                }
            }
        }
    }
}
