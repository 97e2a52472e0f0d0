//! The node and replication-set SQL API: Spock's names, defaults and results, and
//! clear errors (with SQLSTATEs) for wrong input.

use spock_tests::{NodeOptions, TestNode};

fn node_with_extension(name: &str) -> TestNode {
    let node = TestNode::start(NodeOptions::new(name)).unwrap();
    node.execute("CREATE EXTENSION spock").unwrap();
    node
}

/// "SQLSTATE: message" of a failing statement.
fn error_of(node: &TestNode, sql: &str) -> String {
    match node.connect().unwrap().batch_execute(sql) {
        Ok(()) => panic!("expected an error from: {sql}"),
        Err(e) => spock_tests::describe_pg_error(&e),
    }
}

#[test]
fn node_create_makes_the_node_its_interface_and_default_sets() {
    let node = node_with_extension("api1");
    let dsn = node.dsn("postgres");
    let id: i64 = node.query_one(&format!("SELECT spock.node_create(node_name := 'n1', dsn := '{dsn}', location := 'Paris', country := 'FR', info := '{{\"tiebreaker\": 7}}')::int8")).unwrap();
    assert_eq!(id, i64::from(spock_core::names::node_id_for_name("n1")));
    let info: String = node
        .query_one("SELECT row(node_id, node_name, dbname, replication_sets, location, country, info->>'tiebreaker')::text FROM spock.node_info()")
        .unwrap();
    // set names are quoted identifiers, as in Spock ("default" is a keyword)
    assert_eq!(info, format!("({id},n1,postgres,\"ddl_sql,\"\"default\"\",default_insert_only\",Paris,FR,7)"));
    let sysid: String = node.query_one("SELECT sysid FROM spock.node_info()").unwrap();
    let real: String = node.query_one("SELECT system_identifier::text FROM pg_control_system()").unwrap();
    assert_eq!(sysid, real);
    let sets: String = node
        .query_one(
            "SELECT string_agg(format('%s:%s%s%s%s', set_name, replicate_insert::int, replicate_update::int, replicate_delete::int, replicate_truncate::int), ' ' ORDER BY set_name) FROM spock.replication_set",
        )
        .unwrap();
    assert_eq!(sets, "ddl_sql:1000 default:1111 default_insert_only:1001");
    // ids of sets and interfaces are Spock's hashes of (node id, name)
    let set_id: i64 =
        node.query_one("SELECT set_id::int8 FROM spock.replication_set WHERE set_name = 'default'").unwrap();
    assert_eq!(set_id, i64::from(spock_core::names::node_scoped_id(id as u32, "default")));
    let if_row: String = node.query_one("SELECT row(if_id, if_name, if_dsn)::text FROM spock.node_interface").unwrap();
    assert_eq!(if_row, format!("({},n1,\"{dsn}\")", spock_core::names::node_scoped_id(id as u32, "n1")));
    // NULL name or dsn: NULL, like Spock
    let null: Option<i64> = node.query_one("SELECT spock.node_create(NULL, 'x')::int8").unwrap();
    assert_eq!(null, None);
}

#[test]
fn node_errors() {
    let node = node_with_extension("api2");
    let err = error_of(&node, "SELECT spock.repset_create('s1')");
    assert!(err.starts_with("55000") && err.contains("not configured as spock node"), "{err}");
    let err = error_of(&node, "SELECT * FROM spock.node_info()");
    assert!(err.starts_with("55000"), "{err}");
    node.execute("SELECT spock.node_create('n1', 'dbname=postgres')").unwrap();
    let err = error_of(&node, "SELECT spock.node_create('n2', 'dbname=postgres')");
    assert!(err.starts_with("55000") && err.contains("already configured"), "{err}");
    let err = error_of(&node, "SELECT spock.node_drop('nope')");
    assert!(err.starts_with("42704") && err.contains("nope"), "{err}");
    assert!(!node.query_one::<bool>("SELECT spock.node_drop('nope', ifexists := true)").unwrap());
    let err = error_of(&node, "SELECT spock.node_add_interface('nope', 'if2', 'dbname=x')");
    assert!(err.starts_with("42704"), "{err}");
    node.execute("SELECT spock.node_add_interface('n1', 'if2', 'host=elsewhere dbname=postgres')").unwrap();
    let err = error_of(&node, "SELECT spock.node_add_interface('n1', 'if2', 'dbname=x')");
    assert!(err.starts_with("42710"), "{err}");
    assert!(node.query_one::<bool>("SELECT spock.node_drop_interface('n1', 'if2')").unwrap());
    let err = error_of(&node, "SELECT spock.node_drop_interface('n1', 'if2')");
    assert!(err.starts_with("42704"), "{err}");
    let err = error_of(&node, "SELECT spock.node_drop_interface('n1', 'n1')");
    assert!(err.starts_with("55000"), "the local interface stays: {err}");
}

#[test]
fn node_id_collisions_are_refused() {
    let node = node_with_extension("api3");
    // find two names whose 16-bit ids collide
    let mut seen = std::collections::HashMap::new();
    let (a, b) = (0..)
        .map(|i| format!("node{i}"))
        .find_map(|n| {
            let id = spock_core::names::node_id_for_name(&n);
            seen.insert(id, n.clone()).map(|prev| (prev, n))
        })
        .unwrap();
    node.execute(&format!("SELECT spock.node_create('{a}', 'dbname=postgres')")).unwrap();
    // a remote node with a colliding name (as a subscription would add it)
    let err = error_of(&node, &format!("SELECT spock.node_drop('{a}'); SELECT spock.node_create('{a}', 'dbname=postgres'); SELECT spock.node_create('{b}', 'dbname=postgres')"));
    assert!(err.contains("already configured") || err.contains("collides"), "{err}");
    // the collision check itself: a node row with b's id already present
    node.execute(&format!("SELECT spock.node_drop('{a}')")).unwrap();
    node.execute(&format!(
        "INSERT INTO spock.node(node_id, node_name) VALUES ({}, '{a}')",
        spock_core::names::node_id_for_name(&a)
    ))
    .unwrap();
    let err = error_of(&node, &format!("SELECT spock.node_create('{b}', 'dbname=postgres')"));
    assert!(err.starts_with("42710") && err.contains("collides") && err.contains(&a), "{err}");
}

#[test]
fn repset_functions() {
    let node = node_with_extension("api4");
    node.execute("SELECT spock.node_create('n1', 'dbname=postgres')").unwrap();
    node.execute(
        "CREATE SCHEMA app;
         CREATE TABLE app.with_pk(id int PRIMARY KEY, v text);
         CREATE TABLE app.no_pk(v text);
         CREATE TABLE app.full_ident(v text); ALTER TABLE app.full_ident REPLICA IDENTITY FULL;
         CREATE UNLOGGED TABLE app.unlogged(id int PRIMARY KEY);
         CREATE TABLE app.parted(id int PRIMARY KEY) PARTITION BY RANGE (id);
         CREATE TABLE app.parted_1 PARTITION OF app.parted FOR VALUES FROM (0) TO (100);",
    )
    .unwrap();
    let id: i64 = node.query_one("SELECT spock.repset_create('custom', replicate_delete := false)::int8").unwrap();
    assert!(id > 0);
    let err = error_of(&node, "SELECT spock.repset_create('custom')");
    assert!(err.starts_with("42710"), "{err}");
    // tables without replica identity only in sets that do not replicate UPDATE/DELETE
    let err = error_of(&node, "SELECT spock.repset_add_table('default', 'app.no_pk')");
    // (Spock's wording: the table's own name)
    assert!(
        err.starts_with("42P17") && err.contains("table no_pk cannot be added to replication set default"),
        "{err}"
    );
    node.execute("SELECT spock.repset_add_table('default_insert_only', 'app.no_pk')").unwrap();
    // A DEFERRABLE primary key is no replica identity: PostgreSQL logs no old key.
    node.execute("CREATE TABLE app.deferred(id int PRIMARY KEY DEFERRABLE, v text)").unwrap();
    let err = error_of(&node, "SELECT spock.repset_add_table('default', 'app.deferred')");
    assert!(err.starts_with("42P17") && err.contains("DEFERRABLE"), "{err}");
    node.execute(
        "ALTER TABLE app.deferred REPLICA IDENTITY FULL; SELECT spock.repset_add_table('default', 'app.deferred')",
    )
    .unwrap();
    node.execute("SELECT spock.repset_add_table('default', 'app.full_ident')").unwrap();
    let err = error_of(&node, "SELECT spock.repset_add_table('default', 'app.unlogged')");
    assert!(err.starts_with("22023") && err.contains("UNLOGGED"), "{err}");
    let err = error_of(&node, "SELECT spock.repset_add_table('nosuch', 'app.with_pk')");
    assert!(err.starts_with("42704") && err.contains("nosuch"), "{err}");
    let err = error_of(&node, "SELECT spock.repset_add_table('default', 'app.missing')");
    assert!(err.starts_with("42P01"), "{err}");
    let err = error_of(&node, "SELECT spock.repset_add_table('default', 'app.with_pk', columns := '{v}')");
    assert!(err.contains("REPLICA IDENTITY columns must be replicated"), "{err}");
    let err = error_of(&node, "SELECT spock.repset_add_table('default', 'app.with_pk', columns := '{id,nope}')");
    assert!(err.starts_with("42703"), "{err}");
    for bad in
        ["id +", "id = 1; DROP TABLE app.with_pk", "true FROM app.with_pk WHERE true", "nosuchcol = 1", "(SELECT true)"]
    {
        let err = error_of(
            &node,
            &format!(
                "SELECT spock.repset_add_table('default', 'app.with_pk', row_filter := '{}')",
                bad.replace('\'', "''")
            ),
        );
        assert!(err.starts_with("42601") || err.starts_with("42703") || err.starts_with("0A000"), "{bad}: {err}");
    }
    // As a publication's WHERE clause (and Spock's row filters): columns, constants,
    // built-in operators, types and collations, immutable built-in functions; the
    // walsender must not run user code or see mutable results while decoding.
    node.execute(
        "CREATE FUNCTION app.user_fn(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT $1';
         CREATE FUNCTION app.neq(int, int) RETURNS bool IMMUTABLE LANGUAGE sql AS 'SELECT $1 <> $2';
         CREATE OPERATOR app.<~> (LEFTARG = int, RIGHTARG = int, FUNCTION = app.neq);",
    )
    .unwrap();
    for (filter, detail) in [
        ("id > app.user_fn(1)", "User-defined or built-in mutable functions are not allowed."),
        ("id > random() * 10", "User-defined or built-in mutable functions are not allowed."),
        ("v = current_user", "Only columns, constants, built-in operators, built-in data types, built-in collations, and immutable built-in functions are allowed."),
        ("id OPERATOR(app.<~>) 1", "User-defined operators are not allowed."),
    ] {
        let e = node
            .connect()
            .unwrap()
            .batch_execute(&format!(
                "SELECT spock.repset_add_table('default', 'app.with_pk', row_filter := '{}')",
                filter.replace('\'', "''")
            ))
            .unwrap_err();
        let db = e.as_db_error().unwrap();
        assert_eq!(
            (db.code().code(), db.message(), db.detail().unwrap_or("")),
            ("0A000", "invalid publication WHERE expression", detail),
            "{filter}"
        );
    }
    // (system columns are refused by the parser already, as in a CHECK constraint)
    let err = error_of(
        &node,
        r#"SELECT spock.repset_add_table('default', 'app.with_pk', row_filter := 'xmin::text <> $$0$$')"#,
    );
    assert!(err.starts_with("42P10"), "{err}");
    let err = error_of(&node, "SELECT spock.repset_add_table('default', 'app.with_pk', synchronize_data := NULL)");
    assert!(err.starts_with("22023"), "{err}");
    node.execute("SELECT spock.repset_add_table('default', 'app.with_pk', row_filter := 'id > 0')").unwrap();
    // (the catalog's unique violation, as Spock reports it)
    let err = error_of(&node, "SELECT spock.repset_add_table('default', 'app.with_pk')");
    assert!(err.starts_with("23505") && err.contains("replication_set_table_pkey"), "{err}");
    // partitions come along with their parent
    node.execute("SELECT spock.repset_add_table('custom', 'app.parted')").unwrap();
    let members: String = node
        .query_one("SELECT string_agg(set_reloid::text, ',' ORDER BY set_reloid::text) FROM spock.replication_set_table t JOIN spock.replication_set s USING (set_id) WHERE s.set_name = 'custom'")
        .unwrap();
    assert_eq!(members, "app.parted,app.parted_1");
    // altering a set with a table lacking replica identity to replicate updates fails
    let err = error_of(&node, "SELECT spock.repset_alter('default_insert_only', replicate_update := true)");
    assert!(err.starts_with("42P17"), "{err}");
    node.execute("SELECT spock.repset_alter('custom', replicate_delete := true)").unwrap();
    assert!(node
        .query_one::<bool>("SELECT replicate_delete FROM spock.replication_set WHERE set_name = 'custom'")
        .unwrap());
    // spock.tables lists every permanent user table with its sets (unlogged ones cannot replicate)
    let tables: String = node
        .query_one("SELECT string_agg(format('%s.%s:%s', nspname, relname, coalesce(set_name::text, '-')), ' ' ORDER BY nspname, relname, set_name) FROM spock.tables WHERE nspname = 'app'")
        .unwrap();
    assert_eq!(
        tables,
        "app.deferred:default app.full_ident:default app.no_pk:default_insert_only app.parted:custom app.parted_1:custom app.with_pk:default"
    );
    assert!(node.query_one::<bool>("SELECT spock.repset_remove_table('custom', 'app.parted')").unwrap());
    let err = error_of(&node, "SELECT spock.repset_remove_table('custom', 'app.parted')");
    assert!(err.starts_with("42704"), "{err}");
    assert!(node.query_one::<bool>("SELECT spock.repset_drop('custom')").unwrap());
    assert!(!node.query_one::<bool>("SELECT spock.repset_drop('custom', true)").unwrap());
    let err = error_of(&node, "SELECT spock.repset_drop('custom')");
    assert!(err.starts_with("42704"), "{err}");
}

#[test]
fn repset_add_all_tables_skips_what_cannot_be_replicated() {
    let node = node_with_extension("api5");
    node.execute("SELECT spock.node_create('n1', 'dbname=postgres')").unwrap();
    node.execute("CREATE TABLE a(id int PRIMARY KEY); CREATE TABLE b(v text); CREATE TABLE c(id int PRIMARY KEY)")
        .unwrap();
    assert!(node.query_one::<bool>("SELECT spock.repset_add_all_tables('default', '{public}')").unwrap());
    let members: String =
        node.query_one("SELECT string_agg(set_reloid::text, ',' ORDER BY 1) FROM spock.replication_set_table").unwrap();
    assert_eq!(members, "a,c", "b has no replica identity and is skipped with a warning");
    // running it again is harmless
    assert!(node.query_one::<bool>("SELECT spock.repset_add_all_tables('default', '{public}')").unwrap());
    let err = error_of(&node, "SELECT spock.repset_add_all_tables('default', '{nosuchschema}')");
    assert!(err.starts_with("3F000"), "{err}");
    node.execute("SELECT spock.repset_add_all_tables('default_insert_only', '{public}')").unwrap();
    let n: i64 = node.query_one("SELECT count(*) FROM spock.replication_set_table").unwrap();
    assert_eq!(n, 5);
}

#[test]
fn slot_names_match_spock() {
    let node = node_with_extension("api6");
    let name: String = node.query_one("SELECT spock.spock_gen_slot_name('postgres', 'n1', 'sub_n1_n2')::text").unwrap();
    assert_eq!(name, "spk_postgres_n1_sub_n1_n2");
    let long: String = node
        .query_one("SELECT spock.spock_gen_slot_name('a_really_long_database_name', 'Provider-Node', 'sub')::text")
        .unwrap();
    assert_eq!(long, spock_core::names::slot_name("a_really_long_database_name", "Provider-Node", "sub"));
    assert!(long.starts_with("spk_a_really"));
}

#[test]
fn node_drop_cleans_up_and_refuses_active_slots() {
    let node = node_with_extension("api7");
    node.execute("SELECT spock.node_create('n1', 'dbname=postgres')").unwrap();
    node.execute("CREATE TABLE t(id int PRIMARY KEY); SELECT spock.repset_add_table('default', 't')").unwrap();
    node.execute("SELECT pg_create_logical_replication_slot('spk_postgres_n1_sub', 'spock_output')").unwrap();
    assert!(node.query_one::<bool>("SELECT spock.node_drop('n1')").unwrap());
    for table in ["node", "node_interface", "local_node", "replication_set", "replication_set_table"] {
        let n: i64 = node.query_one(&format!("SELECT count(*) FROM spock.{table}")).unwrap();
        assert_eq!(n, 0, "spock.{table} not empty");
    }
    let slots: i64 = node.query_one("SELECT count(*) FROM pg_replication_slots").unwrap();
    assert_eq!(slots, 0, "the node's spock slots are dropped with it");
}
