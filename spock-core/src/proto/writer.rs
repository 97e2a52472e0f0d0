//! Allocation-free writing of row messages, for the output plugin's hot path: the
//! caller streams column values straight from the server's tuple into the output
//! buffer instead of building a [`super::Message`] first. The bytes are exactly
//! those [`super::Message::encode`] produces (checked by tests).

use bytes::{BufMut, BytesMut};

use super::codec::EncodeError;
use super::message::OldTupleKind;
use super::{Lsn, ProtoVersion};

/// The row message being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowAction {
    /// `I`.
    Insert,
    /// `U`.
    Update,
    /// `D`.
    Delete,
}

/// Writes the start of a row message: the version-5 LSN prefix, the letter, flags
/// and relation id. Follow it with [`old_tuple_marker`] (UPDATE with an old tuple,
/// DELETE) and/or [`new_tuple_marker`] (INSERT, UPDATE), each followed by a tuple
/// written with [`TupleWriter`].
pub fn row_header(out: &mut BytesMut, version: ProtoVersion, remote_insert_lsn: Lsn, action: RowAction, relid: u32) {
    row_header_in(out, version, remote_insert_lsn, None, action, relid)
}

/// [`row_header`] for a change inside a stream block when `stream_xid` is set: the
/// message is then a stream change `x` carrying the change's (sub)transaction id.
pub fn row_header_in(
    out: &mut BytesMut,
    version: ProtoVersion,
    remote_insert_lsn: Lsn,
    stream_xid: Option<u32>,
    action: RowAction,
    relid: u32,
) {
    if version >= ProtoVersion::V5 {
        out.put_u64(remote_insert_lsn);
    }
    if let Some(xid) = stream_xid {
        out.put_u8(b'x');
        out.put_u32(xid);
    }
    out.put_u8(match action {
        RowAction::Insert => b'I',
        RowAction::Update => b'U',
        RowAction::Delete => b'D',
    });
    out.put_u8(0);
    out.put_u32(relid);
}

/// `K` or `O` before an old tuple.
pub fn old_tuple_marker(out: &mut BytesMut, kind: OldTupleKind) {
    out.put_u8(match kind {
        OldTupleKind::Key => b'K',
        OldTupleKind::Full => b'O',
    });
}

/// `N` before a new tuple.
pub fn new_tuple_marker(out: &mut BytesMut) {
    out.put_u8(b'N');
}

/// Writes one `T` tuple block column by column. Write exactly `natts` columns.
pub struct TupleWriter<'a> {
    out: &'a mut BytesMut,
}

impl<'a> TupleWriter<'a> {
    /// Starts a tuple of `natts` columns.
    pub fn new(out: &'a mut BytesMut, natts: u16) -> TupleWriter<'a> {
        out.put_u8(b'T');
        out.put_u16(natts);
        TupleWriter { out }
    }

    /// `n`: NULL.
    pub fn null(&mut self) {
        self.out.put_u8(b'n');
    }

    /// `u`: unchanged TOASTed value.
    pub fn unchanged_toast(&mut self) {
        self.out.put_u8(b'u');
    }

    fn with_len(&mut self, kind: u8, data: &[u8]) -> Result<(), EncodeError> {
        if data.len() > i32::MAX as usize {
            return Err(EncodeError::TooLong { what: "column value", len: data.len(), max: i32::MAX as usize });
        }
        self.out.put_u8(kind);
        self.out.put_i32(data.len() as i32);
        self.out.put_slice(data);
        Ok(())
    }

    /// `i`: internal datum bytes.
    pub fn internal(&mut self, data: &[u8]) -> Result<(), EncodeError> {
        self.with_len(b'i', data)
    }

    /// `b`: send/recv binary.
    pub fn binary(&mut self, data: &[u8]) -> Result<(), EncodeError> {
        self.with_len(b'b', data)
    }

    /// `t`: text output (without NUL; the NUL the wire carries is added).
    pub fn text(&mut self, data: &[u8]) -> Result<(), EncodeError> {
        if data.len() >= i32::MAX as usize {
            return Err(EncodeError::TooLong { what: "column value", len: data.len() + 1, max: i32::MAX as usize });
        }
        if data.contains(&0) {
            return Err(EncodeError::EmbeddedNul("text column value"));
        }
        self.out.put_u8(b't');
        self.out.put_i32(data.len() as i32 + 1);
        self.out.put_slice(data);
        self.out.put_u8(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::message::{Delete, Insert, Message, OldTuple, Update};
    use crate::proto::tuple::{Datum, Tuple};
    use proptest::prelude::*;

    fn write_tuple(out: &mut BytesMut, t: &Tuple) {
        let mut w = TupleWriter::new(out, t.columns.len() as u16);
        for d in &t.columns {
            match d {
                Datum::Null => w.null(),
                Datum::UnchangedToast => w.unchanged_toast(),
                Datum::Internal(b) => w.internal(b).unwrap(),
                Datum::Binary(b) => w.binary(b).unwrap(),
                Datum::Text(b) => w.text(b).unwrap(),
            }
        }
    }

    fn arb_tuple() -> impl Strategy<Value = Tuple> {
        proptest::collection::vec(
            prop_oneof![
                Just(Datum::Null),
                Just(Datum::UnchangedToast),
                proptest::collection::vec(any::<u8>(), 0..8).prop_map(|v| Datum::Internal(v.into())),
                proptest::collection::vec(any::<u8>(), 0..8).prop_map(|v| Datum::Binary(v.into())),
                "[a-z]{0,8}".prop_map(|s| Datum::Text(s.into_bytes().into())),
            ],
            0..6,
        )
        .prop_map(Tuple::new)
    }

    proptest! {
        #[test]
        fn writer_bytes_equal_message_encoding(new in arb_tuple(), old in arb_tuple(), relid in any::<u32>(), lsn in any::<u64>(), v5 in any::<bool>(), full in any::<bool>()) {
            let version = if v5 { ProtoVersion::V5 } else { ProtoVersion::V4 };
            let kind = if full { OldTupleKind::Full } else { OldTupleKind::Key };
            // INSERT
            let mut a = BytesMut::new();
            Message::Insert(Insert { flags: 0, relid, new: new.clone() }).encode(version, lsn, &mut a).unwrap();
            let mut b = BytesMut::new();
            row_header(&mut b, version, lsn, RowAction::Insert, relid);
            new_tuple_marker(&mut b);
            write_tuple(&mut b, &new);
            prop_assert_eq!(&a, &b);
            // UPDATE with old tuple
            let mut a = BytesMut::new();
            Message::Update(Update { flags: 0, relid, old: Some(OldTuple { kind, tuple: old.clone() }), new: new.clone() }).encode(version, lsn, &mut a).unwrap();
            let mut b = BytesMut::new();
            row_header(&mut b, version, lsn, RowAction::Update, relid);
            old_tuple_marker(&mut b, kind);
            write_tuple(&mut b, &old);
            new_tuple_marker(&mut b);
            write_tuple(&mut b, &new);
            prop_assert_eq!(&a, &b);
            // DELETE
            let mut a = BytesMut::new();
            Message::Delete(Delete { flags: 0, relid, old: OldTuple { kind, tuple: old.clone() } }).encode(version, lsn, &mut a).unwrap();
            let mut b = BytesMut::new();
            row_header(&mut b, version, lsn, RowAction::Delete, relid);
            old_tuple_marker(&mut b, kind);
            write_tuple(&mut b, &old);
            prop_assert_eq!(&a, &b);
        }

        #[test]
        fn streamed_writer_bytes_equal_message_encoding(new in arb_tuple(), relid in any::<u32>(), xid in any::<u32>(), lsn in any::<u64>(), v5 in any::<bool>()) {
            let version = if v5 { ProtoVersion::V5 } else { ProtoVersion::V4 };
            let inner = Message::Insert(Insert { flags: 0, relid, new: new.clone() });
            let mut a = BytesMut::new();
            Message::StreamChange(crate::proto::StreamChange { xid, message: Box::new(inner) }).encode(version, lsn, &mut a).unwrap();
            let mut b = BytesMut::new();
            row_header_in(&mut b, version, lsn, Some(xid), RowAction::Insert, relid);
            new_tuple_marker(&mut b);
            write_tuple(&mut b, &new);
            prop_assert_eq!(&a, &b);
        }
    }
}
