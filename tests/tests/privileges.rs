//! Least privilege: what roles other than superusers can do through spock.
//!
//! Three kinds of non-superuser (a plain LOGIN role with CREATE on `public`, a role
//! that owns a replicated table, a REPLICATION role) try every management and
//! internal function of schema `spock`, the server-side connections that once let a
//! plain role drop other nodes' slots, the AutoDDL settings and the catalogs with
//! DSNs. Every attempt must fail with SQLSTATE 42501 and change nothing.

use std::time::Duration;

use spock_tests::fixtures::{count, replicating_pair};
use spock_tests::postgres::Client;
use spock_tests::{wait_for, Cluster, TestNode};

/// The non-superusers of the matrix.
const ROLES: [&str; 3] = ["plain", "table_owner", "replicator"];

/// Public API functions that manage replication: superuser only (besides every
/// internal `spock._*` helper).
const MANAGEMENT: &[&str] = &[
    "node_create",
    "node_drop",
    "node_add_interface",
    "node_drop_interface",
    "repset_create",
    "repset_alter",
    "repset_drop",
    "repset_add_table",
    "repset_add_all_tables",
    "repset_remove_table",
    "repset_add_seq",
    "repset_add_all_seqs",
    "repset_remove_seq",
    "sub_create",
    "sub_drop",
    "sub_enable",
    "sub_disable",
    "sub_add_repset",
    "sub_remove_repset",
    "sub_alter_options",
    "sub_alter_interface",
    "sub_alter_skiplsn",
    "sub_alter_sync",
    "sub_resync_table",
    "sub_resync",
    "sync_seq",
    "pause_apply_workers",
    "resume_apply_workers",
];

/// Internal helpers that PUBLIC may run, called by a public function in LANGUAGE
/// sql: a pure function of its arguments (for spock_gen_slot_name(name, name,
/// name)), the conflict counters (for get_subscription_stats, as PostgreSQL's
/// pg_stat_subscription_stats is public) and the provider slots' state (for
/// sub_show_status, as pg_replication_slots is public).
const PURE_HELPERS: &[&str] = &["_gen_slot_name", "_conflict_counts", "_slot_status"];

/// Helpers that connect from the server, stop or wake workers, or touch caches
/// (pausing apply workers obeys grants: a provider's replication role may need it):
/// they must refuse non-superusers even when EXECUTE has been granted.
const GUARDED: &[(&str, &str)] = &[
    ("_provider_info", "SELECT * FROM spock._provider_info($DSN)"),
    ("_provider_tables", "SELECT * FROM spock._provider_tables($DSN, ARRAY['default'])"),
    ("_drop_provider_slot", "SELECT spock._drop_provider_slot($DSN, $SLOT)"),
    ("_table_diff", "SELECT * FROM spock._table_diff('t'::regclass, $DSN, 0)"),
    ("_remote_query", "SELECT * FROM spock._remote_query($DSN, 'SELECT 1')"),
    ("_hold_subscription", "SELECT spock._hold_subscription(1::oid)"),
    ("_wake_workers", "SELECT spock._wake_workers()"),
    ("_invalidate_all", "SELECT spock._invalidate_all()"),
    ("_invalidate_relcache", "SELECT spock._invalidate_relcache('t'::regclass)"),
];

fn create_roles(n: &TestNode) {
    n.execute(
        "CREATE ROLE plain LOGIN;
         CREATE ROLE table_owner LOGIN;
         CREATE ROLE replicator LOGIN REPLICATION;
         GRANT CREATE ON SCHEMA public TO plain;
         CREATE TABLE owned(id int PRIMARY KEY, v text);
         ALTER TABLE owned OWNER TO table_owner",
    )
    .unwrap();
}

/// "ok", or the SQLSTATE `sql` fails with.
fn outcome(c: &mut Client, sql: &str) -> String {
    match c.batch_execute(sql) {
        Ok(()) => "ok".into(),
        Err(e) => e.code().map(|c| c.code().to_string()).unwrap_or_else(|| format!("no SQLSTATE: {e}")),
    }
}

/// The error message `sql` fails with ("" when it succeeds).
fn message(c: &mut Client, sql: &str) -> String {
    match c.batch_execute(sql) {
        Ok(()) => String::new(),
        Err(e) => e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string()),
    }
}

fn slots(n: &TestNode) -> i64 {
    count(n, "SELECT count(*) FROM pg_replication_slots")
}

#[test]
fn management_and_internal_functions_are_refused_to_every_role_but_superusers() {
    let cluster = replicating_pair();
    let (a, b) = (cluster.node(0), cluster.node(1));
    create_roles(b);

    // Every function of schema spock that a non-superuser must not run, called with
    // NULL arguments of its types (the privilege check comes before anything else).
    let mut su = b.connect().unwrap();
    let functions: Vec<(String, String, bool, String)> = su
        .query(
            "SELECT p.oid::regprocedure::text, p.proname::text, p.prokind = 'p',
                    coalesce((SELECT string_agg(CASE WHEN p.prokind = 'p' THEN 'NULL::' || pg_catalog.format_type(t, NULL)
                                                     -- a subquery: the planner would fold a strict
                                                     -- function of a NULL constant before the check
                                                     ELSE '(SELECT NULL::' || pg_catalog.format_type(t, NULL) || ')' END,
                                                ', ' ORDER BY o)
                                FROM unnest(p.proargtypes) WITH ORDINALITY AS a(t, o)), '')
               FROM pg_proc p
              WHERE p.pronamespace = 'spock'::regnamespace
                AND p.prorettype NOT IN ('trigger'::regtype, 'event_trigger'::regtype)
              ORDER BY 1",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .filter(|(_, name, _, _): &(String, String, bool, String)| {
            (name.starts_with('_') && !PURE_HELPERS.contains(&name.as_str())) || MANAGEMENT.contains(&name.as_str())
        })
        .collect();
    for must in [
        "_provider_info",
        "_drop_provider_slot",
        "_provider_tables",
        "_hold_subscription",
        "_wake_workers",
        "sub_create",
    ] {
        assert!(functions.iter().any(|f| f.1 == must), "{must} is not among the functions checked");
    }
    for name in MANAGEMENT {
        assert!(functions.iter().any(|f| f.1 == *name), "management function {name} does not exist");
    }

    let slots_before = (slots(a), slots(b));
    for role in ROLES {
        let mut c = b.connect_as("postgres", role).unwrap();
        let mut refused = Vec::new();
        for (signature, name, procedure, args) in &functions {
            let granted: bool = su
                .query_one("SELECT has_function_privilege($1, $2::text::regprocedure, 'EXECUTE')", &[&role, signature])
                .unwrap()
                .get(0);
            let call =
                if *procedure { format!("CALL spock.{name}({args})") } else { format!("SELECT spock.{name}({args})") };
            let got = outcome(&mut c, &call);
            if granted || got != "42501" {
                refused.push(format!("{signature}: EXECUTE granted {granted}, call gave {got}"));
            }
        }
        assert!(refused.is_empty(), "role {role} is not refused:\n{}", refused.join("\n"));
    }
    assert_eq!((slots(a), slots(b)), slots_before);
    // The subscription is still replicating: none of the calls reached it.
    a.execute("INSERT INTO t VALUES (1, 'after the attempts')").unwrap();
    wait_for("the row", Duration::from_secs(60), || count(b, "SELECT count(*) FROM t"), 1);
}

#[test]
fn granted_execute_does_not_let_a_role_connect_from_the_server_or_touch_workers() {
    let cluster = replicating_pair();
    let (a, b) = (cluster.node(0), cluster.node(1));
    create_roles(b);
    // A physical slot on the subscriber itself, reachable over its own unix socket
    // where the server's OS user is trusted.
    b.execute("SELECT pg_create_physical_replication_slot('precious')").unwrap();
    let provider_slot: String = a.query_one("SELECT slot_name::text FROM pg_replication_slots").unwrap();
    let slots_before = (slots(a), slots(b));

    let mut su = b.connect().unwrap();
    for (name, _) in GUARDED {
        let signature: String = su
            .query_one("SELECT string_agg(oid::regprocedure::text, ',') FROM pg_proc WHERE proname = $1 AND pronamespace = 'spock'::regnamespace", &[name])
            .unwrap()
            .get(0);
        su.batch_execute(&format!("GRANT EXECUTE ON FUNCTION {signature} TO plain, replicator")).unwrap();
    }
    for role in ["plain", "replicator"] {
        let mut c = b.connect_as("postgres", role).unwrap();
        for (target, dsn, slot) in [(a, a.dsn("postgres"), provider_slot.as_str()), (b, b.dsn("postgres"), "precious")]
        {
            for (name, template) in GUARDED {
                let sql = template.replace("$DSN", &format!("'{dsn}'")).replace("$SLOT", &format!("'{slot}'"));
                assert_eq!(outcome(&mut c, &sql), "42501", "{role}: {name} against {}", target.name);
            }
        }
        let msg =
            message(&mut c, &format!("SELECT spock._drop_provider_slot('{}', '{provider_slot}')", a.dsn("postgres")));
        assert!(msg.starts_with("permission denied to drop a provider's replication slot"), "{msg}");
    }
    assert_eq!((slots(a), slots(b)), slots_before, "a slot was dropped");
    // A superuser still can: the check is about who asks.
    assert_eq!(outcome(&mut su, "SELECT spock._invalidate_all()"), "ok");
    // Pausing apply workers obeys grants: a provider's replication role serves
    // initial copies with it (docs/security.md); without a grant, nobody but a
    // superuser.
    let mut plain = b.connect_as("postgres", "plain").unwrap();
    assert_eq!(outcome(&mut plain, "SELECT spock.pause_apply_workers()"), "42501");
    su.batch_execute(
        "GRANT EXECUTE ON FUNCTION spock.pause_apply_workers(), spock.resume_apply_workers() TO replicator",
    )
    .unwrap();
    let mut replicator = b.connect_as("postgres", "replicator").unwrap();
    assert_eq!(
        outcome(&mut replicator, "SELECT spock.pause_apply_workers(); SELECT spock.resume_apply_workers()"),
        "ok"
    );
}

#[test]
fn autoddl_settings_are_superuser_only() {
    let cluster = Cluster::start_n(1).unwrap();
    let a = cluster.node(0);
    a.execute("CREATE EXTENSION spock").unwrap();
    create_roles(a);
    let mut c = a.connect_as("postgres", "plain").unwrap();
    for setting in ["spock.enable_ddl_replication", "spock.include_ddl_repset", "spock.allow_ddl_from_functions"] {
        assert_eq!(outcome(&mut c, &format!("SET {setting} = on")), "42501", "SET {setting}");
        assert_eq!(
            outcome(&mut c, &format!("ALTER ROLE plain SET {setting} = on")),
            "42501",
            "ALTER ROLE SET {setting}"
        );
        assert_eq!(
            outcome(&mut c, &format!("SELECT set_config('{setting}', 'on', false)")),
            "42501",
            "set_config {setting}"
        );
        a.execute(&format!("SET {setting} = on")).unwrap();
    }
}

#[test]
fn catalogs_with_dsns_are_private_and_no_catalog_is_writable() {
    let cluster = replicating_pair();
    let b = cluster.node(1);
    create_roles(b);
    for role in ROLES {
        let mut c = b.connect_as("postgres", role).unwrap();
        for table in ["spock.node_interface", "spock.subscription"] {
            assert_eq!(outcome(&mut c, &format!("SELECT * FROM {table}")), "42501", "{role} reads {table}");
        }
        let writable: Vec<String> = b
            .connect()
            .unwrap()
            .query(
                "SELECT c.oid::regclass::text FROM pg_class c
                  WHERE c.relnamespace = 'spock'::regnamespace AND c.relkind IN ('r', 'p', 'v')
                    AND has_table_privilege($1, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')",
                &[&role],
            )
            .unwrap()
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        assert!(writable.is_empty(), "{role} may write {writable:?}");
    }
}

#[test]
fn one_transaction_holds_more_subscriptions_than_there_are_slots() {
    let cluster = Cluster::start_n(1).unwrap();
    let a = cluster.node(0);
    a.execute("CREATE EXTENSION spock").unwrap();
    let mut bulk = a.connect().unwrap();
    let mut other = a.connect().unwrap();
    bulk.batch_execute("BEGIN; SELECT spock._hold_subscription(g::oid) FROM generate_series(1, 200) g").unwrap();
    // Other transactions still find slots while the bulk one is open.
    other.batch_execute("BEGIN; SELECT spock._hold_subscription(g::oid) FROM generate_series(1000, 1003) g").unwrap();
    other.batch_execute("COMMIT").unwrap();
    bulk.batch_execute("COMMIT").unwrap();
}
