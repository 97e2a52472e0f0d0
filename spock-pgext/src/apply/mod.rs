//! The apply worker: one per enabled subscription. It connects to the provider with
//! libpq in replication mode, creates the slot on first start, streams from the
//! position its replication origins recorded, applies every transaction
//! ([`handlers`]) and tells the provider how far it got (flush positions only once
//! the local commits are durable, so the provider never frees WAL we still need).

mod copy_from;
mod executor;
mod handlers;
mod owner;
pub(crate) mod queue;
mod rows;
mod stream;
pub mod subscription;
mod sync;

use std::time::{Duration, Instant};

use bytes::Bytes;
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use spock_core::proto::batch;
use spock_core::proto::startup::{BinaryFormat, ClientParams};
use spock_core::proto::{Message, StreamDecoder};
use spock_core::walsender::{self, FeedbackPolicy, ServerMessage};

use crate::error::{spi_failed, PgError};
use crate::libpq::{wait_for_socket, Connection, CopyData};
use crate::workers::APPLY_TYPE;
use handlers::ApplySession;
use spock_core::ident::quote_identifier;
use spock_core::proto::{format_lsn, parse_lsn};
use subscription::SubscriptionInfo;

/// Microseconds between the Unix and the PostgreSQL epoch.
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;
/// Feedback when asked, when positions moved (at most every 50 ms: each update
/// costs the walsender a read), and at least every second.
const FEEDBACK: FeedbackPolicy =
    FeedbackPolicy { min_gap: Duration::from_millis(50), interval: Duration::from_secs(1) };
/// How often the worker looks for tables waiting for a table sync.
const SYNC_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Longest stretch of reading and applying without housekeeping.
const DRAIN_SLICE: Duration = Duration::from_millis(100);
/// Messages between two looks at the clock while draining.
const CLOCK_EVERY: u32 = 16;

fn now_pg() -> i64 {
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
    unix - PG_EPOCH_OFFSET_US
}

pub(crate) fn fail(sub: &SubscriptionInfo, what: &str, e: impl std::fmt::Display) -> ! {
    PgError::new(PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE, format!("spock subscription {}: {what}: {e}", sub.name))
        .raise()
}

/// Creates the subscription's slot on the provider (dropping a leftover one from an
/// interrupted earlier attempt) and starts the origin at its consistent point.
pub(crate) fn create_slot(sub: &SubscriptionInfo) {
    let conn =
        Connection::connect(&sub.provider_dsn, &[("replication", "database"), ("application_name", &sub.slot_name)])
            .unwrap_or_else(|e| fail(sub, "could not connect to the provider in replication mode", e));
    let cmd = format!("CREATE_REPLICATION_SLOT {} LOGICAL spock_output", quote_identifier(&sub.slot_name));
    let rows = match conn.query(&cmd) {
        Ok(r) => r,
        Err(e) if e.sqlstate.as_deref() == Some("42710") => {
            conn.query(&format!("DROP_REPLICATION_SLOT {} WAIT", quote_identifier(&sub.slot_name)))
                .unwrap_or_else(|e| fail(sub, "could not drop the leftover slot", e));
            conn.query(&cmd).unwrap_or_else(|e| fail(sub, "could not create the replication slot", e))
        }
        Err(e) => fail(sub, "could not create the replication slot", e),
    };
    let lsn = rows
        .first()
        .and_then(|r| r.get(1).cloned().flatten())
        .and_then(|s| parse_lsn(&s))
        .unwrap_or_else(|| fail(sub, "CREATE_REPLICATION_SLOT", "no consistent point returned"));
    BackgroundWorker::transaction(|| {
        Spi::run_with_args(
            "SELECT pg_catalog.pg_replication_origin_advance($1, $2::text::pg_lsn)",
            &[sub.slot_name.as_str().into(), format_lsn(lsn).into()],
        )
        .unwrap_or_else(|e| spi_failed("starting the origin at the slot's consistent point", e));
        subscription::set_sync_status(sub.id, 'r', lsn);
    });
    pgrx::log!("spock subscription {}: created slot {} at {}", sub.name, sub.slot_name, format_lsn(lsn));
}

/// Where streaming resumes: the furthest progress among the subscription's origins.
fn start_position(sub: &SubscriptionInfo) -> u64 {
    BackgroundWorker::transaction(|| {
        Spi::get_one_with_args::<String>(
            "SELECT spock._subscription_progress($1)::text",
            &[sub.slot_name.as_str().into()],
        )
        .ok()
        .flatten()
        .and_then(|s| parse_lsn(&s))
        .unwrap_or(0)
    })
}

fn start_replication_command(sub: &SubscriptionInfo, conn: &Connection, start: u64, text: bool) -> String {
    // SAFETY: reads the database encoding's name constant.
    let enc = unsafe { std::ffi::CStr::from_ptr(pg_sys::GetDatabaseEncodingName()) }.to_string_lossy().into_owned();
    let params = ClientParams {
        expected_encoding: enc,
        force_text_transfer: sub.force_text_transfer || text,
        pg_version_num: pg_sys::PG_VERSION_NUM,
        binary: BinaryFormat::LP64_LITTLE_ENDIAN,
        forward_origins: Some(sub.forward_origins.join(",")),
        replication_sets: Some(sub.replication_sets.iter().map(|s| quote_identifier(s)).collect::<Vec<_>>().join(",")),
        replicate_only_table: None,
        spock_version: spock_core::SPOCK_COMPAT_VERSION.into(),
        spock_version_num: spock_core::SPOCK_COMPAT_VERSION_NUM,
    }
    .to_params();
    let mut params = params;
    if crate::gucs::STREAM_LARGE_TRANSACTIONS.get() {
        params.push((spock_core::proto::startup::STREAMING_PARAM.to_string(), "1".to_string()));
    }
    // Several messages per packet from a spock-rs provider (spock_core::proto::batch).
    if crate::gucs::BATCH_TRANSFER.get() {
        params.push((batch::BATCH_PARAM.to_string(), "1".to_string()));
    }
    let opts: Vec<String> = params
        .iter()
        // Values travel as send/recv binary (validated by receive functions), never as
        // internal datums, which a receiver cannot validate.
        .map(|(k, v)| {
            let v = if k == "binary.want_internal_basetypes" { "0" } else { v.as_str() };
            format!("{} {}", quote_identifier(k), conn.literal(v))
        })
        .collect();
    format!(
        "START_REPLICATION SLOT {} LOGICAL {} ({})",
        quote_identifier(&sub.slot_name),
        format_lsn(start),
        opts.join(", ")
    )
}

/// Waits until PostgreSQL time `until` (apply_delay), telling the provider every
/// second that we are alive (`positions`: what is received and durable). False when
/// the worker must stop.
fn wait_until(until: i64, conn: &Connection, positions: (u64, u64)) -> bool {
    loop {
        let left = until - now_pg();
        if left <= 0 {
            return true;
        }
        report_activity("waiting for apply_delay");
        let _ = conn.write_copy_data(&feedback(positions.0, positions.1, false));
        let ms = (left / 1000).clamp(1, 1000);
        if !crate::workers::sleep(Duration::from_millis(ms as u64)) {
            return false;
        }
        stream::exit_if_postmaster_died();
        crate::workers::reload_config_if_asked();
    }
}

/// Standby status update: written, flushed and applied positions.
fn feedback(write: u64, flush: u64, reply: bool) -> [u8; 34] {
    walsender::status_update(write, flush, now_pg(), reply)
}

fn report_activity(text: &str) {
    let c = std::ffi::CString::new(text).unwrap_or_default();
    // SAFETY: reports this backend's activity text.
    unsafe { pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, c.as_ptr()) };
}

/// Entry point of an apply worker: the argument is the database, the extra data the
/// subscription id.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn spock_apply_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = pg_sys::Oid::from(arg.value() as u32);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(db), None);
    crate::workers::pin_search_path();
    let sub_id: u32 = BackgroundWorker::get_extra().trim().parse().unwrap_or(0);
    let Some(sub) = BackgroundWorker::transaction(|| subscription::load(sub_id)) else {
        return;
    };
    let appname = std::ffi::CString::new(sub.slot_name.as_str()).unwrap_or_default();
    // SAFETY: sets this backend's application_name and applies changes as a replica
    // (user triggers and FK checks do not fire, as in any logical apply).
    unsafe {
        pg_sys::pgstat_report_appname(appname.as_ptr());
        pg_sys::SetConfigOption(
            c"session_replication_role".as_ptr(),
            c"replica".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
        pg_sys::SetConfigOption(
            c"synchronous_commit".as_ptr(),
            c"off".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
    // A transaction that stops this subscription's worker (sub_drop, sub_disable
    // immediate, ...) takes its hold, then terminates workers by application_name.
    // A worker started just before the hold may have set its name after that scan:
    // it sees the hold here and leaves (the hold and the name are the two halves of
    // one handshake, so one side always sees the other).
    if crate::workers::shmem::is_held(u32::from(db), sub_id) {
        pgrx::log!("{APPLY_TYPE} for subscription {}: a transaction is changing the subscription; exiting", sub.name);
        return;
    }
    pgrx::log!("{APPLY_TYPE} for subscription {} started", sub.name);

    if sub.sync_status != 'r' {
        report_activity("initial synchronisation");
        sync::run(&sub);
    }
    crate::invalidation::register();
    let mut session = ApplySession::new(sub.clone());
    session.attach_progress(u32::from(db));
    // A replayed transaction ends with a reconnect (back to binary transfer); so
    // does a table sync request: tables are copied while the stream stops.
    loop {
        session.release_origin();
        report_activity("synchronising tables");
        sync::sync_pending_tables(&sub);
        session.reload_table_skips();
        if !stream(&sub, &mut session) {
            break;
        }
        session.reconnect = false;
    }
    if crate::workers::sigterm_seen() {
        session.note_stopped_on_request();
    }
    pgrx::log!("{APPLY_TYPE} for subscription {} stopping", sub.name);
}

/// Streams from the provider and applies until the worker must stop (false) or
/// reconnect (true).
fn stream(sub: &SubscriptionInfo, session: &mut ApplySession) -> bool {
    let start = start_position(sub);
    let conn =
        Connection::connect(&sub.provider_dsn, &[("replication", "database"), ("application_name", &sub.slot_name)])
            .unwrap_or_else(|e| fail(sub, "could not connect to the provider in replication mode", e));
    // A transaction that failed before is replayed with values in text, so that
    // spock.exception_log shows them readably.
    let text = session.replay_pending();
    // Files of streamed transactions from an earlier connection are useless: the
    // provider streams again from `start`.
    let eager_allowed = sub.forward_origins.is_empty() && sub.skip_lsn == 0 && !text && sub.apply_delay_us == 0;
    let mut streams = stream::StreamReceiver::new(sub.id, &sub.name, eager_allowed, sub.provider_node_id);
    let cmd = start_replication_command(sub, &conn, start, text);
    conn.start_copy_both(&cmd).unwrap_or_else(|e| fail(sub, "could not start replication", e));
    report_activity("replicating");
    pgrx::log!(
        "spock subscription {}: streaming from {} at {}{}",
        sub.name,
        sub.provider_name,
        format_lsn(start),
        if text { " (text transfer, to replay a failed transaction)" } else { "" }
    );
    let mut decoder = StreamDecoder::new();
    let mut batched = false;
    let mut last_received = start;
    let mut flushed = start;
    let mut last_feedback = Instant::now();
    let mut reported = (0u64, 0u64);
    let mut sync_checked = Instant::now();
    loop {
        // A reload first: a setting changed before data arrived applies to that data
        // (SIGHUP wakes the wait below, and the next read may bring the data).
        crate::workers::reload_config_if_asked();
        let mut reply_requested = false;
        // Drain what has arrived, but come up for air at least every DRAIN_SLICE:
        // when the provider sends faster than we apply, data is always waiting, and
        // feedback (the walsender drops a silent client after wal_sender_timeout),
        // config reloads and table-sync checks must still happen.
        let drain_started = Instant::now();
        let mut more_waiting = false;
        let mut drained = 0u32;
        loop {
            match conn.read_copy_data().unwrap_or_else(|e| fail(sub, "lost the provider", e)) {
                CopyData::Data(buf) => match walsender::parse(&buf).unwrap_or_else(|e| {
                    PgError::new(
                        PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION,
                        format!("spock subscription {}: {e}", sub.name),
                    )
                    .raise()
                }) {
                    ServerMessage::XLogData { end, .. } => {
                        let packet = Bytes::from(buf).slice(walsender::XLOG_DATA_HEADER..);
                        // One message, or (batches agreed in the startup reply) several,
                        // each framed by its length.
                        let messages: Vec<Bytes> = if batched {
                            batch::frames(&packet).collect::<Result<_, _>>().unwrap_or_else(|e| {
                                PgError::new(
                                    PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION,
                                    format!("spock subscription {}: {e}", sub.name),
                                )
                                .raise()
                            })
                        } else {
                            vec![packet]
                        };
                        for payload in messages {
                            let decoded = decoder.decode(&payload).unwrap_or_else(|e| {
                                PgError::new(
                                    PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION,
                                    format!("spock subscription {}: {e}", sub.name),
                                )
                                .raise()
                            });
                            // apply_delay: a transaction waits until its commit time plus the delay.
                            if sub.apply_delay_us > 0 {
                                let commit_time = match &decoded.message {
                                    Message::Begin(b) => Some(b.commit_time),
                                    Message::StreamCommit(c) => Some(c.commit_time),
                                    _ => None,
                                };
                                if let Some(t) = commit_time {
                                    if !wait_until(t + sub.apply_delay_us, &conn, (last_received, flushed)) {
                                        return false;
                                    }
                                }
                            }
                            if let Message::Startup(s) = &decoded.message {
                                // The provider agreed to batches (a Spock provider never does).
                                batched = s.get(batch::BATCH_PARAM) == Some("t");
                            }
                            let positions = (last_received, flushed);
                            // An error is remembered (where the transaction failed) before
                            // it stops the worker, so the next attempt can replay it.
                            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                let mut keepalive = || {
                                    // Positions as of before this message: nothing newer is durable yet.
                                    let _ = conn.write_copy_data(&feedback(positions.0, positions.1, false));
                                };
                                streams.dispatch(&payload, decoded, decoder.version(), session, &mut keepalive);
                            }));
                            if let Err(e) = r {
                                let (code, msg) = handlers::describe_error(e.as_ref());
                                session.note_failure(&code, &msg);
                                std::panic::resume_unwind(e);
                            }
                            if session.retry_now {
                                // A transaction met a duplicate key on an insert that did not
                                // search first: it was rolled back and the provider sends it
                                // again from the origin's position. Nothing after it may be
                                // applied or reported before that.
                                session.retry_now = false;
                                return true;
                            }
                        }
                        last_received = last_received.max(end);
                        if session.stop {
                            return false;
                        }
                    }
                    ServerMessage::Keepalive { end, reply_requested: asked } => {
                        last_received = last_received.max(end);
                        reply_requested |= asked;
                    }
                    ServerMessage::Other(_) => {}
                },
                CopyData::WouldBlock => break,
                CopyData::Done => fail(sub, "the provider ended replication", "stream closed"),
            }
            if crate::workers::sigterm_received() {
                return false;
            }
            // The clock is read every few messages only: reading it costs as much
            // as applying a small change.
            drained += 1;
            if drained.is_multiple_of(CLOCK_EVERY)
                && (drain_started.elapsed() >= DRAIN_SLICE
                    || (sync_checked.elapsed() >= SYNC_CHECK_INTERVAL
                        && !session.in_remote_transaction()
                        && !streams.any_open()))
            {
                more_waiting = true;
                break;
            }
            stream::exit_if_postmaster_died();
        }
        if let Some(f) = session.flushed_remote_lsn() {
            flushed = flushed.max(f);
        }
        // Between transactions (no stream open either: an eagerly applied one keeps
        // a local transaction open).
        let between = !session.in_remote_transaction() && !streams.any_open();
        if between && sync_checked.elapsed() >= SYNC_CHECK_INTERVAL {
            sync_checked = Instant::now();
            if BackgroundWorker::transaction(|| !sync::pending_tables(sub.id).is_empty()) {
                session.reconnect = true;
            }
        }
        if session.reconnect && between {
            // Tell the provider what is applied before leaving.
            let _ = conn.write_copy_data(&feedback(
                last_received,
                flushed.max(session.flushed_remote_lsn().unwrap_or(0)),
                false,
            ));
            return true;
        }
        if between && !session.has_unflushed() {
            // Idle: everything sent to us is applied and durable.
            flushed = flushed.max(last_received);
        }
        if (last_received, flushed) != reported {
            session.note_received(last_received);
        }
        // Feedback as FEEDBACK says.
        let moved = (last_received, flushed) != reported;
        if FEEDBACK.due(reply_requested, moved, last_feedback.elapsed()) {
            conn.write_copy_data(&feedback(last_received, flushed, false))
                .unwrap_or_else(|e| fail(sub, "could not send feedback", e));
            reported = (last_received, flushed);
            last_feedback = Instant::now();
        }
        if more_waiting {
            // Messages may sit in libpq's buffer, invisible to the socket.
            continue;
        }
        wait_for_socket(conn.socket(), if session.has_unflushed() { 100 } else { 1000 });
        if crate::workers::sigterm_received() {
            return false;
        }
    }
}
