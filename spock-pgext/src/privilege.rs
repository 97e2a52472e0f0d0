//! Who may do what through spock: the checks SQL functions make before they act on
//! the caller's behalf.
//!
//! Managing replication (connecting from the server to another node, stopping or
//! waking workers, dropping slots, invalidating caches) is for superusers, as
//! pglogical and native `CREATE SUBSCRIPTION` without a granted role are. The SQL
//! script also revokes these functions from PUBLIC; the check here stays in force
//! when an administrator grants EXECUTE to someone, because the server connects as
//! its own OS user and `trust`/`peer`/`.pgpass` would speak for that someone.

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;

use crate::error::PgError;

/// Raises 42501 unless the current user is a superuser. `action` completes
/// "permission denied to ...".
pub fn require_superuser(action: &str) {
    // SAFETY: superuser() reads the current user id and its pg_authid row through the
    // syscache, which is valid in any transaction of a connected backend.
    if !unsafe { pg_sys::superuser() } {
        PgError::new(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, format!("permission denied to {action}"))
            .detail("Only superusers may manage spock replication (docs/security.md).")
            .raise();
    }
}
