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
    /// The error, NUL-terminated, written before `state` leaves Running.
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
    version: AtomicU64,
    committed: AtomicU64,
    local_end: AtomicU64,
    remote_end: AtomicU64,
    commit_ts: AtomicI64,
    pub slots: [WriterSlot; MAX_WRITERS],
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

    /// Publishes the commit of transaction `c.seq` (called by the one writer whose
    /// turn it is).
    pub(super) fn publish(&self, c: Committed) {
        self.version.fetch_add(1, Ordering::SeqCst);
        self.local_end.store(c.local_end, Ordering::SeqCst);
        self.remote_end.store(c.remote_end, Ordering::SeqCst);
        self.commit_ts.store(c.commit_ts, Ordering::SeqCst);
        self.committed.store(c.seq, Ordering::SeqCst);
        self.version.fetch_add(1, Ordering::SeqCst);
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

    /// The local transaction id of transaction `seq` while a writer applies it.
    pub(super) fn xid_of(&self, seq: u64) -> Option<u32> {
        self.active()
            .iter()
            .find(|s| s.seq.load(Ordering::SeqCst) == seq)
            .map(|s| s.xid.load(Ordering::SeqCst))
            .filter(|x| *x != 0)
    }
}

impl WriterSlot {
    /// Records why this writer stops, then its state (the leader reads the message
    /// once it sees the state).
    pub(super) fn fail(&self, state: WriterState, message: &str) {
        let bytes = message.as_bytes();
        let n = bytes.len().min(MESSAGE_BYTES - 1);
        // SAFETY: only this writer writes its message, before publishing the state;
        // the leader reads it only after seeing the state.
        unsafe {
            let dst = self.message.as_ptr().cast_mut();
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, n);
            *dst.add(n) = 0;
        }
        self.state.store(state as u32, Ordering::SeqCst);
    }

    /// The state, and the message when it is not Running.
    pub(super) fn state(&self) -> (WriterState, String) {
        match self.state.load(Ordering::SeqCst) {
            1 => (WriterState::Failed, self.message()),
            2 => (WriterState::Retry, self.message()),
            _ => (WriterState::Running, String::new()),
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
