//! `spock_output`: the library named by slots that use the `spock_output` plugin.
//!
//! PostgreSQL loads a slot's plugin as a library and calls its
//! `_PG_output_plugin_init`. This one loads the `spock` library by its plain name,
//! so `dynamic_library_path` finds it wherever it is installed (CloudNativePG mounts
//! it outside `$libdir`), and hands over to `spock_output_plugin_init` there.
#![deny(unsafe_op_in_unsafe_fn)]

use pgrx::pg_sys;
use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

/// Signature of `spock_output_plugin_init` in the `spock` library.
type PluginInit = unsafe extern "C-unwind" fn(*mut pg_sys::OutputPluginCallbacks);

/// Called by PostgreSQL when a decoding session with plugin `spock_output` starts.
///
/// SAFETY: PostgreSQL passes a valid callback table to fill.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn _PG_output_plugin_init(cb: *mut pg_sys::OutputPluginCallbacks) {
    // SAFETY: load_external_function either returns the named symbol of the loaded
    // library or raises an ERROR (signalNotFound = true); the symbol is defined in
    // spock-pgext with exactly the `PluginInit` signature.
    unsafe {
        let f = pg_sys::load_external_function(
            c"spock".as_ptr(),
            c"spock_output_plugin_init".as_ptr(),
            true,
            std::ptr::null_mut(),
        );
        let init: PluginInit = std::mem::transmute::<*mut std::ffi::c_void, PluginInit>(f);
        init(cb);
    }
}
