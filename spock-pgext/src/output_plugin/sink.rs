//! The one way the output plugin's messages reach the subscriber, for transactions
//! sent at their commit and for streamed blocks alike: encoding (with the `x` prefix
//! inside a stream block), the startup reply first, and packets, one per message
//! or, when batches were agreed (`spock_rs.batch`, `spock_core::proto::batch`),
//! framed into packets of a transaction or stream block.

use bytes::BytesMut;
use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use spock_core::proto::batch;
use spock_core::proto::startup::Negotiated;
use spock_core::proto::writer::{self, RowAction};
use spock_core::proto::{EncodeError, Message, ProtoVersion, Startup, StreamChange};

use crate::error::PgError;

/// Where messages are encoded and how they are handed to PostgreSQL.
pub(super) struct Sink {
    version: ProtoVersion,
    /// The startup reply, until it is sent.
    startup: Option<Startup>,
    /// Batches were agreed; they start after the startup reply.
    batch_agreed: bool,
    /// Messages are batched now.
    batch: bool,
    /// A batch is being collected in `ctx->out` (prepared, not written yet).
    batch_open: bool,
    buf: BytesMut,
    /// `proto_format = json`: the startup message to write first (then `None`),
    /// and text messages instead of the native ones.
    json: bool,
    json_startup: Option<String>,
}

/// An ERROR for a message that cannot be encoded (a value too large for the format).
fn encode_failed(what: &str, e: EncodeError) -> ! {
    PgError::new(PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED, format!("spock_output: cannot encode {what}: {e}"))
        .raise()
}

impl Sink {
    /// A sink for a connection that negotiated `negotiated`; `startup` is its reply.
    pub(super) fn new(negotiated: &Negotiated, startup: Startup, params: &[(String, String)]) -> Sink {
        let json = negotiated.format == spock_core::proto::startup::ProtoFormat::Json;
        Sink {
            version: negotiated.version,
            startup: Some(startup),
            batch_agreed: negotiated.batch() && !json,
            batch: false,
            batch_open: false,
            buf: BytesMut::with_capacity(8192),
            json,
            json_startup: json.then(|| spock_core::proto::json::startup(params)),
        }
    }

    /// `proto_format = json` was asked for.
    pub(super) fn is_json(&self) -> bool {
        self.json
    }

    /// Writes one JSON message (json mode).
    ///
    /// SAFETY: as [`Sink::send_startup`], which ran before.
    pub(super) unsafe fn send_json(&mut self, ctx: *mut pg_sys::LogicalDecodingContext, text: &str) {
        // SAFETY: forwarded.
        unsafe { write_packet(ctx, text.as_bytes()) };
    }

    /// Sends the startup reply if it was not sent yet. It is never framed: the
    /// subscriber learns from it whether batches follow.
    ///
    /// SAFETY: `ctx` is a valid decoding context inside a callback.
    pub(super) unsafe fn send_startup(&mut self, ctx: *mut pg_sys::LogicalDecodingContext) {
        let Some(startup) = self.startup.take() else { return };
        if let Some(text) = self.json_startup.take() {
            // SAFETY: forwarded.
            unsafe { write_packet(ctx, text.as_bytes()) };
            return;
        }
        self.buf.clear();
        if let Err(e) = Message::Startup(startup).encode(self.version, insert_lsn(), &mut self.buf) {
            encode_failed("the startup reply", e);
        }
        // SAFETY: forwarded.
        unsafe { write_packet(ctx, &self.buf) };
        self.batch = self.batch_agreed;
    }

    /// Encodes `msg` and hands it to PostgreSQL. `stream_xid` is the (sub)transaction
    /// of the change being written inside a stream block: then changes and relation
    /// messages travel inside `x`.
    ///
    /// SAFETY: as [`Sink::send_startup`], which ran before.
    pub(super) unsafe fn send(
        &mut self,
        ctx: *mut pg_sys::LogicalDecodingContext,
        msg: &Message,
        stream_xid: Option<u32>,
    ) {
        if self.json {
            // Only BEGIN and COMMIT have a json form besides rows and the startup.
            let text = match msg {
                Message::Begin(b) => {
                    spock_core::proto::json::begin(b.xid, b.final_lsn, Some(&timestamptz_text(b.commit_time)))
                }
                Message::Commit(c) => spock_core::proto::json::commit(c.commit_lsn, c.end_lsn),
                _ => return,
            };
            // SAFETY: forwarded.
            return unsafe { self.send_json(ctx, &text) };
        }
        let wrapped;
        let msg = match stream_xid {
            Some(xid) if msg.is_streamable() => {
                wrapped = Message::StreamChange(StreamChange { xid, message: Box::new(msg.clone()) });
                &wrapped
            }
            _ => msg,
        };
        self.buf.clear();
        if let Err(e) = msg.encode(self.version, insert_lsn(), &mut self.buf) {
            encode_failed("message", e);
        }
        // SAFETY: forwarded.
        unsafe { self.flush(ctx, batch::ends_batch(msg)) };
    }

    /// Sends a row change (`I`, `U` or `D`, inside `x` with `stream_xid`) of relation
    /// `relid`, whose tuples `tuples` writes after the header, straight into the
    /// sink's buffer.
    ///
    /// SAFETY: as [`Sink::send`].
    pub(super) unsafe fn send_row(
        &mut self,
        ctx: *mut pg_sys::LogicalDecodingContext,
        stream_xid: Option<u32>,
        action: RowAction,
        relid: u32,
        tuples: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
    ) {
        self.buf.clear();
        writer::row_header_in(&mut self.buf, self.version, insert_lsn(), stream_xid, action, relid);
        if let Err(e) = tuples(&mut self.buf) {
            encode_failed("change", e);
        }
        // SAFETY: forwarded.
        unsafe { self.flush(ctx, false) };
    }

    /// Hands the message encoded in `buf` to PostgreSQL: as its own packet, or
    /// (batches agreed) framed into the packet being collected, which is sent when
    /// `ends_batch` or when it is full.
    ///
    /// SAFETY: as [`Sink::send`].
    unsafe fn flush(&mut self, ctx: *mut pg_sys::LogicalDecodingContext, ends_batch: bool) {
        if !self.batch {
            // SAFETY: forwarded.
            return unsafe { write_packet(ctx, &self.buf) };
        }
        // SAFETY: the output plugin write sequence on ctx->out, spread over the
        // callbacks of one transaction (or stream block): prepared before its first
        // message, written after its last. Nothing else touches ctx->out meanwhile.
        unsafe {
            if !self.batch_open {
                pg_sys::OutputPluginPrepareWrite(ctx, true);
                self.batch_open = true;
            }
            let out = (*ctx).out;
            let header = batch::frame_header(self.buf.len());
            pg_sys::appendBinaryStringInfo(out, header.as_ptr().cast(), header.len() as i32);
            pg_sys::appendBinaryStringInfo(out, self.buf.as_ptr().cast(), self.buf.len() as i32);
            if ends_batch || (*out).len as usize >= batch::BATCH_BYTES {
                pg_sys::OutputPluginWrite(ctx, true);
                self.batch_open = false;
            }
        }
    }
}

/// The current WAL write position, sent with each message from protocol 5 on.
fn insert_lsn() -> u64 {
    // SAFETY: reads a shared-memory position under its own lock.
    unsafe { pg_sys::GetXLogWriteRecPtr() }
}

/// Sends `bytes` as one packet.
///
/// SAFETY: as [`Sink::send`].
/// A commit timestamp as PostgreSQL prints a timestamptz.
fn timestamptz_text(t: i64) -> String {
    // SAFETY: timestamptz_to_str formats into a static buffer, copied at once.
    unsafe { std::ffi::CStr::from_ptr(pg_sys::timestamptz_to_str(t)) }.to_string_lossy().into_owned()
}

unsafe fn write_packet(ctx: *mut pg_sys::LogicalDecodingContext, bytes: &[u8]) {
    // SAFETY: standard output plugin write sequence on ctx->out.
    unsafe {
        pg_sys::OutputPluginPrepareWrite(ctx, true);
        pg_sys::appendBinaryStringInfo((*ctx).out, bytes.as_ptr().cast(), bytes.len() as i32);
        pg_sys::OutputPluginWrite(ctx, true);
    }
}
