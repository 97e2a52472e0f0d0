//! `spock.readonly`, Spock's read-only modes: with `local` (or its older name
//! `user`) and `all`, the transactions of non-superuser sessions are read-only, as
//! PostgreSQL's `transaction_read_only` makes them (DML, DDL, nextval() fail with
//! 25006 "cannot execute ... in a read-only transaction"; reads, VACUUM and ANALYZE
//! work); with `all` the apply workers apply nothing too (they stay connected and
//! wait, telling their providers they are alive, as Spock's do). The
//! ExecutorStart and ProcessUtility hooks call [`enforce`] before each statement;
//! background workers (apply) are left alone. A transaction made read-only stays so
//! to its end, as in Spock.

use pgrx::pg_sys;

use crate::gucs::{ReadonlyGuc, READONLY};

/// Makes the current transaction read-only when `spock.readonly` applies to this
/// session.
///
/// SAFETY: inside a transaction (superuser() reads the catalog).
pub unsafe fn enforce() {
    if READONLY.get() == ReadonlyGuc::Off {
        return;
    }
    // SAFETY: plain reads of backend globals, a syscache lookup, and the write of
    // XactReadOnly that `SET transaction_read_only` does.
    unsafe {
        if pg_sys::MyBackendType == pg_sys::BackendType::B_BG_WORKER || !pg_sys::IsTransactionState() {
            return;
        }
        if !pg_sys::superuser() {
            pg_sys::XactReadOnly = true;
        }
    }
}

/// Whether the apply workers must apply nothing (`spock.readonly = all`).
pub fn stops_apply() -> bool {
    READONLY.get() == ReadonlyGuc::All
}
