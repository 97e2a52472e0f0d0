//! Delta apply (docs/multimaster.md, "Counters"): a column marked with the security
//! label `delta_apply` of provider `spock` (`spock.set_delta_apply`) is applied, for
//! an UPDATE from another node, as local + (new - old) instead of new, whatever
//! last-update-wins decides for the rest of the row: concurrent additions on
//! different nodes all count. The label travels as DDL does (replicate_ddl,
//! AutoDDL, pg_dump in the structure sync); the old value comes with the old row,
//! which the table's REPLICA IDENTITY FULL makes PostgreSQL log.

use std::ffi::CStr;

use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};

use crate::error::PgError;

/// The one label of provider `spock`.
pub const DELTA_APPLY_LABEL: &str = "delta_apply";

/// Registers provider `spock` for SECURITY LABEL (every backend loads the library
/// through shared_preload_libraries; a label of an unregistered provider is an
/// error, so a backend without it cannot set or restore one).
pub fn install_label_provider() {
    // SAFETY: registers a static C string and a hook for this process (and, in the
    // postmaster, its children); PostgreSQL copies the list into TopMemoryContext.
    unsafe { pg_sys::register_label_provider(c"spock".as_ptr(), Some(check_relabel)) };
}

/// Accepts `delta_apply` on a table column (or removing the label) and makes the
/// apply workers read the table's columns again.
#[pg_guard]
unsafe extern "C-unwind" fn check_relabel(object: *const pg_sys::ObjectAddress, seclabel: *const std::ffi::c_char) {
    // SAFETY: PostgreSQL passes a valid address and a C string or NULL.
    let (class, relid, column, label) = unsafe {
        let o = &*object;
        let label = (!seclabel.is_null()).then(|| CStr::from_ptr(seclabel).to_string_lossy().into_owned());
        (o.classId, o.objectId, o.objectSubId, label)
    };
    if class != pg_sys::RelationRelationId || column <= 0 {
        PgError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "spock security labels go on table columns (delta_apply)",
        )
        .raise();
    }
    if let Some(label) = label.filter(|l| l != DELTA_APPLY_LABEL) {
        PgError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown spock security label \"{label}\": the only one is \"{DELTA_APPLY_LABEL}\""),
        )
        .raise();
    }
    // SAFETY: queues a relcache invalidation of an existing relation.
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
}

/// Whether column `attnum` of `relid` is marked for delta apply.
///
/// SAFETY: inside a transaction.
pub unsafe fn is_delta_column(relid: pg_sys::Oid, attnum: i32) -> bool {
    let address = pg_sys::ObjectAddress { classId: pg_sys::RelationRelationId, objectId: relid, objectSubId: attnum };
    // SAFETY: a catalog lookup; the result is palloc'd or NULL.
    unsafe {
        let label = pg_sys::GetSecurityLabel(&address, c"spock".as_ptr());
        !label.is_null() && CStr::from_ptr(label).to_bytes() == DELTA_APPLY_LABEL.as_bytes()
    }
}

/// `spock.delta_apply(old, new, local)` for arguments of type `type_oid`, if spock
/// has one (int2, int4, int8, float4, float8, numeric, money).
///
/// SAFETY: inside a transaction.
pub unsafe fn delta_function(type_oid: pg_sys::Oid) -> Option<pg_sys::Oid> {
    // SAFETY: builds a qualified name list in the current memory context and looks
    // the function up by name and argument types.
    unsafe {
        let mut names: *mut pg_sys::List = std::ptr::null_mut();
        names = pg_sys::lappend(names, pg_sys::makeString(pg_sys::pstrdup(c"spock".as_ptr())).cast());
        names = pg_sys::lappend(names, pg_sys::makeString(pg_sys::pstrdup(c"delta_apply".as_ptr())).cast());
        let types = [type_oid, type_oid, type_oid];
        let f = pg_sys::LookupFuncName(names, 3, types.as_ptr(), true);
        (f != pg_sys::InvalidOid).then_some(f)
    }
}
