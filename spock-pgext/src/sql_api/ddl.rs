//! `spock.replicate_ddl(command, replication_sets, search_path, role)`: runs a DDL
//! command here and queues it (`Q`) for the subscribers of the sets, with the
//! `SET search_path` it ran under, to be run there as `role`, with Spock's defaults
//! (`current_setting('search_path')`, evaluated in the caller's session before the
//! function's own pinned search_path applies, and `CURRENT_USER`). The `text[]`
//! overload is in `sql/api/ddl.sql`.

use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};
use spock_core::ddl::QueuedMessage;

use crate::catalog::{nodes, repsets, system};
use crate::ddl::{self, Execution};
use crate::error::PgError;

#[pg_extern(volatile, strict, name = "replicate_ddl")]
#[search_path(pg_catalog, pg_temp)]
fn replicate_ddl(
    command: &str,
    replication_sets: default!(Vec<Option<String>>, "'{ddl_sql}'"),
    search_path: default!(&str, "current_setting('search_path')"),
    role: default!(&str, "CURRENT_USER"),
) -> bool {
    nodes::local_node_id();
    let sets: Vec<String> = replication_sets
        .into_iter()
        .map(|s| {
            s.unwrap_or_else(|| {
                PgError::new(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "replication set name cannot be NULL")
                    .raise()
            })
        })
        .collect();
    repsets::require_local_sets(&sets);
    let prefix = spock_core::ddl::search_path_command(search_path).unwrap_or_else(|e| {
        PgError::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "provided search path is not valid")
            .detail(format!("\"{search_path}\": {e}"))
            .raise()
    });
    // The role must exist here; subscribers run the command as it. Running as
    // another role needs the right to SET ROLE to it (Spock does not check).
    let role_id = ddl::role_oid(role);
    // SAFETY: catalog lookups of the current user's memberships.
    if !unsafe { pg_sys::member_can_set_role(pg_sys::GetUserId(), role_id) } {
        PgError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied to run replicated DDL as role \"{role}\""),
        )
        .detail("Only roles that can SET ROLE to it may name it in spock.replicate_ddl().")
        .raise();
    }
    ddl::queue_message(Some(&sets), role, &QueuedMessage::Sql(format!("{prefix}{command}")));
    ddl::execute_sql(command, role, Some(search_path), Execution::ReplicateDdl);
    true
}

/// `spock._queue_table_sync(set_name, relation)`: queues an `A` message (copy the
/// table) for the subscribers of the set, to be applied as the current user.
#[pg_extern(volatile, strict, name = "_queue_table_sync")]
fn queue_table_sync(set_name: &str, relation: pg_sys::Oid) {
    let (schema, table) = system::relation_name(relation);
    ddl::queue_message(
        Some(&[set_name.to_string()]),
        &system::current_user_name(),
        &QueuedMessage::TableSync { schema, table },
    );
}
