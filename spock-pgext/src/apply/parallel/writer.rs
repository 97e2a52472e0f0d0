//! A writer of a parallel apply: a background worker that takes whole
//! transactions from its queue, applies each with its own apply session, waits
//! for its turn and commits under the replication origin it shares with the
//! leader.
//!
//! Its turn: every transaction before it has committed. It waits on the lock of
//! the previous transaction's local transaction id, so that PostgreSQL's deadlock
//! detector sees a cycle between writers (a row one of them holds and the other
//! needs, which no key told the leader about) and breaks it with an error; the
//! writer that gets it says Retry and the leader applies those transactions again,
//! serially.
//!
//! An error while an earlier transaction is still uncommitted may come from the
//! order (a row a unique index or constraint needed the earlier one to change
//! first): also Retry. An error of the oldest transaction in flight is what serial
//! apply would meet: recorded as there (for replay per
//! `spock.exception_behaviour`) before the writer exits; the leader then stops
//! with an error, and the worker restarts. SIGTERM ends a writer at once (its
//! transaction in progress rolls back): the leader stops its writers that way.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use spock_core::parallel::Unit;
use spock_core::proto::{Message, StreamDecoder};

use super::shared::{wake, Committed, Shared, WriterState};
use crate::apply::handlers;
use crate::apply::session::{ApplySession, Outcome};
use crate::apply::subscription;
use crate::error::PgError;

// PostgreSQL's own signal handlers, as C functions (pg_sys wraps its functions
// for calls from Rust, which a signal handler cannot be).
unsafe extern "C-unwind" {
    /// SIGTERM of a backend: terminate at the next interrupt check.
    #[link_name = "die"]
    fn postgres_die(signal: std::ffi::c_int);
    /// SIGHUP: set ConfigReloadPending.
    #[link_name = "SignalHandlerForConfigReload"]
    fn postgres_reload(signal: std::ffi::c_int);
}

/// Signal numbers (Linux).
const SIGHUP: i32 = 1;
const SIGTERM: i32 = 15;
/// How often a writer waiting for its turn checks that the leader lives.
const LEADER_CHECK: Duration = Duration::from_secs(1);

fn internal(msg: String) -> ! {
    PgError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, msg).raise()
}

/// Waits on this process's latch for at most `ms` milliseconds.
fn nap(ms: i64) {
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
    pgrx::check_for_interrupts!();
}

/// The parts of the background worker's extra data: database, subscription,
/// writer index.
fn parse_extra(extra: &str) -> Option<(u32, u32, usize)> {
    let mut it = extra.split_whitespace().map(str::parse::<u64>);
    let (db, sub, i) = (it.next()?.ok()?, it.next()?.ok()?, it.next()?.ok()?);
    Some((u32::try_from(db).ok()?, u32::try_from(sub).ok()?, usize::try_from(i).ok()?))
}

/// Entry point of a writer: the argument is the segment's handle, the extra data
/// "database subscription index".
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn spock_apply_writer_main(arg: pg_sys::Datum) {
    // SAFETY: SIGTERM ends the writer at the next interrupt check (also inside a
    // lock wait), as for any backend; SIGHUP asks for a configuration reload.
    unsafe {
        pg_sys::pqsignal_be(SIGTERM, Some(postgres_die));
        pg_sys::pqsignal_be(SIGHUP, Some(postgres_reload));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
    let Some((db, sub_id, index)) = parse_extra(BackgroundWorker::get_extra()) else { return };
    crate::workers::set_worker_subscription(db, sub_id);
    crate::workers::set_writer();
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(db)), None);
    crate::workers::pin_search_path();
    let handle = arg.value() as pg_sys::dsm_handle;
    // SAFETY: attaches to the leader's segment; null when the leader is gone.
    let seg = unsafe { pg_sys::dsm_attach(handle) };
    if seg.is_null() {
        return;
    }
    // SAFETY: the segment starts with the header the leader laid out.
    let shared = unsafe { &*pg_sys::dsm_segment_address(seg).cast::<Shared>() };
    if !shared.valid() || index >= shared.writers as usize {
        internal(format!("spock apply writer {index}: bad shared memory segment"));
    }
    let Some(sub) = BackgroundWorker::transaction(|| subscription::load(sub_id)) else { return };
    // SAFETY: the queue the leader created for this writer; we are its receiver.
    let mq = unsafe {
        let mq = pg_sys::dsm_segment_address(seg).cast::<u8>().add(super::shared::queue_offset(index)).cast();
        pg_sys::shm_mq_set_receiver(mq, pg_sys::MyProc);
        pg_sys::shm_mq_attach(mq, seg, std::ptr::null_mut())
    };
    let appname = std::ffi::CString::new(format!("{} writer {}", sub.slot_name, index + 1)).unwrap_or_default();
    // SAFETY: as in the apply worker: application_name, replica role, asynchronous
    // commits (durability is reported to the provider from the flush position).
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
    crate::invalidation::register();
    let mut session = ApplySession::new(sub.clone());
    session.reserve_tombstone_origin();
    session.attach_as_writer(db, shared.origin, shared.leader_pid);
    let slot = &shared.slots[index];
    // SAFETY: reads this backend's process number.
    slot.procno.store(unsafe { pg_sys::MyProcNumber }, Ordering::SeqCst);
    crate::apply::report_activity("waiting for transactions");
    pgrx::debug1!("spock apply writer {} of subscription {} started", index + 1, sub.name);

    let mut w = Writer { shared, index, session, decoder: StreamDecoder::new() };
    loop {
        let mut n: pg_sys::Size = 0;
        let mut data: *mut std::ffi::c_void = std::ptr::null_mut();
        // SAFETY: our queue handle; waits on our latch, interrupts are processed.
        let r = unsafe { pg_sys::shm_mq_receive(mq, &mut n, &mut data, false) };
        if r != pg_sys::shm_mq_result::SHM_MQ_SUCCESS {
            // The leader detached: it stopped.
            break;
        }
        // SAFETY: shm_mq returns a buffer of `n` bytes valid until the next receive.
        let buf = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), n) };
        let unit = Unit::decode(buf).unwrap_or_else(|e| internal(format!("spock subscription {}: {e}", sub.name)));
        w.handle(unit);
        w.session.flushed_remote_lsn();
        // SAFETY: reads and clears the reload flag set by the SIGHUP handler.
        unsafe {
            if pg_sys::ConfigReloadPending != 0 {
                pg_sys::ConfigReloadPending = 0;
                pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
            }
        }
    }
    // SAFETY: leaves the segment (the queue handle goes with it).
    unsafe { pg_sys::dsm_detach(seg) };
}

struct Writer<'a> {
    shared: &'a Shared,
    index: usize,
    session: ApplySession,
    decoder: StreamDecoder,
}

impl Writer<'_> {
    fn handle(&mut self, unit: Unit) {
        match unit {
            Unit::Message(payload) => {
                let d = self.decode(&payload);
                let _ = self.session.handle(d);
            }
            Unit::Transaction { seq, messages } => {
                let slot = &self.shared.slots[self.index];
                slot.begin(seq);
                crate::apply::report_activity("applying");
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.transaction(seq, &messages)));
                if let Err(e) = r {
                    let (code, msg) = handlers::describe_error(e.as_ref());
                    // With an earlier transaction still uncommitted the error may
                    // be of the order (a row a unique index or a constraint needed
                    // it to change first): applied again serially, it tells.
                    let earlier_pending = self.shared.committed_seq() + 1 < seq;
                    if earlier_pending || spock_core::exception::is_transient(&code) {
                        slot.fail(WriterState::Retry, &code, &msg);
                    } else {
                        self.session.note_failure(&code, &msg, true);
                        slot.fail(WriterState::Failed, &code, &msg);
                    }
                    wake(self.shared.leader_procno);
                    std::panic::resume_unwind(e);
                }
                slot.end();
                crate::apply::report_activity("waiting for transactions");
            }
        }
    }

    fn decode(&mut self, payload: &Bytes) -> spock_core::proto::Decoded {
        self.decoder.decode(payload).unwrap_or_else(|e| {
            PgError::new(PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION, format!("spock apply writer: {e}")).raise()
        })
    }

    /// Applies transaction `seq` (BEGIN ... COMMIT), commits it in its turn and
    /// publishes the commit.
    fn transaction(&mut self, seq: u64, messages: &[Bytes]) {
        let Some((commit, body)) = messages.split_last() else { return };
        // Once more from the start when an insert that did not search first met an
        // existing key (the session then searches in that table).
        // Every transaction gets its local transaction id before its first change
        // (an empty one too): a writer waiting for it waits on that id's lock,
        // where the deadlock detector sees the wait.
        'apply: loop {
            let mut started = false;
            for payload in body {
                let d = self.decode(payload);
                if !started && !matches!(d.message, Message::Begin(_) | Message::Origin(_)) {
                    self.start_local(seq);
                    started = true;
                }
                if self.session.handle(d) == Outcome::ApplyAgain {
                    self.session.abandon_remote();
                    continue 'apply;
                }
            }
            if !started {
                self.start_local(seq);
            }
            break;
        }
        self.wait_turn(seq);
        let d = self.decode(commit);
        let Message::Commit(c) = &d.message else {
            internal("spock apply writer: a transaction that does not end with COMMIT".into())
        };
        let (end_lsn, commit_ts) = (c.end_lsn, c.commit_time);
        match self.session.handle(d) {
            Outcome::Continue => {}
            other => internal(format!("spock apply writer: unexpected outcome {other:?} at commit")),
        }
        // SAFETY: reads the end of this process's last commit record.
        let local_end = unsafe { pg_sys::XactLastCommitEnd };
        self.shared.publish(Committed { seq, local_end, remote_end: end_lsn, commit_ts });
        // The writer of the next transaction waits on our transaction's lock (its
        // release woke it); the leader only needs a wake-up while it waits for us.
        if self.shared.leader_waits.load(Ordering::SeqCst) {
            wake(self.shared.leader_procno);
        }
    }

    /// Starts the local transaction of `seq`, publishes its id and wakes the writer
    /// of the next transaction, which may be napping until there is an id to wait
    /// on.
    fn start_local(&mut self, seq: u64) {
        let xid = self.session.start_local_xid();
        self.shared.slots[self.index].set_xid(xid);
        self.shared.wake_writer_of(seq + 1);
    }

    /// Waits until every transaction before `seq` has committed: on the lock of the
    /// transaction just before it, or, while that one waits in its writer's queue,
    /// of the one its writer applies first. Every wait between writers is thus a
    /// lock wait the deadlock detector sees.
    fn wait_turn(&self, seq: u64) {
        // Never commit for a leader that is gone: its successor streams from the
        // origin's progress and would apply this transaction again.
        self.check_leader();
        let mut leader_checked = Instant::now();
        loop {
            if self.shared.committed_seq() + 1 >= seq {
                return;
            }
            let blocker = self.shared.blocker_of(seq - 1);
            if self.shared.committed_seq() + 1 >= seq {
                return;
            }
            match blocker {
                Some((xid, previous)) => {
                    // SAFETY: waits on the lock of another backend's transaction
                    // (never our own: each writer applies one at a time); then
                    // reads its outcome from the commit log.
                    let committed = unsafe {
                        pg_sys::XactLockTableWait(
                            xid.into(),
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            pg_sys::XLTW_Oper::XLTW_None,
                        );
                        pg_sys::TransactionIdDidCommit(xid.into())
                    };
                    if previous && committed {
                        // The transaction just before ours committed (its writer
                        // publishes it in a moment): our turn.
                        return;
                    }
                    // It rolled back (to be applied again, or its writer stopped),
                    // or the transaction its writer applied before it ended: nap
                    // until that writer starts the next one (it sets our latch),
                    // leaving it the CPU.
                    nap(1);
                }
                None => nap(1),
            }
            if leader_checked.elapsed() >= LEADER_CHECK {
                leader_checked = Instant::now();
                self.check_leader();
            }
        }
    }

    /// Without its leader the writer ends at once, its transaction rolled back
    /// and nothing recorded against it: the transaction did not fail, and the next
    /// worker applies it again from the subscription's progress.
    fn check_leader(&self) {
        if !self.shared.leader_alive() {
            pgrx::log!("spock apply writer: the subscription's worker is gone; stopping");
            // SAFETY: ends this process; the open transaction is rolled back on
            // the way out (no Rust state needs dropping: the segment goes with it).
            unsafe { pg_sys::proc_exit(0) };
        }
    }
}
