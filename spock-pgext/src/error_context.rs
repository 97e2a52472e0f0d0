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

/// The hook: strips the context of the report, then calls the previous hook.
///
/// Not `#[pg_guard]`: it runs while an error is being reported and must neither
/// raise nor unwind; a panic in the stripping is caught and the report left as it
/// is.
///
/// SAFETY: called by PostgreSQL with the report being emitted.
unsafe extern "C-unwind" fn emit_log(edata: *mut pg_sys::ErrorData) {
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
