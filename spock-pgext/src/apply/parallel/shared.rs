//! The dynamic shared memory segment of one parallel apply: a header the leader
//! and its writers share, then one message queue (`shm_mq`) per writer.
//!
//! Commits are published under a sequence lock: the writer that commits
//! transaction `seq` writes its commit LSNs and timestamp and moves `committed`,
//! between two increments of `version`; the leader reads the four together.

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};

use pgrx::pg_sys;

/// Most writers per subscription.
pub const MAX_WRITERS: usize = 16;
/// Bytes of each writer's queue.
pub(super) const QUEUE_BYTES: usize = 1 << 20;
/// Marks a segment laid out by this version of the code.
const MAGIC: u64 = 0x7370_6f63_6b70_6131;
/// Room for a writer's error message.
const MESSAGE_BYTES: usize = 1024;
/// Transactions in flight at most (handed out, not committed): the size of the
/// ring that says which writer has each.
pub(super) const RING: usize = 1 << 16;

/// What a writer tells the leader about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(super) enum WriterState {
    /// Starting or applying.
    Running = 0,
    /// A transaction failed with an error that is not transient (recorded for
    /// replay per `spock.exception_behaviour`); the writer exits.
    Failed = 1,
    /// A transient error (a deadlock between writers, a lock wait that was
    /// cancelled): the transactions in flight are applied again, serially.
    Retry = 2,
}

/// One writer's entry.
#[repr(C)]
pub(super) struct WriterSlot {
    /// The writer's process number (-1 until it attached).
    pub procno: AtomicI32,
    /// The transaction it applies (0: none).
    pub seq: AtomicU64,
    /// That transaction's local transaction id (0 until assigned).
    pub xid: AtomicU32,
    /// A [`WriterState`].
    pub state: AtomicU32,
    /// The error's SQLSTATE and message (NUL-terminated), written before `state`
    /// leaves Running.
    sqlstate: [u8; 5],
    message: [u8; MESSAGE_BYTES],
}

/// The header of the segment.
#[repr(C)]
pub(super) struct Shared {
    magic: u64,
    /// Writers started.
    pub writers: u32,
    /// The leader's pid (the origin is shared with it) and process number.
    pub leader_pid: i32,
    pub leader_procno: i32,
    /// The replication origin writers commit under (the provider's).
    pub origin: u16,
    /// The leader waits for writers (to drain, for room in a queue, for a pause):
    /// writers set its latch when they commit. Otherwise it looks by itself.
    pub leader_waits: std::sync::atomic::AtomicBool,
    /// Held while a commit is published (writers may publish concurrently: the
    /// next one commits as soon as the previous transaction's lock is released).
    publishing: std::sync::atomic::AtomicBool,
    version: AtomicU64,
    committed: AtomicU64,
    local_end: AtomicU64,
    remote_end: AtomicU64,
    commit_ts: AtomicI64,
    pub slots: [WriterSlot; MAX_WRITERS],
    /// Which writer has transaction `seq` (at `seq % RING`), set before it is sent.
    assigned: [std::sync::atomic::AtomicU8; RING],
}

/// The last commit published: every transaction up to `seq` has committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Committed {
    pub seq: u64,
    pub local_end: u64,
    pub remote_end: u64,
    pub commit_ts: i64,
}

/// Offset of queue `i` in the segment.
pub(super) fn queue_offset(i: usize) -> usize {
    std::mem::size_of::<Shared>().next_multiple_of(64) + i * QUEUE_BYTES
}

/// Size of a segment for `writers` writers.
pub(super) fn segment_size(writers: usize) -> usize {
    queue_offset(writers)
}

impl Shared {
    /// Lays out a fresh header at `at` (zeroed memory of the segment).
    ///
    /// SAFETY: `at` points to at least `size_of::<Shared>()` writable bytes that
    /// nothing else uses yet.
    pub(super) unsafe fn init(at: *mut Shared, writers: u32, origin: u16) {
        // SAFETY: forwarded; all-zero bytes are a valid Shared (atomics and arrays).
        unsafe {
            std::ptr::write_bytes(at.cast::<u8>(), 0, std::mem::size_of::<Shared>());
            let s = &mut *at;
            s.magic = MAGIC;
            s.writers = writers;
            s.leader_pid = pg_sys::MyProcPid;
            s.leader_procno = pg_sys::MyProcNumber;
            s.origin = origin;
            for slot in &s.slots {
                slot.procno.store(-1, Ordering::SeqCst);
            }
        }
    }

    /// Whether the header was laid out by this code.
    pub(super) fn valid(&self) -> bool {
        self.magic == MAGIC && self.writers as usize <= MAX_WRITERS
    }

    /// The writers' slots in use.
    pub(super) fn active(&self) -> &[WriterSlot] {
        &self.slots[..self.writers as usize]
    }

    /// Publishes the commit of transaction `c.seq`. The writer of the next
    /// transaction may commit (and publish) as soon as this one's lock is
    /// released, before this call: the newest commit stays.
    pub(super) fn publish(&self, c: Committed) {
        while self.publishing.compare_exchange_weak(false, true, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            std::hint::spin_loop();
        }
        if c.seq > self.committed.load(Ordering::SeqCst) {
            self.version.fetch_add(1, Ordering::SeqCst);
            self.local_end.store(c.local_end, Ordering::SeqCst);
            self.remote_end.store(c.remote_end, Ordering::SeqCst);
            self.commit_ts.store(c.commit_ts, Ordering::SeqCst);
            self.committed.store(c.seq, Ordering::SeqCst);
            self.version.fetch_add(1, Ordering::SeqCst);
        }
        self.publishing.store(false, Ordering::SeqCst);
    }

    /// Every transaction up to this one has committed.
    pub(super) fn committed_seq(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }

    /// The last commit published, read consistently.
    pub(super) fn committed(&self) -> Committed {
        loop {
            let v = self.version.load(Ordering::SeqCst);
            if v % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let c = Committed {
                seq: self.committed.load(Ordering::SeqCst),
                local_end: self.local_end.load(Ordering::SeqCst),
                remote_end: self.remote_end.load(Ordering::SeqCst),
                commit_ts: self.commit_ts.load(Ordering::SeqCst),
            };
            if self.version.load(Ordering::SeqCst) == v {
                return c;
            }
        }
    }

    /// Records that writer `w` has transaction `seq` (before sending it).
    pub(super) fn assign(&self, seq: u64, w: usize) {
        self.assigned[(seq % RING as u64) as usize].store(w as u8, Ordering::SeqCst);
    }

    /// What transaction `seq` waits behind: the local transaction id of `seq`
    /// itself once its writer applies it (`true`), else of the transaction its
    /// writer applies before it (its queue runs in order; `false`). `None`: nothing
    /// to wait on yet (the writer is between transactions or has not got its
    /// transaction id: a moment).
    pub(super) fn blocker_of(&self, seq: u64) -> Option<(u32, bool)> {
        let w = self.assigned[(seq % RING as u64) as usize].load(Ordering::SeqCst) as usize;
        let (current, xid) = self.slots.get(w)?.current();
        (current != 0 && current <= seq && xid != 0).then_some((xid, current == seq))
    }

    /// Sets the latch of the writer that has transaction `seq` (if it is handed
    /// out: otherwise of a writer that may not need it, which is harmless).
    pub(super) fn wake_writer_of(&self, seq: u64) {
        let w = self.assigned[(seq % RING as u64) as usize].load(Ordering::SeqCst) as usize;
        if let Some(slot) = self.active().get(w) {
            wake(slot.procno.load(Ordering::SeqCst));
        }
    }

    /// Whether the leader process still runs (its process slot still holds it).
    pub(super) fn leader_alive(&self) -> bool {
        // SAFETY: a read of the pid field of a PGPROC in shared memory; a slot
        // taken over by another process holds another pid.
        unsafe {
            let proc_ = pg_sys::ProcNumberGetProc(self.leader_procno);
            !proc_.is_null() && (*proc_).pid == self.leader_pid
        }
    }
}

impl WriterSlot {
    /// The transaction this writer applies and its local transaction id, read
    /// together (the pair is read again until the transaction did not change in
    /// between).
    pub(super) fn current(&self) -> (u64, u32) {
        loop {
            let seq = self.seq.load(Ordering::SeqCst);
            let xid = self.xid.load(Ordering::SeqCst);
            if self.seq.load(Ordering::SeqCst) == seq {
                return (seq, xid);
            }
        }
    }

    /// Starts transaction `seq` (its id comes later, [`WriterSlot::set_xid`]).
    pub(super) fn begin(&self, seq: u64) {
        self.xid.store(0, Ordering::SeqCst);
        self.seq.store(seq, Ordering::SeqCst);
    }

    /// The local transaction id of the transaction begun.
    pub(super) fn set_xid(&self, xid: u32) {
        self.xid.store(xid, Ordering::SeqCst);
    }

    /// Between transactions.
    pub(super) fn end(&self) {
        self.seq.store(0, Ordering::SeqCst);
        self.xid.store(0, Ordering::SeqCst);
    }

    /// Records why this writer stops (SQLSTATE and message), then its state (the
    /// leader reads them once it sees the state).
    pub(super) fn fail(&self, state: WriterState, sqlstate: &str, message: &str) {
        let bytes = message.as_bytes();
        let n = bytes.len().min(MESSAGE_BYTES - 1);
        // SAFETY: only this writer writes its error, before publishing the state;
        // the leader reads it only after seeing the state.
        unsafe {
            let dst = self.message.as_ptr().cast_mut();
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, n);
            *dst.add(n) = 0;
            let code = self.sqlstate.as_ptr().cast_mut();
            let src = if sqlstate.len() == 5 { sqlstate.as_bytes() } else { b"XX000" };
            std::ptr::copy_nonoverlapping(src.as_ptr(), code, 5);
        }
        self.state.store(state as u32, Ordering::SeqCst);
    }

    /// The state, and the SQLSTATE and message when it is not Running.
    pub(super) fn state(&self) -> (WriterState, String, String) {
        let error = || (String::from_utf8_lossy(&self.sqlstate).into_owned(), self.message());
        match self.state.load(Ordering::SeqCst) {
            1 => {
                let (c, m) = error();
                (WriterState::Failed, c, m)
            }
            2 => {
                let (c, m) = error();
                (WriterState::Retry, c, m)
            }
            _ => (WriterState::Running, String::new(), String::new()),
        }
    }

    fn message(&self) -> String {
        let end = self.message.iter().position(|b| *b == 0).unwrap_or(MESSAGE_BYTES);
        String::from_utf8_lossy(&self.message[..end]).into_owned()
    }
}

/// Sets the latch of the process with number `procno` (no-op for -1).
pub(super) fn wake(procno: i32) {
    if procno < 0 {
        return;
    }
    // SAFETY: a valid process number of this server; setting a latch is allowed
    // from any backend.
    unsafe {
        let proc_ = pg_sys::ProcNumberGetProc(procno);
        if !proc_.is_null() {
            pg_sys::SetLatch(&raw mut (*proc_).procLatch);
        }
    }
}
