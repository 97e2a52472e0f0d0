//! `spock`: the PostgreSQL extension of spock-rs (pgrx glue).
//!
//! This crate only adapts PostgreSQL to [`spock_core`]: SQL functions, GUCs, the
//! output plugin and the workers live in modules named after the PostgreSQL concept
//! they implement. Decisions (protocol bytes, conflict winners, filters) are made in
//! `spock_core`; unsafe code is confined to small commented functions.
#![deny(unsafe_op_in_unsafe_fn)]


mod apply;
mod catalog;
mod ddl;
mod error;
mod gucs;
mod init;
mod libpq;
pub mod output_plugin;
mod privilege;
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
}
