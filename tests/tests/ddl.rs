//! DDL and sequence replication through `spock.queue` between real nodes:
//! `spock.replicate_ddl`, AutoDDL (`spock.enable_ddl_replication`,
//! `spock.include_ddl_repset`, `spock.allow_ddl_from_functions`), `sync_seq` and the
//! sequence functions, and what happens when queued DDL fails on a subscriber.

use std::time::Duration;

use spock_tests::fixtures::{count, mutual_pair, reload, replicating_pair, subscribed_pair, sync_mesh};
use spock_tests::{wait_for, Cluster, TestNode};

const WAIT: Duration = Duration::from_secs(60);

/// Like `count`, -1 while the query fails (a table that is not there yet).
fn count_when_there(n: &TestNode, sql: &str) -> i64 {
    match n.query_one::<i64>(sql) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            -1
        }
    }
}

fn table_exists(n: &TestNode, name: &str) -> bool {
    n.query_one::<bool>(&format!("SELECT to_regclass('{name}') IS NOT NULL")).unwrap()
}

/// The SQLSTATE and message `sql` fails with on `n`.
fn error_of(n: &TestNode, sql: &str) -> (String, String) {
    let (code, message, _) = n.error_of(sql);
    (code, message)
}

/// A row in `t` on `a` that `b` must receive: everything `a` committed before it was
/// applied on `b` once it is there.
fn marker(a: &TestNode, b: &TestNode, id: i32) {
    a.execute(&format!("INSERT INTO t VALUES ({id}, 'marker')")).unwrap();
    wait_for("the marker row", WAIT, || count_when_there(b, &format!("SELECT count(*) FROM t WHERE id = {id}")), 1);
}

#[test]
fn replicate_ddl_between_row_changes() {
    let cluster = replicating_pair();
    let (a, b) = (cluster.node(0), cluster.node(1));

    // CREATE TABLE through the queue, then rows, ALTER TABLE, rows with the new
    // column, all in one provider session.
    a.execute(
        "SELECT spock.replicate_ddl('CREATE TABLE t2 (id int PRIMARY KEY, v text)');
         SELECT spock.repset_add_table('default', 't2');
         INSERT INTO t2 SELECT g, 'before' FROM generate_series(1, 10) g;
         SELECT spock.replicate_ddl('ALTER TABLE t2 ADD COLUMN w int');
         INSERT INTO t2 SELECT g, 'after', g * 10 FROM generate_series(11, 20) g;
         UPDATE t2 SET w = -id WHERE id <= 5;",
    )
    .unwrap();
    wait_for(
        "rows with the new column",
        WAIT,
        || count_when_there(b, "SELECT count(*) FROM t2 WHERE w IS NOT NULL"),
        15,
    );
    assert_eq!(count(b, "SELECT count(*) FROM t2"), 20);
    assert_eq!(count(b, "SELECT sum(w) FROM t2"), (11..=20).map(|g| g * 10).sum::<i64>() - 15);

    // The queue row as Spock writes it: a JSON string with the search_path prefix,
    // the role, the sets; the subscriber keeps its copy of the row too.
    let msg = a
        .query_one::<String>("SELECT message::text FROM spock.queue WHERE message::text LIKE '%ADD COLUMN w%'")
        .unwrap();
    assert_eq!(msg, r#""SET search_path TO \"$user\", public; ALTER TABLE t2 ADD COLUMN w int""#);
    assert_eq!(
        a.query_one::<String>(
            "SELECT role::text || ' ' || message_type::text || ' ' || replication_sets::text FROM spock.queue LIMIT 1"
        )
        .unwrap(),
        "postgres Q {ddl_sql}"
    );
    wait_for(
        "the queue rows on the subscriber",
        WAIT,
        || count_when_there(b, "SELECT count(*) FROM spock.queue WHERE message_type = 'Q'"),
        2,
    );

    // A long statement (its queue row is TOASTed) arrives whole.
    a.execute(
        "SELECT spock.replicate_ddl(format('COMMENT ON TABLE t2 IS %L', (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 2000) g)))",
    )
    .unwrap();
    wait_for(
        "the long comment",
        WAIT,
        || count_when_there(b, "SELECT coalesce(length(obj_description('t2'::regclass, 'pg_class')), 0)::int8"),
        64_000,
    );

    // search_path and role are honoured; the text[] overload returns one row per command.
    for n in [a, b] {
        n.execute("CREATE SCHEMA app; CREATE ROLE ddl_owner; GRANT CREATE, USAGE ON SCHEMA app TO ddl_owner").unwrap();
    }
    assert_eq!(
        count(
            a,
            "SELECT count(*) FROM spock.replicate_ddl(ARRAY['CREATE TABLE t3 (id int PRIMARY KEY)', 'CREATE INDEX t3_i ON t3 (id)'],
                                                    search_path := 'app', role := 'ddl_owner')"
        ),
        2
    );
    marker(a, b, 1);
    assert!(table_exists(b, "app.t3"), "t3 must be created in schema app on the subscriber");
    assert!(table_exists(b, "app.t3_i"));
    assert!(!table_exists(b, "public.t3"));
    assert_eq!(
        b.query_one::<String>("SELECT tableowner::text FROM pg_tables WHERE tablename = 't3'").unwrap(),
        "ddl_owner"
    );
}

#[test]
fn queue_rows_only_reach_subscribers_of_their_sets() {
    let cluster = replicating_pair();
    let (a, b) = (cluster.node(0), cluster.node(1));
    a.execute("SELECT spock.repset_create('other')").unwrap();
    a.execute("SELECT spock.replicate_ddl('CREATE TABLE only_other (id int)', '{other}')").unwrap();
    a.execute("SELECT spock.replicate_ddl('CREATE TABLE in_ddl_sql (id int)')").unwrap();
    marker(a, b, 1);
    assert!(table_exists(a, "only_other"));
    assert!(table_exists(b, "in_ddl_sql"));
    assert!(!table_exists(b, "only_other"), "a set the subscriber does not subscribe to must not arrive");
    assert_eq!(count(b, "SELECT count(*) FROM spock.queue"), 1);

    // Other operations on the queue are not sent.
    a.execute("DELETE FROM spock.queue; TRUNCATE spock.queue").unwrap();
    marker(a, b, 2);
    assert_eq!(count(b, "SELECT count(*) FROM spock.queue"), 1);

    // A NULL set list goes to every subscriber (a message for everyone).
    a.execute(
        "SELECT spock._queue_message(NULL, 'postgres', 'Q', to_json('CREATE TABLE for_all (id int)'::text)::text)",
    )
    .unwrap();
    marker(a, b, 3);
    assert!(table_exists(b, "for_all"));

    // A table-sync request ('A', Spock's layout) reaches the sync hand-over.
    let offset = b.log_offset();
    a.execute(
        r#"SELECT spock._queue_message('{default}', 'postgres', 'A', '{"schema_name": "public","table_name": "t"}')"#,
    )
    .unwrap();
    marker(a, b, 4);
    assert!(b.log_since(offset).contains("the provider asks for a sync of table public.t"));
}

#[test]
fn autoddl_replicates_created_tables_and_their_rows() {
    let cluster = replicating_pair();
    let (a, b) = (cluster.node(0), cluster.node(1));
    // The subscriber also places tables it creates from queued DDL.
    b.execute("ALTER SYSTEM SET spock.include_ddl_repset = on").unwrap();
    reload(b);

    // One simple-protocol string with several statements: each is queued on its own.
    a.execute(
        "SET spock.enable_ddl_replication = on; SET spock.include_ddl_repset = on;
         CREATE TABLE auto_pk (id int PRIMARY KEY, v text); CREATE TABLE auto_nopk (v text);
         CREATE TEMP TABLE auto_temp (id int);
         INSERT INTO auto_pk SELECT g, 'x' FROM generate_series(1, 50) g;
         INSERT INTO auto_nopk SELECT 'y' FROM generate_series(1, 7);",
    )
    .unwrap();
    assert_eq!(
        a.query_one::<String>("SELECT string_agg(relname || ':' || set_name, ',' ORDER BY relname) FROM spock.tables WHERE relname LIKE 'auto%'").unwrap(),
        "auto_nopk:default_insert_only,auto_pk:default"
    );
    assert_eq!(
        a.query_one::<String>(
            "SELECT string_agg(message #>> '{}', ' | ' ORDER BY queued_at) FROM spock.queue WHERE message_type = 'D'"
        )
        .unwrap(),
        "SET search_path TO \"$user\", public; CREATE TABLE auto_pk (id int PRIMARY KEY, v text) | \
         SET search_path TO \"$user\", public; CREATE TABLE auto_nopk (v text)"
    );
    assert_eq!(
        a.query_one::<String>("SELECT DISTINCT replication_sets::text FROM spock.queue WHERE message_type = 'D'")
            .unwrap(),
        "{default_insert_only}"
    );
    wait_for("rows of the new table", WAIT, || count_when_there(b, "SELECT count(*) FROM auto_pk"), 50);
    wait_for("rows of the insert-only table", WAIT, || count_when_there(b, "SELECT count(*) FROM auto_nopk"), 7);
    assert_eq!(
        b.query_one::<String>("SELECT string_agg(relname || ':' || set_name, ',' ORDER BY relname) FROM spock.tables WHERE relname LIKE 'auto%'").unwrap(),
        "auto_nopk:default_insert_only,auto_pk:default"
    );
    // The subscriber did not queue the DDL it applied.
    assert_eq!(count(b, "SELECT count(*) FROM spock.queue WHERE message_type = 'D'"), 2);

    // Tables created inside CREATE SCHEMA, and partitions, are placed and replicate.
    a.execute(
        "SET spock.enable_ddl_replication = on; SET spock.include_ddl_repset = on;
         CREATE SCHEMA auto_s CREATE TABLE inner_t (id int PRIMARY KEY);
         CREATE TABLE parted (id int PRIMARY KEY) PARTITION BY RANGE (id);
         CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (100);
         INSERT INTO auto_s.inner_t VALUES (1), (2);
         INSERT INTO parted SELECT generate_series(1, 5);",
    )
    .unwrap();
    assert_eq!(
        a.query_one::<String>("SELECT string_agg(nspname || '.' || relname || ':' || set_name, ',' ORDER BY relname) FROM spock.tables WHERE relname IN ('inner_t', 'parted', 'parted_1')").unwrap(),
        "auto_s.inner_t:default,public.parted:default,public.parted_1:default"
    );
    wait_for(
        "rows of the table created in CREATE SCHEMA",
        WAIT,
        || count_when_there(b, "SELECT count(*) FROM auto_s.inner_t"),
        2,
    );
    wait_for("rows of the partition", WAIT, || count_when_there(b, "SELECT count(*) FROM parted"), 5);

    // Permanent tables made from temporary ones stay local, with Spock's warnings.
    let offset = a.log_offset();
    a.execute(
        "SET spock.enable_ddl_replication = on;
         CREATE TEMP TABLE src_tmp (a int);
         CREATE TABLE like_tmp (LIKE src_tmp);
         CREATE TABLE ctas_tmp AS SELECT * FROM (SELECT a FROM src_tmp) s;",
    )
    .unwrap();
    assert_eq!(
        a.query_one::<String>(
            "SELECT coalesce(string_agg(message::text, ' | '), '') FROM spock.queue WHERE message::text ~ '_tmp'"
        )
        .unwrap(),
        ""
    );
    let log = a.log_since(offset);
    assert!(log.contains("WARNING:  CREATE TABLE copies the definition of temporary relation \"src_tmp\""));
    assert!(log.contains("WARNING:  CREATE TABLE AS reads a temporary relation"));
    assert!(log.contains("DETAIL:  Temporary relations are session-private and do not exist on other nodes."));

    // replicate_ddl with AutoDDL on queues its command once, as 'Q'.
    a.execute(
        "SET spock.enable_ddl_replication = on; SELECT spock.replicate_ddl('CREATE TABLE via_replicate_ddl (id int)')",
    )
    .unwrap();
    assert_eq!(count(a, "SELECT count(*) FROM spock.queue WHERE message::text LIKE '%via_replicate_ddl%'"), 1);
    assert_eq!(count(a, "SELECT count(*) FROM spock.queue WHERE message_type = 'D'"), 5);

    // ALTER TABLE ADD PRIMARY KEY moves the table to default; updates then replicate.
    a.execute(
        "SET spock.enable_ddl_replication = on; SET spock.include_ddl_repset = on;
         ALTER TABLE auto_nopk ADD COLUMN id serial PRIMARY KEY;
         UPDATE auto_nopk SET v = 'z' WHERE id <= 3;",
    )
    .unwrap();
    assert_eq!(
        a.query_one::<String>("SELECT set_name::text FROM spock.tables WHERE relname = 'auto_nopk'").unwrap(),
        "default"
    );
    wait_for(
        "updates of the table that gained a key",
        WAIT,
        || count_when_there(b, "SELECT count(*) FROM auto_nopk WHERE v = 'z'"),
        3,
    );

    // DROP TABLE replicates, and the dropped table leaves the sets on both nodes
    // (CASCADE: a member of a set depends on it).
    a.execute("SET spock.enable_ddl_replication = on; DROP TABLE auto_pk, parted CASCADE").unwrap();
    marker(a, b, 1);
    for n in [a, b] {
        assert!(!table_exists(n, "auto_pk"));
        assert_eq!(count(n, "SELECT count(*) FROM spock.replication_set_table WHERE set_reloid::oid NOT IN (SELECT oid FROM pg_class)"), 0);
    }
}

#[test]
fn ddl_inside_functions_follows_allow_ddl_from_functions() {
    let cluster = replicating_pair();
    let (a, b) = (cluster.node(0), cluster.node(1));
    a.execute(
        "SET spock.enable_ddl_replication = on;
         DO $$ BEGIN EXECUTE 'CREATE TABLE from_fn_off (id int)'; END $$;",
    )
    .unwrap();
    marker(a, b, 1);
    assert!(table_exists(a, "from_fn_off"));
    assert!(!table_exists(b, "from_fn_off"), "DDL in a function must not be queued with allow_ddl_from_functions off");
    assert_eq!(count(a, "SELECT count(*) FROM spock.queue"), 0);

    a.execute(
        "SET spock.enable_ddl_replication = on; SET spock.allow_ddl_from_functions = on;
         CREATE FUNCTION make_table(n text) RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE format('CREATE TABLE %I (id int)', n); END $$;
         SELECT make_table('from_fn_on');",
    )
    .unwrap();
    marker(a, b, 2);
    assert!(table_exists(b, "from_fn_on"), "DDL in a function must be queued with allow_ddl_from_functions on");
    // Only the inner statement's text, run as it ran (EXECUTE's string).
    assert_eq!(
        count(a, "SELECT count(*) FROM spock.queue WHERE message #>> '{}' LIKE '%CREATE TABLE from_fn_on (id int)'"),
        1
    );
}

#[test]
fn ddl_on_one_node_of_a_bidirectional_pair_while_both_write() {
    let cluster = Cluster::start_n(2).unwrap();
    let (a, b) = (cluster.node(0), cluster.node(1));
    mutual_pair(a, b);
    for n in [a, b] {
        n.execute("ALTER SYSTEM SET spock.enable_ddl_replication = on").unwrap();
        n.execute("ALTER SYSTEM SET spock.include_ddl_repset = on").unwrap();
        reload(n);
    }
    std::thread::scope(|s| {
        for (i, n) in [a, b].into_iter().enumerate() {
            s.spawn(move || {
                let mut c = n.connect().unwrap();
                for k in 0..300 {
                    let id = i as i32 * 10_000 + k;
                    c.execute("INSERT INTO t (id, v) VALUES ($1, $2)", &[&id, &format!("n{i}")]).unwrap();
                }
            });
        }
        s.spawn(|| {
            // the DDL lands while both nodes write
            wait_for("writers under way", WAIT, || count(a, "SELECT count(*) FROM t") >= 60, true);
            a.execute("SET spock.enable_ddl_replication = on; ALTER TABLE t ADD COLUMN extra text DEFAULT 'x'")
                .unwrap();
            let mut c = a.connect().unwrap();
            for k in 0..100 {
                c.execute(
                    "INSERT INTO t (id, v, extra) VALUES ($1, 'after ddl', $2)",
                    &[&(50_000 + k), &format!("e{k}")],
                )
                .unwrap();
            }
        });
    });
    for n in [a, b] {
        wait_for("every row on every node", WAIT, || count_when_there(n, "SELECT count(*) FROM t"), 700);
    }
    assert!(b
        .query_one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_name = 't' AND column_name = 'extra')"
        )
        .unwrap());
    let hash = |n: &TestNode| {
        n.query_one::<String>(
            "SELECT md5(string_agg(id || ':' || v || ':' || coalesce(extra, '-'), ',' ORDER BY id)) FROM t",
        )
        .unwrap()
    };
    wait_for("identical tables", WAIT, || hash(b), hash(a));
    assert_eq!(count(b, "SELECT count(*) FROM t WHERE extra LIKE 'e%'"), 100);
    // One queued statement, not bounced back: a has its own row, b the applied copy.
    sync_mesh(&[a, b]);
    assert_eq!(count(a, "SELECT count(*) FROM spock.queue"), 1);
    assert_eq!(count(b, "SELECT count(*) FROM spock.queue"), 1);

    // A table created on a joins b's default set too (include_ddl_repset on b), so
    // rows written on b come back to a.
    a.execute("SET spock.enable_ddl_replication = on; SET spock.include_ddl_repset = on; CREATE TABLE both_ways (id int PRIMARY KEY)").unwrap();
    wait_for(
        "the table in b's default set",
        WAIT,
        || {
            b.query_one::<String>(
                "SELECT coalesce(string_agg(set_name, ','), '') FROM spock.tables WHERE relname = 'both_ways'",
            )
            .unwrap_or_default()
        },
        "default".to_string(),
    );
    b.execute("INSERT INTO both_ways SELECT generate_series(1, 10)").unwrap();
    a.execute("INSERT INTO both_ways SELECT generate_series(11, 15)").unwrap();
    for n in [a, b] {
        wait_for("rows written on both nodes", WAIT, || count_when_there(n, "SELECT count(*) FROM both_ways"), 15);
    }
}

#[test]
fn sync_seq_puts_the_subscribers_sequence_ahead() {
    let cluster = replicating_pair();
    let (a, b) = (cluster.node(0), cluster.node(1));
    for n in [a, b] {
        n.execute("CREATE SEQUENCE s1; CREATE SEQUENCE s2; CREATE SCHEMA seqs; CREATE SEQUENCE seqs.s3").unwrap();
    }
    a.execute("SELECT spock.repset_add_seq('default', 's1')").unwrap();
    assert_eq!(
        a.query_one::<String>("SELECT cache_size || ':' || last_value FROM spock.sequence_state").unwrap(),
        "1000:1"
    );
    a.execute("SELECT nextval('s1') FROM generate_series(1, 42)").unwrap();
    assert!(a.query_one::<bool>("SELECT spock.sync_seq('s1')").unwrap());
    let provider = count(a, "SELECT last_value FROM s1");
    wait_for(
        "the subscriber's sequence ahead of the provider's",
        WAIT,
        || count_when_there(b, "SELECT last_value FROM s1") >= provider,
        true,
    );
    assert_eq!(count(b, "SELECT last_value FROM s1"), 42 + 1000);
    assert_eq!(count(a, "SELECT last_value FROM spock.sequence_state"), 42 + 1000);
    assert_eq!(
        a.query_one::<String>("SELECT message::text FROM spock.queue WHERE message_type = 'S'").unwrap(),
        r#"{"schema_name": "public","sequence_name": "s1","last_value": "1042"}"#
    );
    assert!(count(b, "SELECT nextval('s1')") > provider);

    // Never backwards.
    b.execute("SELECT setval('s1', 1000000)").unwrap();
    a.execute("SELECT spock.sync_seq('s1')").unwrap();
    marker(a, b, 1);
    assert_eq!(count(b, "SELECT last_value FROM s1"), 1_000_000);

    // repset_add_seq(..., synchronize_data) sends the current value; add_all_seqs by schema.
    a.execute("SELECT nextval('s2') FROM generate_series(1, 7)").unwrap();
    a.execute("SELECT spock.repset_add_seq('default', 's2', synchronize_data := true)").unwrap();
    wait_for("s2 synchronized", WAIT, || count_when_there(b, "SELECT last_value FROM s2"), 7);
    a.execute("SELECT spock.repset_add_all_seqs('default', '{seqs}')").unwrap();
    assert_eq!(
        a.query_one::<String>(
            "SELECT string_agg(set_seqoid::text, ',' ORDER BY set_seqoid::text) FROM spock.replication_set_seq"
        )
        .unwrap(),
        "s1,s2,seqs.s3"
    );
    a.execute("SELECT nextval('seqs.s3') FROM generate_series(1, 5); SELECT spock.sync_seq('seqs.s3')").unwrap();
    wait_for("seqs.s3 synchronized", WAIT, || count_when_there(b, "SELECT last_value FROM seqs.s3"), 1005);
    a.execute("SELECT spock.repset_remove_seq('default', 's2')").unwrap();
    assert_eq!(count(a, "SELECT count(*) FROM spock.sequence_state WHERE seqoid = 's2'::regclass"), 0);
    assert_eq!(a.sqlstate("SELECT spock.sync_seq('s2')"), "55000");
    // A dropped sequence leaves its set and its state.
    a.execute("DROP SEQUENCE s1 CASCADE").unwrap();
    assert_eq!(count(a, "SELECT count(*) FROM spock.replication_set_seq"), 1);
    assert_eq!(count(a, "SELECT count(*) FROM spock.sequence_state"), 1);
}

#[test]
fn sequence_and_ddl_functions_report_errors_with_sqlstates() {
    let cluster = Cluster::start_n(1).unwrap();
    let a = cluster.node(0);
    a.execute("CREATE EXTENSION spock; CREATE SEQUENCE s; CREATE TABLE tab (id int)").unwrap();
    // Not a node yet.
    assert_eq!(a.sqlstate("SELECT spock.repset_add_seq('default', 's')"), "55000");
    assert_eq!(a.sqlstate("SELECT spock.sync_seq('s')"), "55000");
    assert_eq!(a.sqlstate("SELECT spock.replicate_ddl('CREATE TABLE x (id int)')"), "55000");
    a.execute(&format!("SELECT spock.node_create('{}', '{}')", a.name, a.dsn("postgres"))).unwrap();
    assert_eq!(a.sqlstate("SELECT spock.repset_add_seq('nosuchset', 's')"), "42704");
    assert_eq!(a.sqlstate("SELECT spock.repset_add_seq('default', 'tab')"), "42809");
    assert_eq!(a.sqlstate("SELECT spock.repset_add_seq('default', 'nosuchseq')"), "42P01");
    assert_eq!(a.sqlstate("SELECT spock.repset_add_seq('default', 's')"), "ok");
    assert_eq!(a.sqlstate("SELECT spock.repset_add_seq('default', 's')"), "23505");
    assert_eq!(a.sqlstate("SELECT spock.repset_add_all_seqs('default', '{nosuchschema}')"), "3F000");
    assert_eq!(a.sqlstate("SELECT spock.repset_add_all_seqs('nosuchset', '{public}')"), "42704");
    assert_eq!(a.sqlstate("SELECT spock.repset_remove_seq('default_insert_only', 's')"), "42704");
    assert_eq!(a.sqlstate("SELECT spock.sync_seq('tab')"), "42809");
    assert_eq!(a.sqlstate("CREATE SEQUENCE s_other; SELECT spock.sync_seq('s_other')"), "55000");
    assert_eq!(a.sqlstate("CREATE TEMP SEQUENCE s_temp; SELECT spock.repset_add_seq('default', 's_temp')"), "22023");
    // replicate_ddl
    assert_eq!(a.sqlstate("SELECT spock.replicate_ddl('CREATE TABLE x (id int)', '{nosuchset}')"), "42704");
    assert_eq!(a.sqlstate("SELECT spock.replicate_ddl('INSERT INTO tab VALUES (1)')"), "42501");
    assert_eq!(
        a.sqlstate("SELECT spock.replicate_ddl('CREATE TABLE x (id int)', search_path := '\"unterminated')"),
        "22023"
    );
    assert_eq!(a.sqlstate("SELECT spock.replicate_ddl('CREATE TABLE x (id int)', role := 'nosuchrole')"), "42704");
    assert_eq!(a.sqlstate("SELECT spock.replicate_ddl('CREATE TABLE tab (id int)')"), "42P07");
    assert_eq!(a.sqlstate("SELECT spock.replicate_ddl('CREATE TABLE x (id int')"), "42601");
    assert_eq!(count(a, "SELECT count(*) FROM spock.queue"), 0, "a failed replicate_ddl queues nothing");
    // A role cannot run replicated DDL as a role it cannot become.
    a.execute(
        "CREATE ROLE weak LOGIN; GRANT USAGE ON SCHEMA spock TO weak;
         GRANT EXECUTE ON FUNCTION spock.replicate_ddl(text, text[], text, text), spock._repset(name),
             spock._local_node_id() TO weak",
    )
    .unwrap();
    let (code, message) =
        error_of(a, "SET ROLE weak; SELECT spock.replicate_ddl('DROP TABLE tab', role := 'postgres')");
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("42501", "permission denied to run replicated DDL as role \"postgres\"")
    );
    assert!(table_exists(a, "tab"));
    // spock.deny_all_ddl
    assert_eq!(a.sqlstate("SET spock.deny_all_ddl = on; CREATE TABLE denied (id int)"), "42501");
    assert_eq!(a.sqlstate("SET ROLE weak; SET spock.deny_all_ddl = off"), "42501");
    // GUCs exist with Spock's defaults; all are superuser-only (docs/security.md).
    assert_eq!(
        a.query_one::<String>(
            "SELECT string_agg(name || '=' || setting || '/' || context, ',' ORDER BY name) FROM pg_settings
              WHERE name IN ('spock.enable_ddl_replication', 'spock.include_ddl_repset', 'spock.allow_ddl_from_functions', 'spock.deny_all_ddl')"
        )
        .unwrap(),
        "spock.allow_ddl_from_functions=off/superuser,spock.deny_all_ddl=off/superuser,spock.enable_ddl_replication=off/superuser,spock.include_ddl_repset=off/superuser"
    );
}

#[test]
fn a_failing_queued_ddl_stops_the_subscription_until_fixed() {
    let cluster = Cluster::start_n(2).unwrap();
    let (a, b) = (cluster.node(0), cluster.node(1));
    b.execute("ALTER SYSTEM SET spock.exception_behaviour = 'sub_disable'").unwrap();
    reload(b);
    subscribed_pair(a, b);
    b.execute("CREATE TABLE clash (id int)").unwrap();
    let offset = b.log_offset();
    a.execute("SELECT spock.replicate_ddl('CREATE TABLE clash (id int PRIMARY KEY, v text)')").unwrap();
    a.execute("INSERT INTO t VALUES (1, 'after the failing DDL')").unwrap();
    // sub_disable: the subscription stops at the failing DDL, which is logged with
    // its error; nothing after it is applied.
    wait_for(
        "subscription disabled",
        WAIT,
        || b.query_one::<bool>("SELECT sub_enabled FROM spock.subscription").unwrap(),
        false,
    );
    let log = b.log_since(offset);
    assert!(
        log.contains("relation \"clash\" already exists") && log.contains("during execution of queued SQL statement")
    );
    assert_eq!(
        count(b, "SELECT count(*) FROM spock.exception_log WHERE table_name = 'queue' AND error_message LIKE '%already exists%'"),
        1
    );
    assert_eq!(count(b, "SELECT count(*) FROM t"), 0);
    assert_eq!(count(b, "SELECT count(*) FROM spock.queue"), 0);
    // Once the subscriber is fixed and the subscription enabled again, the
    // transaction applies the DDL, then the rows follow.
    b.execute("DROP TABLE clash").unwrap();
    b.execute("SELECT spock.sub_enable((SELECT sub_name FROM spock.subscription))").unwrap();
    wait_for("the row after the DDL", WAIT, || count_when_there(b, "SELECT count(*) FROM t"), 1);
    assert_eq!(count(b, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'clash'::regclass AND attname = 'v'"), 1);

    // With the default (transdiscard) a failing DDL is logged and skipped, and
    // replication goes on.
    b.execute("ALTER SYSTEM RESET spock.exception_behaviour").unwrap();
    reload(b);
    b.execute("CREATE TABLE clash2 (id int)").unwrap();
    a.execute("SELECT spock.replicate_ddl('CREATE TABLE clash2 (id int PRIMARY KEY)')").unwrap();
    a.execute("INSERT INTO t VALUES (2, 'after the second failing DDL')").unwrap();
    wait_for("replication went on", WAIT, || count_when_there(b, "SELECT count(*) FROM t"), 2);
    assert_eq!(
        count(b, "SELECT count(*) FROM spock.exception_log WHERE table_name = 'queue' AND error_message LIKE '%clash2%already exists%'"),
        1
    );
}

#[test]
fn include_ddl_repset_places_tables_by_their_replica_identity() {
    let cluster = Cluster::start_n(1).unwrap();
    let a = cluster.node(0);
    a.execute("CREATE EXTENSION spock").unwrap();
    a.execute(&format!("SELECT spock.node_create('{}', '{}')", a.name, a.dsn("postgres"))).unwrap();
    a.execute("ALTER SYSTEM SET spock.enable_ddl_replication = on").unwrap();
    a.execute("ALTER SYSTEM SET spock.include_ddl_repset = on").unwrap();
    reload(a);
    let sets = |rel: &str| {
        a.query_one::<String>(&format!(
            "SELECT coalesce(string_agg(s.set_name, ',' ORDER BY s.set_name), '-') FROM spock.replication_set_table t
               JOIN spock.replication_set s USING (set_id) WHERE t.set_reloid = '{rel}'::regclass"
        ))
        .unwrap()
    };
    a.execute("CREATE TABLE p (id int NOT NULL, v text)").unwrap();
    assert_eq!(sets("p"), "default_insert_only");
    a.execute("ALTER TABLE p ADD COLUMN w int").unwrap();
    assert_eq!(sets("p"), "default_insert_only", "an ALTER that does not touch the key leaves the sets alone");
    a.execute("ALTER TABLE p ADD CONSTRAINT p_pk PRIMARY KEY (id)").unwrap();
    assert_eq!(sets("p"), "default");
    a.execute("ALTER TABLE p DROP CONSTRAINT p_pk").unwrap();
    assert_eq!(sets("p"), "default_insert_only");
    a.execute("ALTER TABLE p REPLICA IDENTITY FULL").unwrap();
    assert_eq!(sets("p"), "default");
    // A custom set is respected when the table gains a key.
    a.execute("CREATE TABLE c (id int NOT NULL); SELECT spock.repset_create('mine', false, false, false, false)")
        .unwrap();
    a.execute(
        "SELECT spock.repset_remove_table('default_insert_only', 'c'); SELECT spock.repset_add_table('mine', 'c')",
    )
    .unwrap();
    a.execute("ALTER TABLE c ADD PRIMARY KEY (id)").unwrap();
    assert_eq!(sets("c"), "mine");
    // UNLOGGED tables join no set; CREATE TABLE AS does.
    a.execute("CREATE UNLOGGED TABLE u (id int PRIMARY KEY)").unwrap();
    assert_eq!(sets("u"), "-");
    a.execute("CREATE TABLE ctas AS SELECT 1 AS id").unwrap();
    assert_eq!(sets("ctas"), "default_insert_only");
    // Statements run as subcommands or by the server itself are not queued twice.
    assert_eq!(count(a, "SELECT count(*) FROM spock.queue WHERE message::text ~ 'CREATE SEQUENCE|CREATE INDEX'"), 0);
}

/// What psql prints on stderr for `sql` (NOTICEs and errors, terse).
fn psql_messages(n: &TestNode, sql: &str) -> String {
    let (_, _, err) =
        n.run_tool("psql", &["-X", "-q", "-v", "VERBOSITY=terse", "-d", &n.dsn("postgres"), "-c", sql]).unwrap();
    err.trim().to_string()
}

/// A replication-set membership depends on its table, sequence and the columns its
/// row filter reads, as in Spock: a RESTRICT drop fails with 2BP01 and changes
/// nothing, CASCADE drops the membership with a NOTICE; the apply worker always
/// cascades (a DROP without CASCADE of a table that is a member only on the
/// subscriber still applies there).
#[test]
fn dropping_a_replicated_table_column_or_sequence_needs_cascade() {
    let cluster = replicating_pair();
    let (a, b) = (cluster.node(0), cluster.node(1));
    a.execute(
        "CREATE TABLE m (id int PRIMARY KEY, data text, x int);
         SELECT spock.repset_add_table('default', 'm');
         SELECT spock.repset_create('extra');
         SELECT spock.repset_add_table('extra', 'm', row_filter := 'x > 0');
         CREATE SEQUENCE sq;
         SELECT spock.repset_add_seq('default', 'sq');",
    )
    .unwrap();
    let members = |n: &TestNode| {
        n.query_one::<String>(
            "SELECT coalesce(string_agg(s.set_name || ':' || r.set_reloid::regclass::text, ',' ORDER BY s.set_name), '')
               FROM spock.replication_set_table r JOIN spock.replication_set s USING (set_id)
              WHERE r.set_reloid <> 't'::regclass",
        )
        .unwrap()
    };
    assert_eq!(members(a), "default:m,extra:m");

    // RESTRICT: refused, with PostgreSQL's wording, nothing changed.
    let e = a.connect().unwrap().batch_execute("DROP TABLE m").unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "2BP01");
    assert_eq!(db.message(), "cannot drop table m because other objects depend on it");
    assert_eq!(
        db.detail(),
        Some(
            "table m membership in replication set default depends on table m\n\
             table m membership in replication set extra depends on table m"
        )
    );
    assert_eq!(db.hint(), Some("Use DROP ... CASCADE to drop the dependent objects too."));
    assert_eq!(
        error_of(a, "ALTER TABLE m DROP COLUMN x"),
        ("2BP01".into(), "cannot drop column x of table m because other objects depend on it".into())
    );
    assert_eq!(
        error_of(a, "DROP SEQUENCE sq"),
        ("2BP01".into(), "cannot drop sequence sq because other objects depend on it".into())
    );
    assert_eq!(members(a), "default:m,extra:m");
    // A column no row filter reads goes as usual.
    a.execute("ALTER TABLE m DROP COLUMN data").unwrap();

    // CASCADE: the memberships that depend on it go, with a NOTICE each.
    assert_eq!(
        psql_messages(a, "ALTER TABLE m DROP COLUMN x CASCADE"),
        "NOTICE:  drop cascades to table m membership in replication set extra"
    );
    assert_eq!(members(a), "default:m");
    assert_eq!(
        psql_messages(a, "DROP SEQUENCE sq CASCADE"),
        "NOTICE:  drop cascades to sequence sq membership in replication set default"
    );
    assert_eq!(count(a, "SELECT count(*) FROM spock.replication_set_seq"), 0);
    // One NOTICE per membership, in the order the statement names the tables.
    a.execute(
        "CREATE TABLE d1 (id int PRIMARY KEY); CREATE TABLE d2 (id int PRIMARY KEY);
         SELECT spock.repset_add_table('default', 'd2'); SELECT spock.repset_add_table('default', 'd1');",
    )
    .unwrap();
    assert_eq!(
        psql_messages(a, "DROP TABLE d1, d2 CASCADE"),
        "NOTICE:  drop cascades to table d1 membership in replication set default\n\
         NOTICE:  drop cascades to table d2 membership in replication set default"
    );

    // Through replicate_ddl the same rules hold on the provider; the subscriber's
    // apply cascades by itself.
    b.execute(
        "CREATE TABLE only_b_member (id int PRIMARY KEY);
         SELECT spock.repset_add_table('default', 'only_b_member');",
    )
    .unwrap();
    a.execute("CREATE TABLE only_b_member (id int PRIMARY KEY)").unwrap();
    let e = a.connect().unwrap().batch_execute("SELECT spock.replicate_ddl('DROP TABLE public.m')").unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "2BP01");
    a.execute("SELECT spock.replicate_ddl('DROP TABLE public.only_b_member')").unwrap();
    wait_for("only_b_member dropped on b", WAIT, || table_exists(b, "only_b_member"), false);
    assert_eq!(
        count(b, "SELECT count(*) FROM spock.replication_set_table WHERE set_reloid::text = 'only_b_member'"),
        0
    );
    assert_eq!(
        psql_messages(a, "SELECT spock.replicate_ddl('DROP TABLE IF EXISTS public.m CASCADE')"),
        "NOTICE:  drop cascades to table m membership in replication set default"
    );
    assert_eq!(members(a), "");
    assert!(!table_exists(a, "m"));
    // With AutoDDL on, a DROP cascades to memberships without CASCADE (Spock).
    a.execute("SELECT spock.replicate_ddl('CREATE TABLE public.z (id int PRIMARY KEY)')").unwrap();
    a.execute("SELECT spock.repset_add_table('default', 'z')").unwrap();
    wait_for("z on b", WAIT, || table_exists(b, "z"), true);
    let messages = psql_messages(a, "SET spock.enable_ddl_replication = on; DROP TABLE z");
    assert!(messages.contains("NOTICE:  drop cascades to table z membership in replication set default"), "{messages}");
    wait_for("z dropped on b", WAIT, || table_exists(b, "z"), false);
    // A plain role that owns a member table gets the same error, and may cascade.
    a.execute(
        "CREATE ROLE plain LOGIN; GRANT CREATE ON SCHEMA public TO plain;
         CREATE TABLE owned (id int PRIMARY KEY); ALTER TABLE owned OWNER TO plain;
         SELECT spock.repset_add_table('default', 'owned');",
    )
    .unwrap();
    let mut c = a.connect_as("postgres", "plain").unwrap();
    let e = c.batch_execute("DROP TABLE owned").unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "2BP01");
    c.batch_execute("DROP TABLE owned CASCADE").unwrap();
    assert_eq!(members(a), "");
}

/// `spock.repair_mode(true)` keeps the rest of its transaction (up to
/// `repair_mode(false)`) on this node: rows and AutoDDL's DDL; sync events and the
/// next transactions replicate as usual. Only superusers may call it.
#[test]
fn repair_mode_keeps_changes_on_this_node() {
    let cluster = replicating_pair();
    let (a, b) = (cluster.node(0), cluster.node(1));
    a.execute(
        "BEGIN;
         INSERT INTO t VALUES (1, 'replicated');
         SELECT spock.repair_mode(true);
         INSERT INTO t VALUES (2, 'local fix');
         UPDATE t SET v = 'changed locally' WHERE id = 1;
         SELECT spock.repair_mode(false);
         INSERT INTO t VALUES (3, 'replicated');
         COMMIT;
         BEGIN;
         SELECT spock.repair_mode(true);
         INSERT INTO t VALUES (4, 'local fix');
         COMMIT;
         INSERT INTO t VALUES (5, 'replicated');",
    )
    .unwrap();
    a.execute("SELECT spock.wait_slot_confirm_lsn(NULL, NULL)").unwrap();
    let rows =
        |n: &TestNode| n.query_one::<String>("SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM t").unwrap();
    assert_eq!(rows(a), "1=changed locally,2=local fix,3=replicated,4=local fix,5=replicated");
    assert_eq!(rows(b), "1=replicated,3=replicated,5=replicated");
    // AutoDDL queues nothing in repair mode; the setting ends with the transaction.
    let queued = count(a, "SELECT count(*) FROM spock.queue");
    a.execute(
        "SET spock.enable_ddl_replication = on;
         BEGIN;
         SELECT spock.repair_mode(true);
         CREATE TABLE only_here (id int PRIMARY KEY);
         COMMIT;",
    )
    .unwrap();
    assert_eq!(count(a, "SELECT count(*) FROM spock.queue"), queued);
    assert_eq!(a.query_one::<String>("SELECT current_setting('spock.replication_repair_mode')").unwrap(), "off");
    // Not for plain roles.
    a.execute("CREATE ROLE plain LOGIN").unwrap();
    let mut c = a.connect_as("postgres", "plain").unwrap();
    let e = c.batch_execute("SELECT spock.repair_mode(true)").unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "42501");
}

/// `spock.readonly` (Spock's modes): `local` makes the transactions of non-superuser
/// sessions read-only (DML, DDL, nextval fail with 25006; reads and VACUUM work)
/// while superusers write and replicated changes apply; `all` stops the apply
/// workers until it is off again, when they catch up; only superusers set it.
#[test]
fn readonly_modes() {
    let cluster = replicating_pair();
    let (a, b) = (cluster.node(0), cluster.node(1));
    b.execute(
        "CREATE ROLE plain LOGIN; GRANT CREATE ON SCHEMA public TO plain;
         CREATE TABLE mine (id int PRIMARY KEY); ALTER TABLE mine OWNER TO plain;
         CREATE SEQUENCE plain_seq; ALTER SEQUENCE plain_seq OWNER TO plain;",
    )
    .unwrap();
    let code = |e: postgres::Error| e.as_db_error().map(|d| d.code().code().to_string()).unwrap_or_default();
    let mut p = b.connect_as("postgres", "plain").unwrap();
    p.batch_execute("INSERT INTO mine VALUES (1)").unwrap();
    assert_eq!(code(p.batch_execute("SET spock.readonly = 'local'").unwrap_err()), "42501");
    // 'user' is Spock's older name of 'local': the same value.
    let mut su = b.connect().unwrap();
    su.batch_execute("SET spock.readonly = 'user'").unwrap();
    assert_eq!(su.query_one("SHOW spock.readonly", &[]).unwrap().get::<_, String>(0), "local");
    drop(su);
    b.execute("ALTER SYSTEM SET spock.readonly = 'local'").unwrap();
    b.execute("SELECT pg_reload_conf()").unwrap();
    let mut p = b.connect_as("postgres", "plain").unwrap();
    wait_for(
        "the setting",
        WAIT,
        || p.query_one("SHOW spock.readonly", &[]).unwrap().get::<_, String>(0),
        "local".into(),
    );
    for sql in [
        "INSERT INTO mine VALUES (2)",
        "DELETE FROM mine",
        "TRUNCATE mine",
        "CREATE TABLE nope (id int)",
        "SELECT nextval('plain_seq')",
    ] {
        assert_eq!(code(p.batch_execute(sql).expect_err(sql)), "25006", "{sql}");
    }
    p.batch_execute("SELECT count(*) FROM mine").unwrap();
    p.batch_execute("VACUUM ANALYZE mine").unwrap();
    // Superusers write; replicated changes apply.
    b.execute("INSERT INTO mine VALUES (3)").unwrap();
    a.execute("INSERT INTO t VALUES (1, 'while local')").unwrap();
    a.execute("SELECT spock.wait_slot_confirm_lsn(NULL, NULL)").unwrap();
    assert_eq!(count(b, "SELECT count(*) FROM t"), 1);
    let e = b.connect().unwrap().batch_execute("SELECT spock.sub_resync_table('sub_n2_n1', 't')").unwrap_err();
    assert_eq!(code(e), "55000");

    // all: the apply worker applies nothing but stays connected (as Spock's waits);
    // back to off, it catches up on the same connection.
    let walsender = || a.query_one::<i32>("SELECT pid FROM pg_stat_replication").unwrap();
    let before = walsender();
    b.execute("ALTER SYSTEM SET spock.readonly = 'all'").unwrap();
    b.execute("SELECT pg_reload_conf()").unwrap();
    wait_for(
        "apply holding",
        WAIT,
        || {
            count(b, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'spock apply' AND query ~ 'readonly is all'")
        },
        1,
    );
    a.execute("INSERT INTO t VALUES (2, 'while all')").unwrap();
    let lsn: String = a.query_one("SELECT pg_current_wal_insert_lsn()::text").unwrap();
    // The provider sent it; the subscriber does not apply it.
    wait_for(
        "sent",
        WAIT,
        || a.query_one::<bool>(&format!("SELECT sent_lsn >= '{lsn}' FROM pg_stat_replication")).unwrap(),
        true,
    );
    assert_eq!(count(b, "SELECT count(*) FROM t"), 1);
    b.execute("ALTER SYSTEM RESET spock.readonly").unwrap();
    b.execute("SELECT pg_reload_conf()").unwrap();
    a.execute("SELECT spock.wait_slot_confirm_lsn(NULL, NULL)").unwrap();
    assert_eq!(count(b, "SELECT count(*) FROM t"), 2);
    assert_eq!(walsender(), before, "the same connection throughout");
    let mut p = b.connect_as("postgres", "plain").unwrap();
    p.batch_execute("INSERT INTO mine VALUES (4)").unwrap();
}
