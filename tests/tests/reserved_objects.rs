//! `spock.reserved_object` (Spock's reserved schemas and extensions) on real nodes:
//! built-in rows cannot be changed; a schema whose DDL stays local is not
//! replicated by AutoDDL (nor are its tables placed in sets); a schema kept out of
//! replication sets refuses its tables (and is skipped by repset_add_all_tables);
//! a schema kept out of the dump is not restored by a structure sync.

use std::time::Duration;

use spock_tests::fixtures::{count, setup_node, subscribed_pair, sync_through};
use spock_tests::{Cluster, TestNode};

fn sqlstate_and_detail(n: &TestNode, sql: &str) -> (String, String) {
    let e = n.connect().unwrap().batch_execute(sql).expect_err(sql);
    let db = e.as_db_error().expect("a server error");
    (db.code().code().to_string(), db.detail().unwrap_or_default().to_string())
}

fn schema_exists(n: &TestNode, name: &str) -> bool {
    n.query_one::<bool>(&format!("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = '{name}')")).unwrap()
}

#[test]
fn built_in_rows_are_protected_and_added_rows_are_dumped() {
    let c = Cluster::start_n(1).unwrap();
    let n = c.node(0);
    setup_node(n);
    assert_eq!(count(n, "SELECT count(*) FROM spock.reserved_object WHERE builtin"), 7);
    let (code, _) = sqlstate_and_detail(n, "DELETE FROM spock.reserved_object WHERE name = 'spock'");
    assert_eq!(code, "42501");
    let (code, _) =
        sqlstate_and_detail(n, "UPDATE spock.reserved_object SET block_in_repset = false WHERE name = 'lolor'");
    assert_eq!(code, "42501");
    // replicate_ddl is for schemas only: NULL for an extension whatever is given.
    n.execute("SELECT spock.reserved_object_add('mine', 'extension', true, true, false)").unwrap();
    n.execute("SELECT spock.reserved_object_add('mine', 'schema', false, true)").unwrap();
    n.execute("SELECT spock.reserved_object_add('mine', 'schema', true, false, false)").unwrap();
    assert_eq!(
        n.query_one::<String>(
            "SELECT string_agg(kind || ':' || exclude_from_dump || ':' || block_in_repset || ':' || coalesce(replicate_ddl::text, '-'), ','
                    ORDER BY kind) FROM spock.reserved_object WHERE name = 'mine'"
        )
        .unwrap(),
        "extension:true:true:-,schema:true:false:false"
    );
    // Only the added rows are the database's own data (pg_dump keeps them).
    assert_eq!(
        n.query_one::<String>(
            "SELECT array_to_string(extcondition, ',') FROM pg_extension WHERE extname = 'spock'
               AND extconfig @> ARRAY['spock.reserved_object'::regclass::oid]"
        )
        .unwrap(),
        "WHERE NOT builtin"
    );
    n.execute("SELECT spock.reserved_object_remove('mine', 'extension')").unwrap();
    assert_eq!(count(n, "SELECT count(*) FROM spock.reserved_object WHERE name = 'mine'"), 1);
    // Management, not for every role.
    n.execute("CREATE ROLE plain LOGIN").unwrap();
    let mut plain = n.connect_as("postgres", "plain").unwrap();
    let e = plain.batch_execute("SELECT spock.reserved_object_add('x', 'schema')").unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "42501");
}

#[test]
fn local_ddl_schemas_and_schemas_kept_out_of_sets() {
    let c = Cluster::start_n(2).unwrap();
    let (a, b) = (c.node(0), c.node(1));
    subscribed_pair(a, b);
    a.execute("SELECT spock.reserved_object_add('ace_local', 'schema', p_replicate_ddl := false)").unwrap();
    let autoddl = |sql: &str| {
        a.execute(&format!(
            "SET spock.enable_ddl_replication = on; SET spock.include_ddl_repset = on; SET search_path = ace_local, public; {sql}"
        ))
        .unwrap()
    };
    autoddl("CREATE SCHEMA ace_local");
    autoddl("CREATE TABLE ace_local.t (id int PRIMARY KEY)");
    autoddl("CREATE INDEX ON t (id)");
    autoddl("CREATE TABLE public.shared (id int PRIMARY KEY)");
    autoddl("DROP TABLE t"); // unqualified: resolved before the drop
    autoddl("CREATE TABLE ace_local.t2 (id int PRIMARY KEY)");
    sync_through(a, b);
    assert!(!schema_exists(b, "ace_local"), "the local schema's DDL stayed on a");
    assert_eq!(count(b, "SELECT count(*) FROM pg_tables WHERE tablename = 'shared'"), 1, "other DDL replicates");
    assert_eq!(count(a, "SELECT count(*) FROM spock.queue WHERE message::text ~ '(CREATE SCHEMA|CREATE INDEX|DROP TABLE|ace_local\\.t)'"), 0);
    // AutoDDL did not place the local schema's table in a set; it did place public's.
    assert_eq!(
        a.query_one::<String>(
            "SELECT string_agg(relname::text, ',' ORDER BY relname) FROM spock.tables WHERE set_name IS NOT NULL"
        )
        .unwrap(),
        "shared,t"
    );

    // A schema kept out of replication sets (block_in_repset, the default).
    a.execute("CREATE SCHEMA kept_out; CREATE TABLE kept_out.k (id int PRIMARY KEY)").unwrap();
    a.execute("SELECT spock.reserved_object_add('kept_out', 'schema')").unwrap();
    let (code, detail) = sqlstate_and_detail(a, "SELECT spock.repset_add_table('default', 'kept_out.k')");
    assert_eq!((code.as_str(), detail.as_str()), ("22023", "table is in the ignored schema kept_out"));
    a.execute("CREATE SEQUENCE kept_out.s").unwrap();
    let (code, _) = sqlstate_and_detail(a, "SELECT spock.repset_add_seq('default', 'kept_out.s')");
    assert_eq!(code, "22023");
    // repset_add_all_tables passes over the schema with a WARNING, adds the rest.
    a.execute("CREATE TABLE public.extra (id int PRIMARY KEY)").unwrap();
    let offset = a.log_offset();
    a.execute("SELECT spock.repset_add_all_tables('default', ARRAY['kept_out', 'public'])").unwrap();
    let log = a.log_since(offset);
    assert_eq!(log.matches("skipping schema kept_out").count(), 1, "{log}");
    assert!(!log.contains("skipping relation"), "{log}");
    assert_eq!(count(a, "SELECT count(*) FROM spock.tables WHERE nspname = 'kept_out' AND set_name IS NOT NULL"), 0);
    assert_eq!(count(a, "SELECT count(*) FROM spock.tables WHERE relname = 'extra' AND set_name = 'default'"), 1);
    // Once removed, the schema's tables may join.
    a.execute("SELECT spock.reserved_object_remove('kept_out', 'schema')").unwrap();
    a.execute("SELECT spock.repset_add_table('default', 'kept_out.k')").unwrap();
}

#[test]
fn structure_sync_leaves_out_schemas_reserved_from_the_dump() {
    let c = Cluster::start_n(2).unwrap();
    let (p, s) = (c.node(0), c.node(1));
    setup_node(p);
    p.execute("CREATE SCHEMA private_stuff; CREATE TABLE private_stuff.secret (id int PRIMARY KEY)").unwrap();
    p.execute("CREATE SCHEMA app; CREATE TABLE app.items (id int PRIMARY KEY); INSERT INTO app.items VALUES (1)")
        .unwrap();
    p.execute("SELECT spock.repset_add_table('default', 'app.items')").unwrap();
    s.execute("CREATE EXTENSION spock").unwrap();
    s.execute(&format!("SELECT spock.node_create('{}', '{}')", s.name, s.dsn("postgres"))).unwrap();
    // The subscriber's own list decides what its structure sync leaves out.
    s.execute("SELECT spock.reserved_object_add('private_stuff', 'schema')").unwrap();
    s.execute(&format!(
        "SELECT spock.sub_create('sub1', '{}', synchronize_structure := true, synchronize_data := true)",
        p.dsn("postgres")
    ))
    .unwrap();
    s.execute("SELECT spock.sub_wait_for_sync('sub1')").unwrap();
    spock_tests::wait_for("rows copied", Duration::from_secs(60), || count(s, "SELECT count(*) FROM app.items"), 1);
    assert!(schema_exists(s, "app"));
    assert!(!schema_exists(s, "private_stuff"), "the reserved schema was left out of the dump");
}
