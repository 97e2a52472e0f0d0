//! `_PG_init`: what happens when the library is loaded, either at server start
//! (`shared_preload_libraries = 'spock'`) or on first use in a session.
//!
//! GUCs are defined in every case; shared memory and the supervisor worker only when
//! preloading (loading without it keeps working for `CREATE EXTENSION` and the
//! output plugin, without workers).

use pgrx::pg_sys;
use pgrx::prelude::*;

/// Whether the library is being loaded from `shared_preload_libraries`.
pub fn loading_at_server_start() -> bool {
    // SAFETY: a plain read of a global the postmaster sets before loading preloaded
    // libraries; PostgreSQL backends are single-threaded.
    unsafe { pg_sys::process_shared_preload_libraries_in_progress }
}

/// Turns off Rust backtraces in this process and the ones it forks.
///
/// pgrx appends a captured backtrace to the DETAIL of every error that passes
/// through Rust code when `RUST_BACKTRACE` (or `RUST_LIB_BACKTRACE`) is set in the
/// server's environment: file paths and call chains sent to any client, and the
/// cost of capturing on every error. `RUST_LIB_BACKTRACE=0` takes precedence over
/// `RUST_BACKTRACE` for `std::backtrace::Backtrace::capture` (what pgrx uses) and
/// leaves panic messages of non-PostgreSQL threads alone.
fn disable_error_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_some_and(|v| v == "0") {
        return;
    }
    // SAFETY: setting an environment variable races with threads reading the
    // environment; _PG_init runs in the single-threaded postmaster (preloading) or
    // backend, before any backtrace was captured (the setting is read once, at the
    // first capture).
    unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
}

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    disable_error_backtraces();
    crate::gucs::init();
    crate::gucs::init_ddl();
    crate::ddl::autoddl::install_hook();
    crate::error_context::install_hook();
    crate::delta::install_label_provider();
    if loading_at_server_start() {
        crate::workers::shmem::init();
        crate::workers::removals::init_shmem();
        crate::workers::removals::install();
        crate::workers::register_supervisor();
    }
}
