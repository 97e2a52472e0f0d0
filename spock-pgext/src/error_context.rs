//! Errors, warnings and notices raised inside spock's SQL functions reach the client
//! without the CONTEXT lines of spock's own PL/pgSQL frames.
//!
//! Much of the SQL API is PL/pgSQL, and PL/pgSQL adds a CONTEXT line per frame
//! ("PL/pgSQL function spock._repset(name) line 8 at RAISE", the SQL statement a
//! frame was running, ...): implementation details, different from one release to
//! the next, that Spock's functions (written in C) never show and that scripts
//! and tests written for Spock do not expect. An `emit_log_hook` removes those
//! lines from each report before it is sent and logged: a spock PL/pgSQL frame's
//! line, and the "SQL statement" line just before it (the statement that frame
//! was running). The lines of the caller's own frames (a DO block, a function of
//! theirs, the statement that called spock) stay as PostgreSQL wrote them.

use std::ffi::{CStr, CString};
use std::sync::OnceLock;

use pgrx::pg_sys;

/// The hook installed before ours.
static PREVIOUS: OnceLock<pg_sys::emit_log_hook_type> = OnceLock::new();

/// Installs the hook (from `_PG_init`, once per process).
pub fn install_hook() {
    // SAFETY: _PG_init, single-threaded; the previous hook is kept and called.
    unsafe {
        if PREVIOUS.set(pg_sys::emit_log_hook).is_ok() {
            pg_sys::emit_log_hook = Some(emit_log);
        }
    }
}

/// In an apply worker or writer: an error it reports (it ends the process: a
/// worker has no outer error handler) is kept for its manager
/// (`workers::shmem::record_worker_error`), which records it as the
/// subscription's last error.
///
/// SAFETY: `edata` is the report being emitted (or null).
unsafe fn note_worker_error(edata: *mut pg_sys::ErrorData) {
    let Some((db, sub)) = crate::workers::worker_subscription() else { return };
    // SAFETY: reading the report's fields; the message is a string in ErrorContext.
    unsafe {
        if edata.is_null() || (*edata).elevel < pgrx::PgLogLevel::ERROR as i32 {
            return;
        }
        let code = (*edata).sqlerrcode;
        let mut sqlstate = [0u8; 5];
        for (i, c) in sqlstate.iter_mut().enumerate() {
            *c = (((code >> (6 * i)) & 0x3f) as u8) + b'0';
        }
        if !spock_core::status::is_failure(std::str::from_utf8(&sqlstate).unwrap_or("")) {
            return;
        }
        let message =
            if (*edata).message.is_null() { "".into() } else { CStr::from_ptr((*edata).message).to_string_lossy() };
        crate::workers::shmem::record_worker_error(db, sub, sqlstate, &message, pg_sys::GetCurrentTimestamp());
    }
}

/// An apply worker that lost or cannot reach its provider logs it as a WARNING
/// (SQLSTATE 08006, `apply::fail`): its manager starts it again, and a provider's
/// restart is normal operation. spock's own helper processes, asked to stop, log
/// it as LOG instead of FATAL:
/// a parallel apply writer whose leader stops it (PostgreSQL's `die()` on
/// SIGTERM: every table sync, reconnect, disable or shutdown), and on a provider
/// the idle session a subscriber's worker keeps there to ask its clock
/// (application_name `<slot> probe`), ended by a fast shutdown. The message and
/// the process's end are the same; only the severity, which log-based alerting
/// reads as a failure, is not. Any other process's termination stays FATAL.
///
/// SAFETY: `edata` is the report being emitted (or null).
unsafe fn relabel_expected(edata: *mut pg_sys::ErrorData) {
    // SAFETY: reading the report's fields and this process's application_name.
    unsafe {
        if edata.is_null() {
            return;
        }
        let worker = crate::workers::worker_subscription().is_some();
        // An apply worker that lost or cannot reach its provider (apply::fail):
        // retried by its manager, a WARNING.
        if worker
            && (*edata).elevel >= pgrx::PgLogLevel::ERROR as i32
            && (*edata).sqlerrcode == crate::error::sqlstate_code("08006")
        {
            (*edata).elevel = pgrx::PgLogLevel::WARNING as i32;
            return;
        }
        let writer = worker && crate::workers::is_writer();
        let probe = !pg_sys::application_name.is_null()
            && CStr::from_ptr(pg_sys::application_name).to_bytes().ends_with(b" probe")
            && pg_sys::MyBackendType == pg_sys::BackendType::B_BACKEND;
        let stopped = (*edata).elevel == pgrx::PgLogLevel::FATAL as i32
            && (*edata).sqlerrcode == crate::error::sqlstate_code("57P01");
        if stopped && (writer || probe) {
            (*edata).elevel = pgrx::PgLogLevel::LOG as i32;
            (*edata).output_to_client = false;
        }
    }
}

/// The hook: strips the context of the report, then calls the previous hook.
///
/// Not `#[pg_guard]`: it runs while an error is being reported and must neither
/// raise nor unwind; a panic in the stripping is caught and the report left as it
/// is.
///
/// SAFETY: called by PostgreSQL with the report being emitted.
unsafe extern "C-unwind" fn emit_log(edata: *mut pg_sys::ErrorData) {
    // SAFETY: the report PostgreSQL passes.
    let _ = std::panic::catch_unwind(|| unsafe { note_worker_error(edata) });
    // SAFETY: as above.
    let _ = std::panic::catch_unwind(|| unsafe { relabel_expected(edata) });
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: the report PostgreSQL passes; its context is null or a string in
        // ErrorContext, replaced by a copy made there.
        unsafe {
            if edata.is_null() || (*edata).context.is_null() {
                return;
            }
            let context = CStr::from_ptr((*edata).context).to_string_lossy();
            if !context.contains("PL/pgSQL function spock.") {
                return;
            }
            if let Some(stripped) = spock_core::error_context::strip_spock_frames(&context) {
                (*edata).context = if stripped.is_empty() {
                    std::ptr::null_mut()
                } else {
                    match CString::new(stripped) {
                        Ok(c) => pg_sys::MemoryContextStrdup(pg_sys::ErrorContext, c.as_ptr()),
                        Err(_) => (*edata).context,
                    }
                };
            }
        }
    });
    if let Some(previous) = PREVIOUS.get().copied().flatten() {
        // SAFETY: the hook that was installed before ours, with its argument.
        unsafe { previous(edata) };
    }
}
