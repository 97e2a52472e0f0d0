//! The logical decoding output plugin `spock_output`.
//!
//! PostgreSQL loads the plugin named by a slot as a library, so the tiny library
//! `spock_output` (crate `spock-output`) hands over to [`spock_output_plugin_init`]
//! here. The callbacks are short: they gather what PostgreSQL decoded, ask
//! `spock_core` what to send (negotiation, replication-set and origin filters) and
//! encode it with `spock_core::proto`.
//!
//! Per connection: the startup parameters are negotiated in the startup callback;
//! the `S` reply goes out before the first transaction; BEGIN and ORIGIN are written
//! only when a transaction has something to send, so transactions touching no
//! published table cost nothing on the wire; relation metadata is sent once per
//! relation and again after the relation changes (relcache invalidation).

pub(crate) mod catalog;
mod queue;
mod relation;
mod row_filter;
mod stream;

pub(crate) use stream::allow_table_scans_while_streaming;

use std::collections::HashMap;
use std::ffi::CStr;

use bytes::BytesMut;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{PgList, PgSqlErrorCode};
use rustc_hash::FxHashMap;
use spock_core::origin::{self, OriginId};
use spock_core::proto::batch;
use spock_core::proto::startup::{self, BinaryFormat, Negotiated, ServerInfo};
use spock_core::proto::writer::{self, RowAction};
use spock_core::proto::{
    Begin, Commit, LogicalMessage, Message, OldTupleKind, Origin, ProtoVersion, Startup, Truncate,
};
use spock_core::repset::{Action, RepSet};

use crate::error::{code_for_sqlstate, PgError};
use relation::RelEntry;

/// Prefix of logical messages spock forwards (`spock.sync_event()`).
const SPOCK_MESSAGE_PREFIX: &str = "Spock";

/// State of one decoding session, owned through `ctx->output_plugin_private`.
struct PluginState {
    negotiated: Negotiated,
    version: ProtoVersion,
    local_node: catalog::LocalNode,
    sets: Vec<RepSet>,
    startup: Option<Startup>,
    /// BEGIN and ORIGIN of the current transaction were written.
    txn_started: bool,
    rels: FxHashMap<pg_sys::Oid, RelEntry>,
    node_names: HashMap<OriginId, Option<String>>,
    buf: BytesMut,
    /// Short-lived memory for each callback, reset when it returns.
    cxt: pg_sys::MemoryContext,
    /// Streaming of in-progress transactions ([`stream`]).
    stream: stream::StreamState,
    /// Messages are batched (`spock_rs.batch`, spock_core::proto::batch).
    batch: bool,
    /// A batch is being collected in `ctx->out` (prepared, not written yet).
    batch_open: bool,
}

/// Entry point called by the `spock_output` library's `_PG_output_plugin_init`.
///
/// SAFETY: PostgreSQL passes a valid, writable callback table.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn spock_output_plugin_init(cb: *mut pg_sys::OutputPluginCallbacks) {
    // SAFETY: see above.
    let cb = unsafe { &mut *cb };
    cb.startup_cb = Some(spock_output_startup);
    cb.begin_cb = Some(spock_output_begin);
    cb.change_cb = Some(spock_output_change);
    cb.truncate_cb = Some(spock_output_truncate);
    cb.commit_cb = Some(spock_output_commit);
    cb.message_cb = Some(spock_output_message);
    cb.filter_by_origin_cb = Some(spock_output_filter_by_origin);
    cb.shutdown_cb = Some(spock_output_shutdown);
    stream::register(cb);
}

/// The plugin state of a decoding context.
///
/// SAFETY: `ctx` must be a context whose startup callback ran with `is_init` false.
unsafe fn state<'a>(ctx: *mut pg_sys::LogicalDecodingContext) -> &'a mut PluginState {
    // SAFETY: startup stored a leaked Box<PluginState> there.
    unsafe { &mut *((*ctx).output_plugin_private as *mut PluginState) }
}

fn server_info() -> ServerInfo {
    let num = pg_sys::PG_VERSION_NUM;
    // SAFETY: plain reads of backend globals and an encoding name constant.
    let (encoding, pid) = unsafe {
        (CStr::from_ptr(pg_sys::GetDatabaseEncodingName()).to_string_lossy().into_owned(), pg_sys::MyProcPid)
    };
    ServerInfo {
        pg_version_num: num,
        pg_version: format!("{}.{}", num / 10000, num % 100),
        pg_catversion: pg_sys::CATALOG_VERSION_NO,
        database_encoding: encoding,
        binary: BinaryFormat {
            bigendian: cfg!(target_endian = "big"),
            sizeof_datum: std::mem::size_of::<pg_sys::Datum>() as u32,
            sizeof_int: std::mem::size_of::<std::ffi::c_int>() as u32,
            sizeof_long: std::mem::size_of::<std::ffi::c_long>() as u32,
            maxalign: pg_sys::MAXIMUM_ALIGNOF,
            float4_byval: true,
            float8_byval: cfg!(target_pointer_width = "64"),
            integer_datetimes: true,
        },
        walsender_pid: pid,
        spock_version: spock_core::SPOCK_COMPAT_VERSION.to_string(),
        spock_version_num: spock_core::SPOCK_COMPAT_VERSION_NUM,
    }
}

/// The client's options (`START_REPLICATION ... (k 'v', ...)` or the SQL
/// functions' variadic pairs) as key/value strings.
///
/// SAFETY: `options` is a List of DefElem with String (or NULL) arguments.
unsafe fn client_params(options: *mut pg_sys::List) -> Vec<(String, String)> {
    // SAFETY: see above.
    let list = unsafe { PgList::<pg_sys::DefElem>::from_pg(options) };
    list.iter_ptr()
        .map(|elem| {
            // SAFETY: elements are DefElem; defname is a C string; arg is a String node or NULL.
            unsafe {
                let key = CStr::from_ptr((*elem).defname).to_string_lossy().into_owned();
                let arg = (*elem).arg;
                let value = if arg.is_null() {
                    String::new()
                } else {
                    let s = (*(arg as *mut pg_sys::String)).sval;
                    if s.is_null() {
                        String::new()
                    } else {
                        CStr::from_ptr(s).to_string_lossy().into_owned()
                    }
                };
                (key, value)
            }
        })
        .collect()
}

#[pg_guard]
unsafe extern "C-unwind" fn spock_output_startup(
    ctx: *mut pg_sys::LogicalDecodingContext,
    opt: *mut pg_sys::OutputPluginOptions,
    is_init: bool,
) {
    // SAFETY: PostgreSQL passes valid pointers.
    unsafe { (*opt).output_type = pg_sys::OutputPluginOutputType::OUTPUT_PLUGIN_BINARY_OUTPUT };
    if is_init {
        // Slot creation: nothing to negotiate.
        // SAFETY: valid decoding context.
        unsafe { (*ctx).streaming = false };
        return;
    }
    // SAFETY: valid decoding context.
    let params = unsafe { client_params((*ctx).output_plugin_options) };
    let info = server_info();
    let negotiated = startup::negotiate(&params, &info).unwrap_or_else(|e| {
        PgError::new(code_for_sqlstate(e.sqlstate()), format!("spock_output: {e}"))
            .hint("The subscriber must send Spock's startup parameters (startup_params_format, min_proto_version, max_proto_version, ...).")
            .raise()
    });
    if negotiated.format == startup::ProtoFormat::Json {
        PgError::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "spock_output: proto_format \"json\" is not supported",
        )
        .hint("Use the native protocol (proto_format 'native' or leave it out).")
        .raise();
    }
    // Stream large in-progress transactions only to a client that asked (spock-rs);
    // for others PostgreSQL spills them to disk as before.
    // SAFETY: valid decoding context.
    unsafe { (*ctx).streaming &= negotiated.streaming() };
    for notice in &negotiated.notices {
        pgrx::debug1!("spock_output: {notice}");
    }

    // Catalog reads need a transaction; a walsender has none yet.
    // SAFETY: starting/committing a transaction around SPI, as walsender-side plugins do.
    let started = unsafe {
        if !pg_sys::IsTransactionState() {
            pg_sys::StartTransactionCommand();
            true
        } else {
            false
        }
    };
    let local_node = catalog::local_node();
    let all_sets = catalog::node_repsets(local_node.id);
    let sets = match &negotiated.replication_sets {
        None => Vec::new(),
        Some(names) => spock_core::repset::resolve_set_names(names, &all_sets).unwrap_or_else(|e| {
            PgError::new(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("spock_output: {e}"))
                .detail(format!(
                    "Node {} has the sets: {}.",
                    local_node.name,
                    all_sets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                ))
                .raise()
        }),
    };
    if started {
        // SAFETY: ends the transaction started above.
        unsafe { pg_sys::CommitTransactionCommand() };
    }

    crate::invalidation::register();
    let startup_msg = startup::startup_reply(&negotiated, &info);
    // SAFETY: a child of the decoding context's memory, deleted with it.
    let cxt = unsafe {
        pg_sys::AllocSetContextCreateInternal(
            (*ctx).context,
            c"spock output message".as_ptr(),
            0,
            8 * 1024,
            8 * 1024 * 1024,
        )
    };
    let state = Box::new(PluginState {
        stream: stream::StreamState::default(),
        version: negotiated.version,
        negotiated,
        local_node,
        sets,
        startup: Some(startup_msg),
        txn_started: false,
        rels: FxHashMap::default(),
        node_names: HashMap::new(),
        buf: BytesMut::with_capacity(8192),
        cxt,
        batch: false,
        batch_open: false,
    });
    // SAFETY: ownership moves to the context; shutdown frees it.
    unsafe { (*ctx).output_plugin_private = Box::into_raw(state).cast() };
}

/// Encodes `msg` and hands it to PostgreSQL as one write.
///
/// SAFETY: `ctx` is a valid decoding context inside a callback.
unsafe fn write(ctx: *mut pg_sys::LogicalDecodingContext, st: &mut PluginState, msg: &Message) {
    // Inside a stream block, changes and relation messages carry their xid (`x`).
    let wrapped;
    let msg = match st.stream.change_prefix() {
        Some(xid) if stream::streamable(msg) => {
            wrapped = Message::StreamChange(spock_core::proto::StreamChange { xid, message: Box::new(msg.clone()) });
            &wrapped
        }
        _ => msg,
    };
    st.buf.clear();
    // SAFETY: reads the current WAL write position.
    let insert_lsn = unsafe { pg_sys::GetXLogWriteRecPtr() };
    if let Err(e) = msg.encode(st.version, insert_lsn, &mut st.buf) {
        PgError::new(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!("spock_output: cannot encode message: {e}"),
        )
        .raise();
    }
    if let Message::Startup(_) = msg {
        // Never framed: the subscriber learns from it whether batches follow.
        // SAFETY: forwarded.
        unsafe { write_packet(ctx, &st.buf) };
        st.batch = st.negotiated.batch();
        return;
    }
    // SAFETY: forwarded.
    unsafe { flush(ctx, st, batch::ends_batch(msg)) };
}

/// Hands the message encoded in `st.buf` to PostgreSQL: as its own packet, or
/// (batches agreed) framed into the packet being collected, which is sent when
/// `ends_batch` or when it is full.
///
/// SAFETY: as [`write`].
unsafe fn flush(ctx: *mut pg_sys::LogicalDecodingContext, st: &mut PluginState, ends_batch: bool) {
    if !st.batch {
        // SAFETY: forwarded.
        return unsafe { write_packet(ctx, &st.buf) };
    }
    // SAFETY: the output plugin write sequence on ctx->out, spread over the
    // callbacks of one transaction (or stream block): prepared before its first
    // message, written after its last. Nothing else touches ctx->out meanwhile.
    unsafe {
        if !st.batch_open {
            pg_sys::OutputPluginPrepareWrite(ctx, true);
            st.batch_open = true;
        }
        let out = (*ctx).out;
        let header = batch::frame_header(st.buf.len());
        pg_sys::appendBinaryStringInfo(out, header.as_ptr().cast(), header.len() as i32);
        pg_sys::appendBinaryStringInfo(out, st.buf.as_ptr().cast(), st.buf.len() as i32);
        if ends_batch || (*out).len as usize >= batch::BATCH_BYTES {
            pg_sys::OutputPluginWrite(ctx, true);
            st.batch_open = false;
        }
    }
}

/// Sends `bytes` as one packet.
///
/// SAFETY: as [`write`].
unsafe fn write_packet(ctx: *mut pg_sys::LogicalDecodingContext, bytes: &[u8]) {
    // SAFETY: standard output plugin write sequence on ctx->out.
    unsafe {
        pg_sys::OutputPluginPrepareWrite(ctx, true);
        pg_sys::appendBinaryStringInfo((*ctx).out, bytes.as_ptr().cast(), bytes.len() as i32);
        pg_sys::OutputPluginWrite(ctx, true);
    }
}

/// Sends the startup reply if it was not sent yet.
///
/// SAFETY: as [`write`].
unsafe fn send_startup(ctx: *mut pg_sys::LogicalDecodingContext, st: &mut PluginState) {
    if let Some(s) = st.startup.take() {
        // SAFETY: forwarded.
        unsafe { write(ctx, st, &Message::Startup(s)) };
    }
}

/// Writes BEGIN and ORIGIN for `txn` before its first sent change.
///
/// SAFETY: as [`write`]; `txn` is the transaction being decoded.
unsafe fn ensure_txn_started(
    ctx: *mut pg_sys::LogicalDecodingContext,
    st: &mut PluginState,
    txn: *mut pg_sys::ReorderBufferTXN,
) {
    if st.stream.in_block {
        // SAFETY: forwarded.
        return unsafe { stream::ensure_block_started(ctx, st) };
    }
    if st.txn_started {
        return;
    }
    // SAFETY: valid transaction from the reorder buffer.
    let (xid, final_lsn, commit_time, txn_origin, origin_lsn) =
        unsafe { ((*txn).xid, (*txn).final_lsn, (*txn).xact_time.commit_time, (*txn).origin_id, (*txn).origin_lsn) };
    // SAFETY: forwarded.
    unsafe { send_startup(ctx, st) };
    let begin = Message::Begin(Begin { flags: 0, final_lsn, commit_time, xid: xid.into_inner() });
    // SAFETY: forwarded.
    unsafe { write(ctx, st, &begin) };
    let origin_id = origin::announced_origin(txn_origin, st.local_node.id);
    let origin_name = if origin_id == st.local_node.id {
        Some(st.local_node.name.clone())
    } else {
        st.node_names.entry(origin_id).or_insert_with(|| catalog::node_name(origin_id)).clone()
    };
    let origin = Message::Origin(Origin { origin_lsn, origin_id, origin_name });
    // SAFETY: forwarded.
    unsafe { write(ctx, st, &origin) };
    st.txn_started = true;
}

#[pg_guard]
unsafe extern "C-unwind" fn spock_output_begin(
    ctx: *mut pg_sys::LogicalDecodingContext,
    _txn: *mut pg_sys::ReorderBufferTXN,
) {
    // SAFETY: startup ran for this context.
    let st = unsafe { state(ctx) };
    st.txn_started = false;
    // The startup reply goes out first, even when this transaction sends nothing.
    // SAFETY: inside a callback.
    unsafe { send_startup(ctx, st) };
}

#[pg_guard]
unsafe extern "C-unwind" fn spock_output_commit(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    commit_lsn: pg_sys::XLogRecPtr,
) {
    // SAFETY: startup ran for this context.
    let st = unsafe { state(ctx) };
    if !st.txn_started {
        // Nothing of this transaction was published: send nothing, but let the
        // walsender know we made progress so it can confirm it.
        // SAFETY: valid context and transaction.
        unsafe { pg_sys::OutputPluginUpdateProgress(ctx, false) };
        return;
    }
    // SAFETY: valid transaction.
    let (end_lsn, commit_time) = unsafe { ((*txn).end_lsn, (*txn).xact_time.commit_time) };
    let commit = Message::Commit(Commit { flags: 0, commit_lsn, end_lsn, commit_time });
    // SAFETY: inside a callback.
    unsafe { write(ctx, st, &commit) };
    st.txn_started = false;
}

#[pg_guard]
unsafe extern "C-unwind" fn spock_output_filter_by_origin(
    ctx: *mut pg_sys::LogicalDecodingContext,
    origin_id: pg_sys::RepOriginId,
) -> bool {
    // While a slot is created (startup ran with is_init, no state) PostgreSQL asks
    // about commits it reads to build the snapshot; nothing is sent then anyway.
    // SAFETY: valid decoding context.
    if unsafe { (*ctx).output_plugin_private }.is_null() {
        return false;
    }
    // SAFETY: startup ran for this context.
    let st = unsafe { state(ctx) };
    !origin::should_send(origin_id, st.negotiated.forward_origins)
}

/// The cache entry of `rel`, built on first use or after invalidation.
///
/// SAFETY: `rel` is an open relation.
unsafe fn rel_entry(st: &mut PluginState, rel: pg_sys::Relation) -> &mut RelEntry {
    crate::invalidation::apply(&mut st.rels);
    // SAFETY: open relation.
    let relid = unsafe { (*rel).rd_id };
    let (sets, only, internal, binary) = (
        &st.sets,
        st.negotiated.replicate_only_table.as_ref(),
        st.negotiated.allow_internal_basetypes,
        st.negotiated.allow_binary_basetypes,
    );
    // SAFETY: forwarded.
    st.rels.entry(relid).or_insert_with(|| unsafe { queue::build_entry(rel, sets, only, internal, binary) })
}

/// Sends the relation's `R` message if this connection has not seen it.
///
/// SAFETY: as [`write`].
unsafe fn ensure_relmeta(ctx: *mut pg_sys::LogicalDecodingContext, st: &mut PluginState, relid: pg_sys::Oid) {
    if st.stream.in_block {
        // SAFETY: forwarded.
        return unsafe { stream::ensure_relmeta(ctx, st, relid) };
    }
    let Some(entry) = st.rels.get_mut(&relid) else { return };
    if entry.relmeta_sent {
        return;
    }
    entry.relmeta_sent = true;
    let msg = Message::Relation(entry.relation_message().clone());
    // SAFETY: forwarded.
    unsafe { write(ctx, st, &msg) };
}

/// Runs `f` in the per-callback memory context and resets it afterwards.
///
/// SAFETY: `st.cxt` is the state's valid memory context.
unsafe fn in_message_context<R>(st_cxt: pg_sys::MemoryContext, f: impl FnOnce() -> R) -> R {
    // SAFETY: switching to and resetting our own context.
    unsafe {
        let old = pg_sys::MemoryContextSwitchTo(st_cxt);
        let r = f();
        pg_sys::MemoryContextSwitchTo(old);
        pg_sys::MemoryContextReset(st_cxt);
        r
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn spock_output_change(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    rel: pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
) {
    // SAFETY: startup ran for this context.
    let st = unsafe { state(ctx) };
    let cxt = st.cxt;
    // SAFETY: all pointers come from the reorder buffer for this callback.
    unsafe { in_message_context(cxt, || decode_change(ctx, st, txn, rel, change)) }
}

/// SAFETY: arguments of a change callback.
unsafe fn decode_change(
    ctx: *mut pg_sys::LogicalDecodingContext,
    st: &mut PluginState,
    txn: *mut pg_sys::ReorderBufferTXN,
    rel: pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
) {
    use pg_sys::ReorderBufferChangeType::*;
    // SAFETY: valid change; tp is the active union member for row changes.
    let (action, newtuple, oldtuple) = unsafe {
        let tp = (*change).data.tp;
        match (*change).action {
            REORDER_BUFFER_CHANGE_INSERT => (Action::Insert, tp.newtuple, tp.oldtuple),
            REORDER_BUFFER_CHANGE_UPDATE => (Action::Update, tp.newtuple, tp.oldtuple),
            REORDER_BUFFER_CHANGE_DELETE => (Action::Delete, tp.newtuple, tp.oldtuple),
            _ => return,
        }
    };
    // SAFETY: open relation.
    let relid = unsafe { (*rel).rd_id };
    // spock.queue rows go to subscribers of the sets they name (queue.rs).
    // SAFETY: rel is open; newtuple is null or its new row.
    if !unsafe { queue::row_wanted(rel, action, newtuple, &st.sets) } {
        return;
    }
    // SAFETY: rel is open.
    let entry = unsafe { rel_entry(st, rel) };
    if !entry.publication.publishes(action) {
        return;
    }
    let filter_tuple = if action == Action::Delete { oldtuple } else { newtuple };
    if entry.has_row_filters() {
        if filter_tuple.is_null() {
            return;
        }
        // SAFETY: the tuple belongs to rel.
        if !unsafe { entry.row_passes(rel, filter_tuple) } {
            return;
        }
    }
    if action == Action::Delete && oldtuple.is_null() {
        // A table without replica identity deletes without an old key; it cannot be
        // in a set that publishes deletes, but never send a DELETE without a key.
        PgError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "spock_output: DELETE on table {} has no replica identity to send",
                entry.relation_message().relname
            ),
        )
        .raise()
    }
    if action != Action::Delete && newtuple.is_null() {
        return;
    }
    let old_kind = if entry.identity_full { OldTupleKind::Full } else { OldTupleKind::Key };
    // SAFETY: inside a callback.
    unsafe {
        ensure_txn_started(ctx, st, txn);
        ensure_relmeta(ctx, st, relid);
    }
    let entry = st.rels.get_mut(&relid).expect("entry built above");
    let buf = &mut st.buf;
    buf.clear();
    // SAFETY: reads the current WAL write position.
    let insert_lsn = unsafe { pg_sys::GetXLogWriteRecPtr() };
    let row_action = match action {
        Action::Insert => RowAction::Insert,
        Action::Update => RowAction::Update,
        _ => RowAction::Delete,
    };
    writer::row_header_in(buf, st.version, insert_lsn, st.stream.change_prefix(), row_action, u32::from(relid));
    // SAFETY: the tuples belong to rel.
    let written = unsafe {
        (|| {
            if !oldtuple.is_null() {
                writer::old_tuple_marker(buf, old_kind);
                entry.write_tuple(rel, oldtuple, buf)?;
            }
            if action != Action::Delete {
                writer::new_tuple_marker(buf);
                entry.write_tuple(rel, newtuple, buf)?;
            }
            Ok::<(), spock_core::proto::EncodeError>(())
        })()
    };
    if let Err(e) = written {
        PgError::new(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!("spock_output: cannot encode change: {e}"),
        )
        .raise();
    }
    // SAFETY: inside a callback.
    unsafe { flush(ctx, st, false) };
}

#[pg_guard]
unsafe extern "C-unwind" fn spock_output_truncate(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    nrelations: std::ffi::c_int,
    relations: *mut pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
) {
    // SAFETY: startup ran for this context.
    let st = unsafe { state(ctx) };
    let cxt = st.cxt;
    // SAFETY: arguments of a truncate callback.
    unsafe {
        in_message_context(cxt, || {
            let rels = std::slice::from_raw_parts(relations, nrelations.max(0) as usize);
            let mut relids = Vec::new();
            for &rel in rels {
                let entry = rel_entry(st, rel);
                if entry.publication.publishes(Action::Truncate) {
                    relids.push((*rel).rd_id);
                }
            }
            if relids.is_empty() {
                return;
            }
            let flags = (*change).data.truncate;
            ensure_txn_started(ctx, st, txn);
            for &relid in &relids {
                ensure_relmeta(ctx, st, relid);
            }
            let msg = Message::Truncate(Truncate {
                cascade: flags.cascade,
                restart_seqs: flags.restart_seqs,
                relids: relids.iter().map(|r| u32::from(*r)).collect(),
            });
            write(ctx, st, &msg);
        })
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn spock_output_message(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    message_lsn: pg_sys::XLogRecPtr,
    transactional: bool,
    prefix: *const std::ffi::c_char,
    message_size: pg_sys::Size,
    message: *const std::ffi::c_char,
) {
    // SAFETY: startup ran for this context; prefix and message come from the decoded record.
    unsafe {
        let st = state(ctx);
        if CStr::from_ptr(prefix).to_bytes() != SPOCK_MESSAGE_PREFIX.as_bytes() {
            return;
        }
        let content = bytes::Bytes::copy_from_slice(std::slice::from_raw_parts(message.cast::<u8>(), message_size));
        let xid = if transactional && !txn.is_null() { (*txn).xid.into_inner() } else { 0 };
        if transactional && !txn.is_null() {
            ensure_txn_started(ctx, st, txn);
        } else {
            send_startup(ctx, st);
        }
        let msg = Message::LogicalMessage(LogicalMessage {
            xid,
            lsn: message_lsn,
            transactional,
            prefix: SPOCK_MESSAGE_PREFIX.to_string(),
            content,
        });
        write(ctx, st, &msg);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn spock_output_shutdown(ctx: *mut pg_sys::LogicalDecodingContext) {
    // SAFETY: the private pointer is null (slot creation) or our leaked Box.
    unsafe {
        let p = (*ctx).output_plugin_private as *mut PluginState;
        if !p.is_null() {
            drop(Box::from_raw(p));
            (*ctx).output_plugin_private = std::ptr::null_mut();
        }
    }
}
