//! SQL functions of schema `spock`, with Spock's names and signatures. Most of the
//! API is hand-written SQL, one file per area in `sql/api/` named like the module
//! here that holds its Rust helpers; the files are loaded in the order declared
//! below: the catalog first, `privileges.sql` (search_path pins and REVOKEs over
//! every function of the schema) last.

mod ddl;
mod diff;
mod info;
mod node;
mod pause;
mod progress;
mod remote;
pub(crate) mod repair;
mod repset;
mod retention;
mod sequence;
mod subscription;
mod sync;

pgrx::extension_sql_file!("../../../sql/spock_catalog.sql", name = "catalog", bootstrap);
pgrx::extension_sql_file!("../../../sql/api/node.sql", name = "api_node", requires = ["catalog"]);
// _dependent_memberships() (LANGUAGE sql) calls _row_filter_columns().
pgrx::extension_sql_file!(
    "../../../sql/api/repset.sql",
    name = "api_repset",
    requires = ["api_node", ddl::membership::row_filter_columns]
);
pgrx::extension_sql_file!("../../../sql/api/sequence.sql", name = "api_sequence", requires = ["api_repset"]);
// _subscription_progress() (LANGUAGE sql) calls _is_subscription_origin();
// sub_show_status() calls _slot_status().
pgrx::extension_sql_file!(
    "../../../sql/api/subscription.sql",
    name = "api_subscription",
    requires = [
        "api_sequence",
        sql_api::subscription::is_subscription_origin,
        sql_api::repset::spock_gen_slot_name,
        sql_api::progress::slot_status
    ]
);
// sync_event() (LANGUAGE sql) calls _sync_event_payload().
pgrx::extension_sql_file!(
    "../../../sql/api/sync.sql",
    name = "api_sync",
    requires = ["api_subscription", sql_api::sync::sync_event_payload]
);
// The views read apply_group_progress() and retention_horizon().
pgrx::extension_sql_file!(
    "../../../sql/api/progress.sql",
    name = "api_progress",
    requires = [
        "api_sync",
        sql_api::progress::apply_group_progress,
        sql_api::progress::conflict_counts,
        sql_api::retention::retention_horizon
    ]
);
// The text[] overload of replicate_ddl (LANGUAGE sql) calls the text one.
pgrx::extension_sql_file!(
    "../../../sql/api/ddl.sql",
    name = "api_ddl",
    requires = ["api_progress", sql_api::ddl::replicate_ddl]
);
// table_diff(), mesh_diff(), table_repair() and remove_node() (LANGUAGE sql /
// plpgsql) call _table_diff(), _table_repair() and _remote_query().
pgrx::extension_sql_file!(
    "../../../sql/api/operations.sql",
    name = "api_operations",
    requires =
        ["api_ddl", sql_api::diff::table_diff_rows, sql_api::repair::table_repair_rows, sql_api::remote::remote_query]
);
// set_delta_apply() calls replicate_ddl().
pgrx::extension_sql_file!("../../../sql/api/multimaster.sql", name = "api_multimaster", requires = ["api_operations"]);
pgrx::extension_sql_file!("../../../sql/api/privileges.sql", name = "api_privileges", finalize);
