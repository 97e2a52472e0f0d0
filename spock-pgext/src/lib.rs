//! `spock`: the PostgreSQL extension of spock-rs, everything that runs inside the
//! server.
//!
//! SQL functions, GUCs, catalogs, the output plugin, the apply and sync workers and
//! AutoDDL live in modules named after the PostgreSQL concept they implement. Rules
//! that need no server (protocol bytes, conflict winners, filters, queue messages,
//! names) are [`spock_core`]'s and are called from here; unsafe code is confined to
//! small commented functions.
#![deny(unsafe_op_in_unsafe_fn)]

mod apply;
mod catalog;
mod ddl;
mod delta;
mod error;
mod error_context;
mod gucs;
mod init;
mod invalidation;
mod libpq;
pub mod output_plugin;
mod privilege;
mod readonly;
mod sql_api;
mod workers;

::pgrx::pg_module_magic!(name, version);

/// Called by pgrx's `cargo pgrx test` framework.
#[cfg(test)]
pub mod pg_test {
    /// One-off set-up before the tests run.
    pub fn setup(_options: Vec<&str>) {}

    /// postgresql.conf settings the tests need.
    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn version_functions_agree_with_core() {
        assert_eq!(
            Spi::get_one::<String>("SELECT spock.spock_version()").unwrap(),
            Some(spock_core::SPOCK_COMPAT_VERSION.to_string())
        );
        assert_eq!(Spi::get_one::<i32>("SELECT spock.spock_max_proto_version()").unwrap(), Some(5));
    }

    #[pg_test]
    fn core_type_oids_are_the_servers() {
        use pgrx::pg_sys;
        use spock_core::proto::transfer::{big_endian_send_len, FIRST_NORMAL_OBJECT_ID};
        assert_eq!(FIRST_NORMAL_OBJECT_ID, pg_sys::FirstNormalObjectId);
        let by_value = [
            (pg_sys::BOOLOID, 1),
            (pg_sys::INT2OID, 2),
            (pg_sys::INT4OID, 4),
            (pg_sys::OIDOID, 4),
            (pg_sys::FLOAT4OID, 4),
            (pg_sys::DATEOID, 4),
            (pg_sys::INT8OID, 8),
            (pg_sys::FLOAT8OID, 8),
            (pg_sys::TIMEOID, 8),
            (pg_sys::TIMESTAMPOID, 8),
            (pg_sys::TIMESTAMPTZOID, 8),
        ];
        for (oid, len) in by_value {
            assert_eq!(big_endian_send_len(u32::from(oid)), Some(len), "type {oid:?}");
        }
        assert_eq!(big_endian_send_len(u32::from(pg_sys::NUMERICOID)), None);
    }
}
