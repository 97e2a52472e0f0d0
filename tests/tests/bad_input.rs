//! Bad input to the SQL API gets a clean error with a proper SQLSTATE and changes
//! nothing: slots, catalog rows and queued messages stay as they were.

use std::time::Duration;

use spock_tests::fixtures::{count, replicating_pair, setup_node};
use spock_tests::{wait_for, Cluster, TestNode};

const WAIT: Duration = Duration::from_secs(60);

/// Every row of a spock catalog table, as text, in a stable order.
fn rows(n: &TestNode, table: &str) -> String {
    n.query_one(&format!("SELECT coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), '') FROM {table} x")).unwrap()
}

/// The catalogs a failed call must leave alone.
fn catalogs(n: &TestNode) -> String {
    [
        "spock.node",
        "spock.node_interface",
        "spock.replication_set",
        "spock.replication_set_table",
        "spock.replication_set_seq",
        "spock.sequence_state",
        "spock.subscription",
        "spock.local_sync_status",
        "spock.queue",
    ]
    .iter()
    .map(|t| format!("{t}:\n{}", rows(n, t)))
    .collect::<Vec<_>>()
    .join("\n")
}

#[test]
fn node_drop_checks_every_slot_before_dropping_any() {
    let cluster = Cluster::start_n(2).unwrap();
    let (a, b) = (cluster.node(0), cluster.node(1));
    setup_node(a);
    // An inactive spock slot made before the active one (the subscription's).
    a.execute("SELECT pg_create_logical_replication_slot('spk_0_inactive', 'spock_output')").unwrap();
    setup_node(b);
    b.execute(&format!("SELECT spock.sub_create('sub1', '{}')", a.dsn("postgres"))).unwrap();
    wait_for(
        "the subscription's slot active",
        WAIT,
        || {
            count(a, "SELECT count(*) FROM pg_replication_slots WHERE slot_name ~ '^spk_' AND slot_name <> 'spk_0_inactive' AND active")
        },
        1,
    );
    let slots = "SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots";
    let before: String = a.query_one(slots).unwrap();
    let catalog_before = catalogs(a);
    let (code, message, _) = a.error_of("SELECT spock.node_drop('n1')");
    assert_eq!(code, "55000");
    assert!(message.contains("replication slots for the node are still active"), "{message}");
    assert_eq!(a.query_one::<String>(slots).unwrap(), before, "no slot was dropped");
    assert_eq!(catalogs(a), catalog_before);
}

#[test]
fn missing_relations_give_42p01_and_change_nothing() {
    let cluster = replicating_pair();
    let (a, b) = (cluster.node(0), cluster.node(1));
    for n in [a, b] {
        n.execute("CREATE TABLE gone (id int PRIMARY KEY); CREATE SEQUENCE gone_seq").unwrap();
    }
    let dropped: i64 = b.query_one("SELECT 'gone'::regclass::oid::int8").unwrap();
    let dropped_seq: i64 = a.query_one("SELECT 'gone_seq'::regclass::oid::int8").unwrap();
    b.execute("DROP TABLE gone").unwrap();
    a.execute("DROP SEQUENCE gone_seq").unwrap();
    let sub = "sub_n2_n1";

    // sub_resync_table with a missing table: no second subscription-level row.
    let before = catalogs(b);
    for oid in [999_999, dropped] {
        assert_eq!(b.sqlstate(&format!("SELECT spock.sub_resync_table('{sub}', {oid})")), "42P01");
        assert_eq!(b.sqlstate(&format!("SELECT * FROM spock.sub_show_table('{sub}', {oid})")), "42P01");
        assert_eq!(b.sqlstate(&format!("SELECT spock.table_wait_for_sync('{sub}', {oid})")), "42P01");
    }
    assert_eq!(catalogs(b), before);
    assert_eq!(count(b, "SELECT count(*) FROM spock.local_sync_status WHERE sync_nspname IS NULL"), 1);

    let before = catalogs(a);
    for oid in [999_999, dropped_seq] {
        assert_eq!(a.sqlstate(&format!("SELECT spock.repset_add_table('default', {oid})")), "42P01");
        assert_eq!(a.sqlstate(&format!("SELECT * FROM spock.repset_show_table({oid}, '{{default}}')")), "42P01");
        assert_eq!(a.sqlstate(&format!("SELECT spock.repset_add_seq('default', {oid})")), "42P01");
        assert_eq!(a.sqlstate(&format!("SELECT spock.sync_seq({oid})")), "42P01");
        assert_eq!(a.sqlstate(&format!("SELECT spock.repset_remove_table('default', {oid})")), "42704");
        assert_eq!(a.sqlstate(&format!("SELECT spock.repset_remove_seq('default', {oid})")), "42704");
    }
    assert_eq!(catalogs(a), before);

    // Every function taking a relation or oid: never XX000 ("cache lookup failed",
    // "could not open relation"), whatever the other arguments.
    for n in [a, b] {
        let calls: Vec<String> = n
            .query_one(&format!(
                "SELECT array_agg(format('%s spock.%I(%s)', CASE p.prokind WHEN 'p' THEN 'CALL' ELSE 'SELECT' END, p.proname,
                     (SELECT string_agg(CASE
                                WHEN m = 'o' THEN 'NULL'
                                WHEN t IN ('regclass'::regtype, 'oid'::regtype) THEN '999999'
                                WHEN nm = 'subscription_name' THEN '''{sub}'''
                                WHEN t IN ('name'::regtype, 'text'::regtype) THEN '''default'''
                                WHEN t = 'text[]'::regtype THEN '''{{default}}'''
                                WHEN t = 'boolean'::regtype THEN 'false'
                                WHEN t = 'integer'::regtype THEN '1'
                                WHEN t = 'pg_lsn'::regtype THEN '''0/0'''
                                WHEN t = 'interval'::regtype THEN '''0'''
                                WHEN t = 'jsonb'::regtype THEN '''{{}}'''
                                WHEN t = '\"char\"'::regtype THEN '''i'''
                                ELSE 'NULL' END || '::' || format_type(t, NULL), ', ' ORDER BY i)
                        FROM unnest(coalesce(p.proallargtypes, p.proargtypes::oid[]),
                                    coalesce(p.proargmodes, array_fill('i'::\"char\", ARRAY[p.pronargs])),
                                    coalesce(p.proargnames, array_fill(''::text, ARRAY[p.pronargs])))
                             WITH ORDINALITY AS x(t, m, nm, i)
                       WHERE m <> 't' AND (m <> 'o' OR p.prokind = 'p'))) ORDER BY p.proname)
                   FROM pg_proc p
                  WHERE p.pronamespace = 'spock'::regnamespace
                    AND p.proargtypes::oid[] && ARRAY['regclass'::regtype, 'oid'::regtype]::oid[]"
            ))
            .unwrap();
        assert!(calls.len() > 20, "{calls:?}");
        let before = catalogs(n);
        for call in &calls {
            let code = n.sqlstate(call);
            assert!(["42P01", "42704", "ok"].contains(&code.as_str()), "{call}: {code}");
        }
        assert_eq!(catalogs(n), before, "no call changed the catalogs");
    }
}

#[test]
fn system_tables_cannot_join_a_set() {
    let node = spock_tests::TestNode::start(spock_tests::NodeOptions::new("sys1")).unwrap();
    setup_node(&node);
    node.execute("CREATE VIEW v AS SELECT 1 AS id").unwrap();
    let before = catalogs(&node);
    // As CREATE PUBLICATION: 22023 for catalogs (information_schema too, which every
    // node has anyway) and system schemas, 42809 for what is not a table.
    for rel in ["pg_catalog.pg_authid", "pg_catalog.pg_class", "information_schema.sql_features"] {
        let (code, message, _) = node.error_of(&format!("SELECT spock.repset_add_table('default', '{rel}')"));
        assert_eq!(code, "22023", "{rel}: {message}");
        assert!(message.starts_with("cannot add relation"), "{message}");
    }
    assert_eq!(node.sqlstate("SELECT spock.repset_add_table('default', 'v')"), "42809");
    for schema in ["pg_catalog", "information_schema", "pg_toast"] {
        for f in ["repset_add_all_tables", "repset_add_all_seqs"] {
            assert_eq!(node.sqlstate(&format!("SELECT spock.{f}('default', '{{{schema}}}')")), "22023", "{f} {schema}");
        }
    }
    // spock's own schema is reserved (spock.reserved_object): passed over with a
    // WARNING, as in Spock, adding nothing.
    for f in ["repset_add_all_tables", "repset_add_all_seqs"] {
        assert_eq!(node.sqlstate(&format!("SELECT spock.{f}('default', '{{spock}}')")), "ok", "{f}");
    }
    assert_eq!(node.sqlstate("SELECT spock.repset_add_all_tables('default', '{public,NULL}')"), "22004");
    assert_eq!(catalogs(&node), before);
    // The public schema still works, and leaves the view alone.
    node.execute("CREATE TABLE t2 (id int PRIMARY KEY)").unwrap();
    node.execute("SELECT spock.repset_add_all_tables('default', '{public}')").unwrap();
    let tables: String = node
        .query_one(
            "SELECT string_agg(set_reloid::text, ',' ORDER BY set_reloid::text) FROM spock.replication_set_table",
        )
        .unwrap();
    assert_eq!(tables, "t,t2");
}

#[test]
fn subscription_arguments_are_checked_before_anything_changes() {
    let cluster = replicating_pair();
    let (a, b) = (cluster.node(0), cluster.node(1));
    let dsn = a.dsn("postgres");
    let before = catalogs(b);
    let origins = "SELECT count(*) FROM pg_replication_origin";
    let origins_before = count(b, origins);
    for (sets, code) in [("'{default,NULL}'", "22004"), ("'{}'", "22023"), ("'{default,nosuch}'", "42704")] {
        let (got, message, hint) =
            b.error_of(&format!("SELECT spock.sub_create('s2', '{dsn}', replication_sets := {sets})"));
        assert_eq!(got, code, "{sets}: {message}");
        if code == "42704" {
            assert!(message.contains("nosuch"), "{message}");
            assert_eq!(hint, "The provider has: ddl_sql, default, default_insert_only.");
        }
    }
    assert_eq!(b.sqlstate(&format!("SELECT spock.sub_create('s2', '{dsn}', forward_origins := '{{NULL}}')")), "22004");
    assert_eq!(b.sqlstate(&format!("SELECT spock.sub_create('', '{dsn}')")), "22023");
    for delay in ["infinity", "-infinity", "-1 second"] {
        assert_eq!(
            b.sqlstate(&format!("SELECT spock.sub_create('s2', '{dsn}', apply_delay := '{delay}')")),
            "22023",
            "{delay}"
        );
        assert_eq!(
            b.sqlstate(&format!("SELECT spock.sub_alter_options('sub_n2_n1', '{{\"apply_delay\": \"{delay}\"}}')")),
            "22023",
            "{delay}"
        );
    }
    let (code, message, hint) = b.error_of("SELECT spock.sub_add_repset('sub_n2_n1', 'nosuch')");
    assert_eq!(code, "42704", "{message}");
    assert_eq!(hint, "The provider has: ddl_sql, default, default_insert_only.");
    assert_eq!(catalogs(b), before);
    assert_eq!(count(b, origins), origins_before);
    // A set the provider has is accepted.
    a.execute("SELECT spock.repset_create('extra')").unwrap();
    b.execute("SELECT spock.sub_add_repset('sub_n2_n1', 'extra')").unwrap();
    assert!(b.query_one::<bool>("SELECT 'extra' = ANY (sub_replication_sets) FROM spock.subscription").unwrap());
}

#[test]
fn sync_seq_handles_descending_sequences_and_negative_values() {
    let cluster = replicating_pair();
    let (a, b) = (cluster.node(0), cluster.node(1));
    let sequences = "CREATE SEQUENCE down INCREMENT -1;
                     CREATE SEQUENCE neg MINVALUE -100 START -50;
                     CREATE SEQUENCE high START 9223372036854775000;
                     CREATE SEQUENCE low INCREMENT -1 MINVALUE -9223372036854775808 START -9223372036854775000";
    a.execute(sequences).unwrap();
    b.execute(sequences).unwrap();
    a.execute("SELECT nextval('down'), nextval('neg'), nextval('high'), nextval('low')").unwrap();
    for s in ["down", "neg", "high", "low"] {
        a.execute(&format!("SELECT spock.repset_add_seq('default', '{s}')")).unwrap();
        a.execute(&format!("SELECT spock.sync_seq('{s}')")).unwrap();
    }
    // cache_size (1000) further in each sequence's direction, within its bounds.
    for (s, v) in [("down", -1001_i64), ("neg", 950), ("high", i64::MAX), ("low", i64::MIN)] {
        assert_eq!(
            count(a, &format!("SELECT last_value FROM spock.sequence_state WHERE seqoid = '{s}'::regclass")),
            v,
            "{s}"
        );
        wait_for(
            &format!("sequence {s} on the subscriber"),
            WAIT,
            || count(b, &format!("SELECT last_value FROM {s}")),
            v,
        );
    }
}
