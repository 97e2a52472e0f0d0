//! The tuple block `T` shared by INSERT, UPDATE and DELETE: a column count and, per
//! column, one of `n` (NULL), `u` (unchanged TOASTed value), `i` (internal binary
//! datum), `b` (send/recv binary) or `t` (text, sent with its terminating NUL).

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{check_len, DecodeErrorKind, EncodeError, Reader};
use super::DecodeError;

/// One column value as carried on the wire. Payloads are zero-copy slices of the
/// received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    /// `n`: SQL NULL.
    Null,
    /// `u`: a TOASTed value the change did not modify; the subscriber keeps its own.
    UnchangedToast,
    /// `i`: the datum in the provider's internal format (only between binary-
    /// compatible servers of the same major version, for built-in base types).
    Internal(Bytes),
    /// `b`: the type's send/recv binary format.
    Binary(Bytes),
    /// `t`: the type's text output, without the terminating NUL the wire carries.
    Text(Bytes),
}

impl Datum {
    /// The wire letter of this representation.
    pub fn kind_letter(&self) -> u8 {
        match self {
            Datum::Null => b'n',
            Datum::UnchangedToast => b'u',
            Datum::Internal(_) => b'i',
            Datum::Binary(_) => b'b',
            Datum::Text(_) => b't',
        }
    }
}

/// A row image: one [`Datum`] per column of the relation's `R` message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tuple {
    /// The columns, in the order of the relation message.
    pub columns: Vec<Datum>,
}

impl Tuple {
    /// A tuple of these columns.
    pub fn new(columns: Vec<Datum>) -> Tuple {
        Tuple { columns }
    }

    /// Whether every column carries its value: none is left in the sender's TOAST
    /// ([`Datum::UnchangedToast`], which only an UPDATE sends).
    pub fn is_complete(&self) -> bool {
        !self.columns.iter().any(|d| matches!(d, Datum::UnchangedToast))
    }

    /// Appends the `T` block.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        check_len("tuple column count", self.columns.len(), usize::from(u16::MAX))?;
        out.put_u8(b'T');
        out.put_u16(self.columns.len() as u16);
        for datum in &self.columns {
            out.put_u8(datum.kind_letter());
            match datum {
                Datum::Null | Datum::UnchangedToast => {}
                Datum::Internal(data) | Datum::Binary(data) => {
                    check_len("column value", data.len(), i32::MAX as usize)?;
                    out.put_i32(data.len() as i32);
                    out.put_slice(data);
                }
                Datum::Text(data) => {
                    check_len("column value", data.len() + 1, i32::MAX as usize)?;
                    if data.contains(&0) {
                        return Err(EncodeError::EmbeddedNul("text column value"));
                    }
                    out.put_i32(data.len() as i32 + 1);
                    out.put_slice(data);
                    out.put_u8(0);
                }
            }
        }
        Ok(())
    }

    /// Reads a `T` block.
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Tuple, DecodeError> {
        r.expect_marker(b'T', "tuple block 'T'")?;
        let natts = r.u16()? as usize;
        // Each column needs at least its kind byte: don't trust natts for allocation.
        let mut columns = Vec::with_capacity(natts.min(r.remaining()));
        for _ in 0..natts {
            let at = r.offset();
            let kind = r.u8()?;
            let datum = match kind {
                b'n' => Datum::Null,
                b'u' => Datum::UnchangedToast,
                b'i' => {
                    let len = r.len_i32()?;
                    Datum::Internal(r.bytes(len)?)
                }
                b'b' => {
                    let len = r.len_i32()?;
                    Datum::Binary(r.bytes(len)?)
                }
                b't' => {
                    let len_at = r.offset();
                    let len = r.len_i32()?;
                    if len == 0 {
                        return Err(r.err_at(len_at, DecodeErrorKind::InvalidLength(0)));
                    }
                    let data_at = r.offset();
                    let data = r.bytes(len)?;
                    if data[len - 1] != 0 || data[..len - 1].contains(&0) {
                        return Err(r.err_at(data_at, DecodeErrorKind::MissingNul));
                    }
                    Datum::Text(data.slice(..len - 1))
                }
                other => return Err(r.err_at(at, DecodeErrorKind::UnknownColumnKind(other as char))),
            };
            columns.push(datum);
        }
        Ok(Tuple { columns })
    }
}
