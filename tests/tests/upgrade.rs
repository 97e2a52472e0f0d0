//! Versions and upgrades. The extension's SQL version is the Spock API level it
//! implements (6.0.0), so that `CREATE EXTENSION spock VERSION '6.0.0'` and Spock's
//! own check `spock_version() = extversion` work; spock-rs's release is
//! `spock.spock_rs_version()`.
//!
//! Two nodes created with the 0.1.0 script replicate, are upgraded with
//! `ALTER EXTENSION spock UPDATE` (same spock.so, as after a package upgrade and a
//! restart) and replicate again, both ways, with the rows from before the upgrade
//! intact. The upgraded extension's objects (functions with their bodies, settings
//! and privileges; tables with their columns, defaults, constraints, indexes and
//! privileges; views; triggers; event triggers) must equal a fresh install's: a
//! change to the SQL objects without its step in the upgrade script fails here.

use std::time::Duration;

use spock_tests::fixtures::wait_replicating;
use spock_tests::{wait_for, Cluster, TestNode};

const WAIT: Duration = Duration::from_secs(60);

/// Every object of extension spock on `n`, one sorted line each, as text that
/// differs when the object differs (not its oid).
fn extension_objects(n: &TestNode) -> String {
    let members = "SELECT d.classid, d.objid FROM pg_catalog.pg_depend d
                    WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e'
                      AND d.refobjid = (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'spock')";
    let rels = format!(
        "SELECT c.oid FROM pg_catalog.pg_class c
          WHERE c.oid IN (SELECT objid FROM ({members}) m WHERE classid = 'pg_catalog.pg_class'::regclass)"
    );
    let sql = format!(
        "SELECT string_agg(line, E'\\n' ORDER BY line) FROM (
            -- what each member is
            SELECT 'member ' || pg_catalog.pg_describe_object(classid, objid, 0) AS line FROM ({members}) m
            -- functions: signature, body, language, volatility, strictness, security, settings, privileges
            UNION ALL
            SELECT 'function ' || p.oid::regprocedure::text || ' ' || replace(pg_catalog.pg_get_functiondef(p.oid), E'\n', ' ')
                   || ' acl=' || coalesce(p.proacl::text, 'default')
              FROM pg_catalog.pg_proc p
             WHERE p.oid IN (SELECT objid FROM ({members}) m WHERE classid = 'pg_catalog.pg_proc'::regclass)
            -- relations: kind, options, privileges
            UNION ALL
            SELECT 'relation ' || c.oid::regclass::text || ' kind=' || c.relkind::text || ' persistence=' || c.relpersistence::text
                   || ' options=' || coalesce(c.reloptions::text, '') || ' acl=' || coalesce(c.relacl::text, 'default')
                   || ' replident=' || c.relreplident::text
              FROM pg_catalog.pg_class c WHERE c.oid IN ({rels})
            -- columns in order (dropped ones left out), with type, nullability, default, identity, generation
            UNION ALL
            SELECT 'column ' || a.attrelid::regclass::text || ' #'
                   || row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum) || ' ' || a.attname || ' '
                   || pg_catalog.format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
                   || coalesce(' default ' || pg_catalog.pg_get_expr(ad.adbin, ad.adrelid), '')
                   || ' identity=' || a.attidentity::text || ' generated=' || a.attgenerated::text
                   || ' acl=' || coalesce(a.attacl::text, 'default')
              FROM pg_catalog.pg_attribute a
              LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
             WHERE a.attrelid IN ({rels}) AND a.attnum > 0 AND NOT a.attisdropped
            -- constraints, indexes, views, triggers
            UNION ALL
            SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ' ' || pg_catalog.pg_get_constraintdef(oid)
              FROM pg_catalog.pg_constraint WHERE conrelid IN ({rels})
            UNION ALL
            SELECT 'index ' || pg_catalog.pg_get_indexdef(indexrelid) FROM pg_catalog.pg_index WHERE indrelid IN ({rels})
            UNION ALL
            SELECT 'view ' || c.oid::regclass::text || ' ' || pg_catalog.pg_get_viewdef(c.oid)
              FROM pg_catalog.pg_class c WHERE c.oid IN ({rels}) AND c.relkind IN ('v', 'm')
            UNION ALL
            SELECT 'trigger ' || pg_catalog.pg_get_triggerdef(oid) || ' enabled=' || tgenabled::text
              FROM pg_catalog.pg_trigger WHERE tgrelid IN ({rels}) AND NOT tgisinternal
            UNION ALL
            SELECT 'event trigger ' || evtname || ' ' || evtevent || ' ' || evtfoid::regproc::text || ' enabled='
                   || evtenabled::text || ' tags=' || coalesce(evttags::text, '')
              FROM pg_catalog.pg_event_trigger
             WHERE oid IN (SELECT objid FROM ({members}) m WHERE classid = 'pg_catalog.pg_event_trigger'::regclass)
            -- the schema's privileges and what pg_dump would dump of the catalog
            UNION ALL
            SELECT 'schema spock acl=' || coalesce(nspacl::text, 'default') FROM pg_catalog.pg_namespace
             WHERE nspname = 'spock'
            UNION ALL
            SELECT 'config ' || coalesce((SELECT array_agg(x::regclass::text ORDER BY x::regclass::text)
                                            FROM unnest(extconfig) x)::text, '')
              FROM pg_catalog.pg_extension WHERE extname = 'spock'
         ) objects"
    );
    n.query_one(&sql).unwrap()
}

/// The first line where `a` and `b` differ, for a readable failure.
fn first_difference(a: &str, b: &str) -> String {
    let la: std::collections::BTreeSet<&str> = a.lines().collect();
    let lb: std::collections::BTreeSet<&str> = b.lines().collect();
    let only_a: Vec<&&str> = la.difference(&lb).take(5).collect();
    let only_b: Vec<&&str> = lb.difference(&la).take(5).collect();
    format!("only after the upgrade: {only_a:#?}\nonly in a fresh install: {only_b:#?}")
}

fn setup_old_node(n: &TestNode) {
    n.execute("CREATE EXTENSION spock VERSION '0.1.0'").unwrap();
    assert_eq!(n.query_text("SELECT extversion FROM pg_extension WHERE extname = 'spock'").unwrap(), "0.1.0");
    n.execute(&format!("SELECT spock.node_create('{}', '{}')", n.name, n.dsn("postgres"))).unwrap();
    n.execute("CREATE TABLE t(id int PRIMARY KEY, v text)").unwrap();
    n.execute("SELECT spock.repset_add_table('default', 't')").unwrap();
}

#[test]
fn the_sql_version_is_the_spock_api_level() {
    let cluster = Cluster::start_n(1).unwrap();
    let n = cluster.node(0);
    n.execute("CREATE EXTENSION spock VERSION '6.0.0'").unwrap();
    // Spock's own version check (Zodan's add_node) and ours.
    assert_eq!(
        n.query_text(
            "SELECT spock.spock_version() = extversion AND spock.spock_version_num() = 60000
               FROM pg_extension WHERE extname = 'spock'"
        )
        .unwrap(),
        "t"
    );
    assert_eq!(
        n.query_text("SELECT default_version FROM pg_available_extensions WHERE name = 'spock'").unwrap(),
        "6.0.0"
    );
    assert_eq!(n.query_text("SELECT spock.spock_rs_version()").unwrap(), env!("CARGO_PKG_VERSION"));
    // 0.1.0 -> 6.0.0 is the one update path.
    assert_eq!(
        n.query_text(
            "SELECT string_agg(source || '->' || target, ',') FROM pg_extension_update_paths('spock')
              WHERE path IS NOT NULL"
        )
        .unwrap(),
        "0.1.0->6.0.0"
    );
}

#[test]
fn a_0_1_0_pair_upgrades_and_replicates_with_the_objects_of_a_fresh_install() {
    let cluster = Cluster::start_n(3).unwrap();
    let (n1, n2, fresh) = (cluster.node(0), cluster.node(1), cluster.node(2));
    setup_old_node(n1);
    setup_old_node(n2);
    n2.execute(&format!("SELECT spock.sub_create('sub_n2_n1', '{}')", n1.dsn("postgres"))).unwrap();
    wait_replicating(n2, 1);
    n1.execute("INSERT INTO t SELECT g, 'before ' || g FROM generate_series(1, 100) g").unwrap();
    wait_for("rows before the upgrade", WAIT, || n2.query_one::<i64>("SELECT count(*) FROM t").unwrap(), 100);

    // The upgrade, subscriber first then provider, while the subscription runs.
    for n in [n2, n1] {
        n.execute("ALTER EXTENSION spock UPDATE").unwrap();
        assert_eq!(n.query_text("SELECT extversion FROM pg_extension WHERE extname = 'spock'").unwrap(), "6.0.0");
    }
    fresh.execute("CREATE EXTENSION spock").unwrap();
    let (upgraded, installed) = (extension_objects(n1), extension_objects(fresh));
    assert!(installed.lines().count() > 100, "the object list is too short to mean anything:\n{installed}");
    assert!(
        upgraded == installed,
        "the upgraded extension differs from a fresh install:\n{}",
        first_difference(&upgraded, &installed)
    );
    assert_eq!(extension_objects(n2), installed);

    // Replication goes on, and works the other way too from a subscription created
    // after the upgrade.
    n1.execute("INSERT INTO t SELECT g, 'after ' || g FROM generate_series(101, 200) g").unwrap();
    n1.execute("UPDATE t SET v = v || ' updated' WHERE id % 10 = 0").unwrap();
    n1.execute(&format!("SELECT spock.sub_create('sub_n1_n2', '{}')", n2.dsn("postgres"))).unwrap();
    wait_replicating(n1, 1);
    n2.execute("INSERT INTO t VALUES (1000, 'from n2')").unwrap();
    let digest = "SELECT count(*) || ':' || md5(string_agg(id || '=' || v, ',' ORDER BY id)) FROM t";
    for n in [n1, n2] {
        wait_for("every row on both nodes", WAIT, || n.query_one::<i64>("SELECT count(*) FROM t").unwrap(), 201);
    }
    wait_for("both nodes equal", WAIT, || n1.query_text(digest).unwrap() == n2.query_text(digest).unwrap(), true);
    assert_eq!(n1.query_text("SELECT count(*) FROM t WHERE v LIKE '% updated'").unwrap(), "20");
    assert_eq!(n2.query_text("SELECT v FROM t WHERE id = 1").unwrap(), "before 1");
}

/// A row filter stored by 0.1.0 that the 6.0.0 rule refuses (a user-defined
/// function) is named by a WARNING of `ALTER EXTENSION spock UPDATE`; it is kept.
#[test]
fn the_upgrade_names_row_filters_the_new_rule_refuses() {
    let cluster = Cluster::start_n(1).unwrap();
    let n = cluster.node(0);
    setup_old_node(n);
    // (the new rule applies to 0.1.0's SQL too, being in spock.so: the old filter is
    // stored as 0.1.0 stored it, as the tree of a CHECK expression over the table)
    n.execute(
        "CREATE FUNCTION public.lim() RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT 10';
         CREATE TABLE f(id int PRIMARY KEY);
         ALTER TABLE f ADD CONSTRAINT old_filter CHECK (id > public.lim()) NOT VALID;
         SELECT spock.repset_add_table('default', 'f');
         UPDATE spock.replication_set_table SET set_row_filter = (SELECT conbin FROM pg_constraint WHERE conname = 'old_filter')
          WHERE set_reloid = 'f'::regclass;
         ALTER TABLE f DROP CONSTRAINT old_filter;",
    )
    .unwrap();
    let (_, _, err) =
        n.run_tool("psql", &["-X", "-q", "-d", &n.dsn("postgres"), "-c", "ALTER EXTENSION spock UPDATE"]).unwrap();
    assert!(
        err.contains("WARNING:  row filter of table public.f in replication set default is no longer accepted: invalid publication WHERE expression"),
        "{err}"
    );
    assert_eq!(n.query_text("SELECT extversion FROM pg_extension WHERE extname = 'spock'").unwrap(), "6.0.0");
    assert_eq!(
        n.query_text("SELECT count(*) FROM spock.replication_set_table WHERE set_row_filter IS NOT NULL").unwrap(),
        "1"
    );
}
