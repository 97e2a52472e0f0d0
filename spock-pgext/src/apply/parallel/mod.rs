//! Parallel apply (`spock.parallel_apply_workers` above 1): the subscription's
//! worker (the leader) receives the stream as before, but hands whole transactions
//! to writers ([`writer`]) through shared memory queues ([`shared`]).
//!
//! * The leader holds each transaction until its COMMIT, with its
//!   [`Footprint`](spock_core::parallel::Footprint) (the keys it touches); a
//!   transaction that shares a key with one in flight goes to the writer holding
//!   that one, behind it (spock_core::parallel::Assigner); others to the least busy
//!   writer.
//! * Barriers (TRUNCATE, `spock.queue`, UPDATE/DELETE without a key, forwarded
//!   transactions, transactions too large to hold, every transaction while a
//!   synchronised table catches up with the stream) and everything outside
//!   transactions that acts on the origin or the tables (streamed transactions,
//!   sync events) wait until every writer is done; the leader then applies them
//!   itself, with its own session, as serial apply does.
//! * Writers commit in the provider's commit order, under the provider's origin,
//!   which the leader holds and writers share (PostgreSQL's
//!   `replorigin_session_setup(origin, leader pid)`): the origin moves as in serial
//!   apply, a restart resumes where it does.
//! * The leader learns of commits from the shared header and keeps them for
//!   feedback (flushed positions) as for its own.
//! * A writer that hits a transient error (a deadlock between writers, over a row
//!   no key described) makes the leader stop every writer and reconnect; the
//!   transactions that were in flight are then applied by the leader alone. Any
//!   other error is recorded for replay as in serial apply and stops the worker.

mod shared;
mod writer;

use std::time::{Duration, Instant};

use bytes::Bytes;
use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use spock_core::parallel::{Assigner, Chooser, Dependencies, FootprintBuilder, Mode, Unit};
use spock_core::proto::{format_lsn, Message};

pub use shared::MAX_WRITERS;
use shared::{Shared, WriterState, QUEUE_BYTES};

use super::receiver::Exit;
use super::session::ApplySession;
use super::subscription::SubscriptionInfo;
use crate::error::PgError;

/// A transaction held above this many bytes is applied by the leader (after the
/// writers are done) instead of being held whole.
const MAX_HELD_BYTES: usize = 8 << 20;
/// How often a waiting leader checks that its writers live.
const HEALTH_CHECK: Duration = Duration::from_millis(500);
/// A transaction begins within a backlog when the provider's WAL had gone this far
/// past its commit (spock_core::parallel::Chooser).
const BACKLOG_BYTES: u64 = 1 << 20;

/// What the receiver does with a message the pool saw.
pub enum Route {
    /// The pool took it (held, or handed to a writer).
    Taken,
    /// The leader applies it, as serial apply does.
    Local,
    /// The leader applies these held messages (the transaction is a barrier, or too
    /// large to hold, or only its relation messages when a writer has it), then
    /// goes on as for [`Route::Local`].
    Replay(Vec<Bytes>),
}

struct WriterHandle {
    bgw: *mut pg_sys::BackgroundWorkerHandle,
    mq: *mut pg_sys::shm_mq_handle,
}

/// A transaction being received.
struct Held {
    messages: Vec<Bytes>,
    /// Its relation messages (also among `messages`, in place).
    relations: Vec<Bytes>,
    bytes: usize,
    final_lsn: u64,
}

/// The writers of one connection's stream and what the leader knows of them.
pub struct Pool {
    sub_name: String,
    seg: *mut pg_sys::dsm_segment,
    shared: *const Shared,
    writers: Vec<WriterHandle>,
    deps: Dependencies,
    assigner: Assigner,
    builder: FootprintBuilder,
    /// The transaction being received, held until its commit.
    held: Option<Held>,
    /// The transaction being received is applied by the leader.
    local: bool,
    /// Sequence number of the last transaction handed out, and its commit LSN.
    dispatched: u64,
    dispatched_lsn: u64,
    /// Every transaction up to this one is known committed.
    committed: u64,
    /// This worker is marked inside a transaction in the progress table.
    marked: bool,
    progress_slot: Option<usize>,
    dbid: u32,
    health_checked: Instant,
    /// With `spock.parallel_apply_adaptive`: whether the writers or the leader
    /// alone apply, by measured throughput.
    chooser: Option<Chooser>,
    /// The provider's WAL end as last reported.
    wal_end: u64,
    /// `committed` when the chooser last counted the writers' commits.
    measured_commits: u64,
}

fn internal(msg: impl Into<String>) -> ! {
    PgError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, msg.into()).raise()
}

/// Copies `s` into a fixed C string field (truncated, NUL-terminated).
fn set_cstr(dst: &mut [std::ffi::c_char], s: &str) {
    let n = s.len().min(dst.len() - 1);
    for (d, b) in dst.iter_mut().zip(s.as_bytes()[..n].iter()) {
        *d = *b as std::ffi::c_char;
    }
    dst[n] = 0;
}

/// Starts writer `index` of subscription `sub` on segment `handle`.
fn start_writer(
    sub: &SubscriptionInfo,
    dbid: u32,
    index: usize,
    handle: pg_sys::dsm_handle,
) -> Option<*mut pg_sys::BackgroundWorkerHandle> {
    // SAFETY: a zeroed registration filled in field by field; registering a
    // dynamic background worker from a backend.
    unsafe {
        let mut w: pg_sys::BackgroundWorker = std::mem::zeroed();
        w.bgw_flags = (pg_sys::BGWORKER_SHMEM_ACCESS | pg_sys::BGWORKER_BACKEND_DATABASE_CONNECTION) as i32;
        w.bgw_start_time = pg_sys::BgWorkerStartTime::BgWorkerStart_RecoveryFinished;
        w.bgw_restart_time = pg_sys::BGW_NEVER_RESTART;
        set_cstr(&mut w.bgw_name, &format!("spock apply writer {} #{}", sub.name, index + 1));
        set_cstr(&mut w.bgw_type, crate::workers::WRITER_TYPE);
        set_cstr(&mut w.bgw_library_name, "spock");
        set_cstr(&mut w.bgw_function_name, "spock_apply_writer_main");
        w.bgw_main_arg = pg_sys::Datum::from(handle as usize);
        set_cstr(&mut w.bgw_extra, &format!("{dbid} {} {index}", sub.id));
        w.bgw_notify_pid = pg_sys::MyProcPid;
        let mut h: *mut pg_sys::BackgroundWorkerHandle = std::ptr::null_mut();
        pg_sys::RegisterDynamicBackgroundWorker(&mut w, &mut h).then_some(h)
    }
}

/// The unique indexes of the local table of relation `r` besides its identity:
/// each index's oid and the positions of its columns in `r` (indexes on
/// expressions or on columns the provider does not send are left out: a
/// conflict on them is met by the writers as a lock wait or an error, and applied
/// again serially).
fn unique_keys(r: &spock_core::proto::Relation) -> Vec<(u32, Vec<usize>)> {
    let lookup = || {
        pgrx::Spi::connect(|client| {
            let rows = client
                .select(
                    "SELECT i.indexrelid::int8, array_agg(coalesce(a.attname::text, '') ORDER BY k.ord)
                       FROM pg_catalog.pg_index i
                       JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
                       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                      CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                       LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                      WHERE n.nspname = $1 AND c.relname = $2 AND i.indisunique AND i.indisvalid
                      GROUP BY i.indexrelid
                     HAVING bool_and(k.attnum > 0)",
                    None,
                    &[r.nspname.as_str().into(), r.relname.as_str().into()],
                )
                .unwrap_or_else(|e| crate::error::spi_failed("reading a table's unique indexes", e));
            let mut out = Vec::new();
            for row in rows {
                let (Ok(Some(oid)), Ok(Some(names))) = (row.get::<i64>(1), row.get::<Vec<String>>(2)) else { continue };
                let cols: Option<Vec<usize>> =
                    names.iter().map(|n| r.columns.iter().position(|c| &c.name == n)).collect();
                out.extend(cols.map(|c| (oid as u32, c)));
            }
            out
        })
    };
    let identity: Vec<usize> = r.columns.iter().enumerate().filter(|(_, c)| c.is_identity()).map(|(i, _)| i).collect();
    // SAFETY: reads whether a transaction is open (the leader may be applying one).
    let found = if unsafe { pg_sys::IsTransactionState() } {
        // The leader applies this transaction itself (alone, a barrier, a large
        // one): between two changes it holds no snapshot, which SPI needs.
        // SAFETY: pushes the transaction's snapshot for the lookup and pops it; an
        // error aborts the transaction, which clears the stack.
        let pushed = unsafe {
            let push = !pg_sys::ActiveSnapshotSet();
            if push {
                pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            }
            push
        };
        let found = lookup();
        if pushed {
            // SAFETY: the snapshot pushed above.
            unsafe { pg_sys::PopActiveSnapshot() };
        }
        found
    } else {
        pgrx::bgworkers::BackgroundWorker::transaction(lookup)
    };
    found.into_iter().filter(|(_, cols)| *cols != identity).collect()
}

/// Stops writers left by an earlier worker of subscription `sub` and waits until
/// they are gone: one could still commit a transaction this worker will receive
/// again. (A writer also checks that its leader lives before each commit.)
pub fn stop_old_writers(sub: &SubscriptionInfo) {
    let prefix = format!("{} writer ", sub.slot_name);
    loop {
        let left = pgrx::bgworkers::BackgroundWorker::transaction(|| {
            pgrx::Spi::get_one_with_args::<i64>(
                "SELECT count(pg_catalog.pg_terminate_backend(pid)) FROM pg_catalog.pg_stat_activity
                  WHERE backend_type = $1 AND left(application_name, length($2)) = $2 AND datid = $3::int8::oid",
                &[
                    crate::workers::WRITER_TYPE.into(),
                    prefix.as_str().into(),
                    // SAFETY: reads this backend's database.
                    i64::from(u32::from(unsafe { pg_sys::MyDatabaseId })).into(),
                ],
            )
            .unwrap_or_else(|e| crate::error::spi_failed("looking for writers of an earlier worker", e))
            .unwrap_or(0)
        });
        if left == 0 || !crate::workers::sleep(Duration::from_millis(50)) {
            return;
        }
    }
}

impl Pool {
    /// Starts `n` writers for `sub`; `None` (serial apply, with a warning) when the
    /// segment or a worker slot cannot be had.
    pub fn start(sub: &SubscriptionInfo, session: &mut ApplySession, n: usize) -> Option<Pool> {
        let n = n.clamp(1, MAX_WRITERS);
        let origin = session.hold_provider_origin();
        // SAFETY: reads this backend's database.
        let dbid = u32::from(unsafe { pg_sys::MyDatabaseId });
        // SAFETY: a new segment, mapped for the life of this process (until detached
        // by Drop); the header is laid out before any writer can attach.
        let seg = unsafe {
            let seg = pg_sys::dsm_create(shared::segment_size(n), pg_sys::DSM_CREATE_NULL_IF_MAXSEGMENTS as i32);
            if seg.is_null() {
                pgrx::warning!(
                    "spock subscription {}: no dynamic shared memory segment for parallel apply; applying serially",
                    sub.name
                );
                return None;
            }
            pg_sys::dsm_pin_mapping(seg);
            Shared::init(pg_sys::dsm_segment_address(seg).cast(), n as u32, origin);
            seg
        };
        // SAFETY: the header just laid out.
        let shared = unsafe { pg_sys::dsm_segment_address(seg).cast::<Shared>().cast_const() };
        // SAFETY: reads the segment's handle.
        let handle = unsafe { pg_sys::dsm_segment_handle(seg) };
        let mut pool = Pool {
            sub_name: sub.name.clone(),
            seg,
            shared,
            writers: Vec::with_capacity(n),
            deps: Dependencies::new(),
            assigner: Assigner::new(n),
            builder: FootprintBuilder::new(sub.provider_node_id),
            held: None,
            local: false,
            dispatched: 0,
            dispatched_lsn: 0,
            committed: 0,
            marked: false,
            progress_slot: session.progress_slot(),
            dbid,
            health_checked: Instant::now(),
            chooser: crate::gucs::parallel_apply_adaptive().then(|| Chooser::new(crate::gucs::parallel_apply_window())),
            wal_end: 0,
            measured_commits: 0,
        };
        for i in 0..n {
            // SAFETY: queue `i` of the segment, created before its writer starts.
            let mq = unsafe {
                let mq = pg_sys::shm_mq_create(
                    pg_sys::dsm_segment_address(seg).cast::<u8>().add(shared::queue_offset(i)).cast(),
                    QUEUE_BYTES,
                );
                pg_sys::shm_mq_set_sender(mq, pg_sys::MyProc);
                mq
            };
            let Some(bgw) = start_writer(sub, dbid, i, handle) else {
                pgrx::warning!(
                    "spock subscription {}: could not start parallel apply writer {} (no background worker slot free: max_worker_processes); applying serially",
                    sub.name,
                    i + 1
                );
                return None;
            };
            // SAFETY: attaches the leader's end of queue `i`; the handle lets shm_mq
            // notice a writer that never starts.
            let mqh = unsafe { pg_sys::shm_mq_attach(mq, seg, bgw) };
            pool.writers.push(WriterHandle { bgw, mq: mqh });
        }
        pgrx::log!("spock subscription {}: applying with {n} parallel writers", sub.name);
        Some(pool)
    }

    fn shared(&self) -> &Shared {
        // SAFETY: the segment stays mapped while the pool lives.
        unsafe { &*self.shared }
    }

    /// Nothing held and every transaction handed out has committed.
    pub fn idle(&self) -> bool {
        self.held.is_none() && !self.local && self.committed >= self.dispatched
    }

    /// Transactions handed out and not known committed.
    pub fn in_flight(&self) -> bool {
        self.committed < self.dispatched
    }

    /// Routes one decoded message of the stream; `wal_end`: the provider's WAL end
    /// its frame reported.
    pub fn route(
        &mut self,
        payload: &Bytes,
        m: &Message,
        wal_end: Option<u64>,
        session: &mut ApplySession,
    ) -> Result<Route, Exit> {
        self.wal_end = self.wal_end.max(wal_end.unwrap_or(0));
        // Relation messages: every writer needs them, and the leader, in stream
        // order. Inside a held transaction they stay in it, in place (its changes
        // before one use the relation as it was), and go to the others when the
        // transaction is handed out.
        let relation = matches!(m, Message::Startup(_) | Message::Relation(_));
        if relation {
            self.builder.note(m);
        }
        if let Message::Relation(r) = m {
            self.builder.set_unique_keys(r.relid, unique_keys(r));
        }
        if relation && self.held.is_none() {
            self.broadcast(payload, None, session)?;
            return Ok(Route::Local);
        }
        if self.local {
            if let Message::Commit(_) = m {
                self.local = false;
            }
            return Ok(Route::Local);
        }
        if let Some(h) = self.held.as_mut() {
            if relation {
                h.relations.push(payload.clone());
            } else {
                self.builder.note(m);
            }
            h.messages.push(payload.clone());
            h.bytes += payload.len();
            if let Message::Commit(_) = m {
                return self.finish(session);
            }
            if h.bytes > MAX_HELD_BYTES {
                self.drain(session)?;
                let h = self.held.take().expect("held above");
                for r in &h.relations {
                    self.broadcast(r, None, session)?;
                }
                self.builder.take();
                self.local = true;
                return Ok(Route::Replay(h.messages));
            }
            return Ok(Route::Taken);
        }
        match m {
            // After a lock wait between writers, and while a synchronised table
            // waits for the stream to pass its copy: the leader alone.
            Message::Begin(b) if b.final_lsn <= session.serial_until() || session.catching_up_tables() => {
                if let Some(c) = self.chooser.as_mut() {
                    // Not a measure of either mode.
                    c.begin(Instant::now(), false, 0);
                }
                self.drain(session)?;
                self.local = true;
                Ok(Route::Local)
            }
            Message::Begin(b) if self.choose(b.final_lsn) == Mode::Alone => {
                self.drain(session)?;
                self.local = true;
                Ok(Route::Local)
            }
            Message::Begin(b) => {
                self.builder.take();
                self.held = Some(Held {
                    messages: vec![payload.clone()],
                    relations: Vec::new(),
                    bytes: payload.len(),
                    final_lsn: b.final_lsn,
                });
                Ok(Route::Taken)
            }
            // Streamed transactions and sync events: after everything before them.
            Message::StreamStart(_) | Message::StreamCommit(_) | Message::LogicalMessage(_) => {
                self.drain(session)?;
                Ok(Route::Local)
            }
            _ => Ok(Route::Local),
        }
    }

    /// Who applies the transaction that commits at `final_lsn` (the writers
    /// without `spock.parallel_apply_adaptive`); says so when that changes.
    fn choose(&mut self, final_lsn: u64) -> Mode {
        let backlog = self.wal_end.saturating_sub(final_lsn) >= BACKLOG_BYTES;
        // The writers' commits as published (observe() may not have run lately).
        let committed = self.shared().committed_seq();
        let Some(c) = self.chooser.as_mut() else { return Mode::Writers };
        // With the writers, what they committed; alone, the transaction before.
        let completed = match c.mode() {
            Mode::Writers => committed.saturating_sub(std::mem::replace(&mut self.measured_commits, committed)),
            Mode::Alone => 1,
        };
        let (mode, changed) = c.begin(Instant::now(), backlog, completed);
        if changed {
            self.measured_commits = committed;
        }
        if c.take_decided() || changed {
            let (w, a) = c.rates();
            let rate = |r: Option<f64>| r.map_or("not measured".to_string(), |r| format!("{r:.0} tx/s"));
            pgrx::log!(
                "spock subscription {}: parallel apply: {} (measured while applying a backlog: {} writers {}, the leader alone {})",
                self.sub_name,
                match mode {
                    Mode::Writers => "the writers apply",
                    Mode::Alone => "the leader applies alone",
                },
                self.writers.len(),
                rate(w),
                rate(a)
            );
        }
        mode
    }

    /// The held transaction's COMMIT arrived: hand it to a writer, or back to the
    /// leader when it is a barrier.
    fn finish(&mut self, session: &mut ApplySession) -> Result<Route, Exit> {
        let Some(h) = self.held.take() else { return Ok(Route::Local) };
        let footprint = self.builder.take();
        if footprint.barrier {
            self.drain(session)?;
            for r in &h.relations {
                self.broadcast(r, None, session)?;
            }
            return Ok(Route::Replay(h.messages));
        }
        self.enter_transaction(session)?;
        // The ring of assignments holds what is in flight.
        while self.dispatched - self.committed >= (shared::RING / 2) as u64 {
            self.nap(10, session)?;
        }
        let (seq, wait) = self.deps.admit(&footprint);
        let w = self.assigner.assign(seq, wait);
        self.dispatched = seq;
        self.dispatched_lsn = h.final_lsn;
        self.shared().assign(seq, w);
        let unit = Unit::encode_transaction(seq, &h.messages);
        self.send(w, &unit, session)?;
        if h.relations.is_empty() {
            return Ok(Route::Taken);
        }
        // The others learn its relations after it; the leader too.
        for r in &h.relations {
            self.broadcast(r, Some(w), session)?;
        }
        Ok(Route::Replay(h.relations))
    }

    /// Marks this worker inside a transaction for `spock.pause_apply_workers()`;
    /// during a pause, first lets every writer finish.
    fn enter_transaction(&mut self, session: &mut ApplySession) -> Result<(), Exit> {
        let Some(i) = self.progress_slot else { return Ok(()) };
        if self.marked && !crate::workers::shmem::is_paused(self.dbid) {
            return Ok(());
        }
        if self.marked {
            self.drain(session)?;
        }
        while !crate::workers::shmem::try_enter_transaction(i) {
            self.nap(1, session)?;
        }
        self.marked = true;
        Ok(())
    }

    /// Sends a message every writer applies (but `except`, which has it already).
    fn broadcast(&mut self, payload: &Bytes, except: Option<usize>, session: &mut ApplySession) -> Result<(), Exit> {
        let unit = Unit::encode_message(payload);
        for w in (0..self.writers.len()).filter(|w| Some(*w) != except) {
            self.send(w, &unit, session)?;
        }
        Ok(())
    }

    /// Sends `unit` to writer `w`, waiting while its queue is full.
    fn send(&mut self, w: usize, unit: &[u8], session: &mut ApplySession) -> Result<(), Exit> {
        loop {
            // SAFETY: our end of writer w's queue; with nowait, a call that would
            // block is repeated with the same data, as shm_mq requires.
            let r = unsafe { pg_sys::shm_mq_send(self.writers[w].mq, unit.len(), unit.as_ptr().cast(), true, true) };
            match r {
                pg_sys::shm_mq_result::SHM_MQ_SUCCESS => return Ok(()),
                pg_sys::shm_mq_result::SHM_MQ_WOULD_BLOCK => self.nap(10, session)?,
                _ => {
                    self.observe(session)?;
                    self.stop_writers();
                    internal(format!("spock subscription {}: parallel apply writer {} stopped", self.sub_name, w + 1))
                }
            }
        }
    }

    /// Waits until every transaction handed out has committed.
    pub fn drain(&mut self, session: &mut ApplySession) -> Result<(), Exit> {
        loop {
            self.observe(session)?;
            if self.committed >= self.dispatched {
                return Ok(());
            }
            self.nap(10, session)?;
        }
    }

    /// Waits on the latch (writers set it when they commit or fail) for at most
    /// `ms`, then looks at the writers.
    fn nap(&mut self, ms: i64, session: &mut ApplySession) -> Result<(), Exit> {
        let shared = self.shared();
        shared.leader_waits.store(true, std::sync::atomic::Ordering::SeqCst);
        // A commit published between the last look and the flag would not wake us.
        if shared.committed_seq() <= self.committed {
            // SAFETY: waits on our own latch; the server's death ends the process.
            unsafe {
                pg_sys::WaitLatch(
                    pg_sys::MyLatch,
                    (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                    ms,
                    pg_sys::PG_WAIT_EXTENSION,
                );
                pg_sys::ResetLatch(pg_sys::MyLatch);
            }
        }
        self.shared().leader_waits.store(false, std::sync::atomic::Ordering::SeqCst);
        pgrx::check_for_interrupts!();
        if crate::workers::sigterm_received() {
            return Err(Exit::Stop);
        }
        crate::apply::stream::exit_if_postmaster_died();
        self.observe(session)?;
        if self.health_checked.elapsed() >= HEALTH_CHECK {
            self.health_checked = Instant::now();
            for (i, w) in self.writers.iter().enumerate() {
                let mut pid = 0;
                // SAFETY: a handle of a worker this process registered.
                let status = unsafe { pg_sys::GetBackgroundWorkerPid(w.bgw, &mut pid) };
                if status == pg_sys::BgwHandleStatus::BGWH_STOPPED {
                    // It may have said why.
                    self.check_failures(session)?;
                    self.stop_writers();
                    internal(format!("spock subscription {}: parallel apply writer {} exited", self.sub_name, i + 1));
                }
            }
        }
        Ok(())
    }

    /// Takes in the commits writers published; acts on a writer's failure.
    pub fn observe(&mut self, session: &mut ApplySession) -> Result<(), Exit> {
        let c = self.shared().committed();
        if c.seq > self.committed {
            session.note_writer_commit(c.local_end, c.remote_end, c.commit_ts);
            self.committed = c.seq;
            self.deps.committed_up_to(c.seq);
            self.assigner.committed_up_to(c.seq);
        }
        if self.marked && self.committed >= self.dispatched && self.held.is_none() {
            if let Some(i) = self.progress_slot {
                crate::workers::shmem::leave_transaction(i);
            }
            self.marked = false;
        }
        self.check_failures(session)
    }

    fn check_failures(&mut self, session: &mut ApplySession) -> Result<(), Exit> {
        let failure = self
            .shared()
            .active()
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.state()))
            .find(|(_, (state, _, _))| *state != WriterState::Running);
        let Some((i, (state, sqlstate, message))) = failure else { return Ok(()) };
        self.stop_writers();
        if state == WriterState::Retry {
            let until = self.dispatched_lsn.max(self.held.as_ref().map_or(0, |h| h.final_lsn));
            session.apply_serially_until(until);
            pgrx::log!(
                "spock subscription {}: parallel apply writer {} stopped: {message} (SQLSTATE {sqlstate}); transactions up to commit LSN {} are applied again, serially",
                self.sub_name,
                i + 1,
                format_lsn(until)
            );
            return Err(Exit::Reconnect);
        }
        // The writer's error, with its SQLSTATE (recorded for replay as in serial
        // apply); the worker restarts.
        PgError::new(
            PgSqlErrorCode::from(crate::error::sqlstate_code(&sqlstate)),
            format!("spock subscription {}: parallel apply writer {}: {message}", self.sub_name, i + 1),
        )
        .raise()
    }

    /// Stops every writer (a transaction one of them has not committed rolls back)
    /// and waits until they are gone.
    fn stop_writers(&mut self) {
        for w in &self.writers {
            // SAFETY: handles of workers this process registered.
            unsafe { pg_sys::TerminateBackgroundWorker(w.bgw) };
        }
        for w in self.writers.drain(..) {
            // SAFETY: as above; waits on our latch until the postmaster reports the
            // worker gone.
            unsafe {
                pg_sys::WaitForBackgroundWorkerShutdown(w.bgw);
            }
        }
        if self.marked {
            if let Some(i) = self.progress_slot {
                crate::workers::shmem::leave_transaction(i);
            }
            self.marked = false;
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop_writers();
        // SAFETY: our mapping of the segment (the queue handles go with it).
        unsafe { pg_sys::dsm_detach(self.seg) };
    }
}
