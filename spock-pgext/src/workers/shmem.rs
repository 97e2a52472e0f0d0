//! The state spock's processes share (summary in [`super`]): databases without
//! spock, per-subscription apply progress, pending exceptions and flags, paused
//! databases and holds, in one fixed-size [`WorkerState`] under one LWLock.

use pgrx::lwlock::PgLwLock;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use spock_core::holds::{self, Hold, HoldPlan};
use std::sync::atomic::{AtomicBool, Ordering};

const MAX_DATABASES: usize = 256;
/// Apply workers whose progress is tracked (per server).
pub const MAX_SUBSCRIPTIONS: usize = 128;

/// Progress of one subscription's apply worker (`spock.progress`).
#[derive(Copy, Clone, Default, Debug)]
pub struct SubProgress {
    /// Slot in use.
    pub in_use: bool,
    /// Database of the subscription.
    pub dbid: u32,
    /// `sub_id`.
    pub sub_id: u32,
    /// This node.
    pub node_id: u16,
    /// The provider.
    pub remote_node_id: u16,
    /// Commit timestamp of the last applied remote transaction.
    pub remote_commit_ts: i64,
    /// The one before.
    pub prev_remote_ts: i64,
    /// Provider end LSN of the last applied transaction.
    pub remote_commit_lsn: u64,
    /// The provider's WAL insert position last reported.
    pub remote_insert_lsn: u64,
    /// Last provider position received.
    pub received_lsn: u64,
    /// When this entry was last updated.
    pub last_updated_ts: i64,
    /// The worker is applying a remote transaction (between BEGIN and its commit).
    pub in_txn: bool,
    /// Every provider transaction that committed before this time (provider clock)
    /// is applied and durable here (0: not known yet); see spock_core::retention.
    pub safe_ts: i64,
    /// The last worker stopped because it was asked to (SIGTERM), not by an error:
    /// the manager may start the next one at once.
    pub stopped_on_request: bool,
    /// Conflicts met since `stats_reset`, per kind in the order of Spock's
    /// statistics columns (`spock_core::conflict::ConflictKind::ALL`, first 7):
    /// `spock.get_subscription_stats`.
    pub conflicts: [u64; CONFLICT_COUNTERS],
    /// When the counters were last reset (0: never since the server started).
    pub stats_reset: i64,
    /// The provider slot's `wal_status` as last read
    /// (`spock_core::status::WalStatus::code`; 0: not known).
    pub slot_wal_status: u8,
    /// The provider slot's `safe_wal_size` as last read (`None`: not known, or
    /// no limit on the provider).
    pub slot_safe_wal_size: Option<i64>,
    /// When the slot's state was last read (0: never).
    pub slot_checked_at: i64,
    /// When a worker of the subscription last started streaming (0: never).
    pub streamed_at: i64,
}

/// Conflict counters per subscription: Spock's seven kinds.
pub const CONFLICT_COUNTERS: usize = 7;

/// The conflict counters of a subscription and when they were reset (zeros and 0
/// when its worker never ran since the server started).
pub fn conflict_stats(dbid: u32, sub_id: u32) -> ([u64; CONFLICT_COUNTERS], i64) {
    let s = WORKER_STATE.share();
    s.progress
        .iter()
        .find(|p| p.in_use && p.dbid == dbid && p.sub_id == sub_id)
        .map_or(([0; CONFLICT_COUNTERS], 0), |p| (p.conflicts, p.stats_reset))
}

/// Resets the conflict counters of subscription `sub_id` (every subscription of
/// `dbid` when `None`), stamping the reset with `now`.
pub fn reset_conflict_stats(dbid: u32, sub_id: Option<u32>, now: i64) {
    if let Some(id) = sub_id {
        // Claimed if new, so that the reset time shows.
        progress_slot(dbid, id);
    }
    let mut s = WORKER_STATE.exclusive();
    for p in s.progress.iter_mut() {
        if p.in_use && p.dbid == dbid && sub_id.is_none_or(|id| id == p.sub_id) {
            p.conflicts = [0; CONFLICT_COUNTERS];
            p.stats_reset = now;
        }
    }
}

/// Databases whose apply workers are paused (`spock.pause_apply_workers()`).
const MAX_PAUSES: usize = 16;

/// A pause of one database's apply workers until a deadline.
#[derive(Copy, Clone, Default)]
pub struct Pause {
    /// Database (0: free).
    pub dbid: u32,
    /// Expiry, PostgreSQL timestamp (microseconds since 2000).
    pub until: i64,
}

/// Subscriptions whose worker a transaction has stopped (`spock._stop_apply_worker`):
/// the manager starts no worker for them until that transaction ends.
const MAX_HOLDS: usize = 32;

/// Bytes of an error message kept for a failed transaction.
const EXCEPTION_MSG_LEN: usize = 512;

/// A remote transaction that failed to apply, remembered across the worker's
/// restart so that the next attempt replays it per `spock.exception_behaviour`.
/// Same index as the subscription's [`SubProgress`].
#[derive(Copy, Clone)]
pub struct ExceptionSlot {
    /// Commit LSN of the failed transaction on the provider (0: none).
    pub final_lsn: u64,
    /// The change (1-based) that failed; 0 when no single change failed.
    pub failed_change: u32,
    /// [`spock_core::exception::ReplayMode::code`] of the next attempt.
    pub mode: u8,
    /// The SUB_DISABLE row of spock.exception_log is written already (at the failure).
    pub disable_logged: bool,
    msg_len: u16,
    msg: [u8; EXCEPTION_MSG_LEN],
}

impl Default for ExceptionSlot {
    fn default() -> Self {
        ExceptionSlot {
            final_lsn: 0,
            failed_change: 0,
            mode: 0,
            disable_logged: false,
            msg_len: 0,
            msg: [0; EXCEPTION_MSG_LEN],
        }
    }
}

impl ExceptionSlot {
    /// The saved error message.
    pub fn message(&self) -> String {
        String::from_utf8_lossy(&self.msg[..usize::from(self.msg_len)]).into_owned()
    }

    fn set_message(&mut self, m: &str) {
        let mut n = m.len().min(EXCEPTION_MSG_LEN);
        while !m.is_char_boundary(n) {
            n -= 1;
        }
        self.msg[..n].copy_from_slice(&m.as_bytes()[..n]);
        self.msg_len = n as u16;
    }
}

/// The error an apply worker (or one of its writers) ended with, kept for its
/// manager, which records it in `spock.subscription_error` and waits longer before
/// each new attempt. Under a lock of its own: the error is recorded while the error
/// is being reported (an `emit_log_hook`), possibly by code that holds
/// [`WORKER_STATE`]'s lock.
#[derive(Copy, Clone)]
pub struct WorkerError {
    /// Database (0: free).
    pub dbid: u32,
    /// Subscription.
    pub sub_id: u32,
    /// SQLSTATE.
    pub sqlstate: [u8; 5],
    /// When (PostgreSQL timestamp).
    pub at: i64,
    msg_len: u16,
    msg: [u8; EXCEPTION_MSG_LEN],
}

impl Default for WorkerError {
    fn default() -> Self {
        WorkerError { dbid: 0, sub_id: 0, sqlstate: [b'0'; 5], at: 0, msg_len: 0, msg: [0; EXCEPTION_MSG_LEN] }
    }
}

impl WorkerError {
    /// The message.
    pub fn message(&self) -> String {
        String::from_utf8_lossy(&self.msg[..usize::from(self.msg_len)]).into_owned()
    }

    /// The SQLSTATE as text.
    pub fn sqlstate(&self) -> String {
        String::from_utf8_lossy(&self.sqlstate).into_owned()
    }
}

/// The errors workers ended with, not yet taken by their managers.
#[derive(Copy, Clone)]
pub struct WorkerErrors {
    /// One per subscription at most.
    pub errors: [WorkerError; MAX_SUBSCRIPTIONS],
}

impl Default for WorkerErrors {
    fn default() -> Self {
        WorkerErrors { errors: [WorkerError::default(); MAX_SUBSCRIPTIONS] }
    }
}

// SAFETY: a plain-old-data struct without pointers.
unsafe impl PGRXSharedMemory for WorkerErrors {}

/// See [`WorkerError`].
// SAFETY: the name is unique to spock; pg_shmem_init! registers it in _PG_init.
pub static WORKER_ERRORS: PgLwLock<WorkerErrors> = unsafe { PgLwLock::new(c"spock worker errors") };

/// Keeps the first error subscription `sub_id` of `dbid` ended with since its
/// manager last took one (a writer's error comes before its leader's, which only
/// says a writer failed). Never raises: called while an error is reported.
pub fn record_worker_error(dbid: u32, sub_id: u32, sqlstate: [u8; 5], message: &str, at: i64) {
    if !preloaded() {
        return;
    }
    let mut s = WORKER_ERRORS.exclusive();
    if s.errors.iter().any(|e| e.dbid == dbid && e.sub_id == sub_id) {
        return;
    }
    let Some(e) = s.errors.iter_mut().find(|e| e.dbid == 0) else { return };
    let mut n = message.len().min(EXCEPTION_MSG_LEN);
    while !message.is_char_boundary(n) {
        n -= 1;
    }
    *e = WorkerError { dbid, sub_id, sqlstate, at, ..WorkerError::default() };
    e.msg[..n].copy_from_slice(&message.as_bytes()[..n]);
    e.msg_len = n as u16;
}

/// Whether a worker of subscription `sub_id` of `dbid` started streaming at or
/// after `since`.
pub fn streamed_since(dbid: u32, sub_id: u32, since: i64) -> bool {
    preloaded()
        && WORKER_STATE
            .share()
            .progress
            .iter()
            .any(|p| p.in_use && p.dbid == dbid && p.sub_id == sub_id && p.streamed_at >= since)
}

/// Takes the error subscription `sub_id` of `dbid` ended with, if one was kept.
pub fn take_worker_error(dbid: u32, sub_id: u32) -> Option<WorkerError> {
    if !preloaded() {
        return None;
    }
    let mut s = WORKER_ERRORS.exclusive();
    let e = s.errors.iter_mut().find(|e| e.dbid == dbid && e.sub_id == sub_id)?;
    let taken = *e;
    *e = WorkerError::default();
    Some(taken)
}

/// Databases whose horizon of deleted row versions is shown (`spock.retention`).
const MAX_RETENTION: usize = 64;
/// Subscriptions named as holding one database's horizon.
pub const MAX_HELD_BY: usize = 8;

/// The state of one database's horizon of deleted row versions (workers::retention).
#[derive(Copy, Clone, Default, Debug)]
pub struct RetentionState {
    /// Database (0: free).
    pub dbid: u32,
    /// Deleted versions of transactions that ended after this time are kept (0:
    /// none, the horizon is let go).
    pub kept_since: i64,
    /// When the manager last moved or checked the horizon.
    pub checked_at: i64,
    /// Subscriptions that have not applied what their provider committed before the
    /// oldest candidate waiting: they hold the horizon.
    pub held_by: [u32; MAX_HELD_BY],
    /// How many of `held_by` are set.
    pub n_held: u8,
    /// The removal bound of the newest candidate (spock_core::retention::removal_bound).
    pub removals_until: i64,
}

/// Shared worker state: databases without spock, apply progress and failed
/// transactions per subscription, pauses and holds.
#[derive(Copy, Clone)]
pub struct WorkerState {
    no_spock: [u32; MAX_DATABASES],
    n: usize,
    /// Apply progress per subscription.
    pub progress: [SubProgress; MAX_SUBSCRIPTIONS],
    /// Failed transactions per subscription (same index as `progress`).
    pub exceptions: [ExceptionSlot; MAX_SUBSCRIPTIONS],
    /// Paused databases.
    pub pauses: [Pause; MAX_PAUSES],
    /// Subscriptions held stopped by a transaction in progress.
    pub holds: [Hold; MAX_HOLDS],
    /// Horizons of deleted row versions, per database.
    pub retention: [RetentionState; MAX_RETENTION],
    /// The id of replication origin `spock_tombstone` once an apply worker made
    /// sure it exists (0: not yet); origins are the server's, not a database's.
    pub tombstone_origin: u16,
}

impl Default for WorkerState {
    fn default() -> Self {
        WorkerState {
            no_spock: [0; MAX_DATABASES],
            n: 0,
            progress: [SubProgress::default(); MAX_SUBSCRIPTIONS],
            exceptions: [ExceptionSlot::default(); MAX_SUBSCRIPTIONS],
            pauses: [Pause::default(); MAX_PAUSES],
            holds: [Hold::default(); MAX_HOLDS],
            retention: [RetentionState::default(); MAX_RETENTION],
            tombstone_origin: 0,
        }
    }
}

// SAFETY: a plain-old-data struct without pointers.
unsafe impl PGRXSharedMemory for WorkerState {}

/// The shared state, initialised when spock is preloaded.
// SAFETY: the name is unique to spock; pg_shmem_init! registers it in _PG_init.
pub static WORKER_STATE: PgLwLock<WorkerState> = unsafe { PgLwLock::new(c"spock worker state") };

/// Set in the postmaster when spock is preloaded; inherited by every backend.
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// Requests the shared memory; called from `_PG_init` while preloading.
#[allow(unexpected_cfgs)]
pub fn init() {
    pgrx::pg_shmem_init!(WORKER_STATE);
    pgrx::pg_shmem_init!(WORKER_ERRORS);
    PRELOADED.store(true, Ordering::Relaxed);
}

/// Whether spock was preloaded (so workers and shared state exist).
pub fn preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

/// Records that database `db` has no spock.
pub fn mark_no_spock(db: pg_sys::Oid) {
    let mut s = WORKER_STATE.exclusive();
    let id = u32::from(db);
    if s.no_spock[..s.n].contains(&id) {
        return;
    }
    if s.n < MAX_DATABASES {
        let n = s.n;
        s.no_spock[n] = id;
        s.n += 1;
    }
}

/// Forgets that database `db` has no spock (it may have now).
pub fn clear_no_spock(db: pg_sys::Oid) {
    let mut s = WORKER_STATE.exclusive();
    let id = u32::from(db);
    let n = s.n;
    if let Some(pos) = s.no_spock[..n].iter().position(|&x| x == id) {
        s.no_spock[pos] = s.no_spock[n - 1];
        s.n -= 1;
    }
}

/// Whether database `db` is known to have no spock.
pub fn has_no_spock(db: pg_sys::Oid) -> bool {
    let s = WORKER_STATE.share();
    s.no_spock[..s.n].contains(&u32::from(db))
}

/// The progress slot of subscription `sub_id` in database `dbid` (claimed if new).
pub fn progress_slot(dbid: u32, sub_id: u32) -> Option<usize> {
    let mut s = WORKER_STATE.exclusive();
    if let Some(i) = s.progress.iter().position(|p| p.in_use && p.dbid == dbid && p.sub_id == sub_id) {
        return Some(i);
    }
    let i = s.progress.iter().position(|p| !p.in_use)?;
    s.progress[i] = SubProgress { in_use: true, dbid, sub_id, ..SubProgress::default() };
    s.exceptions[i] = ExceptionSlot::default();
    Some(i)
}

/// Updates progress slot `i`.
pub fn update_progress(i: usize, f: impl FnOnce(&mut SubProgress)) {
    let mut s = WORKER_STATE.exclusive();
    f(&mut s.progress[i]);
}

/// Releases the progress slots of subscriptions that no longer exist in `dbid`
/// (not in `exist`). Those of subscriptions that exist but are not `enabled` keep
/// their progress and counters (`spock.progress`, `get_subscription_stats`, what a
/// resync needs to know of what was applied) but no failed transaction to replay,
/// no mark of being inside one, and no safe time.
pub fn retain_progress(dbid: u32, exist: &[u32], enabled: &[u32]) {
    let mut s = WORKER_STATE.exclusive();
    for i in 0..MAX_SUBSCRIPTIONS {
        let p = s.progress[i];
        if p.in_use && p.dbid == dbid && !exist.contains(&p.sub_id) {
            s.progress[i] = SubProgress::default();
        } else if p.in_use && p.dbid == dbid && !enabled.contains(&p.sub_id) {
            s.progress[i].in_txn = false;
            // Not applying: its safe time is not known (it holds deleted versions).
            s.progress[i].safe_ts = 0;
            s.exceptions[i] = ExceptionSlot::default();
        }
        if !s.progress[i].in_use {
            s.exceptions[i] = ExceptionSlot::default();
        }
    }
}

/// Remembers that the transaction with commit LSN `final_lsn` failed at change
/// `failed_change` with `message`, to be replayed in mode `mode` next time.
pub fn record_exception(i: usize, final_lsn: u64, failed_change: u32, mode: u8, message: &str) {
    let mut s = WORKER_STATE.exclusive();
    let e = &mut s.exceptions[i];
    e.final_lsn = final_lsn;
    e.failed_change = failed_change;
    e.mode = mode;
    e.disable_logged = false;
    e.set_message(message);
}

/// Notes that the failed transaction of slot `i` has its SUB_DISABLE row logged.
pub fn mark_disable_logged(i: usize) {
    WORKER_STATE.exclusive().exceptions[i].disable_logged = true;
}

/// The failed transaction remembered in slot `i`, if any.
pub fn pending_exception(i: usize) -> Option<ExceptionSlot> {
    let s = WORKER_STATE.share();
    let e = s.exceptions[i];
    (e.final_lsn != 0).then_some(e)
}

/// Forgets the failed transaction of slot `i`.
pub fn clear_exception(i: usize) {
    WORKER_STATE.exclusive().exceptions[i] = ExceptionSlot::default();
}

/// Whether subscription `sub_id` of `dbid` has a failed transaction waiting for replay.
pub fn has_pending_exception(dbid: u32, sub_id: u32) -> bool {
    if !preloaded() {
        return false;
    }
    let s = WORKER_STATE.share();
    s.progress
        .iter()
        .zip(s.exceptions.iter())
        .any(|(p, e)| p.in_use && p.dbid == dbid && p.sub_id == sub_id && e.final_lsn != 0)
}

/// The safe times (spock_core::retention) of subscriptions `sub_ids` of `dbid`,
/// in that order; `None` for one not known yet.
pub fn safe_times(dbid: u32, sub_ids: &[u32]) -> Vec<Option<i64>> {
    let s = WORKER_STATE.share();
    sub_ids
        .iter()
        .map(|id| {
            s.progress
                .iter()
                .find(|p| p.in_use && p.dbid == dbid && p.sub_id == *id && p.safe_ts != 0)
                .map(|p| p.safe_ts)
        })
        .collect()
}

/// A copy of every progress entry in use.
pub fn all_progress() -> Vec<SubProgress> {
    if !preloaded() {
        return Vec::new();
    }
    let s = WORKER_STATE.share();
    s.progress.iter().filter(|p| p.in_use).copied().collect()
}

fn now() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

fn paused(s: &WorkerState, dbid: u32, at: i64) -> bool {
    s.pauses.iter().any(|p| p.dbid == dbid && p.until > at)
}

/// Pauses the apply workers of `dbid` until `until` (they finish the transaction
/// they are applying and wait before the next one). False: no pause slot free.
pub fn pause(dbid: u32, until: i64) -> bool {
    let mut s = WORKER_STATE.exclusive();
    let at = now();
    let free = s
        .pauses
        .iter()
        .position(|p| p.dbid == dbid)
        .or_else(|| s.pauses.iter().position(|p| p.dbid == 0 || p.until <= at));
    match free {
        Some(i) => {
            s.pauses[i] = Pause { dbid, until };
            true
        }
        None => false,
    }
}

/// Ends the pause of `dbid`; returns whether it was still in force (not expired).
pub fn resume(dbid: u32) -> bool {
    let mut s = WORKER_STATE.exclusive();
    let at = now();
    let mut held = false;
    for p in s.pauses.iter_mut().filter(|p| p.dbid == dbid) {
        held |= p.until > at;
        *p = Pause::default();
    }
    held
}

/// Whether the apply workers of `dbid` are paused now.
pub fn is_paused(dbid: u32) -> bool {
    preloaded() && paused(&WORKER_STATE.share(), dbid, now())
}

/// Whether some apply worker of `dbid` is in the middle of a remote transaction.
pub fn any_in_transaction(dbid: u32) -> bool {
    WORKER_STATE.share().progress.iter().any(|p| p.in_use && p.dbid == dbid && p.in_txn)
}

/// Marks the worker of progress slot `i` as applying a transaction, unless its
/// database is paused: then returns false (the caller waits and asks again). The
/// check and the mark are one step under the lock, so a pause either sees the
/// worker in its transaction or keeps it out.
pub fn try_enter_transaction(i: usize) -> bool {
    let mut s = WORKER_STATE.exclusive();
    let dbid = s.progress[i].dbid;
    if paused(&s, dbid, now()) {
        return false;
    }
    s.progress[i].in_txn = true;
    true
}

/// The worker of slot `i` finished (or left) its transaction.
pub fn leave_transaction(i: usize) {
    WORKER_STATE.exclusive().progress[i].in_txn = false;
}

/// Holds subscription `sub_id` of `dbid` stopped for backend `pid` (until
/// [`release_holds`]); the slot is chosen by [`holds::plan_hold`]. False only when
/// every slot is taken by other live backends.
pub fn hold(dbid: u32, sub_id: u32, pid: i32) -> bool {
    let mut s = WORKER_STATE.exclusive();
    match holds::plan_hold(&s.holds, dbid, sub_id, pid, alive) {
        HoldPlan::Held => {}
        HoldPlan::Take(i) => s.holds[i] = Hold { dbid, sub_id, pid },
        HoldPlan::Widen(i) => s.holds[i].sub_id = holds::ALL_SUBSCRIPTIONS,
        HoldPlan::Full => return false,
    }
    true
}

/// Releases the holds of backend `pid`.
pub fn release_holds(pid: i32) {
    let mut s = WORKER_STATE.exclusive();
    for h in s.holds.iter_mut().filter(|h| h.pid == pid) {
        *h = Hold::default();
    }
}

/// Whether a live backend holds subscription `sub_id` of `dbid` stopped.
pub fn is_held(dbid: u32, sub_id: u32) -> bool {
    preloaded() && WORKER_STATE.share().holds.iter().any(|h| h.covers(dbid, sub_id) && alive(h.pid))
}

/// Whether process `pid` exists (a hold of a backend that died without ending its
/// transaction normally does not count).
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// Records that the worker of progress slot `i` stops because it was asked to.
pub fn note_stopped_on_request(i: usize) {
    WORKER_STATE.exclusive().progress[i].stopped_on_request = true;
}

/// Whether the last worker of `sub_id` in `dbid` stopped because it was asked to
/// (and forgets it).
pub fn take_stopped_on_request(dbid: u32, sub_id: u32) -> bool {
    if !preloaded() {
        return false;
    }
    let mut s = WORKER_STATE.exclusive();
    match s.progress.iter_mut().find(|p| p.in_use && p.dbid == dbid && p.sub_id == sub_id) {
        Some(p) => std::mem::take(&mut p.stopped_on_request),
        None => false,
    }
}

/// Publishes the horizon state of database `r.dbid` (`None` in `r`: forgets it).
pub fn set_retention(dbid: u32, r: Option<RetentionState>) {
    let mut s = WORKER_STATE.exclusive();
    let slot = s.retention.iter().position(|e| e.dbid == dbid).or_else(|| s.retention.iter().position(|e| e.dbid == 0));
    if let Some(i) = slot {
        s.retention[i] = r.unwrap_or_default();
    }
}

/// Every database's horizon state.
pub fn all_retention() -> Vec<RetentionState> {
    if !preloaded() {
        return Vec::new();
    }
    WORKER_STATE.share().retention.iter().filter(|e| e.dbid != 0).copied().collect()
}

/// Records the id of replication origin `spock_tombstone`.
pub fn set_tombstone_origin(id: u16) {
    WORKER_STATE.exclusive().tombstone_origin = id;
}

/// The id of replication origin `spock_tombstone` (0: not known).
pub fn tombstone_origin() -> u16 {
    if !preloaded() {
        return 0;
    }
    WORKER_STATE.share().tombstone_origin
}
