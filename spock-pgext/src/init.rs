//! `_PG_init`: what happens when the library is loaded, either at server start
//! (`shared_preload_libraries = 'spock'`) or on first use in a session.
//!
//! Later steps register GUCs, shared memory and the supervisor worker here; those
//! need preloading, and loading without it must keep working for `CREATE EXTENSION`
//! and the output plugin.

use pgrx::pg_sys;
use pgrx::prelude::*;

/// Whether the library is being loaded from `shared_preload_libraries`.
pub fn loading_at_server_start() -> bool {
    // SAFETY: a plain read of a global the postmaster sets before loading preloaded
    // libraries; PostgreSQL backends are single-threaded.
    unsafe { pg_sys::process_shared_preload_libraries_in_progress }
}

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    if loading_at_server_start() {
        pgrx::debug1!("spock: loaded from shared_preload_libraries");
    }
}
