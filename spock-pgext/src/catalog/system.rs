//! PostgreSQL's own catalogs and views: relation and role names, the extension,
//! the server's backends.

use std::ffi::CStr;

use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};

use super::required;
use crate::error::{spi_failed, PgError};

fn owned(p: *const std::ffi::c_char) -> Option<String> {
    // SAFETY: `p` is NULL or a NUL-terminated string palloc'd by the backend
    // function that returned it, valid until the memory context is reset.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// The schema and name of relation `relid`; 42P01 when there is none.
pub fn relation_name(relid: pg_sys::Oid) -> (String, String) {
    // SAFETY: syscache lookups by oid; each returns NULL (or InvalidOid) when the
    // object does not exist.
    let (name, nsp) = unsafe { (pg_sys::get_rel_name(relid), pg_sys::get_rel_namespace(relid)) };
    // SAFETY: as above.
    let schema = (nsp != pg_sys::InvalidOid).then(|| unsafe { pg_sys::get_namespace_name(nsp) });
    match (owned(name), schema.and_then(|s| owned(s.cast_const()))) {
        (Some(name), Some(schema)) => (schema, name),
        _ => PgError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("relation with OID {} does not exist", u32::from(relid)),
        )
        .raise(),
    }
}

/// The name of the current user (SQL `current_user`).
pub fn current_user_name() -> String {
    // SAFETY: GetUserId() is valid in a connected backend; GetUserNameFromId with
    // noerr = false raises an error (it does not return NULL) for an unknown role.
    owned(unsafe { pg_sys::GetUserNameFromId(pg_sys::GetUserId(), false) })
        .unwrap_or_else(|| PgError::new(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, "current user not found").raise())
}

/// Whether extension spock is installed in the current database.
pub fn extension_installed() -> bool {
    Spi::get_one::<bool>("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'spock')")
        .unwrap_or_else(|e| spi_failed("looking up extension spock", e))
        .unwrap_or_else(|| super::unexpected("pg_extension (EXISTS)", "NULL"))
}

/// Pids of the running backends whose `backend_type` is one of `types`.
pub fn backend_pids(types: &[&str]) -> Vec<i32> {
    let types: Vec<String> = types.iter().map(|t| t.to_string()).collect();
    Spi::connect(|client| {
        client
            .select("SELECT pid FROM pg_catalog.pg_stat_activity WHERE backend_type = ANY ($1)", None, &[types.into()])
            .unwrap_or_else(|e| spi_failed("listing spock workers", e))
            .map(|r| required::<i32>(&r, 1, "pg_stat_activity.pid"))
            .collect()
    })
}

/// The name of replication origin `roident`, if it exists.
pub fn origin_name(roident: u16) -> Option<String> {
    super::at_most_one(Spi::get_one_with_args::<String>(
        "SELECT roname::text FROM pg_catalog.pg_replication_origin WHERE roident = $1::int4::oid",
        &[i32::from(roident).into()],
    ))
    .unwrap_or_else(|e| spi_failed("reading replication origins", e))
}
