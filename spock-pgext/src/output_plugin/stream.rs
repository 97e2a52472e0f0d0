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
//!   `U`, `D`, `T` or `M` message, through the same callbacks, filters (replication
//!   sets, actions, row filters, column lists, origin filter) and sink as a
//!   non-streamed transaction;
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
use spock_core::proto::{Message, Relation, StreamAbort, StreamCommit, StreamStart, StreamStop};

use super::{state, PluginState};

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

    /// Notes the (sub)transaction of a change about to be written (used inside a
    /// stream block only).
    ///
    /// SAFETY: `change` and `txn` are valid reorder-buffer pointers.
    pub(super) unsafe fn note_change(
        &mut self,
        txn: *mut pg_sys::ReorderBufferTXN,
        change: *mut pg_sys::ReorderBufferChange,
    ) {
        // SAFETY: see above; change->txn is set for queued changes.
        let own = unsafe { (*change).txn };
        // SAFETY: forwarded.
        unsafe { self.note_txn(if own.is_null() { txn } else { own }) };
    }

    /// Notes the (sub)transaction of a transactional message about to be written.
    ///
    /// SAFETY: `txn` is a valid reorder-buffer transaction.
    pub(super) unsafe fn note_txn(&mut self, txn: *mut pg_sys::ReorderBufferTXN) {
        // SAFETY: see above.
        self.change_xid = unsafe { (*txn).xid.into_inner() };
    }
}

/// Registers the callbacks of stream blocks and of their ends; changes inside
/// blocks go through the ordinary change callbacks (see `spock_output_plugin_init`).
pub(super) fn register(cb: &mut pg_sys::OutputPluginCallbacks) {
    cb.stream_start_cb = Some(spock_output_stream_start);
    cb.stream_stop_cb = Some(spock_output_stream_stop);
    cb.stream_abort_cb = Some(spock_output_stream_abort);
    cb.stream_commit_cb = Some(spock_output_stream_commit);
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
    unsafe { st.send(ctx, &Message::StreamStart(StreamStart { xid, first_segment })) };
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
    unsafe { st.send(ctx, &msg) };
}

#[pg_guard]
unsafe extern "C-unwind" fn spock_output_stream_start(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
) {
    // SAFETY: startup ran for this context; txn is the top-level transaction.
    unsafe {
        let st = state(ctx);
        st.sink.send_startup(ctx);
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
            st.send(ctx, &Message::StreamStop(StreamStop::default()));
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn spock_output_stream_abort(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    _abort_lsn: pg_sys::XLogRecPtr,
) {
    // SAFETY: arguments of the abort callback.
    unsafe { end_streamed(ctx, txn, None) }
}

#[pg_guard]
unsafe extern "C-unwind" fn spock_output_stream_commit(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    commit_lsn: pg_sys::XLogRecPtr,
) {
    // SAFETY: arguments of the commit callback.
    unsafe { end_streamed(ctx, txn, Some(commit_lsn)) }
}

/// The end of a streamed transaction: its commit at `commit_lsn` (`txn` is the
/// top-level transaction), or the abort of `txn`, the transaction or one of its
/// subtransactions. Sends `c` or `a` when something of the transaction was sent.
///
/// SAFETY: `ctx` is a decoding context whose startup ran; `txn` (and its toptxn) are
/// valid reorder-buffer transactions.
unsafe fn end_streamed(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    commit_lsn: Option<pg_sys::XLogRecPtr>,
) {
    // SAFETY: see above.
    unsafe {
        let st = state(ctx);
        if (*txn).toptxn.is_null() {
            st.end_repair_mode(txn);
        }
        let xid = super::top_xid(txn);
        let subxid = (*txn).xid.into_inner();
        let Some(sent) = st.stream.sent.get_mut(&xid) else {
            if commit_lsn.is_some() {
                // Nothing published: tell the walsender we made progress.
                pg_sys::OutputPluginUpdateProgress(ctx, false);
            }
            return;
        };
        if commit_lsn.is_none() && xid != subxid {
            // The subscriber drops what it kept from the subtransaction on, which
            // may include relation messages: send them again when needed.
            sent.clear();
        } else {
            st.stream.sent.remove(&xid);
        }
        let msg = match commit_lsn {
            None => Message::StreamAbort(StreamAbort { xid, subxid }),
            Some(commit_lsn) => {
                let origin = st.origin((*txn).origin_id, (*txn).origin_lsn);
                Message::StreamCommit(StreamCommit {
                    xid,
                    commit_lsn,
                    end_lsn: (*txn).end_lsn,
                    commit_time: (*txn).xact_time.commit_time,
                    origin_lsn: origin.origin_lsn,
                    origin_id: origin.origin_id,
                    origin_name: origin.origin_name,
                })
            }
        };
        st.send(ctx, &msg);
    }
}
