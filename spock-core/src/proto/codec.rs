//! Byte-level reading and writing shared by all messages: a bounds-checked reader
//! over [`Bytes`] that reports offsets, and the error types.

use bytes::{BufMut, Bytes, BytesMut};

/// What was wrong with the bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    /// The message ended before a field of `needed` bytes.
    #[error("message truncated: {needed} more byte(s) needed")]
    Truncated {
        /// Bytes the field needed beyond the end.
        needed: usize,
    },
    /// The message type letter is not one of Spock's.
    #[error("unknown message type {0:?}")]
    UnknownMessageType(char),
    /// A block marker (`A`, `C`, `N`, `T`, `K`/`O`) was expected.
    #[error("expected {expected}, found {found:?}")]
    UnexpectedMarker {
        /// What the layout requires here.
        expected: &'static str,
        /// The byte found instead.
        found: char,
    },
    /// A column representation other than n/u/i/b/t.
    #[error("unknown column representation {0:?}")]
    UnknownColumnKind(char),
    /// A length field is negative or inconsistent.
    #[error("invalid length {0}")]
    InvalidLength(i64),
    /// A string that must end in NUL does not, or has a NUL inside.
    #[error("string is not NUL-terminated")]
    MissingNul,
    /// A name is not valid UTF-8 (spock-rs requires UTF-8 databases).
    #[error("name is not valid UTF-8")]
    InvalidUtf8,
    /// Bytes remain after the message.
    #[error("{0} unexpected trailing byte(s)")]
    TrailingBytes(usize),
    /// The startup message has a format version other than 1.
    #[error("unsupported startup message format {0}")]
    UnsupportedStartupFormat(u8),
    /// The startup message announced a protocol version we do not speak.
    #[error("unsupported protocol version {0:?}")]
    UnsupportedVersion(String),
    /// A startup parameter key is empty or has no value.
    #[error("malformed startup parameter: {0}")]
    MalformedStartupParam(&'static str),
}

/// A message could not be decoded; `offset` is where in the message it went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid spock protocol message at byte {offset}: {kind}")]
pub struct DecodeError {
    /// Byte offset from the start of the message (including any LSN prefix).
    pub offset: usize,
    /// What was wrong.
    pub kind: DecodeErrorKind,
}

impl DecodeError {
    pub(crate) fn new(offset: usize, kind: DecodeErrorKind) -> DecodeError {
        DecodeError { offset, kind }
    }
}

/// A message cannot be represented in the wire format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A name is longer than the one-byte (or two-byte) length field allows.
    #[error("{what} is too long ({len} bytes, at most {max})")]
    TooLong {
        /// Which field.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A string that is sent NUL-terminated contains a NUL.
    #[error("{0} contains a NUL byte")]
    EmbeddedNul(&'static str),
    /// The message cannot be sent in this protocol version.
    #[error("{0}")]
    Unsupported(&'static str),
}

/// Bounds-checked big-endian reader over a message.
pub(crate) struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a Bytes) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn offset(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn err(&self, kind: DecodeErrorKind) -> DecodeError {
        DecodeError::new(self.pos, kind)
    }

    pub(crate) fn err_at(&self, offset: usize, kind: DecodeErrorKind) -> DecodeError {
        DecodeError::new(offset, kind)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(self.err(DecodeErrorKind::Truncated { needed: n - self.remaining() }));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// `n` bytes as a zero-copy slice of the message.
    pub(crate) fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if self.remaining() < n {
            return Err(self.err(DecodeErrorKind::Truncated { needed: n - self.remaining() }));
        }
        let s = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(self.u32()? as i32)
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(self.u64()? as i64)
    }

    /// A length-prefixed field whose length is an i32 that must be non-negative.
    pub(crate) fn len_i32(&mut self) -> Result<usize, DecodeError> {
        let at = self.pos;
        let len = self.i32()?;
        if len < 0 {
            return Err(self.err_at(at, DecodeErrorKind::InvalidLength(i64::from(len))));
        }
        Ok(len as usize)
    }

    /// A NUL-terminated string (`pq_getmsgstring`), returned without the NUL.
    pub(crate) fn cstring(&mut self) -> Result<String, DecodeError> {
        let start = self.pos;
        let rest = &self.buf[self.pos..];
        let nul = rest.iter().position(|&b| b == 0).ok_or_else(|| self.err(DecodeErrorKind::MissingNul))?;
        let s = std::str::from_utf8(&rest[..nul])
            .map_err(|_| self.err_at(start, DecodeErrorKind::InvalidUtf8))?
            .to_string();
        self.pos += nul + 1;
        Ok(s)
    }

    /// A name sent as `len` bytes that include a terminating NUL.
    pub(crate) fn name_with_nul(&mut self, len: usize) -> Result<String, DecodeError> {
        let start = self.pos;
        let raw = self.take(len)?;
        match raw.split_last() {
            Some((0, body)) if !body.contains(&0) => std::str::from_utf8(body)
                .map(str::to_string)
                .map_err(|_| self.err_at(start, DecodeErrorKind::InvalidUtf8)),
            _ => Err(self.err_at(start, DecodeErrorKind::MissingNul)),
        }
    }

    pub(crate) fn expect_marker(&mut self, marker: u8, expected: &'static str) -> Result<(), DecodeError> {
        let at = self.pos;
        let b = self.u8()?;
        if b != marker {
            return Err(self.err_at(at, DecodeErrorKind::UnexpectedMarker { expected, found: b as char }));
        }
        Ok(())
    }

    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            return Err(self.err(DecodeErrorKind::TrailingBytes(self.remaining())));
        }
        Ok(())
    }
}

/// Writes a NUL-terminated string (`pq_sendstring`).
pub(crate) fn put_cstring(out: &mut BytesMut, s: &str, what: &'static str) -> Result<(), EncodeError> {
    if s.as_bytes().contains(&0) {
        return Err(EncodeError::EmbeddedNul(what));
    }
    out.put_slice(s.as_bytes());
    out.put_u8(0);
    Ok(())
}

/// Checks that a length fits a field of at most `max`.
pub(crate) fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), EncodeError> {
    if len > max {
        return Err(EncodeError::TooLong { what, len, max });
    }
    Ok(())
}
