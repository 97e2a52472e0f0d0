//! Spock's native logical replication protocol, versions 4 and 5.
//!
//! Every message the `spock_output` plugin writes (and a Spock apply worker reads) is
//! a [`Message`]; each variant's `encode` and `decode` sit side by side in
//! [`message`]. The protocol version is an explicit argument of every call:
//!
//! * version 5 prefixes every message except the startup message `S` with the
//!   provider's current WAL insert position (`remote_insert_lsn`, i64);
//! * version 4 carries that position only at the end of `C` (COMMIT).
//!
//! [`encode`] takes it as an argument and [`decode`] returns it in a [`Decoded`], so
//! callers see one shape whatever the version. Integers are big-endian. Decoding
//! never panics: malformed input gives a [`DecodeError`] with the byte offset.
//!
//! [`stream`] checks the order of the stream messages of large transactions.
//!
//! [`batch`] frames several messages into one packet between spock-rs nodes.
//!
//! [`transfer`] chooses how a column's values travel (internal, binary, text).
//!
//! [`startup`] has the startup parameters a subscriber sends and the pure
//! negotiation a provider runs on them.

pub mod batch;
mod codec;
pub mod json;
pub mod message;
pub mod startup;
pub mod stream;
pub mod transfer;
pub mod tuple;
pub mod wal_message;
pub mod writer;

pub use codec::{DecodeError, DecodeErrorKind, EncodeError};
pub use message::{
    Begin, Commit, CommitOrder, Delete, Insert, LogicalMessage, Message, OldTuple, OldTupleKind, Origin, RelColumn,
    Relation, Startup, StreamAbort, StreamChange, StreamCommit, StreamStart, StreamStop, Truncate, Update,
};
pub use tuple::{Datum, Tuple};

use bytes::{Bytes, BytesMut};

/// A WAL position (`XLogRecPtr`).
pub type Lsn = u64;

/// The `X/Y` text of an LSN, as `pg_lsn` prints it (hexadecimal, upper case).
pub fn format_lsn(lsn: Lsn) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Parses the `X/Y` text of an LSN (each half at most 8 hexadecimal digits, as
/// `pg_lsn` accepts).
pub fn parse_lsn(s: &str) -> Option<Lsn> {
    let (hi, lo) = s.split_once('/')?;
    let half = |h: &str| {
        (!h.is_empty() && h.len() <= 8 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u64::from_str_radix(h, 16).ok())
            .flatten()
    };
    Some((half(hi)? << 32) | half(lo)?)
}

/// A PostgreSQL timestamp: microseconds since 2000-01-01 00:00:00 UTC (`TimestampTz`).
pub type PgTimestamp = i64;

/// The native protocol versions we speak. Negotiated as `min(5, client max)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtoVersion {
    /// Spock 5.0's protocol: `remote_insert_lsn` only at the end of COMMIT.
    V4 = 4,
    /// Spock 5.0.5+/6.0: `remote_insert_lsn` before every message but `S`.
    V5 = 5,
}

impl ProtoVersion {
    /// The oldest version we accept (`spock.spock_min_proto_version()`).
    pub const MIN: ProtoVersion = ProtoVersion::V4;
    /// The newest version we speak (`spock.spock_max_proto_version()`).
    pub const MAX: ProtoVersion = ProtoVersion::V5;

    /// The version as the number used in startup parameters.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// The version for a number, if we speak it.
    pub fn from_u32(v: u32) -> Option<ProtoVersion> {
        match v {
            4 => Some(ProtoVersion::V4),
            5 => Some(ProtoVersion::V5),
            _ => None,
        }
    }
}

/// A decoded message and the provider's WAL insert position that came with it
/// (every message in version 5; only COMMIT in version 4; never the startup message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The provider's `GetXLogWriteRecPtr()` when it wrote the message, if carried.
    pub remote_insert_lsn: Option<Lsn>,
    /// The message itself.
    pub message: Message,
}

/// Appends `message` to `out` in protocol `version`. `remote_insert_lsn` is the
/// provider's current WAL write position: it prefixes the message in version 5 and
/// ends COMMIT in version 4; the startup message never carries it.
pub fn encode(
    message: &Message,
    version: ProtoVersion,
    remote_insert_lsn: Lsn,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    message.encode(version, remote_insert_lsn, out)
}

/// Decodes one message (the payload of one CopyData `w` frame) in protocol `version`.
///
/// The startup message `S` is the first message of every stream and is never
/// prefixed: decode it with [`decode_startup`], or with [`StreamDecoder`] which
/// tracks where a stream is.
pub fn decode(buf: &Bytes, version: ProtoVersion) -> Result<Decoded, DecodeError> {
    Message::decode(buf, version)
}

/// Decodes the startup message `S` that begins every stream.
pub fn decode_startup(buf: &Bytes) -> Result<Startup, DecodeError> {
    Startup::decode_message(buf)
}

/// Decodes a stream of messages as a Spock subscriber does: the first message must be
/// the startup message, whose `proto_version` parameter (absent before Spock 5.0.5,
/// meaning version 4) selects the version of everything after it.
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    version: Option<ProtoVersion>,
}

impl StreamDecoder {
    /// A decoder waiting for the startup message.
    pub fn new() -> StreamDecoder {
        StreamDecoder { version: None }
    }

    /// The negotiated version, once the startup message was seen.
    pub fn version(&self) -> Option<ProtoVersion> {
        self.version
    }

    /// Decodes the next message of the stream.
    pub fn decode(&mut self, buf: &Bytes) -> Result<Decoded, DecodeError> {
        match self.version {
            Some(version) => Message::decode(buf, version),
            None => {
                let startup = Startup::decode_message(buf)?;
                let version = match startup.get("proto_version") {
                    None => ProtoVersion::V4,
                    Some(v) => v
                        .parse::<u32>()
                        .ok()
                        .and_then(ProtoVersion::from_u32)
                        .ok_or_else(|| DecodeError::new(0, DecodeErrorKind::UnsupportedVersion(v.to_string())))?,
                };
                self.version = Some(version);
                Ok(Decoded { remote_insert_lsn: None, message: Message::Startup(startup) })
            }
        }
    }
}

#[cfg(test)]
mod tests;
