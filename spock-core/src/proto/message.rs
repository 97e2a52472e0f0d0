//! The messages of Spock's native protocol. Each message type has its `encode_body`
//! and `decode_body` next to each other; [`Message::encode`] and [`Message::decode`]
//! add the letter and the version-dependent `remote_insert_lsn`.
//!
//! Layouts (after the optional version-5 LSN prefix and the letter):
//!
//! | letter | body |
//! |---|---|
//! | `S` | u8 format (1), then NUL-terminated key, value pairs |
//! | `B` | flags u8, final_lsn i64, commit_time i64, xid u32 |
//! | `O` | flags u8 (0x01: name follows, v5), origin_lsn i64, origin_id u16, [name\0] |
//! | `L` | flags u8, last_commit_ts i64 |
//! | `R` | flags u8, relid u32, u8 len + nspname\0, u8 len + relname\0, `A` natts u16, per column `C` flags u8 `N` u16 len + name\0 typid u32 typmod i32 |
//! | `I` | flags u8, relid u32, `N` tuple |
//! | `U` | flags u8, relid u32, [`K`\|`O` tuple], `N` tuple |
//! | `D` | flags u8, relid u32, `K`\|`O` tuple |
//! | `T` | nrelids i32, flags i8 (1 cascade, 2 restart identity), relids u32... |
//! | `C` | flags u8, commit_lsn i64, end_lsn i64, commit_time i64, [v4: insert_lsn i64] |
//! | `M` | xid u32, lsn i64, transactional u8, prefix\0, size i32, payload |
//!
//! spock-rs's streaming of large in-progress transactions (sent only to a client
//! that asked with the startup parameter `spock_rs.streaming`; Spock never uses these
//! letters):
//!
//! | letter | body |
//! |---|---|
//! | `s` | flags u8 (0x01: first segment of this transaction), xid u32 |
//! | `e` | flags u8 |
//! | `x` | xid u32 of the (sub)transaction, then one `R`, `I`, `U`, `D`, `T` or `M` message (letter and body) |
//! | `c` | flags u8 (0x01: origin name follows), xid u32, commit_lsn i64, end_lsn i64, commit_time i64, origin_lsn i64, origin_id u16, [name\0] |
//! | `a` | flags u8, xid u32, subxid u32 (equal to xid: the whole transaction) |

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{check_len, put_cstring, DecodeErrorKind, EncodeError, Reader};
use super::tuple::Tuple;
use super::{DecodeError, Decoded, Lsn, PgTimestamp, ProtoVersion};

/// Startup message format version (`SPOCK_STARTUP_MSG_FORMAT_FLAT`).
pub const STARTUP_MSG_FORMAT_FLAT: u8 = 1;
/// ORIGIN flag: the origin's node name follows (protocol 5).
pub const ORIGIN_FLAG_HAS_NAME: u8 = 0x01;
/// COLUMN flag: the column is part of the replica identity.
pub const COLUMN_FLAG_REPLICA_IDENTITY: u8 = 0x01;
/// TRUNCATE flag: `CASCADE`.
pub const TRUNCATE_CASCADE: u8 = 0x01;
/// TRUNCATE flag: `RESTART IDENTITY`.
pub const TRUNCATE_RESTART_SEQS: u8 = 0x02;
/// STREAM START flag: the first segment of this transaction on the connection.
pub const STREAM_FIRST_SEGMENT: u8 = 0x01;
/// STREAM COMMIT flag: the origin's node name follows.
pub const STREAM_COMMIT_HAS_ORIGIN_NAME: u8 = 0x01;

/// One message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `S`: the provider's reply to the startup parameters, first in every stream.
    Startup(Startup),
    /// `B`: a transaction begins.
    Begin(Begin),
    /// `O`: the node the transaction originally came from (after every BEGIN).
    Origin(Origin),
    /// `L`: commit timestamp of the last transaction of the slot group.
    CommitOrder(CommitOrder),
    /// `R`: a relation's name and columns, before its first change on a stream.
    Relation(Relation),
    /// `I`: a row was inserted.
    Insert(Insert),
    /// `U`: a row was updated.
    Update(Update),
    /// `D`: a row was deleted.
    Delete(Delete),
    /// `T`: tables were truncated.
    Truncate(Truncate),
    /// `C`: the transaction commits.
    Commit(Commit),
    /// `M`: a logical decoding message (Spock's sync events).
    LogicalMessage(LogicalMessage),
    /// `s`: a block of changes of an in-progress transaction begins (spock-rs).
    StreamStart(StreamStart),
    /// `e`: the block of changes ends (spock-rs).
    StreamStop(StreamStop),
    /// `x`: a change inside a stream block, with its (sub)transaction id (spock-rs).
    StreamChange(StreamChange),
    /// `c`: a streamed transaction commits (spock-rs).
    StreamCommit(StreamCommit),
    /// `a`: a streamed transaction or one of its subtransactions aborts (spock-rs).
    StreamAbort(StreamAbort),
}

impl Message {
    /// The message type letter.
    pub fn letter(&self) -> u8 {
        match self {
            Message::Startup(_) => b'S',
            Message::Begin(_) => b'B',
            Message::Origin(_) => b'O',
            Message::CommitOrder(_) => b'L',
            Message::Relation(_) => b'R',
            Message::Insert(_) => b'I',
            Message::Update(_) => b'U',
            Message::Delete(_) => b'D',
            Message::Truncate(_) => b'T',
            Message::Commit(_) => b'C',
            Message::LogicalMessage(_) => b'M',
            Message::StreamStart(_) => b's',
            Message::StreamStop(_) => b'e',
            Message::StreamChange(_) => b'x',
            Message::StreamCommit(_) => b'c',
            Message::StreamAbort(_) => b'a',
        }
    }

    /// Whether the message may travel inside a stream block's `x` (a change of a
    /// streamed transaction): `R`, `I`, `U`, `D`, `T` and `M`.
    pub fn is_streamable(&self) -> bool {
        matches!(self.letter(), b'R' | b'I' | b'U' | b'D' | b'T' | b'M')
    }

    /// Appends the message in protocol `version` (see [`super::encode`]).
    pub fn encode(&self, version: ProtoVersion, remote_insert_lsn: Lsn, out: &mut BytesMut) -> Result<(), EncodeError> {
        if let Message::Startup(s) = self {
            out.put_u8(b'S');
            return s.encode_body(out);
        }
        if version >= ProtoVersion::V5 {
            out.put_u64(remote_insert_lsn);
        }
        out.put_u8(self.letter());
        match self {
            Message::Startup(_) => unreachable!("handled above"),
            Message::Begin(m) => m.encode_body(out),
            Message::Origin(m) => m.encode_body(version, out)?,
            Message::CommitOrder(m) => m.encode_body(out),
            Message::Relation(m) => m.encode_body(out)?,
            Message::Insert(m) => m.encode_body(out)?,
            Message::Update(m) => m.encode_body(out)?,
            Message::Delete(m) => m.encode_body(out)?,
            Message::Truncate(m) => m.encode_body(out)?,
            Message::Commit(m) => {
                m.encode_body(out);
                if version == ProtoVersion::V4 {
                    out.put_u64(remote_insert_lsn);
                }
            }
            Message::LogicalMessage(m) => m.encode_body(out)?,
            Message::StreamStart(m) => m.encode_body(out),
            Message::StreamStop(m) => m.encode_body(out),
            Message::StreamChange(m) => m.encode_body(out)?,
            Message::StreamCommit(m) => m.encode_body(out)?,
            Message::StreamAbort(m) => m.encode_body(out),
        }
        Ok(())
    }

    /// Appends the letter and body of a message that may travel inside a stream
    /// change `x` (R, I, U, D, T, M).
    fn encode_streamable(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.put_u8(self.letter());
        match self {
            Message::Relation(m) => m.encode_body(out),
            Message::Insert(m) => m.encode_body(out),
            Message::Update(m) => m.encode_body(out),
            Message::Delete(m) => m.encode_body(out),
            Message::Truncate(m) => m.encode_body(out),
            Message::LogicalMessage(m) => m.encode_body(out),
            _ => Err(EncodeError::Unsupported("only R, I, U, D, T and M messages can be streamed")),
        }
    }

    /// Decodes the letter and body of a message inside a stream change `x`.
    fn decode_streamable(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
        let letter_at = r.offset();
        let letter = r.u8()?;
        Ok(match letter {
            b'R' => Message::Relation(Relation::decode_body(r)?),
            b'I' => Message::Insert(Insert::decode_body(r)?),
            b'U' => Message::Update(Update::decode_body(r)?),
            b'D' => Message::Delete(Delete::decode_body(r)?),
            b'T' => Message::Truncate(Truncate::decode_body(r)?),
            b'M' => Message::LogicalMessage(LogicalMessage::decode_body(r)?),
            other => {
                return Err(r.err_at(
                    letter_at,
                    DecodeErrorKind::UnexpectedMarker {
                        expected: "a streamable message 'R', 'I', 'U', 'D', 'T' or 'M'",
                        found: other as char,
                    },
                ))
            }
        })
    }

    /// Decodes one non-startup message in protocol `version`.
    pub fn decode(buf: &Bytes, version: ProtoVersion) -> Result<Decoded, DecodeError> {
        let mut r = Reader::new(buf);
        let mut remote_insert_lsn = if version >= ProtoVersion::V5 { Some(r.u64()?) } else { None };
        let letter_at = r.offset();
        let letter = r.u8()?;
        let message = match letter {
            b'B' => Message::Begin(Begin::decode_body(&mut r)?),
            b'O' => Message::Origin(Origin::decode_body(&mut r)?),
            b'L' => Message::CommitOrder(CommitOrder::decode_body(&mut r)?),
            b'R' => Message::Relation(Relation::decode_body(&mut r)?),
            b'I' => Message::Insert(Insert::decode_body(&mut r)?),
            b'U' => Message::Update(Update::decode_body(&mut r)?),
            b'D' => Message::Delete(Delete::decode_body(&mut r)?),
            b'T' => Message::Truncate(Truncate::decode_body(&mut r)?),
            b'C' => {
                let commit = Commit::decode_body(&mut r)?;
                if version == ProtoVersion::V4 {
                    remote_insert_lsn = Some(r.u64()?);
                }
                Message::Commit(commit)
            }
            b'M' => Message::LogicalMessage(LogicalMessage::decode_body(&mut r)?),
            b's' => Message::StreamStart(StreamStart::decode_body(&mut r)?),
            b'e' => Message::StreamStop(StreamStop::decode_body(&mut r)?),
            b'x' => Message::StreamChange(StreamChange::decode_body(&mut r)?),
            b'c' => Message::StreamCommit(StreamCommit::decode_body(&mut r)?),
            b'a' => Message::StreamAbort(StreamAbort::decode_body(&mut r)?),
            other => {
                return Err(r.err_at(letter_at, DecodeErrorKind::UnknownMessageType(other as char)));
            }
        };
        r.finish()?;
        Ok(Decoded { remote_insert_lsn, message })
    }
}

/// `S`: key/value pairs describing what the provider agreed to (see
/// [`super::startup`]). Order is kept as sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Startup {
    /// The parameters, in wire order.
    pub params: Vec<(String, String)>,
}

impl Startup {
    /// The value of the first parameter named `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn encode_body(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.put_u8(STARTUP_MSG_FORMAT_FLAT);
        for (k, v) in &self.params {
            if k.is_empty() {
                return Err(EncodeError::Unsupported("startup parameter with an empty key"));
            }
            put_cstring(out, k, "startup parameter key")?;
            put_cstring(out, v, "startup parameter value")?;
        }
        Ok(())
    }

    /// Decodes a whole startup message, letter included.
    pub(crate) fn decode_message(buf: &Bytes) -> Result<Startup, DecodeError> {
        let mut r = Reader::new(buf);
        r.expect_marker(b'S', "startup message 'S'")?;
        let format_at = r.offset();
        let format = r.u8()?;
        if format != STARTUP_MSG_FORMAT_FLAT {
            return Err(r.err_at(format_at, DecodeErrorKind::UnsupportedStartupFormat(format)));
        }
        let mut params = Vec::new();
        while r.remaining() > 0 {
            let key_at = r.offset();
            let key = r.cstring()?;
            if key.is_empty() {
                return Err(r.err_at(key_at, DecodeErrorKind::MalformedStartupParam("empty key")));
            }
            if r.remaining() == 0 {
                return Err(r.err(DecodeErrorKind::MalformedStartupParam("key without a value")));
            }
            let value = r.cstring()?;
            params.push((key, value));
        }
        Ok(Startup { params })
    }
}

/// `B`: start of a remote transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// Flags (always 0 today).
    pub flags: u8,
    /// LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// Commit timestamp on the provider.
    pub commit_time: PgTimestamp,
    /// The provider's transaction id.
    pub xid: u32,
}

impl Begin {
    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u8(self.flags);
        out.put_u64(self.final_lsn);
        out.put_i64(self.commit_time);
        out.put_u32(self.xid);
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Begin, DecodeError> {
        Ok(Begin { flags: r.u8()?, final_lsn: r.u64()?, commit_time: r.i64()?, xid: r.u32()? })
    }
}

/// `O`: where the transaction was first committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The commit LSN on the origin node (0 when unknown).
    pub origin_lsn: Lsn,
    /// The origin node's id (Spock's 16-bit node id).
    pub origin_id: u16,
    /// The origin node's name; sent in protocol 5 only.
    pub origin_name: Option<String>,
}

impl Origin {
    fn encode_body(&self, version: ProtoVersion, out: &mut BytesMut) -> Result<(), EncodeError> {
        let name = if version >= ProtoVersion::V5 { self.origin_name.as_deref() } else { None };
        out.put_u8(if name.is_some() { ORIGIN_FLAG_HAS_NAME } else { 0 });
        out.put_u64(self.origin_lsn);
        out.put_u16(self.origin_id);
        if let Some(name) = name {
            put_cstring(out, name, "origin name")?;
        }
        Ok(())
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Origin, DecodeError> {
        let flags = r.u8()?;
        let origin_lsn = r.u64()?;
        let origin_id = r.u16()?;
        let origin_name = if flags & ORIGIN_FLAG_HAS_NAME != 0 { Some(r.cstring()?) } else { None };
        Ok(Origin { origin_lsn, origin_id, origin_name })
    }
}

/// `L`: commit timestamp of the slot group's last transaction (0 = none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitOrder {
    /// Flags (always 0 today).
    pub flags: u8,
    /// The timestamp.
    pub last_commit_ts: PgTimestamp,
}

impl CommitOrder {
    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u8(self.flags);
        out.put_i64(self.last_commit_ts);
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<CommitOrder, DecodeError> {
        Ok(CommitOrder { flags: r.u8()?, last_commit_ts: r.i64()? })
    }
}

/// One column of a relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelColumn {
    /// [`COLUMN_FLAG_REPLICA_IDENTITY`] when the column is part of the identity.
    pub flags: u8,
    /// Column name.
    pub name: String,
    /// Type oid on the provider.
    pub type_oid: u32,
    /// Type modifier (-1 = none).
    pub typmod: i32,
}

impl RelColumn {
    /// Whether the column belongs to the replica identity.
    pub fn is_identity(&self) -> bool {
        self.flags & COLUMN_FLAG_REPLICA_IDENTITY != 0
    }
}

/// `R`: a relation's identity and replicated columns (dropped, generated and
/// filtered-out columns are not listed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Flags (always 0 today).
    pub flags: u8,
    /// The provider's relation oid, the key later messages use.
    pub relid: u32,
    /// Schema name.
    pub nspname: String,
    /// Table name.
    pub relname: String,
    /// Columns in tuple order.
    pub columns: Vec<RelColumn>,
}

impl Relation {
    fn encode_body(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.put_u8(self.flags);
        out.put_u32(self.relid);
        for (what, name) in [("schema name", &self.nspname), ("relation name", &self.relname)] {
            check_len(what, name.len() + 1, usize::from(u8::MAX))?;
            out.put_u8((name.len() + 1) as u8);
            put_cstring(out, name, what)?;
        }
        check_len("column count", self.columns.len(), usize::from(u16::MAX))?;
        out.put_u8(b'A');
        out.put_u16(self.columns.len() as u16);
        for col in &self.columns {
            out.put_u8(b'C');
            out.put_u8(col.flags);
            out.put_u8(b'N');
            check_len("column name", col.name.len() + 1, usize::from(u16::MAX))?;
            out.put_u16((col.name.len() + 1) as u16);
            put_cstring(out, &col.name, "column name")?;
            out.put_u32(col.type_oid);
            out.put_i32(col.typmod);
        }
        Ok(())
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Relation, DecodeError> {
        let flags = r.u8()?;
        let relid = r.u32()?;
        let nsplen = usize::from(r.u8()?);
        let nspname = r.name_with_nul(nsplen)?;
        let rellen = usize::from(r.u8()?);
        let relname = r.name_with_nul(rellen)?;
        r.expect_marker(b'A', "attribute block 'A'")?;
        let natts = usize::from(r.u16()?);
        let mut columns = Vec::with_capacity(natts.min(r.remaining()));
        for _ in 0..natts {
            r.expect_marker(b'C', "column block 'C'")?;
            let flags = r.u8()?;
            r.expect_marker(b'N', "column name block 'N'")?;
            let len = usize::from(r.u16()?);
            let name = r.name_with_nul(len)?;
            let type_oid = r.u32()?;
            let typmod = r.i32()?;
            columns.push(RelColumn { flags, name, type_oid, typmod });
        }
        Ok(Relation { flags, relid, nspname, relname, columns })
    }
}

/// `I`: a new row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// Flags (always 0 today).
    pub flags: u8,
    /// Relation oid from the `R` message.
    pub relid: u32,
    /// The new row.
    pub new: Tuple,
}

impl Insert {
    fn encode_body(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.put_u8(self.flags);
        out.put_u32(self.relid);
        out.put_u8(b'N');
        self.new.encode(out)
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Insert, DecodeError> {
        let flags = r.u8()?;
        let relid = r.u32()?;
        r.expect_marker(b'N', "new tuple 'N'")?;
        Ok(Insert { flags, relid, new: Tuple::decode(r)? })
    }
}

/// Which old row image an UPDATE or DELETE carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldTupleKind {
    /// `K`: the replica identity key columns (others are NULL).
    Key,
    /// `O`: the whole old row.
    Full,
}

impl OldTupleKind {
    fn letter(self) -> u8 {
        match self {
            OldTupleKind::Key => b'K',
            OldTupleKind::Full => b'O',
        }
    }
}

/// The old row image of an UPDATE or DELETE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldTuple {
    /// Key or full row.
    pub kind: OldTupleKind,
    /// The values.
    pub tuple: Tuple,
}

impl OldTuple {
    fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.put_u8(self.kind.letter());
        self.tuple.encode(out)
    }

    /// Decodes an old tuple whose letter `kind` was already read.
    fn decode_after(kind: u8, r: &mut Reader<'_>) -> Result<OldTuple, DecodeError> {
        let kind = if kind == b'K' { OldTupleKind::Key } else { OldTupleKind::Full };
        Ok(OldTuple { kind, tuple: Tuple::decode(r)? })
    }
}

/// `U`: a row changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Flags (always 0 today).
    pub flags: u8,
    /// Relation oid from the `R` message.
    pub relid: u32,
    /// The old key (or row) when the key changed or the identity is FULL.
    pub old: Option<OldTuple>,
    /// The new row.
    pub new: Tuple,
}

impl Update {
    fn encode_body(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.put_u8(self.flags);
        out.put_u32(self.relid);
        if let Some(old) = &self.old {
            old.encode(out)?;
        }
        out.put_u8(b'N');
        self.new.encode(out)
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Update, DecodeError> {
        let flags = r.u8()?;
        let relid = r.u32()?;
        let at = r.offset();
        let mut action = r.u8()?;
        let old = match action {
            b'K' | b'O' => {
                let old = OldTuple::decode_after(action, r)?;
                action = r.u8()?;
                Some(old)
            }
            _ => None,
        };
        if action != b'N' {
            return Err(r.err_at(
                if old.is_some() { r.offset() - 1 } else { at },
                DecodeErrorKind::UnexpectedMarker { expected: "tuple 'K', 'O' or 'N'", found: action as char },
            ));
        }
        Ok(Update { flags, relid, old, new: Tuple::decode(r)? })
    }
}

/// `D`: a row was removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// Flags (always 0 today).
    pub flags: u8,
    /// Relation oid from the `R` message.
    pub relid: u32,
    /// The deleted row's key (or whole row).
    pub old: OldTuple,
}

impl Delete {
    fn encode_body(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.put_u8(self.flags);
        out.put_u32(self.relid);
        self.old.encode(out)
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Delete, DecodeError> {
        let flags = r.u8()?;
        let relid = r.u32()?;
        let at = r.offset();
        let kind = r.u8()?;
        if kind != b'K' && kind != b'O' {
            return Err(r.err_at(
                at,
                DecodeErrorKind::UnexpectedMarker { expected: "old tuple 'K' or 'O'", found: kind as char },
            ));
        }
        Ok(Delete { flags, relid, old: OldTuple::decode_after(kind, r)? })
    }
}

/// `T`: TRUNCATE of one or more tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// `TRUNCATE ... CASCADE`.
    pub cascade: bool,
    /// `TRUNCATE ... RESTART IDENTITY`.
    pub restart_seqs: bool,
    /// Relation oids (each announced by an `R` message).
    pub relids: Vec<u32>,
}

impl Truncate {
    fn encode_body(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        check_len("truncated relation count", self.relids.len(), i32::MAX as usize)?;
        out.put_i32(self.relids.len() as i32);
        let mut flags = 0u8;
        if self.cascade {
            flags |= TRUNCATE_CASCADE;
        }
        if self.restart_seqs {
            flags |= TRUNCATE_RESTART_SEQS;
        }
        out.put_u8(flags);
        for relid in &self.relids {
            out.put_u32(*relid);
        }
        Ok(())
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Truncate, DecodeError> {
        let n = r.len_i32()?;
        let flags = r.u8()?;
        if r.remaining() < n.saturating_mul(4) {
            return Err(r.err(DecodeErrorKind::Truncated { needed: n * 4 - r.remaining() }));
        }
        let mut relids = Vec::with_capacity(n);
        for _ in 0..n {
            relids.push(r.u32()?);
        }
        Ok(Truncate {
            cascade: flags & TRUNCATE_CASCADE != 0,
            restart_seqs: flags & TRUNCATE_RESTART_SEQS != 0,
            relids,
        })
    }
}

/// `C`: end of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Flags (always 0 today).
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// LSN just past the commit record: where a restart resumes.
    pub end_lsn: Lsn,
    /// Commit timestamp on the provider.
    pub commit_time: PgTimestamp,
}

impl Commit {
    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u8(self.flags);
        out.put_u64(self.commit_lsn);
        out.put_u64(self.end_lsn);
        out.put_i64(self.commit_time);
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Commit, DecodeError> {
        Ok(Commit { flags: r.u8()?, commit_lsn: r.u64()?, end_lsn: r.u64()?, commit_time: r.i64()? })
    }
}

/// `M`: a logical decoding message (`pg_logical_emit_message`); Spock sends those
/// with prefix `Spock` for `sync_event()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Transaction id (0 for a non-transactional message).
    pub xid: u32,
    /// LSN of the message.
    pub lsn: Lsn,
    /// Whether the message was emitted transactionally.
    pub transactional: bool,
    /// The prefix given to `pg_logical_emit_message`.
    pub prefix: String,
    /// The payload.
    pub content: Bytes,
}

impl LogicalMessage {
    fn encode_body(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.put_u32(self.xid);
        out.put_u64(self.lsn);
        out.put_u8(u8::from(self.transactional));
        put_cstring(out, &self.prefix, "message prefix")?;
        check_len("message content", self.content.len(), i32::MAX as usize)?;
        out.put_i32(self.content.len() as i32);
        out.put_slice(&self.content);
        Ok(())
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<LogicalMessage, DecodeError> {
        let xid = r.u32()?;
        let lsn = r.u64()?;
        let transactional = r.u8()? != 0;
        let prefix = r.cstring()?;
        let len = r.len_i32()?;
        Ok(LogicalMessage { xid, lsn, transactional, prefix, content: r.bytes(len)? })
    }
}

/// `s`: the changes that follow, up to `e`, belong to in-progress transaction `xid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamStart {
    /// The top-level transaction id.
    pub xid: u32,
    /// The first block of this transaction sent on the connection.
    pub first_segment: bool,
}

impl StreamStart {
    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u8(if self.first_segment { STREAM_FIRST_SEGMENT } else { 0 });
        out.put_u32(self.xid);
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<StreamStart, DecodeError> {
        let flags = r.u8()?;
        Ok(StreamStart { first_segment: flags & STREAM_FIRST_SEGMENT != 0, xid: r.u32()? })
    }
}

/// `e`: the current stream block ends (more blocks, or the commit or abort, follow
/// later, possibly after other transactions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamStop {
    /// Flags (always 0 today).
    pub flags: u8,
}

impl StreamStop {
    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u8(self.flags);
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<StreamStop, DecodeError> {
        Ok(StreamStop { flags: r.u8()? })
    }
}

/// `x`: one change (or relation message) of a streamed transaction, attributed to
/// the (sub)transaction that made it, so a subtransaction abort can drop it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamChange {
    /// The (sub)transaction id of the change.
    pub xid: u32,
    /// The change: a Relation, Insert, Update, Delete, Truncate or LogicalMessage.
    pub message: Box<Message>,
}

impl StreamChange {
    fn encode_body(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.put_u32(self.xid);
        self.message.encode_streamable(out)
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<StreamChange, DecodeError> {
        let xid = r.u32()?;
        Ok(StreamChange { xid, message: Box::new(Message::decode_streamable(r)?) })
    }
}

/// `c`: streamed transaction `xid` committed; it carries what `B`, `O` and `C`
/// carry for a transaction that is not streamed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCommit {
    /// The top-level transaction id.
    pub xid: u32,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// LSN just past the commit record: where a restart resumes.
    pub end_lsn: Lsn,
    /// Commit timestamp on the provider.
    pub commit_time: PgTimestamp,
    /// As in `O`: the commit LSN on the origin node (0 when unknown).
    pub origin_lsn: Lsn,
    /// As in `O`: the origin node's id.
    pub origin_id: u16,
    /// As in `O`: the origin node's name.
    pub origin_name: Option<String>,
}

impl StreamCommit {
    fn encode_body(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.put_u8(if self.origin_name.is_some() { STREAM_COMMIT_HAS_ORIGIN_NAME } else { 0 });
        out.put_u32(self.xid);
        out.put_u64(self.commit_lsn);
        out.put_u64(self.end_lsn);
        out.put_i64(self.commit_time);
        out.put_u64(self.origin_lsn);
        out.put_u16(self.origin_id);
        if let Some(name) = &self.origin_name {
            put_cstring(out, name, "origin name")?;
        }
        Ok(())
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<StreamCommit, DecodeError> {
        let flags = r.u8()?;
        Ok(StreamCommit {
            xid: r.u32()?,
            commit_lsn: r.u64()?,
            end_lsn: r.u64()?,
            commit_time: r.i64()?,
            origin_lsn: r.u64()?,
            origin_id: r.u16()?,
            origin_name: if flags & STREAM_COMMIT_HAS_ORIGIN_NAME != 0 { Some(r.cstring()?) } else { None },
        })
    }

    /// The BEGIN a subscriber applies the streamed transaction under.
    pub fn begin(&self) -> Begin {
        Begin { flags: 0, final_lsn: self.commit_lsn, commit_time: self.commit_time, xid: self.xid }
    }

    /// The ORIGIN of the streamed transaction.
    pub fn origin(&self) -> Origin {
        Origin { origin_lsn: self.origin_lsn, origin_id: self.origin_id, origin_name: self.origin_name.clone() }
    }

    /// The COMMIT that ends the applied transaction.
    pub fn commit(&self) -> Commit {
        Commit { flags: 0, commit_lsn: self.commit_lsn, end_lsn: self.end_lsn, commit_time: self.commit_time }
    }
}

/// `a`: subtransaction `subxid` of streamed transaction `xid` (or the whole
/// transaction, when `subxid == xid`) rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamAbort {
    /// The top-level transaction id.
    pub xid: u32,
    /// The aborted (sub)transaction.
    pub subxid: u32,
}

impl StreamAbort {
    /// Whether the whole transaction aborted.
    pub fn is_toplevel(&self) -> bool {
        self.xid == self.subxid
    }

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u8(0);
        out.put_u32(self.xid);
        out.put_u32(self.subxid);
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<StreamAbort, DecodeError> {
        let _flags = r.u8()?;
        Ok(StreamAbort { xid: r.u32()?, subxid: r.u32()? })
    }
}
