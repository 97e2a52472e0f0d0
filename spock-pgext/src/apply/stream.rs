//! Receiving streamed (large, in-progress) transactions: the messages `s`, `x`, `e`,
//! `c`, `a` that `spock_output` sends to a subscriber that asked for streaming.
//!
//! Each streamed transaction's messages are appended, as received, to a spill file
//! `pg_spock/stream/<database oid>_<subscription id>/<xid>.spill` under the data directory
//! (`spock_core::spill` format: CRC32-framed records). A subtransaction abort cuts the
//! file back to where that subtransaction's first record began; a transaction abort
//! deletes the file. On commit the file is read back record by record (memory stays
//! bounded by one message) and applied through the ordinary handlers as ONE local
//! transaction: a synthesized BEGIN/ORIGIN, the changes, and COMMIT, so the
//! replication origin, its progress (committed with the rows: exactly once after a
//! crash), conflict resolution and `sub_alter_skiplsn` all work exactly as for a
//! transaction that was not streamed.
//!
//! Eager apply: when a stream begins while nothing else is in flight, its changes
//! are also applied at once, in a local transaction left open, while they are still
//! spilled. If the stream commits before anything else arrives, that local
//! transaction simply commits (with the commit's LSN and timestamp under the
//! subscription's origin): a huge transaction is then visible right after its commit
//! instead of after a replay. As soon as anything else arrives (another transaction
//! or stream, a subtransaction abort, a sync event) or a change meets a conflict
//! (whose resolution needs the commit timestamp, not known yet), the eager local
//! transaction is rolled back and the transaction is replayed from the file at
//! commit as described above. Only for subscriptions that do not forward other
//! nodes' transactions (the origin is then known before the commit) and have no
//! `sub_alter_skiplsn` pending; `spock.stream_eager_apply` turns it off.
//!
//! The files are not needed after a restart (the provider streams again from the
//! origins' progress), so the worker removes its directory when it starts.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use spock_core::eager::{CommitPlan, EagerApply, FallBack};
use spock_core::proto::stream::StreamOrder;
use spock_core::proto::{Begin, Decoded, Message, Origin, ProtoVersion, StreamAbort};
use spock_core::spill::{SpillError, SpillReader, SpillWriter, SubxactMarks};

use super::session::{ApplySession, Outcome};
use crate::error::PgError;

/// Read and write buffer of a spill file.
const SPILL_BUFFER: usize = 64 * 1024;
/// How often the provider hears from us while a long transaction is applied.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// Exits like any backend whose postmaster died (`WL_EXIT_ON_PM_DEATH`), for loops
/// that may run long without waiting on the latch: applying a large streamed
/// transaction, or draining a stream that keeps arriving. A kill -9 of the
/// postmaster must not leave the worker attached to shared memory.
/// Checks every 256th call (a system call each time would cost more than applying
/// a row).
pub fn exit_if_postmaster_died() {
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    if !CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed).is_multiple_of(256) {
        return;
    }
    // SAFETY: reads a backend global; proc_exit is how a backend leaves.
    unsafe {
        if std::os::unix::process::parent_id() != pg_sys::PostmasterPid as u32 {
            pg_sys::proc_exit(1);
        }
    }
}

impl Drop for StreamReceiver {
    /// The worker stops (or fails): its files are useless, the provider streams
    /// again from the origins' progress.
    fn drop(&mut self) {
        self.txns.clear();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// One streamed transaction being received.
struct SpilledTxn {
    path: PathBuf,
    writer: SpillWriter<BufWriter<File>>,
    marks: SubxactMarks,
    changes: u64,
}

/// The streamed transactions of one subscription.
pub struct StreamReceiver {
    sub_name: String,
    dir: PathBuf,
    /// Which blocks and transactions are open; rejects messages out of order.
    order: StreamOrder,
    txns: HashMap<u32, SpilledTxn>,
    /// Which streamed transaction is applied eagerly (see the module doc).
    eager: EagerApply,
}

fn protocol_error(sub: &str, msg: impl Into<String>) -> ! {
    PgError::new(PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION, format!("spock subscription {sub}: {}", msg.into()))
        .raise()
}

fn io_error(sub: &str, what: &str, path: &std::path::Path, e: impl std::fmt::Display) -> ! {
    PgError::new(
        PgSqlErrorCode::ERRCODE_IO_ERROR,
        format!("spock subscription {sub}: could not {what} \"{}\": {e}", path.display()),
    )
    .raise()
}

fn spill_error(sub: &str, path: &std::path::Path, e: SpillError) -> ! {
    let code = match e {
        SpillError::Io { .. } => PgSqlErrorCode::ERRCODE_IO_ERROR,
        _ => PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
    };
    PgError::new(code, format!("spock subscription {sub}: streamed transaction file \"{}\": {e}", path.display()))
        .hint("The worker restarts and the provider streams the transaction again.")
        .raise()
}

impl StreamReceiver {
    /// The receiver of subscription `sub_id`; removes files left by an earlier run.
    /// `eager_allowed`: whether eager apply may be tried for this subscription.
    pub fn new(sub_id: u32, sub_name: &str, eager_allowed: bool, provider_node: u16) -> StreamReceiver {
        // Subscription ids are per database: the directory names both.
        // SAFETY: reads this backend's database oid.
        let db = u32::from(unsafe { pgrx::pg_sys::MyDatabaseId });
        let dir = PathBuf::from("pg_spock").join("stream").join(format!("{db}_{sub_id}"));
        if dir.exists() {
            if let Err(e) = fs::remove_dir_all(&dir) {
                io_error(sub_name, "remove directory", &dir, e);
            }
        }
        StreamReceiver {
            sub_name: sub_name.to_string(),
            dir,
            order: StreamOrder::new(),
            txns: HashMap::new(),
            eager: EagerApply::new(eager_allowed, provider_node),
        }
    }

    /// Whether a streamed transaction is open (received in part, not yet committed
    /// or aborted).
    pub fn any_open(&self) -> bool {
        !self.txns.is_empty()
    }

    /// Handles one decoded message: stream messages here, the others by `session`;
    /// returns what the receiver does next. `payload` is the message as received,
    /// `version` the stream's protocol version. `keepalive` is called about once a
    /// second while a long streamed transaction is applied, so the provider hears
    /// from us (it ends the connection after `wal_sender_timeout` of silence).
    pub fn dispatch(
        &mut self,
        payload: &Bytes,
        d: Decoded,
        version: Option<ProtoVersion>,
        session: &mut ApplySession,
        keepalive: &mut dyn FnMut(),
    ) -> Outcome {
        let block = self.order.block();
        if let Err(e) = self.order.accept(&d.message) {
            protocol_error(&self.sub_name, e.to_string());
        }
        let eager = self.eager.current();
        match d.message {
            Message::StreamStart(s) => {
                self.start(s.xid, s.first_segment);
                let enabled = crate::gucs::STREAM_EAGER_APPLY.get();
                let (fall_back, begin) =
                    self.eager.start(s.xid, s.first_segment, self.txns.len(), session.in_remote_transaction(), enabled);
                self.fall_back(eager, fall_back, session);
                if begin {
                    self.begin_eager(s.xid, session);
                }
                Outcome::Continue
            }
            Message::StreamChange(c) => {
                self.change(c.xid, payload);
                if self.eager.applies(self.order.block()) {
                    let outcome =
                        session.handle(Decoded { remote_insert_lsn: d.remote_insert_lsn, message: *c.message });
                    if outcome == Outcome::NeedsCommit {
                        let fall_back = self.eager.change_needs_commit();
                        self.fall_back(eager, fall_back, session);
                    }
                }
                Outcome::Continue
            }
            Message::StreamStop(_) => {
                self.stop(block);
                Outcome::Continue
            }
            Message::StreamAbort(a) => {
                let fall_back = self.eager.abort(a.xid);
                self.fall_back(eager, fall_back, session);
                self.abort(&a);
                Outcome::Continue
            }
            Message::StreamCommit(c) => match self.eager.commit(c.xid, c.origin_id) {
                CommitPlan::CommitEager => self.commit_eager(&c, d.remote_insert_lsn, session),
                CommitPlan::Replay { fall_back } => {
                    self.fall_back(eager, fall_back, session);
                    self.commit(&c, d.remote_insert_lsn, version, session, keepalive)
                }
            },
            other => {
                let fall_back = self.eager.other_message();
                self.fall_back(eager, fall_back, session);
                session.handle(Decoded { remote_insert_lsn: d.remote_insert_lsn, message: other })
            }
        }
    }

    /// A transaction that is not streamed arrived and is applied elsewhere (by a
    /// parallel apply writer): an eagerly applied stream is rolled back, to be
    /// replayed at its commit.
    pub fn other_arrived(&mut self, session: &mut ApplySession) {
        let eager = self.eager.current();
        let fall_back = self.eager.other_message();
        self.fall_back(eager, fall_back, session);
    }

    /// Starts applying streamed transaction `xid` as it arrives. The commit LSN and
    /// time are not known yet; the origin is the provider's (the subscription
    /// forwards nothing else).
    fn begin_eager(&mut self, xid: u32, session: &mut ApplySession) {
        let begin = Begin { flags: 0, final_lsn: 0, commit_time: 0, xid };
        let _ = session.handle(Decoded { remote_insert_lsn: None, message: Message::Begin(begin) });
        let origin = Origin { origin_lsn: 0, origin_id: self.eager.provider_node(), origin_name: None };
        let _ = session.handle(Decoded { remote_insert_lsn: None, message: Message::Origin(origin) });
        session.mark_eager();
        pgrx::debug1!("spock subscription {}: applying streamed transaction {xid} eagerly", self.sub_name);
    }

    /// Rolls the eager local transaction of `xid` back when `why` says so; the
    /// stream is replayed at commit.
    fn fall_back(&mut self, xid: Option<u32>, why: Option<FallBack>, session: &mut ApplySession) {
        let (Some(xid), Some(why)) = (xid, why) else { return };
        session.abandon_remote();
        pgrx::debug1!(
            "spock subscription {}: streamed transaction {xid} will be replayed at commit: {why}",
            self.sub_name
        );
    }

    /// Commits the eagerly applied transaction.
    fn commit_eager(
        &mut self,
        c: &spock_core::proto::StreamCommit,
        insert_lsn: Option<u64>,
        session: &mut ApplySession,
    ) -> Outcome {
        if let Some(txn) = self.txns.remove(&c.xid) {
            drop(txn.writer);
            if let Err(e) = fs::remove_file(&txn.path) {
                pgrx::warning!(
                    "spock subscription {}: could not remove \"{}\": {e}",
                    self.sub_name,
                    txn.path.display()
                );
            }
        }
        let outcome = session.handle(Decoded { remote_insert_lsn: insert_lsn, message: Message::Commit(c.commit()) });
        pgrx::debug1!("spock subscription {}: committed eagerly applied streamed transaction {}", self.sub_name, c.xid);
        outcome
    }

    fn start(&mut self, xid: u32, first_segment: bool) {
        if first_segment {
            if let Some(old) = self.txns.remove(&xid) {
                let _ = fs::remove_file(&old.path);
            }
            self.txns.insert(xid, self.create_file(xid));
        } else if !self.txns.contains_key(&xid) {
            protocol_error(
                &self.sub_name,
                format!("stream continues transaction {xid}, whose first segment was not received"),
            );
        }
    }

    fn create_file(&self, xid: u32) -> SpilledTxn {
        if let Err(e) = fs::create_dir_all(&self.dir) {
            io_error(&self.sub_name, "create directory", &self.dir, e);
        }
        let path = self.dir.join(format!("{xid}.spill"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap_or_else(|e| io_error(&self.sub_name, "create file", &path, e));
        let writer = SpillWriter::create(BufWriter::with_capacity(SPILL_BUFFER, file))
            .unwrap_or_else(|e| spill_error(&self.sub_name, &path, e));
        SpilledTxn { path, writer, marks: SubxactMarks::new(xid), changes: 0 }
    }

    fn change(&mut self, subxid: u32, payload: &Bytes) {
        let Some(txn) = self.order.block().and_then(|xid| self.txns.get_mut(&xid)) else {
            protocol_error(&self.sub_name, "stream change outside a stream block");
        };
        txn.marks.note(subxid, txn.writer.offset());
        if let Err(e) = txn.writer.append(payload) {
            spill_error(&self.sub_name, &txn.path, e);
        }
        txn.changes += 1;
    }

    /// Ends the block of `block` (the order check closed it already).
    fn stop(&mut self, block: Option<u32>) {
        let Some(txn) = block.and_then(|xid| self.txns.get_mut(&xid)) else {
            protocol_error(&self.sub_name, "stream stop without stream start");
        };
        if let Err(e) = txn.writer.flush() {
            spill_error(&self.sub_name, &txn.path, e);
        }
    }

    fn abort(&mut self, a: &StreamAbort) {
        let (xid, subxid) = (a.xid, a.subxid);
        if a.is_toplevel() {
            let Some(txn) = self.txns.remove(&xid) else {
                protocol_error(&self.sub_name, format!("stream abort for unknown transaction {xid}"));
            };
            drop(txn.writer);
            if let Err(e) = fs::remove_file(&txn.path) {
                io_error(&self.sub_name, "remove file", &txn.path, e);
            }
            return;
        }
        let Some(txn) = self.txns.get_mut(&xid) else {
            protocol_error(
                &self.sub_name,
                format!("stream abort of subtransaction {subxid} for unknown transaction {xid}"),
            );
        };
        let Some(offset) = txn.marks.abort(subxid) else {
            // The subtransaction sent nothing that passed the filters.
            return;
        };
        let path = txn.path.clone();
        let sub = self.sub_name.clone();
        if let Err(e) = txn.writer.flush() {
            spill_error(&sub, &path, e);
        }
        let file = txn.writer.get_mut().get_mut();
        if let Err(e) = file.set_len(offset).and_then(|_| file.seek(SeekFrom::Start(offset))) {
            io_error(&sub, "truncate file", &path, e);
        }
        txn.writer.rewind(offset);
    }

    fn commit(
        &mut self,
        c: &spock_core::proto::StreamCommit,
        insert_lsn: Option<u64>,
        version: Option<ProtoVersion>,
        session: &mut ApplySession,
        keepalive: &mut dyn FnMut(),
    ) -> Outcome {
        let Some(txn) = self.txns.remove(&c.xid) else {
            protocol_error(&self.sub_name, format!("stream commit for unknown transaction {}", c.xid));
        };
        let Some(version) = version else {
            protocol_error(&self.sub_name, "stream commit before the startup message");
        };
        let SpilledTxn { path, writer, changes, .. } = txn;
        let mut file = writer
            .into_inner()
            .into_inner()
            .unwrap_or_else(|e| io_error(&self.sub_name, "write file", &path, e.error()));
        pgrx::debug1!(
            "spock subscription {}: applying streamed transaction {} ({changes} messages)",
            self.sub_name,
            c.xid
        );
        let mut replayed = 0u64;
        let mut last_keepalive = Instant::now();
        // Once more from the start when an insert that did not search first met an
        // existing key (the session then searches in that table).
        'replay: loop {
            if let Err(e) = file.seek(SeekFrom::Start(0)) {
                io_error(&self.sub_name, "read file", &path, e);
            }
            let mut reader = SpillReader::open(BufReader::with_capacity(SPILL_BUFFER, &mut file))
                .unwrap_or_else(|e| spill_error(&self.sub_name, &path, e));
            let _ = session.handle(Decoded { remote_insert_lsn: None, message: Message::Begin(c.begin()) });
            let _ = session.handle(Decoded { remote_insert_lsn: None, message: Message::Origin(c.origin()) });
            let mut buf = Vec::new();
            loop {
                let at = reader.offset();
                match reader.next_record(&mut buf) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => spill_error(&self.sub_name, &path, e),
                }
                let record = Bytes::copy_from_slice(&buf);
                let d = Message::decode(&record, version).unwrap_or_else(|e| {
                    PgError::new(
                        PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                        format!(
                            "spock subscription {}: streamed transaction file \"{}\", record at byte {at}: {e}",
                            self.sub_name,
                            path.display()
                        ),
                    )
                    .raise()
                });
                let Message::StreamChange(change) = d.message else {
                    PgError::new(
                        PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                        format!("spock subscription {}: streamed transaction file \"{}\", record at byte {at} is not a stream change", self.sub_name, path.display()),
                    )
                    .raise()
                };
                let outcome =
                    session.handle(Decoded { remote_insert_lsn: d.remote_insert_lsn, message: *change.message });
                if outcome == Outcome::ApplyAgain {
                    session.abandon_remote();
                    continue 'replay;
                }
                replayed += 1;
                exit_if_postmaster_died();
                if replayed.is_multiple_of(1024) {
                    pgrx::check_for_interrupts!();
                    if last_keepalive.elapsed() >= KEEPALIVE_INTERVAL {
                        keepalive();
                        last_keepalive = Instant::now();
                    }
                }
            }
            break;
        }
        let outcome = session.handle(Decoded { remote_insert_lsn: insert_lsn, message: Message::Commit(c.commit()) });
        drop(file);
        if let Err(e) = fs::remove_file(&path) {
            pgrx::warning!("spock subscription {}: could not remove \"{}\": {e}", self.sub_name, path.display());
        }
        pgrx::debug1!(
            "spock subscription {}: applied streamed transaction {} ({replayed} messages)",
            self.sub_name,
            c.xid
        );
        outcome
    }
}
