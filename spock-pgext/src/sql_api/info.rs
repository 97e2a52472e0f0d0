//! Version and protocol information functions.

use pgrx::prelude::*;
use spock_core::proto::ProtoVersion;

/// `spock.spock_version()`: the Spock release we are compatible with.
#[pg_extern(immutable, parallel_safe)]
fn spock_version() -> &'static str {
    spock_core::SPOCK_COMPAT_VERSION
}

/// `spock.spock_version_num()`.
#[pg_extern(immutable, parallel_safe)]
fn spock_version_num() -> i32 {
    spock_core::SPOCK_COMPAT_VERSION_NUM as i32
}

/// `spock.spock_max_proto_version()`: the newest native protocol we speak.
#[pg_extern(immutable, parallel_safe)]
fn spock_max_proto_version() -> i32 {
    ProtoVersion::MAX.as_u32() as i32
}

/// `spock.spock_min_proto_version()`: the oldest native protocol we accept.
#[pg_extern(immutable, parallel_safe)]
fn spock_min_proto_version() -> i32 {
    ProtoVersion::MIN.as_u32() as i32
}

/// `spock.spock_rs_version()`: the version of spock-rs itself.
#[pg_extern(immutable, parallel_safe)]
fn spock_rs_version() -> &'static str {
    spock_core::SPOCK_RS_VERSION
}
