//! PostgreSQL's own catalogs: relation and role names.

use std::ffi::CStr;

use pgrx::{pg_sys, PgSqlErrorCode};

use crate::error::PgError;

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
    match (owned(name), schema.and_then(|s| owned(s))) {
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
