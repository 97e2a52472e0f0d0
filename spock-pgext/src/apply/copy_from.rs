//! PostgreSQL's own COPY FROM, run inside the apply worker and fed by a provider's
//! `COPY ... TO STDOUT`, as PostgreSQL's tablesync worker does: `BeginCopyFrom` with
//! a data-source callback that reads the provider's connection, `CopyFrom`,
//! `EndCopyFrom`. The copied rows are inserted by this process in its current
//! transaction: the data does not go through a second local connection and backend.
//!
//! Also here: making the current transaction commit as the provider's copy (under the
//! subscription's replication origin, with the oldest commit timestamp), and letting
//! the origin go afterwards.
//!
//! This module owns the unsafe calls; what to copy and when is `sync`'s business.

use std::cell::RefCell;
use std::ffi::{c_int, c_void, CString};
use std::marker::PhantomData;

use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};

use super::owner::OwnerSwitch;
use crate::error::PgError;
use crate::libpq::{Connection, CopyBuffer, CopyMessage};

/// Commit timestamp of copied rows: 2000-01-01 00:00:00.000001 UTC (microseconds
/// since PostgreSQL's epoch). Any change to them that the copy does not hold is
/// newer and wins last-update-wins (docs/sync.md).
const OLDEST_COMMIT_TIMESTAMP: pg_sys::TimestampTz = 1;

thread_local! {
    /// Where the COPY FROM running now reads its data. PostgreSQL's data-source
    /// callback takes no argument, so [`copy_from_provider`] puts the provider's
    /// connection here for the duration of one COPY (a [`SourceGuard`] clears it,
    /// also when the COPY fails) and [`read_provider_data`] takes it from here.
    static SOURCE: RefCell<Option<Source>> = const { RefCell::new(None) };
}

/// The provider's COPY OUT stream as COPY FROM consumes it.
struct Source {
    /// The provider's connection, in COPY OUT mode. Valid while the [`SourceGuard`]
    /// that set it lives (the guard borrows the connection).
    conn: *const Connection,
    /// Prefix of error messages (which subscription and table).
    context: String,
    /// The part of the last CopyData message that did not fit into COPY's buffer,
    /// from `cursor` on.
    pending: Option<CopyBuffer>,
    cursor: usize,
    /// The provider ended its COPY successfully.
    done: bool,
}

/// Sets [`SOURCE`] for as long as it lives; the borrow keeps the connection alive.
struct SourceGuard<'a>(PhantomData<&'a Connection>);

impl<'a> SourceGuard<'a> {
    fn set(conn: &'a Connection, context: String) -> SourceGuard<'a> {
        SOURCE.with(|s| {
            *s.borrow_mut() =
                Some(Source { conn: conn as *const Connection, context, pending: None, cursor: 0, done: false })
        });
        SourceGuard(PhantomData)
    }

    /// Whether the provider's COPY has ended.
    fn finished(&self) -> bool {
        SOURCE.with(|s| s.borrow().as_ref().is_some_and(|s| s.done))
    }
}

impl Drop for SourceGuard<'_> {
    fn drop(&mut self) {
        SOURCE.with(|s| s.borrow_mut().take());
    }
}

impl Source {
    /// Fills `out` with what the provider has sent, at least `minread` bytes (fewer
    /// only at the end of its data), waiting for the provider only while fewer have
    /// come; returns how many. Taking every message already received at once (each
    /// is one row) saves COPY a call per row.
    fn fill(&mut self, out: &mut [u8], minread: usize) -> usize {
        self.stop_if_asked();
        let mut n = 0;
        loop {
            if let Some(buf) = &self.pending {
                let avail = &buf[self.cursor..];
                let k = avail.len().min(out.len() - n);
                out[n..n + k].copy_from_slice(&avail[..k]);
                self.cursor += k;
                n += k;
                if self.cursor == buf.len() {
                    self.pending = None;
                }
            }
            if n == out.len() || self.done {
                return n;
            }
            // SAFETY: `conn` points to the connection the live SourceGuard borrows.
            let conn = unsafe { &*self.conn };
            match conn.next_copy_message() {
                Ok(CopyMessage::Data(buf)) => {
                    self.pending = Some(buf);
                    self.cursor = 0;
                }
                Ok(CopyMessage::Done) => self.done = true,
                Ok(CopyMessage::WouldBlock) if n >= minread => return n,
                Ok(CopyMessage::WouldBlock) => {
                    crate::libpq::wait_for_socket(conn.socket(), 1000);
                    self.stop_if_asked();
                }
                Err(e) => {
                    PgError::new(PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE, format!("{}: {e}", self.context)).raise()
                }
            }
        }
    }

    /// Ends the copy with an error if the worker got SIGTERM (the sync starts again
    /// when it comes back).
    fn stop_if_asked(&self) {
        if crate::workers::sigterm_received() {
            PgError::new(
                PgSqlErrorCode::ERRCODE_ADMIN_SHUTDOWN,
                format!("{}: interrupted: the worker is stopping; the sync starts again later", self.context),
            )
            .raise();
        }
    }
}

/// COPY FROM's data source: up to `maxread` bytes of the provider's COPY data into
/// `outbuf`, at least `minread` unless the data ended; 0 means the end.
#[pg_guard]
unsafe extern "C-unwind" fn read_provider_data(outbuf: *mut c_void, minread: c_int, maxread: c_int) -> c_int {
    let maxread = usize::try_from(maxread).unwrap_or(0);
    if maxread == 0 {
        return 0;
    }
    // SAFETY: COPY passes a buffer of at least `maxread` writable bytes.
    let out = unsafe { std::slice::from_raw_parts_mut(outbuf.cast::<u8>(), maxread) };
    // Returning 0 means the end of the data: always wait for at least one byte.
    let minread = usize::try_from(minread).unwrap_or(1).clamp(1, maxread);
    SOURCE.with(|s| match s.borrow_mut().as_mut() {
        Some(src) => src.fill(out, minread) as c_int,
        None => {
            PgError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "spock: COPY FROM without a provider to read from")
                .raise()
        }
    })
}

/// Copies what the provider sends on `provider` (in COPY OUT mode, text format,
/// columns in the order of `columns`) into local table `relid`, in the current
/// transaction, with PostgreSQL's COPY FROM (triggers, constraints and indexes as
/// COPY has them; `session_replication_role` applies), as the table's owner
/// (apply::owner: the COPY runs with its rights, not the worker's). `context`
/// starts error messages. Returns the number of rows.
pub fn copy_from_provider(provider: &Connection, relid: pg_sys::Oid, columns: &[String], context: String) -> u64 {
    let source = SourceGuard::set(provider, context.clone());
    // SAFETY: in a transaction (the caller's); the source is set.
    let rows = unsafe { run_copy_from(relid, columns) };
    if !source.finished() {
        PgError::new(
            PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION,
            format!("{context}: COPY ended before the provider's data (an end-of-data marker in the data?)"),
        )
        .raise();
    }
    rows
}

/// `BeginCopyFrom` / `CopyFrom` / `EndCopyFrom` into `relid` from [`read_provider_data`].
///
/// # Safety
/// Inside a transaction, with [`SOURCE`] set.
unsafe fn run_copy_from(relid: pg_sys::Oid, columns: &[String]) -> u64 {
    // SAFETY: the relation is opened and locked as COPY FROM does (RowExclusiveLock,
    // kept until the transaction ends); the parse state holds its range table entry,
    // which BeginCopyFrom needs; the column names are palloc'd String nodes; the
    // copy state is ended and the relation closed before returning (an error aborts
    // the transaction, which releases all of it).
    unsafe {
        let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        pg_sys::addRangeTableEntryForRelation(
            pstate,
            rel,
            pg_sys::RowExclusiveLock as c_int,
            std::ptr::null_mut(),
            false,
            false,
        );
        let mut attnames: *mut pg_sys::List = std::ptr::null_mut();
        for c in columns {
            let c = CString::new(c.as_str()).unwrap_or_default();
            attnames = pg_sys::lappend(attnames, pg_sys::makeString(pg_sys::pstrdup(c.as_ptr())).cast());
        }
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        // Triggers, defaults and constraints run as the table's owner (for a
        // partitioned table, the owner of the root), as in PostgreSQL's table sync;
        // undone at the end of the COPY or as its error unwinds.
        let switch = OwnerSwitch::enter((*(*rel).rd_rel).relowner, super::owner::worker_user());
        let cstate = pg_sys::BeginCopyFrom(
            pstate,
            rel,
            std::ptr::null_mut(),
            std::ptr::null(),
            false,
            Some(read_provider_data),
            attnames,
            std::ptr::null_mut(),
        );
        let rows = pg_sys::CopyFrom(cstate);
        pg_sys::EndCopyFrom(cstate);
        drop(switch);
        pg_sys::PopActiveSnapshot();
        pg_sys::free_parsestate(pstate);
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        rows
    }
}

/// Makes the current transaction commit as the provider's copy: every change it
/// writes carries the replication origin `origin_name` (so it is not sent on to other
/// nodes), and its commit moves that origin to `origin_lsn` (0: not moved) with the
/// oldest commit timestamp, so that any change to the rows that the copy does not
/// hold (from the provider, or from another node whose subscription starts at the
/// provider's progress) is newer and wins. Call before the first write; after the
/// commit, [`after_copy_commit`] (an error ends the worker, which lets the origin go).
pub fn commit_as_provider(origin_name: &str, origin_lsn: u64) {
    let name = CString::new(origin_name).unwrap_or_default();
    // SAFETY: in a transaction (catalog lookup) before any write; the worker holds no
    // origin now (the apply session let it go), so taking it is allowed.
    unsafe {
        let origin = pg_sys::replorigin_by_name(name.as_ptr(), false);
        pg_sys::replorigin_session_setup(origin, 0);
        pg_sys::replorigin_session_origin = origin;
        pg_sys::replorigin_session_origin_lsn = origin_lsn;
        pg_sys::replorigin_session_origin_timestamp = OLDEST_COMMIT_TIMESTAMP;
    }
}

/// After the transaction of [`commit_as_provider`] committed: waits until its commit
/// is on disk (the worker commits asynchronously otherwise), reports its statistics
/// (autovacuum learns of the copied rows now), and lets the origin go, so that the
/// apply session can take it to stream.
pub fn after_copy_commit() {
    // SAFETY: outside a transaction; flushes WAL up to our last commit, flushes our
    // pending statistics, and resets the session's origin state, which this process
    // set up.
    unsafe {
        pg_sys::XLogFlush(pg_sys::XactLastCommitEnd);
        pg_sys::pgstat_report_stat(true);
        pg_sys::replorigin_session_reset();
        pg_sys::replorigin_session_origin = 0;
        pg_sys::replorigin_session_origin_lsn = 0;
        pg_sys::replorigin_session_origin_timestamp = 0;
    }
}
