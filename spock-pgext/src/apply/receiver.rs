//! The replication loop of an apply worker, in named steps:
//!
//! 1. [`Receiver::start`]: connect to the provider in replication mode and start
//!    streaming from the subscription's progress;
//! 2. [`Receiver::receive`]: read and apply what has arrived (each message through
//!    [`Receiver::apply_message`]), for at most [`DRAIN_SLICE`];
//! 3. [`Receiver::between_transactions`]: note what became durable, look for
//!    tables waiting for a sync, leave to reconnect when asked;
//!    Then the probe for keeping deleted row versions ([`super::retention`]) takes
//!    its step;
//! 4. [`Receiver::send_feedback`]: tell the provider how far we are, as
//!    [`FEEDBACK`] says;
//! 5. [`Receiver::wait`] for the socket, and again from 2.
//!
//! Every step may end the loop with an [`Exit`]: stop the worker, or reconnect.

use std::time::{Duration, Instant};

use bytes::Bytes;
use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use spock_core::ident::quote_identifier;
use spock_core::proto::batch;
use spock_core::proto::startup::{BinaryFormat, ClientParams};
use spock_core::proto::{format_lsn, parse_lsn, Message, StreamDecoder};
use spock_core::walsender::{self, FeedbackPolicy, Positions, ServerMessage};

use super::handlers;
use super::parallel::{Pool, Route};
use super::retention::Prober;
use super::session::{ApplySession, Outcome};
use super::stream::{self, StreamReceiver};
use super::subscription::SubscriptionInfo;
use super::{fail, report_activity, sync};
use crate::error::{spi_failed, PgError};
use crate::libpq::{wait_for_socket, Connection, CopyData};

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

/// Why the replication loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The worker stops (SIGTERM, or the subscription was disabled).
    Stop,
    /// The worker reconnects (a table sync is due, a replayed transaction
    /// committed, a transaction must be sent again).
    Reconnect,
}

/// What one [`Receiver::receive`] found.
struct Drained {
    /// The walsender asked for feedback.
    reply_requested: bool,
    /// The slice ended with data still waiting.
    more_waiting: bool,
}

/// One connection's stream and what the worker knows of it.
pub struct Receiver<'a> {
    sub: &'a SubscriptionInfo,
    conn: Connection,
    decoder: StreamDecoder,
    /// The provider agreed to send several messages per packet.
    batched: bool,
    /// Streamed (large, in-progress) transactions.
    streams: StreamReceiver,
    positions: Positions,
    sync_checked: Instant,
    /// Reconnect at the next point between transactions.
    reconnect: bool,
    /// Asks the provider how far it is, for keeping deleted row versions.
    prober: Prober,
    /// The writers of a parallel apply (apply::parallel), if any.
    pool: Option<Pool>,
    /// The messages of the remote transaction being applied, kept (up to
    /// `spock.exception_replay_queue_size`) so that a failure is replayed at once, from memory, per
    /// `spock.exception_behaviour`, without a restart (as Spock's replay queue).
    held: Held,
}

/// See [`Receiver::held`].
#[derive(Default)]
struct Held {
    messages: Vec<Bytes>,
    bytes: usize,
    /// From a BEGIN to its COMMIT, while under the limit.
    holding: bool,
    /// Replaying the held messages now: a failure goes the restart way.
    replaying: bool,
}

impl Held {
    /// Keeps `payload` when it belongs to the transaction being held.
    fn note(&mut self, payload: &Bytes, message: &Message) {
        if self.replaying {
            return;
        }
        if let Message::Begin(_) = message {
            self.forget();
            self.holding = true;
        }
        if !self.holding {
            return;
        }
        self.bytes += payload.len();
        if self.bytes > crate::gucs::exception_replay_queue_bytes() {
            self.forget();
        } else {
            self.messages.push(payload.clone());
        }
    }

    fn forget(&mut self) {
        self.messages = Vec::new();
        self.bytes = 0;
        self.holding = false;
    }
}

/// Streams from the provider and applies until the worker must stop or reconnect.
pub fn stream(sub: &SubscriptionInfo, session: &mut ApplySession) -> Exit {
    let mut receiver = match Receiver::start(sub, session) {
        Ok(r) => r,
        Err(exit) => return exit,
    };
    match receiver.run(session) {
        Ok(never) => match never {},
        Err(exit) => exit,
    }
}

fn now_pg() -> i64 {
    walsender::pg_timestamp(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default())
}

fn protocol_violation(sub: &SubscriptionInfo, e: impl std::fmt::Display) -> ! {
    PgError::new(PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION, format!("spock subscription {}: {e}", sub.name)).raise()
}

/// Where streaming resumes: the furthest progress among the subscription's origins.
fn start_position(sub: &SubscriptionInfo) -> u64 {
    BackgroundWorker::transaction(|| {
        Spi::get_one_with_args::<String>(
            "SELECT spock._subscription_progress($1)::text",
            &[sub.slot_name.as_str().into()],
        )
        .unwrap_or_else(|e| spi_failed("reading the subscription's progress", e))
        .and_then(|s| parse_lsn(&s))
        .unwrap_or(0)
    })
}

fn start_replication_command(sub: &SubscriptionInfo, conn: &Connection, start: u64, text: bool) -> String {
    // SAFETY: reads the database encoding's name constant.
    let enc = unsafe { std::ffi::CStr::from_ptr(pg_sys::GetDatabaseEncodingName()) }.to_string_lossy().into_owned();
    let mut params = ClientParams {
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

impl<'a> Receiver<'a> {
    /// Connects and starts streaming from the subscription's progress.
    /// An error retrying cannot cure (spock_core::status::classify) disables the
    /// subscription instead ([`super::disable_over`]): `Err(Exit::Stop)`.
    fn start(sub: &'a SubscriptionInfo, session: &mut ApplySession) -> Result<Receiver<'a>, Exit> {
        let start = start_position(sub);
        let conn = Connection::connect(
            &sub.provider_dsn,
            &[("replication", "database"), ("application_name", &sub.slot_name)],
        )
        .unwrap_or_else(|e| fail(sub, "could not connect to the provider in replication mode", e));
        // A transaction that failed before is replayed with values in text, so that
        // spock.exception_log shows them readably.
        let text = session.replay_pending();
        let eager = spock_core::eager::allowed(
            !sub.forward_origins.is_empty(),
            sub.skip_lsn != 0,
            text,
            sub.apply_delay_us != 0,
        );
        // Files of streamed transactions from an earlier connection are useless: the
        // provider streams again from `start`.
        let streams = StreamReceiver::new(sub.id, &sub.name, eager, sub.provider_node_id);
        let cmd = start_replication_command(sub, &conn, start, text);
        if let Err(e) = conn.start_copy_both(&cmd) {
            if let Some(why) = spock_core::status::classify(e.sqlstate.as_deref(), &e.message) {
                super::disable_over(sub, &conn, why, &e);
                return Err(Exit::Stop);
            }
            fail(sub, "could not start replication", e);
        }
        // Writers apply in parallel unless a failed transaction is replayed or one
        // is to be skipped (both change by change, in this worker).
        let writers = sub.parallel_apply_workers();
        let pool = (writers > 1 && !text && sub.skip_lsn == 0).then(|| Pool::start(sub, session, writers)).flatten();
        report_activity("replicating");
        if let Some(i) = session.progress_slot() {
            let now = now_pg();
            crate::workers::shmem::update_progress(i, |p| p.streamed_at = now);
        }
        pgrx::log!(
            "spock subscription {}: streaming from {} at {}{}",
            sub.name,
            sub.provider_name,
            format_lsn(start),
            if text { " (text transfer, to replay a failed transaction)" } else { "" }
        );
        let now = Instant::now();
        Ok(Receiver {
            sub,
            conn,
            decoder: StreamDecoder::new(),
            batched: false,
            streams,
            positions: Positions::new(start, now),
            sync_checked: now,
            reconnect: false,
            prober: Prober::new(),
            pool,
            held: Held::default(),
        })
    }

    /// The loop: receive, housekeeping, feedback, wait; until an exit.
    fn run(&mut self, session: &mut ApplySession) -> Result<std::convert::Infallible, Exit> {
        loop {
            // A reload first: a setting changed before data arrived applies to that
            // data (SIGHUP wakes the wait below, and the next read may bring it).
            crate::workers::reload_config_if_asked();
            if crate::readonly::stops_apply() && self.idle(session) {
                self.hold(session)?;
                continue;
            }
            let drained = self.receive(session)?;
            self.between_transactions(session)?;
            self.prober.step(self.sub, session.progress_slot(), self.positions.flushed(), session.flushed_stamp());
            self.send_feedback(session, drained.reply_requested);
            if drained.more_waiting {
                // Messages may sit in libpq's buffer, invisible to the socket.
                continue;
            }
            self.wait(session)?;
        }
    }

    /// Reads and applies what has arrived, but comes up for air at least every
    /// DRAIN_SLICE: when the provider sends faster than we apply, data is always
    /// waiting, and feedback (the walsender drops a silent client after
    /// wal_sender_timeout), config reloads and table-sync checks must still happen.
    fn receive(&mut self, session: &mut ApplySession) -> Result<Drained, Exit> {
        let started = Instant::now();
        let mut out = Drained { reply_requested: false, more_waiting: false };
        let mut drained = 0u32;
        loop {
            match self.conn.read_copy_data().unwrap_or_else(|e| fail(self.sub, "lost the provider", e)) {
                CopyData::Data(buf) => match walsender::parse(&buf).unwrap_or_else(|e| protocol_violation(self.sub, e))
                {
                    ServerMessage::XLogData { end, .. } => {
                        let packet = Bytes::from(buf).slice(walsender::XLOG_DATA_HEADER..);
                        self.apply_packet(&packet, session)?;
                        self.positions.note_received(end);
                    }
                    ServerMessage::Keepalive { end, reply_requested } => {
                        self.positions.note_received(end);
                        out.reply_requested |= reply_requested;
                    }
                    ServerMessage::Other(_) => {}
                },
                CopyData::WouldBlock => return Ok(out),
                CopyData::Done => fail(self.sub, "the provider ended replication", "stream closed"),
            }
            if crate::workers::sigterm_received() {
                return Err(Exit::Stop);
            }
            // The clock is read every few messages only: reading it costs as much
            // as applying a small change.
            drained += 1;
            if drained.is_multiple_of(CLOCK_EVERY)
                && (started.elapsed() >= DRAIN_SLICE || (self.sync_check_due() && self.idle(session)))
            {
                out.more_waiting = true;
                return Ok(out);
            }
            stream::exit_if_postmaster_died();
        }
    }

    /// Applies the messages of one `w` packet: one message, or (batches agreed in
    /// the startup reply) several, each framed by its length.
    fn apply_packet(&mut self, packet: &Bytes, session: &mut ApplySession) -> Result<(), Exit> {
        if !self.batched {
            return self.apply_message(packet, session);
        }
        let messages: Vec<Bytes> =
            batch::frames(packet).collect::<Result<_, _>>().unwrap_or_else(|e| protocol_violation(self.sub, e));
        for payload in &messages {
            self.apply_message(payload, session)?;
        }
        Ok(())
    }

    /// Decodes and applies one protocol message, waiting for apply_delay first.
    fn apply_message(&mut self, payload: &Bytes, session: &mut ApplySession) -> Result<(), Exit> {
        let decoded = self.decoder.decode(payload).unwrap_or_else(|e| protocol_violation(self.sub, e));
        // apply_delay: a transaction waits until its commit time plus the delay.
        if self.sub.apply_delay_us > 0 {
            let commit_time = match &decoded.message {
                Message::Begin(b) => Some(b.commit_time),
                Message::StreamCommit(c) => Some(c.commit_time),
                _ => None,
            };
            if let Some(t) = commit_time {
                self.wait_until(t + self.sub.apply_delay_us)?;
            }
        }
        if let Message::Startup(s) = &decoded.message {
            // The provider agreed to batches (a Spock provider never does).
            self.batched = s.get(batch::BATCH_PARAM) == Some("t");
        }
        // Writers of a parallel apply replay their own failures the restart way.
        if self.pool.is_none() {
            self.held.note(payload, &decoded.message);
        }
        let ends = matches!(decoded.message, Message::Commit(_));
        let r = self.route_message(payload, decoded, session);
        if ends {
            self.held.forget();
        }
        r
    }

    /// Gives a decoded message to the writers of a parallel apply, or applies it here.
    fn route_message(
        &mut self,
        payload: &Bytes,
        decoded: spock_core::proto::Decoded,
        session: &mut ApplySession,
    ) -> Result<(), Exit> {
        if let Some(pool) = self.pool.as_mut() {
            if let Message::Begin(_) = decoded.message {
                // An eagerly applied stream gives way (apply::stream).
                self.streams.other_arrived(session);
            }
            match pool.route(payload, &decoded.message, decoded.remote_insert_lsn, session)? {
                Route::Taken => return Ok(()),
                Route::Local => {}
                Route::Replay(held) => {
                    for p in &held {
                        let d = self.decoder.decode(p).unwrap_or_else(|e| protocol_violation(self.sub, e));
                        self.apply_decoded(p, d, session)?;
                    }
                    return Ok(());
                }
            }
        }
        self.apply_decoded(payload, decoded, session)
    }

    /// Applies one decoded protocol message in this worker.
    fn apply_decoded(
        &mut self,
        payload: &Bytes,
        decoded: spock_core::proto::Decoded,
        session: &mut ApplySession,
    ) -> Result<(), Exit> {
        // Positions as of before this message: nothing newer is durable yet.
        let (conn, written, flushed) = (&self.conn, self.positions.received(), self.positions.flushed());
        let version = self.decoder.version();
        let streams = &mut self.streams;
        // An error is remembered (where the transaction failed) before it stops the
        // worker, so the next attempt can replay it.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut keepalive = || {
                let _ = conn.write_copy_data(&feedback(written, flushed));
            };
            streams.dispatch(payload, decoded, version, session, &mut keepalive)
        }));
        let outcome = match r {
            Ok(o) => o,
            Err(e) => {
                let (code, msg) = handlers::describe_error(e.as_ref());
                // Once: a replay that fails too goes the restart way, in the next mode.
                let from_memory = self.held.holding
                    && !self.held.replaying
                    && !self.streams.any_open()
                    && !session.replaying_failed_transaction();
                if session.note_failure(&code, &msg, !from_memory) && from_memory {
                    handlers::log_caught_error(&self.sub.name, e.as_ref());
                    return self.replay_held(session);
                }
                std::panic::resume_unwind(e)
            }
        };
        match outcome {
            // Changes of a transaction to apply again are ignored until its commit.
            Outcome::Continue | Outcome::NeedsCommit | Outcome::ApplyAgain => Ok(()),
            Outcome::Reconnect => {
                self.reconnect = true;
                Ok(())
            }
            // The transaction was rolled back to be applied again: the provider
            // sends it again from the origin's position after the reconnect.
            // Nothing after it may be applied or reported before that.
            Outcome::RetryNow => Err(Exit::Reconnect),
            // The subscription was disabled: nothing after the transaction may be
            // applied (its commit would move the origin past the failed one).
            Outcome::Stop => Err(Exit::Stop),
        }
    }

    /// Replays the transaction that just failed from its held messages, in the mode
    /// note_failure chose: its local transaction is rolled back, its messages so
    /// far are applied again (each change protected), the rest follows from the
    /// stream. A failure during the replay stops the worker, whose restart replays
    /// the transaction in the next mode.
    fn replay_held(&mut self, session: &mut ApplySession) -> Result<(), Exit> {
        session.abandon_failed();
        let held = std::mem::take(&mut self.held.messages);
        pgrx::log!(
            "spock subscription {}: replaying the failed transaction from memory ({} messages so far)",
            self.sub.name,
            held.len()
        );
        self.held.replaying = true;
        let mut r = Ok(());
        for p in &held {
            let d = self.decoder.decode(p).unwrap_or_else(|e| protocol_violation(self.sub, e));
            r = self.apply_decoded(p, d, session);
            if r.is_err() {
                break;
            }
        }
        self.held.replaying = false;
        self.held.messages = held;
        r
    }

    /// Between transactions (no stream open either: an eagerly applied one keeps a
    /// local transaction open).
    fn idle(&self, session: &ApplySession) -> bool {
        !session.in_remote_transaction() && !self.streams.any_open() && self.pool.as_ref().is_none_or(Pool::idle)
    }

    fn sync_check_due(&self) -> bool {
        self.sync_checked.elapsed() >= SYNC_CHECK_INTERVAL
    }

    /// Notes what became durable; between transactions looks for tables waiting
    /// for a sync (every SYNC_CHECK_INTERVAL) and leaves when a reconnect is due.
    fn between_transactions(&mut self, session: &mut ApplySession) -> Result<(), Exit> {
        if let Some(pool) = self.pool.as_mut() {
            pool.observe(session)?;
        }
        if let Some(f) = session.flushed_remote_lsn() {
            self.positions.note_flushed(f);
        }
        let idle = self.idle(session);
        if idle && (self.sync_check_due() || super::queue::take_sync_request()) {
            self.sync_checked = Instant::now();
            if BackgroundWorker::transaction(|| !sync::pending_tables(self.sub.id).is_empty()) {
                self.reconnect = true;
            }
        }
        if self.reconnect && idle {
            // Tell the provider what is applied before leaving.
            if let Some(f) = session.flushed_remote_lsn() {
                self.positions.note_flushed(f);
            }
            let _ = self.conn.write_copy_data(&feedback(self.positions.received(), self.positions.flushed()));
            return Err(Exit::Reconnect);
        }
        if idle && !session.has_unflushed() {
            // Idle: everything sent to us is applied and durable.
            self.positions.note_idle();
            // The provider has sent everything up to here: a table copied at an
            // LSN below it is past its catch-up even when no transaction came
            // since (Spock's tables become ready so too).
            session.tables_caught_up_at(self.positions.received());
        }
        Ok(())
    }

    /// Records the received position and sends a status update when one is due.
    fn send_feedback(&mut self, session: &mut ApplySession, reply_requested: bool) {
        if self.positions.moved() {
            session.note_received(self.positions.received());
        }
        if let Some((written, flushed)) = self.positions.feedback_due(&FEEDBACK, reply_requested, Instant::now()) {
            self.conn
                .write_copy_data(&feedback(written, flushed))
                .unwrap_or_else(|e| fail(self.sub, "could not send feedback", e));
        }
    }

    /// Waits for data (shorter while commits wait for their flush, to report it).
    fn wait(&self, session: &ApplySession) -> Result<(), Exit> {
        let busy = session.has_unflushed() || self.pool.as_ref().is_some_and(Pool::in_flight);
        wait_for_socket(self.conn.socket(), if busy { 100 } else { 1000 });
        if crate::workers::sigterm_received() {
            return Err(Exit::Stop);
        }
        Ok(())
    }

    /// `spock.readonly = all`: applies nothing and reads nothing more, but stays
    /// connected, telling the provider every second that it is alive (and how far
    /// it applied, which does not move), as Spock's worker waits.
    fn hold(&mut self, session: &mut ApplySession) -> Result<(), Exit> {
        report_activity("waiting: spock.readonly is all");
        if let Some(f) = session.flushed_remote_lsn() {
            self.positions.note_flushed(f);
        }
        let _ = self.conn.write_copy_data(&feedback(self.positions.received(), self.positions.flushed()));
        if !crate::workers::sleep(Duration::from_secs(1)) {
            return Err(Exit::Stop);
        }
        stream::exit_if_postmaster_died();
        Ok(())
    }

    /// Waits until PostgreSQL time `until` (apply_delay), telling the provider every
    /// second that we are alive.
    fn wait_until(&self, until: i64) -> Result<(), Exit> {
        let (written, flushed) = (self.positions.received(), self.positions.flushed());
        loop {
            let left = until - now_pg();
            if left <= 0 {
                return Ok(());
            }
            report_activity("waiting for apply_delay");
            let _ = self.conn.write_copy_data(&feedback(written, flushed));
            let ms = (left / 1000).clamp(1, 1000);
            if !crate::workers::sleep(Duration::from_millis(ms as u64)) {
                return Err(Exit::Stop);
            }
            stream::exit_if_postmaster_died();
            crate::workers::reload_config_if_asked();
        }
    }
}

/// Standby status update: written, flushed and applied positions.
fn feedback(written: u64, flushed: u64) -> [u8; 34] {
    walsender::status_update(written, flushed, now_pg(), false)
}
