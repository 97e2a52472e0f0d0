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
mod sink;
mod stream;

pub(crate) use stream::allow_table_scans_while_streaming;

use std::collections::HashMap;
use std::ffi::CStr;

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{PgList, PgSqlErrorCode};
use rustc_hash::FxHashMap;
use spock_core::origin::{self, OriginId};
use spock_core::proto::startup::{self, BinaryFormat, Negotiated, ServerInfo};
use spock_core::proto::wal_message::{self, WalMessage};
use spock_core::proto::writer::{self, RowAction};
use spock_core::proto::{Begin, Commit, LogicalMessage, Message, OldTupleKind, Origin, Truncate};
use spock_core::repset::{Action, RepSet, UpdateRoute};

use crate::error::{code_for_sqlstate, PgError};
use relation::RelEntry;
use sink::Sink;

/// State of one decoding session, owned through `ctx->output_plugin_private`.
struct PluginState {
    negotiated: Negotiated,
    local_node: catalog::LocalNode,
    sets: Vec<RepSet>,
    /// BEGIN and ORIGIN of the current transaction were written.
    txn_started: bool,
    rels: FxHashMap<pg_sys::Oid, RelEntry>,
    /// Parent of the relation entries' memory contexts (each entry deletes its own
    /// when it is dropped).
    rels_cxt: pg_sys::MemoryContext,
    node_names: HashMap<OriginId, Option<String>>,
    /// Short-lived memory for each callback, reset when it returns.
    cxt: pg_sys::MemoryContext,
    /// Streaming of in-progress transactions ([`stream`]).
    stream: stream::StreamState,
    /// Where every message goes.
    sink: Sink,
    /// Top-level transactions in repair mode (`spock.repair_mode(true)` came and
    /// no `repair_mode(false)` after it): their changes are not sent.
    repair: std::collections::HashSet<u32>,
}

/// The top-level transaction id of `txn`.
///
/// SAFETY: `txn` is a valid reorder-buffer transaction.
unsafe fn top_xid(txn: *mut pg_sys::ReorderBufferTXN) -> u32 {
    // SAFETY: as the caller guarantees; toptxn is null or valid.
    unsafe {
        let top = if (*txn).toptxn.is_null() { txn } else { (*txn).toptxn };
        (*top).xid.into_inner()
    }
}

impl PluginState {
    /// Whether `txn`'s changes are held back by `spock.repair_mode`.
    ///
    /// SAFETY: `txn` is null or a valid reorder-buffer transaction.
    unsafe fn in_repair_mode(&self, txn: *mut pg_sys::ReorderBufferTXN) -> bool {
        // SAFETY: forwarded.
        !self.repair.is_empty() && !txn.is_null() && self.repair.contains(&unsafe { top_xid(txn) })
    }

    /// Forgets the repair mode of a transaction that ended.
    ///
    /// SAFETY: as [`in_repair_mode`](Self::in_repair_mode).
    unsafe fn end_repair_mode(&mut self, txn: *mut pg_sys::ReorderBufferTXN) {
        if !self.repair.is_empty() && !txn.is_null() {
            // SAFETY: forwarded.
            self.repair.remove(&unsafe { top_xid(txn) });
        }
    }
}

impl PluginState {
    /// Sends `msg` (inside a stream block, in `x` when it is a change).
    ///
    /// SAFETY: `ctx` is the valid decoding context of a running callback.
    unsafe fn send(&mut self, ctx: *mut pg_sys::LogicalDecodingContext, msg: &Message) {
        // SAFETY: forwarded.
        unsafe { self.sink.send(ctx, msg, self.stream.change_prefix()) };
    }

    /// The `O` fields of a transaction from replication origin `txn_origin`.
    fn origin(&mut self, txn_origin: pg_sys::RepOriginId, origin_lsn: u64) -> Origin {
        let origin_id = origin::announced_origin(txn_origin, self.local_node.id);
        let origin_name = if origin_id == self.local_node.id {
            Some(self.local_node.name.clone())
        } else {
            self.node_names.entry(origin_id).or_insert_with(|| catalog::node_name(origin_id)).clone()
        };
        Origin { origin_lsn, origin_id, origin_name }
    }
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
    // Changes of a streamed transaction go through the same callbacks, which write
    // them inside `x` while a stream block is open.
    cb.stream_change_cb = Some(spock_output_change);
    cb.stream_truncate_cb = Some(spock_output_truncate);
    cb.stream_message_cb = Some(spock_output_message);
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
    // proto_format = json: text, for pg_logical_slot_get_changes() (debugging and
    // tests), never streamed.
    let json = negotiated.format == startup::ProtoFormat::Json;
    if json {
        // SAFETY: PostgreSQL passes valid pointers.
        unsafe { (*opt).output_type = pg_sys::OutputPluginOutputType::OUTPUT_PLUGIN_TEXTUAL_OUTPUT };
    }
    // Stream large in-progress transactions only to a client that asked (spock-rs);
    // for others PostgreSQL spills them to disk as before.
    // SAFETY: valid decoding context.
    unsafe { (*ctx).streaming &= negotiated.streaming() && !json };
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
    // SAFETY: children of the decoding context's memory, deleted with it.
    let (cxt, rels_cxt) = unsafe {
        (
            pg_sys::AllocSetContextCreateInternal(
                (*ctx).context,
                c"spock output message".as_ptr(),
                0,
                8 * 1024,
                8 * 1024 * 1024,
            ),
            pg_sys::AllocSetContextCreateInternal(
                (*ctx).context,
                c"spock output relations".as_ptr(),
                0,
                1024,
                8 * 1024,
            ),
        )
    };
    let state = Box::new(PluginState {
        stream: stream::StreamState::default(),
        sink: Sink::new(&negotiated, startup_msg, &params),
        negotiated,
        local_node,
        sets,
        txn_started: false,
        rels: FxHashMap::default(),
        rels_cxt,
        node_names: HashMap::new(),
        cxt,
        repair: std::collections::HashSet::new(),
    });
    // SAFETY: ownership moves to the context; shutdown frees it.
    unsafe { (*ctx).output_plugin_private = Box::into_raw(state).cast() };
}

/// Writes BEGIN and ORIGIN for `txn` before its first sent change.
///
/// SAFETY: `ctx` is the valid decoding context of a running callback; `txn` is the
/// transaction being decoded.
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
    let begin = Message::Begin(Begin { flags: 0, final_lsn, commit_time, xid: xid.into_inner() });
    let origin = Message::Origin(st.origin(txn_origin, origin_lsn));
    // SAFETY: forwarded.
    unsafe {
        st.sink.send_startup(ctx);
        st.send(ctx, &begin);
        st.send(ctx, &origin);
    }
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
    let delay = crate::gucs::OUTPUT_DELAY.get();
    if delay > 0 {
        // SAFETY: a plain sleep (spock.output_delay, for tests), then the usual
        // interrupt check.
        unsafe { pg_sys::pg_usleep(i64::from(delay) * 1000) };
        pgrx::check_for_interrupts!();
    }
    // The startup reply goes out first, even when this transaction sends nothing.
    // In text (json) form it comes with the first transaction that sends
    // something, as Spock's does: pg_logical_slot_get_changes(upto_nchanges)
    // callers see it with that transaction's rows.
    if !st.sink.is_json() {
        // SAFETY: inside a callback.
        unsafe { st.sink.send_startup(ctx) };
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn spock_output_commit(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    commit_lsn: pg_sys::XLogRecPtr,
) {
    // SAFETY: startup ran for this context.
    let st = unsafe { state(ctx) };
    // SAFETY: valid transaction.
    unsafe { st.end_repair_mode(txn) };
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
    unsafe { st.send(ctx, &commit) };
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
    // Deleted versions a subscriber keeps are written under their own origin and
    // never leave the node (apply::executor, leave_deleted_version).
    !origin::should_send_change(origin_id, st.negotiated.forward_origins, crate::workers::shmem::tombstone_origin())
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
    let parent = st.rels_cxt;
    // SAFETY: forwarded; rels_cxt lives as long as the state.
    st.rels.entry(relid).or_insert_with(|| unsafe { RelEntry::build(rel, parent, sets, only, internal, binary) })
}

/// Sends the relation's `R` message if this connection has not seen it.
///
/// SAFETY: as [`ensure_txn_started`].
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
    unsafe { st.send(ctx, &msg) };
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
    // SAFETY: valid reorder-buffer pointers.
    unsafe { st.stream.note_change(txn, change) };
    // SAFETY: valid transaction.
    if unsafe { st.in_repair_mode(txn) } {
        return;
    }
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
    // SAFETY: rel is open; the tuples are null or belong to it.
    let (send, is_queue) = unsafe {
        let entry = rel_entry(st, rel);
        // The row filters see the new row of an INSERT, the old one of a DELETE, and
        // route an UPDATE by both (spock_core::repset::UpdateRoute).
        let send = match action {
            Action::Insert => entry.change_passes(action, newtuple).then_some(RowAction::Insert),
            Action::Delete => entry.delete_passes(oldtuple).then_some(RowAction::Delete),
            _ => match entry.route_update(newtuple, oldtuple) {
                UpdateRoute::Update => Some(RowAction::Update),
                UpdateRoute::Insert => Some(RowAction::Insert),
                UpdateRoute::Delete => Some(RowAction::Delete),
                UpdateRoute::Skip => None,
            },
        };
        (send, entry.is_queue)
    };
    let Some(row_action) = send else {
        return;
    };
    // spock.queue rows go to subscribers of the sets they name (queue.rs).
    // SAFETY: rel is the open queue; newtuple is null or its new row.
    if is_queue && !unsafe { queue::row_wanted(rel, newtuple, &st.sets) } {
        return;
    }
    if row_action == RowAction::Delete && oldtuple.is_null() {
        // The table lost its replica identity after it joined a set that publishes
        // deletes (its primary key dropped, say): the WAL holds no key of the row,
        // so no subscriber could find it. Spock skips such a DELETE; so do we, with
        // a WARNING (once per table and connection), rather than stopping the
        // stream for good at this change.
        let entry = st.rels.get_mut(&relid).expect("entry built above");
        if !entry.warned_keyless_delete {
            entry.warned_keyless_delete = true;
            pgrx::warning!(
                "spock_output: DELETEs on table {}.{} are not replicated: the table has no replica identity",
                entry.relation_message().nspname,
                entry.relation_message().relname
            );
        }
        return;
    }
    let entry = &st.rels[&relid];
    if row_action != RowAction::Delete && newtuple.is_null() {
        return;
    }
    let old_kind = if entry.identity_full { OldTupleKind::Full } else { OldTupleKind::Key };
    // SAFETY: inside a callback.
    unsafe {
        ensure_txn_started(ctx, st, txn);
        ensure_relmeta(ctx, st, relid);
    }
    let entry = st.rels.get_mut(&relid).expect("entry built above");
    // An UPDATE sent as INSERT carries the whole row: values the UPDATE left in TOAST
    // come from the old row where the WAL has it (REPLICA IDENTITY FULL).
    let newtuple = if action == Action::Update && row_action == RowAction::Insert && !oldtuple.is_null() {
        // SAFETY: both are tuples of rel; the result lives in the message context.
        unsafe { entry.with_unchanged_from(rel, newtuple, oldtuple) }
    } else {
        newtuple
    };
    if st.sink.is_json() {
        // SAFETY: the tuples belong to rel; inside a callback.
        let text = unsafe {
            let old = (row_action != RowAction::Insert && !oldtuple.is_null()).then(|| entry.json_tuple(rel, oldtuple));
            let new = (row_action != RowAction::Delete).then(|| entry.json_tuple(rel, newtuple));
            let action = match row_action {
                RowAction::Insert => 'I',
                RowAction::Update => 'U',
                RowAction::Delete => 'D',
            };
            let m = entry.relation_message();
            spock_core::proto::json::row(action, &m.nspname, &m.relname, old.as_deref(), new.as_deref())
        };
        // SAFETY: inside a callback.
        return unsafe { st.sink.send_json(ctx, &text) };
    }
    // SAFETY: inside a callback; the tuples belong to rel.
    unsafe {
        st.sink.send_row(ctx, st.stream.change_prefix(), row_action, u32::from(relid), |buf| {
            if row_action != RowAction::Insert && !oldtuple.is_null() {
                writer::old_tuple_marker(buf, old_kind);
                entry.write_tuple(rel, oldtuple, buf)?;
            }
            if row_action != RowAction::Delete {
                writer::new_tuple_marker(buf);
                entry.write_tuple(rel, newtuple, buf)?;
            }
            Ok(())
        })
    };
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
    // SAFETY: valid reorder-buffer pointers.
    unsafe { st.stream.note_change(txn, change) };
    // SAFETY: valid transaction.
    if unsafe { st.in_repair_mode(txn) } {
        return;
    }
    let cxt = st.cxt;
    // SAFETY: arguments of a truncate callback.
    unsafe {
        in_message_context(cxt, || {
            let rels = std::slice::from_raw_parts(relations, nrelations.max(0) as usize);
            let mut relids = Vec::new();
            for &rel in rels {
                if rel_entry(st, rel).change_passes(Action::Truncate, std::ptr::null_mut()) {
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
            st.send(ctx, &msg);
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
        if CStr::from_ptr(prefix).to_bytes() != wal_message::PREFIX.as_bytes() {
            return;
        }
        // Only sync events leave the provider, always in Spock's layout (one written
        // by spock-rs 0.1.0, big-endian, may still be in the WAL); repair-mode
        // messages hold back the rest of their transaction's changes (or let them
        // go again) and are not sent; what we do not know is not sent either.
        let payload = std::slice::from_raw_parts(message.cast::<u8>(), message_size);
        let event = match WalMessage::parse(payload) {
            WalMessage::SyncEvent(e) => e,
            WalMessage::RepairMode(on) => {
                if transactional && !txn.is_null() {
                    let xid = top_xid(txn);
                    if on {
                        st.repair.insert(xid);
                    } else {
                        st.repair.remove(&xid);
                    }
                }
                return;
            }
            WalMessage::Unknown(kind) => {
                pgrx::warning!(
                    "spock: ignoring a \"Spock\" WAL message at {} of unknown type {} ({message_size} bytes)",
                    spock_core::proto::format_lsn(message_lsn),
                    kind.map_or("(too short)".to_string(), |k| k.to_string())
                );
                return;
            }
        };
        if st.sink.is_json() {
            return; // (no json form: neither it nor the startup message goes out)
        }
        let content = bytes::Bytes::copy_from_slice(&event.encode());
        let xid = if transactional && !txn.is_null() { (*txn).xid.into_inner() } else { 0 };
        if transactional && !txn.is_null() {
            st.stream.note_txn(txn);
            ensure_txn_started(ctx, st, txn);
        } else {
            st.sink.send_startup(ctx);
        }
        let msg = Message::LogicalMessage(LogicalMessage {
            xid,
            lsn: message_lsn,
            transactional,
            prefix: wal_message::PREFIX.to_string(),
            content,
        });
        st.send(ctx, &msg);
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
