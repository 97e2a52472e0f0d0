//! Streaming of large in-progress transactions (PostgreSQL's `stream_*` output
//! plugin callbacks), for a client that asked with `spock_rs.streaming` (a spock-rs
//! subscriber). A pgEdge Spock subscriber never asks: `ctx->streaming` stays off and
//! PostgreSQL spills large transactions to disk instead, as before.
//!
//! Once a transaction's decoded changes exceed `logical_decoding_work_mem`,
//! PostgreSQL hands them to us in blocks (`stream_start` .. `stream_stop`), possibly
//! several per transaction and interleaved with other transactions, and at the end
//! calls `stream_commit` or `stream_abort` (also for a rolled-back subtransaction).
//! We send (letters in `spock_core::proto::message`):
//!
//! * `s` (xid, first segment?) lazily, before the first change of a block that
//!   passes the filters: a block whose changes are all filtered out sends nothing;
//! * each change as `x` (the change's own (sub)transaction id) + the usual `R`, `I`,
//!   `U`, `D`, `T` or `M` message, through the same code and filters (replication
//!   sets, actions, row filters, column lists, origin filter) as a non-streamed
//!   transaction;
//! * `e` at the end of a block that sent `s`;
//! * `c` (with the origin of the transaction, which PostgreSQL only knows at commit)
//!   or `a`, only for transactions of which something was sent.
//!
//! Relation messages inside a stream: the subscriber keeps a streamed transaction's
//! messages, `R` included, in its spill file and applies none of them before the
//! commit, and drops them with the transaction or subtransaction that aborts. So an
//! `R` sent in a stream never counts as sent on the connection (`relmeta_sent` stays
//! as it was); within one streamed transaction we remember which relation shapes we
//! sent and send `R` again when the shape changed, and again for every relation after
//! any subtransaction abort (its `R` may have been part of what was dropped).

use std::collections::HashMap;

use pgrx::pg_sys;
use pgrx::prelude::*;
use spock_core::origin;
use spock_core::proto::{Message, Origin, Relation, StreamAbort, StreamCommit, StreamStart, StreamStop};

use super::{send_startup, state, write, PluginState};

/// Runs `f`, which reads spock's catalog tables, while PostgreSQL may be streaming an
/// in-progress transaction.
///
/// Then PostgreSQL sets `CheckXidAlive` and refuses scans of tables other than
/// system catalogs ("unexpected table_scan_getnextslot call during logical
/// decoding"): a system catalog scan checks whether the streamed transaction aborted
/// meanwhile. spock's catalogs are ordinary tables read through SPI. If the
/// streamed transaction aborts while we read them, what we read only decides how
/// changes of that transaction (which the subscriber then drops) are sent; the
/// relation cache built from it is invalidated with the abort, as PostgreSQL
/// executes a streamed transaction's invalidations when it aborts.
pub(crate) fn allow_table_scans_while_streaming<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: backend-local globals; restored before returning. An ERROR in `f` ends
    // decoding, whose cleanup (ResetLogicalStreamingState) resets them anyway.
    unsafe {
        let saved = pg_sys::CheckXidAlive;
        pg_sys::CheckXidAlive = pg_sys::InvalidTransactionId;
        let r = f();
        pg_sys::CheckXidAlive = saved;
        r
    }
}

/// Per-connection streaming state.
#[derive(Default)]
pub(super) struct StreamState {
    /// Between `stream_start` and `stream_stop`.
    pub(super) in_block: bool,
    /// `s` of the current block was sent.
    block_sent: bool,
    /// Top-level xid of the current block.
    block_xid: u32,
    /// The (sub)transaction of the change being written (the `x` prefix).
    change_xid: u32,
    /// Streamed transactions of which something was sent, with the relation
    /// messages sent inside them.
    sent: HashMap<u32, HashMap<pg_sys::Oid, Relation>>,
}

impl StreamState {
    /// The `x` prefix for messages written now: the change's (sub)transaction id
    /// inside a stream block, nothing otherwise.
    pub(super) fn change_prefix(&self) -> Option<u32> {
        self.in_block.then_some(self.change_xid)
    }
}

/// Whether `msg` travels inside `x` when written in a stream block.
pub(super) fn streamable(msg: &Message) -> bool {
    matches!(
        msg,
        Message::Relation(_)
            | Message::Insert(_)
            | Message::Update(_)
            | Message::Delete(_)
            | Message::Truncate(_)
            | Message::LogicalMessage(_)
    )
}

/// Registers the stream callbacks.
pub(super) fn register(cb: &mut pg_sys::OutputPluginCallbacks) {
    cb.stream_start_cb = Some(spock_output_stream_start);
    cb.stream_stop_cb = Some(spock_output_stream_stop);
    cb.stream_abort_cb = Some(spock_output_stream_abort);
    cb.stream_commit_cb = Some(spock_output_stream_commit);
    cb.stream_change_cb = Some(spock_output_stream_change);
    cb.stream_truncate_cb = Some(spock_output_stream_truncate);
    cb.stream_message_cb = Some(spock_output_stream_message);
}

/// Writes `s` before the first sent change of a stream block.
///
/// SAFETY: `ctx` is a valid decoding context inside a stream callback.
pub(super) unsafe fn ensure_block_started(ctx: *mut pg_sys::LogicalDecodingContext, st: &mut PluginState) {
    if st.stream.block_sent {
        return;
    }
    let xid = st.stream.block_xid;
    let first_segment = !st.stream.sent.contains_key(&xid);
    st.stream.sent.entry(xid).or_default();
    st.stream.block_sent = true;
    // SAFETY: forwarded.
    unsafe { write(ctx, st, &Message::StreamStart(StreamStart { xid, first_segment })) };
}

/// Sends the relation's `R` inside the stream unless this streamed transaction
/// already carries the same shape.
///
/// SAFETY: as [`ensure_block_started`], after it.
pub(super) unsafe fn ensure_relmeta(
    ctx: *mut pg_sys::LogicalDecodingContext,
    st: &mut PluginState,
    relid: pg_sys::Oid,
) {
    let Some(entry) = st.rels.get(&relid) else { return };
    let rel = entry.relation_message();
    let sent = st.stream.sent.entry(st.stream.block_xid).or_default();
    if sent.get(&relid) == Some(rel) {
        return;
    }
    sent.insert(relid, rel.clone());
    let msg = Message::Relation(rel.clone());
    // SAFETY: forwarded.
    unsafe { write(ctx, st, &msg) };
}

/// The `O` fields for a transaction from replication origin `txn_origin`.
fn origin_of(st: &mut PluginState, txn_origin: pg_sys::RepOriginId, origin_lsn: u64) -> Origin {
    let origin_id = origin::announced_origin(txn_origin, st.local_node.id);
    let origin_name = if origin_id == st.local_node.id {
        Some(st.local_node.name.clone())
    } else {
        st.node_names.entry(origin_id).or_insert_with(|| super::catalog::node_name(origin_id)).clone()
    };
    Origin { origin_lsn, origin_id, origin_name }
}

#[pg_guard]
unsafe extern "C-unwind" fn spock_output_stream_start(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
) {
    // SAFETY: startup ran for this context; txn is the top-level transaction.
    unsafe {
        let st = state(ctx);
        send_startup(ctx, st);
        let xid = (*txn).xid.into_inner();
        st.stream.in_block = true;
        st.stream.block_sent = false;
        st.stream.block_xid = xid;
        st.stream.change_xid = xid;
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn spock_output_stream_stop(
    ctx: *mut pg_sys::LogicalDecodingContext,
    _txn: *mut pg_sys::ReorderBufferTXN,
) {
    // SAFETY: startup ran for this context.
    unsafe {
        let st = state(ctx);
        st.stream.in_block = false;
        if std::mem::take(&mut st.stream.block_sent) {
            write(ctx, st, &Message::StreamStop(StreamStop::default()));
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn spock_output_stream_abort(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    _abort_lsn: pg_sys::XLogRecPtr,
) {
    // SAFETY: startup ran for this context; txn (and its toptxn) are valid.
    unsafe {
        let st = state(ctx);
        let top = if (*txn).toptxn.is_null() { txn } else { (*txn).toptxn };
        let xid = (*top).xid.into_inner();
        let subxid = (*txn).xid.into_inner();
        let Some(sent) = st.stream.sent.get_mut(&xid) else {
            // Nothing of this transaction was sent.
            return;
        };
        if xid == subxid {
            st.stream.sent.remove(&xid);
        } else {
            // The subscriber drops what it kept from the subtransaction on, which
            // may include relation messages: send them again when needed.
            sent.clear();
        }
        write(ctx, st, &Message::StreamAbort(StreamAbort { xid, subxid }));
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn spock_output_stream_commit(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    commit_lsn: pg_sys::XLogRecPtr,
) {
    // SAFETY: startup ran for this context; txn is the committed top-level transaction.
    unsafe {
        let st = state(ctx);
        let xid = (*txn).xid.into_inner();
        if st.stream.sent.remove(&xid).is_none() {
            // Nothing published: tell the walsender we made progress.
            pg_sys::OutputPluginUpdateProgress(ctx, false);
            return;
        }
        let origin = origin_of(st, (*txn).origin_id, (*txn).origin_lsn);
        let msg = Message::StreamCommit(StreamCommit {
            xid,
            commit_lsn,
            end_lsn: (*txn).end_lsn,
            commit_time: (*txn).xact_time.commit_time,
            origin_lsn: origin.origin_lsn,
            origin_id: origin.origin_id,
            origin_name: origin.origin_name,
        });
        write(ctx, st, &msg);
    }
}

/// The (sub)transaction id a change belongs to.
///
/// SAFETY: `change` and `txn` are valid reorder-buffer pointers.
unsafe fn change_xid(txn: *mut pg_sys::ReorderBufferTXN, change: *mut pg_sys::ReorderBufferChange) -> u32 {
    // SAFETY: see above; change->txn is set for queued changes.
    unsafe {
        let own = (*change).txn;
        if own.is_null() {
            (*txn).xid.into_inner()
        } else {
            (*own).xid.into_inner()
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn spock_output_stream_change(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    rel: pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
) {
    // SAFETY: arguments of a change callback, passed on unchanged.
    unsafe {
        state(ctx).stream.change_xid = change_xid(txn, change);
        super::spock_output_change(ctx, txn, rel, change);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn spock_output_stream_truncate(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    nrelations: std::ffi::c_int,
    relations: *mut pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
) {
    // SAFETY: arguments of a truncate callback, passed on unchanged.
    unsafe {
        state(ctx).stream.change_xid = change_xid(txn, change);
        super::spock_output_truncate(ctx, txn, nrelations, relations, change);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn spock_output_stream_message(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    message_lsn: pg_sys::XLogRecPtr,
    transactional: bool,
    prefix: *const std::ffi::c_char,
    message_size: pg_sys::Size,
    message: *const std::ffi::c_char,
) {
    // SAFETY: arguments of a message callback, passed on unchanged.
    unsafe {
        if !txn.is_null() {
            state(ctx).stream.change_xid = (*txn).xid.into_inner();
        }
        super::spock_output_message(ctx, txn, message_lsn, transactional, prefix, message_size, message);
    }
}
