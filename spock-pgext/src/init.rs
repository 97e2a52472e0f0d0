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

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    crate::gucs::init();
    crate::gucs::init_ddl();
    crate::ddl::autoddl::install_hook();
    if loading_at_server_start() {
        crate::workers::shmem::init();
        crate::workers::register_supervisor();
    }
}
