//! Spock's functions cannot be hijacked through the caller's `search_path`: a role
//! that may create objects in schema `public` plants a function or operator for
//! every built-in the extension's SQL calls (same signature, or a better match
//! such as `quote_ident(name)`), then a superuser whose `search_path` starts with
//! `public` uses the whole API between two real nodes. None of the planted objects
//! may run (each one records its call and raises), and every function of schema
//! `spock` must pin its `search_path` (procedures, which COMMIT and so cannot,
//! are covered by the planted objects alone).
//!
//! AutoDDL's catalog queries, which run as superuser in the DDL author's session,
//! ignore what that author planted on her path.
//!
//! And least privilege: a plain role can call only the read-only functions, reads
//! no DSN and writes no catalog; a replication role that is not superuser can still
//! be the provider DSN's role of a subscription.

use std::time::Duration;

use spock_tests::fixtures::{reload, setup_node, wait_replicating};
use spock_tests::postgres::{self, Client};
use spock_tests::{wait_for, Cluster, TestNode};

const WAIT: Duration = Duration::from_secs(60);

/// A connection to database `postgres` of `n` as `user`.
fn connect_as(n: &TestNode, user: &str) -> Client {
    let mut c = postgres::Config::new();
    c.host_path(n.root()).port(n.port).user(user).dbname("postgres");
    c.connect(postgres::NoTls).unwrap()
}

/// The names of the functions and operators the SQL and PL/pgSQL functions of
/// schema `spock` call, as they appear in their bodies.
fn names_used(n: &TestNode) -> (Vec<String>, Vec<String>) {
    let bodies = "SELECT f.prosrc FROM pg_catalog.pg_proc f JOIN pg_catalog.pg_language l ON l.oid = f.prolang
                   WHERE f.pronamespace = 'spock'::regnamespace AND l.lanname IN ('sql', 'plpgsql')";
    let functions: Vec<String> = n
        .query_one(&format!(
            "SELECT array_agg(DISTINCT lower(m[1])) FROM ({bodies}) b,
                    regexp_matches(b.prosrc, '([A-Za-z_][A-Za-z0-9_]*)\\s*\\(', 'g') m"
        ))
        .unwrap();
    let operators: Vec<String> = n
        .query_one(&format!(
            "SELECT array_agg(DISTINCT m[1]) FROM ({bodies}) b,
                    regexp_matches(b.prosrc, '([-+*/<>=~!@#%^&|`?]+)', 'g') m"
        ))
        .unwrap();
    (functions, operators)
}

/// As role `planter` (CREATE on schema public, nothing else): a function in
/// `public` with the signature of every built-in function or aggregate named in
/// `functions`, one operator for every built-in operator named in `operators`, and
/// the better-matching `quote_ident(name)`, `left(name, int)`, `length(name)`.
/// Each records its call in `planted.calls` (and `planted.seq`) and raises.
/// Returns how many objects were planted.
fn plant(n: &TestNode, functions: &[String], operators: &[String]) -> i64 {
    n.execute(
        "CREATE ROLE planter LOGIN; GRANT CREATE ON SCHEMA public TO planter;
         CREATE SCHEMA planted; CREATE TABLE planted.calls (what text); CREATE SEQUENCE planted.seq;
         GRANT USAGE ON SCHEMA planted TO PUBLIC; GRANT INSERT ON planted.calls TO PUBLIC;
         GRANT USAGE ON SEQUENCE planted.seq TO PUBLIC;",
    )
    .unwrap();
    let mut c = connect_as(n, "planter");
    let quote =
        |list: &[String]| list.iter().map(|s| format!("'{}'", s.replace('\'', "''"))).collect::<Vec<_>>().join(",");
    c.batch_execute("SET search_path = pg_catalog").unwrap();
    c.batch_execute(&format!(
        r#"
        CREATE TEMP TABLE planted_count (n int);
        INSERT INTO planted_count VALUES (0);
        CREATE FUNCTION pg_temp.body(what text) RETURNS text LANGUAGE sql AS $b$
            SELECT format('BEGIN INSERT INTO planted.calls VALUES (%L); PERFORM pg_catalog.nextval(%L); '
                          'RAISE EXCEPTION %L; END', what, 'planted.seq', 'planted ' || what || ' ran')
        $b$;
        CREATE FUNCTION pg_temp.try(ddl text) RETURNS void LANGUAGE plpgsql AS $t$
        BEGIN
            EXECUTE ddl;
            UPDATE planted_count SET n = n + 1;
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'not planted: %: %', ddl, SQLERRM;
        END
        $t$;
        DO $plant$
        DECLARE
            p record;
            i int := 0;
            v_args text;
        BEGIN
            -- Functions and aggregates with the signatures of the built-ins.
            FOR p IN
                SELECT f.proname, f.prokind, pg_get_function_arguments(f.oid) AS args,
                       pg_get_function_identity_arguments(f.oid) AS idargs,
                       pg_get_function_result(f.oid) AS res
                  FROM pg_proc f
                 WHERE f.pronamespace = 'pg_catalog'::regnamespace AND f.proname IN ({functions})
                   AND f.prokind IN ('f', 'a')
                   AND pg_get_function_arguments(f.oid) !~ '\m(internal|cstring)\M'
                   AND pg_get_function_result(f.oid) !~ '\m(internal|cstring|trigger|event_trigger)\M'
                   AND NOT EXISTS (SELECT 1 FROM pg_aggregate a WHERE a.aggfnoid = f.oid AND a.aggkind <> 'n')
            LOOP
                i := i + 1;
                v_args := replace(replace(p.args, 'VARIADIC "any"', 'VARIADIC text[]'), '"any"', 'text');
                IF p.prokind = 'f' THEN
                    PERFORM pg_temp.try(format('CREATE FUNCTION public.%I(%s) RETURNS %s LANGUAGE plpgsql AS %L',
                        p.proname, v_args, p.res, pg_temp.body(format('%s(%s)', p.proname, p.idargs))));
                ELSE
                    v_args := replace(replace(p.idargs, '"any"', 'text'), '*', '');
                    PERFORM pg_temp.try(format('CREATE FUNCTION public.planted_sfunc_%s(%s) RETURNS %s LANGUAGE plpgsql AS %L',
                        i, concat_ws(', ', p.res, nullif(v_args, '')), p.res,
                        pg_temp.body(format('aggregate %s(%s)', p.proname, p.idargs))));
                    PERFORM pg_temp.try(format('CREATE AGGREGATE public.%I(%s) (SFUNC = public.planted_sfunc_%s, STYPE = %s)',
                        p.proname, CASE WHEN v_args = '' THEN '*' ELSE v_args END, i, p.res));
                END IF;
            END LOOP;
            -- Better matches than the built-ins for arguments of type name.
            PERFORM pg_temp.try(format('CREATE FUNCTION public.quote_ident(name) RETURNS text LANGUAGE plpgsql AS %L',
                pg_temp.body('quote_ident(name)')));
            PERFORM pg_temp.try(format('CREATE FUNCTION public.left(name, integer) RETURNS text LANGUAGE plpgsql AS %L',
                pg_temp.body('left(name, integer)')));
            PERFORM pg_temp.try(format('CREATE FUNCTION public.length(name) RETURNS integer LANGUAGE plpgsql AS %L',
                pg_temp.body('length(name)')));
            -- Operators.
            FOR p IN
                SELECT o.oprname, format_type(o.oprleft, NULL) AS l, format_type(o.oprright, NULL) AS r,
                       format_type(o.oprresult, NULL) AS res, o.oprleft = 0 AS prefix
                  FROM pg_operator o
                 WHERE o.oprnamespace = 'pg_catalog'::regnamespace AND o.oprname IN ({operators})
                   AND o.oprcode <> 0
                   AND 'internal' NOT IN (format_type(o.oprleft, NULL), format_type(o.oprright, NULL), format_type(o.oprresult, NULL))
            LOOP
                i := i + 1;
                PERFORM pg_temp.try(format('CREATE FUNCTION public.planted_op_%s(%s) RETURNS %s LANGUAGE plpgsql AS %L',
                    i, CASE WHEN p.prefix THEN p.r ELSE p.l || ', ' || p.r END, p.res,
                    pg_temp.body(format('operator %s(%s, %s)', p.oprname, p.l, p.r))));
                PERFORM pg_temp.try(format('CREATE OPERATOR public.%s (%s RIGHTARG = %s, FUNCTION = public.planted_op_%s)',
                    p.oprname, CASE WHEN p.prefix THEN '' ELSE format('LEFTARG = %s,', p.l) END, p.r, i));
            END LOOP;
        END
        $plant$;
        "#,
        functions = quote(functions),
        operators = quote(operators),
    ))
    .unwrap();
    let planted: i32 = c.query_one("SELECT n FROM planted_count", &[]).unwrap().get(0);
    i64::from(planted)
}

/// A superuser session whose search_path puts the planted objects first.
fn victim(n: &TestNode) -> Client {
    let mut c = n.connect().unwrap();
    c.batch_execute("SET search_path = public, pg_catalog").unwrap();
    c
}

/// Runs `sql` in the victim session; an error fails the test with its message.
fn call(c: &mut Client, node: &TestNode, sql: &str) {
    if let Err(e) = c.batch_execute(sql) {
        panic!("on {}: {sql}: {}", node.name, spock_tests::describe_pg_error(&e));
    }
}

fn call_one<T: for<'a> postgres::types::FromSql<'a>>(c: &mut Client, node: &TestNode, sql: &str) -> T {
    match c.query_one(sql, &[]) {
        Ok(row) => row.get(0),
        Err(e) => panic!("on {}: {sql}: {}", node.name, spock_tests::describe_pg_error(&e)),
    }
}

#[test]
fn planted_functions_and_operators_never_run_in_spock_functions() {
    let cluster = Cluster::start_n(2).unwrap();
    let (a, b) = (cluster.node(0), cluster.node(1));
    for n in [a, b] {
        n.execute(
            "CREATE EXTENSION spock;
             CREATE TABLE public.t (id int PRIMARY KEY, v text);
             CREATE TABLE public.t2 (id int PRIMARY KEY, v text);
             CREATE SEQUENCE public.s;",
        )
        .unwrap();
    }
    a.execute("INSERT INTO public.t SELECT g, 'row ' || g FROM generate_series(1, 10) g").unwrap();
    let (functions, operators) = names_used(a);
    // (left() and length() left the SQL with _is_subscription_origin, octet_length() with
    // the sync-event payload, both now Rust; the name-typed overloads of left() and length()
    // are still planted below, as the known attack.)
    for expected in ["quote_ident", "format", "unnest", "nextval", "array_agg"] {
        assert!(functions.iter().any(|f| f == expected), "{expected} not found in the bodies: {functions:?}");
    }
    assert!(operators.iter().any(|o| o == "="), "{operators:?}");
    for n in [a, b] {
        let planted = plant(n, &functions, &operators);
        eprintln!("{planted} functions, aggregates and operators planted on {}", n.name);
        assert!(planted > 300, "only {planted} objects planted on {}", n.name);
        let must: i64 = n
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace s ON s.oid = p.pronamespace
                  WHERE s.nspname = 'public'
                    AND p.proname::text || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')'
                        IN ('quote_ident(name)', 'left(name, integer)', 'length(name)', 'format(text, VARIADIC text[])',
                            'unnest(anyarray)', 'nextval(regclass)', 'array_agg(anynonarray)')",
            )
            .unwrap();
        assert_eq!(must, 7, "the planted functions of the known attack are there");
        let eq: i64 = n
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_operator WHERE oprnamespace = 'public'::regnamespace AND oprname = '='
                   AND (oprleft, oprright) IN (('name'::regtype, 'name'::regtype), ('oid'::regtype, 'oid'::regtype), ('text'::regtype, 'text'::regtype))",
            )
            .unwrap();
        assert_eq!(eq, 3);
        // The attack works on an unprotected function in a superuser session.
        let err = victim(n).batch_execute("SELECT quote_ident('x'::name)").unwrap_err();
        assert!(spock_tests::describe_pg_error(&err).contains("planted quote_ident(name) ran"), "{err}");
        n.execute("TRUNCATE planted.calls; SELECT setval('planted.seq', 1, false)").unwrap();
    }

    let (mut p, mut s) = (victim(a), victim(b));
    let (dsn_a, dsn_b) = (a.dsn("postgres"), b.dsn("postgres"));
    // Nodes and replication sets.
    call(&mut p, a, &format!("SELECT spock.node_create('n1', '{dsn_a}')"));
    call(&mut s, b, &format!("SELECT spock.node_create('n2', '{dsn_b}')"));
    for (c, n) in [(&mut p, a), (&mut s, b)] {
        call(c, n, "SELECT * FROM spock.node_info()");
        call(c, n, "SELECT spock.spock_version(), spock.spock_version_num(), spock.spock_max_proto_version(), spock.spock_min_proto_version()");
        call(c, n, "SELECT spock.repset_create('extra')");
        call(c, n, "SELECT spock.repset_alter('extra', replicate_truncate := false)");
        call(c, n, "SELECT spock.repset_add_table('default', 'public.t')");
        call(c, n, "SELECT spock.repset_add_table('extra', 'public.t2', columns := '{id,v}', row_filter := 'id > 0')");
        call(c, n, "SELECT * FROM spock.repset_show_table('public.t2', '{extra}')");
        call(c, n, "SELECT spock.repset_remove_table('extra', 'public.t2')");
        call(c, n, "SELECT spock.repset_add_all_tables('extra', '{public}')");
        call(c, n, "SELECT spock.repset_add_seq('default', 'public.s', true)");
        call(c, n, "SELECT spock.sync_seq('public.s')");
        call(c, n, "SELECT spock.repset_add_all_seqs('extra', '{public}')");
        call(c, n, "SELECT spock.repset_remove_seq('extra', 'public.s')");
        call(
            c,
            n,
            &format!(
                "SELECT spock.node_add_interface('{}', 'if2', 'dbname=postgres')",
                if n.name == a.name { "n1" } else { "n2" }
            ),
        );
        call(
            c,
            n,
            &format!("SELECT spock.node_drop_interface('{}', 'if2')", if n.name == a.name { "n1" } else { "n2" }),
        );
        call(c, n, "SELECT * FROM spock.tables");
    }
    // A subscription of b to a, with data.
    call(&mut s, b, &format!("SELECT spock.sub_create('sub1', '{dsn_a}', synchronize_data := true)"));
    call(&mut s, b, "SELECT spock.sub_wait_for_sync('sub1')");
    call(&mut s, b, "SELECT spock.table_wait_for_sync('sub1', 'public.t')");
    call(&mut s, b, "SELECT * FROM spock.sub_show_table('sub1', 'public.t')");
    wait_for(
        "the subscription replicating",
        WAIT,
        || b.query_one::<String>("SELECT status FROM spock.sub_show_status('sub1')").unwrap(),
        "replicating".to_string(),
    );
    call(&mut s, b, "SELECT * FROM spock.sub_show_status()");
    call(&mut p, a, "SELECT spock.replicate_ddl('CREATE TABLE public.t3 (id int PRIMARY KEY)')");
    call(&mut p, a, "SELECT spock.replicate_ddl(ARRAY['ALTER TABLE public.t3 ADD COLUMN v text'])");
    let lsn: String = call_one(&mut p, a, "SELECT spock.sync_event()::text");
    call(&mut p, a, "SELECT spock.wait_slot_confirm_lsn(NULL, NULL)");
    let done: bool = call_one(&mut s, b, &format!("CALL spock.wait_for_sync_event(NULL, 'n1', '{lsn}', 60)"));
    assert!(done);
    let origin: i64 = b.query_one("SELECT node_id::int8 FROM spock.node WHERE node_name = 'n1'").unwrap();
    let done: bool = call_one(&mut s, b, &format!("CALL spock.wait_for_sync_event(NULL, {origin}, '{lsn}', 60)"));
    assert!(done);
    // Not reached: the procedure waits, committing between rounds, until the timeout.
    let done: bool = call_one(&mut s, b, "CALL spock.wait_for_sync_event(NULL, 'n1', 'FFFFFFFF/0', 1)");
    assert!(!done);
    assert_eq!(b.query_one::<i64>("SELECT count(*) FROM public.t").unwrap(), 10, "the data was copied");
    assert!(b.query_one::<bool>("SELECT to_regclass('public.t3') IS NOT NULL").unwrap(), "the DDL was applied");
    call(&mut s, b, "SELECT spock.sub_add_repset('sub1', 'extra')");
    call(&mut s, b, "SELECT spock.sub_remove_repset('sub1', 'extra')");
    call(&mut s, b, "SELECT spock.sub_alter_options('sub1', '{\"apply_delay\": \"0\", \"forward_origins\": []}')");
    call(&mut s, b, "SELECT spock.sub_resync_table('sub1', 'public.t')");
    call(&mut s, b, "SELECT spock.table_wait_for_sync('sub1', 'public.t')");
    call(&mut s, b, "SELECT spock.sub_alter_sync('sub1')");
    call(&mut s, b, "SELECT spock.sub_alter_skiplsn('sub1', '0/0')");
    call(&mut s, b, "SELECT spock.sub_alter_interface('sub1', 'n1')");
    call(&mut s, b, "SELECT spock.sub_disable('sub1', immediate := true)");
    call(&mut s, b, "SELECT spock.sub_enable('sub1', immediate := true)");
    // (the restarted worker must be up before sub_drop stops it again)
    wait_for(
        "the subscription replicating again",
        WAIT,
        || b.query_one::<String>("SELECT status FROM spock.sub_show_status('sub1')").unwrap(),
        "replicating".to_string(),
    );
    call(&mut s, b, "SELECT * FROM spock.progress");
    call(&mut s, b, "SELECT * FROM spock.lag_tracker");
    call(&mut s, b, "SELECT spock.pause_apply_workers(); SELECT spock.resume_apply_workers()");
    call(&mut s, b, "SELECT spock.sub_drop('sub1')");
    call(&mut p, a, "SELECT spock.repset_drop('extra')");
    call(&mut p, a, "SELECT spock.node_drop('n1')");
    call(&mut s, b, "SELECT spock.node_drop('n2')");

    for n in [a, b] {
        let calls: Vec<String> = n.query_one("SELECT coalesce(array_agg(what), '{}') FROM planted.calls").unwrap();
        assert!(calls.is_empty(), "planted objects ran on {}: {calls:?}", n.name);
        assert!(
            !n.query_one::<bool>("SELECT is_called FROM planted.seq").unwrap(),
            "a planted object ran on {}",
            n.name
        );
        let unpinned: Vec<String> = n
            .query_one(
                "SELECT coalesce(array_agg(p.oid::regprocedure::text ORDER BY 1), '{}') FROM pg_catalog.pg_proc p
                  WHERE p.pronamespace = 'spock'::regnamespace AND p.prokind = 'f'
                    AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search\\_path=%')",
            )
            .unwrap();
        assert!(
            unpinned.is_empty(),
            "functions of schema spock without a pinned search_path on {}: {unpinned:?}",
            n.name
        );
    }
}

#[test]
fn autoddl_queries_ignore_operators_planted_by_the_ddl_author() {
    let cluster = Cluster::start_n(1).unwrap();
    let a = cluster.node(0);
    setup_node(a);
    a.execute("ALTER SYSTEM SET spock.enable_ddl_replication = on").unwrap();
    a.execute("ALTER SYSTEM SET spock.include_ddl_repset = on").unwrap();
    reload(a);
    let (functions, operators) = names_used(a);
    assert!(plant(a, &functions, &operators) > 300);
    a.execute("SELECT setval('planted.seq', 1, false)").unwrap();
    // The role that planted them runs DDL with its objects first on its path; AutoDDL
    // reads the catalogs as superuser to place the new table into a set.
    let mut c = connect_as(a, "planter");
    c.batch_execute("SET search_path = public, pg_catalog").unwrap();
    if let Err(e) =
        c.batch_execute("CREATE TABLE public.m (id int PRIMARY KEY); ALTER TABLE public.m ADD COLUMN v text")
    {
        panic!("{}", spock_tests::describe_pg_error(&e));
    }
    assert!(!a.query_one::<bool>("SELECT is_called FROM planted.seq").unwrap(), "a planted object ran as superuser");
    let sets: String = a
        .query_one("SELECT string_agg(s.set_name, ',') FROM spock.replication_set_table t JOIN spock.replication_set s USING (set_id) WHERE t.set_reloid = 'public.m'::regclass")
        .unwrap();
    assert_eq!(sets, "default", "AutoDDL still placed the table");
}

/// The functions of schema spock that every role may call, and why: they only read,
/// and what they read is guarded by the catalogs' privileges.
const PUBLIC_FUNCTIONS: &[&str] = &[
    // (reads the conflict counters for get_subscription_stats)
    "_conflict_counts",
    // (computes spock_gen_slot_name's result from its arguments)
    "_gen_slot_name",
    // (the provider slots' wal_status as the workers read it, for sub_show_status)
    "_slot_status",
    "apply_group_progress",
    "get_subscription_stats",
    "node_info",
    "repset_show_table",
    "retention_horizon",
    "spock_gen_slot_name",
    "spock_max_proto_version",
    "spock_min_proto_version",
    "spock_rs_version",
    "spock_version",
    "spock_version_num",
    "sub_show_status",
    "sub_show_table",
    "sub_wait_for_sync",
    "table_wait_for_sync",
    "wait_slot_confirm_lsn",
];

/// The SQLSTATE of `sql` in `c` ("ok" when it succeeds).
fn sqlstate_in(c: &mut Client, sql: &str) -> String {
    match c.batch_execute(sql) {
        Ok(()) => "ok".to_string(),
        Err(e) => e.as_db_error().map(|d| d.code().code().to_string()).unwrap_or_else(|| e.to_string()),
    }
}

#[test]
fn plain_roles_only_read_and_replication_roles_can_provide() {
    let cluster = Cluster::start_n(2).unwrap();
    let (a, b) = (cluster.node(0), cluster.node(1));
    setup_node(a);
    setup_node(b);
    a.execute("CREATE ROLE plain LOGIN; CREATE ROLE repl LOGIN REPLICATION").unwrap();

    // Which functions PUBLIC may execute.
    let public: Vec<String> = a
        .query_one(
            "SELECT array_agg(DISTINCT proname::text ORDER BY proname::text) FROM pg_proc
              WHERE pronamespace = 'spock'::regnamespace AND has_function_privilege('plain', oid, 'EXECUTE')",
        )
        .unwrap();
    assert_eq!(public, PUBLIC_FUNCTIONS);

    // Every other one: 42501 for a plain role, whatever the arguments (NULLs; for
    // functions in subqueries, which the planner cannot fold away before the
    // privilege check).
    let calls: Vec<String> = a
        .query_one(
            "SELECT array_agg(format('%s spock.%I(%s)', CASE p.prokind WHEN 'p' THEN 'CALL' ELSE 'SELECT' END, p.proname,
                                     CASE WHEN p.prokind = 'p'
                                          THEN (SELECT coalesce(string_agg('NULL::' || format_type(t, NULL), ', ' ORDER BY i), '')
                                                  FROM unnest(coalesce(p.proallargtypes, p.proargtypes::oid[])) WITH ORDINALITY AS x(t, i))
                                          ELSE (SELECT coalesce(string_agg('(SELECT NULL::' || format_type(t, NULL) || ')', ', ' ORDER BY i), '')
                                                  FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS x(t, i)) END)
                              ORDER BY p.proname)
               FROM pg_proc p
              WHERE p.pronamespace = 'spock'::regnamespace AND NOT has_function_privilege('plain', p.oid, 'EXECUTE')",
        )
        .unwrap();
    for expected in [
        "node_create",
        "node_drop",
        "repset_add_table",
        "sub_create",
        "sub_drop",
        "_local_node_id",
        "_provider_info",
        "_queue_message",
        "pause_apply_workers",
    ] {
        assert!(calls.iter().any(|c| c.contains(&format!("spock.{expected}("))), "{expected} is revoked: {calls:?}");
    }
    let mut plain = connect_as(a, "plain");
    for call in &calls {
        assert_eq!(sqlstate_in(&mut plain, call), "42501", "{call}");
    }
    assert_eq!(count_in(a, "SELECT count(*) FROM spock.node"), 1, "nothing changed");

    // The catalogs: DSNs are not readable, nothing is writable.
    for private in ["spock.node_interface", "spock.subscription", "spock.local_sync_status", "spock.queue"] {
        assert_eq!(sqlstate_in(&mut plain, &format!("SELECT * FROM {private}")), "42501", "{private}");
    }
    let writable: Vec<String> = a
        .query_one(
            "SELECT coalesce(array_agg(c.oid::regclass::text), '{}') FROM pg_class c
              WHERE c.relnamespace = 'spock'::regnamespace
                AND CASE WHEN c.relkind = 'S' THEN has_sequence_privilege('plain', c.oid, 'USAGE, UPDATE')
                         WHEN c.relkind IN ('r', 'p', 'v') THEN has_table_privilege('plain', c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
                         ELSE false END",
        )
        .unwrap();
    assert!(writable.is_empty(), "a plain role can write {writable:?}");
    assert_eq!(sqlstate_in(&mut plain, "DELETE FROM spock.replication_set"), "42501");
    // The read-only functions work for it.
    let name: String = plain.query_one("SELECT node_name FROM spock.node_info()", &[]).unwrap().get(0);
    assert_eq!(name, "n1");
    let relname: String =
        plain.query_one("SELECT relname FROM spock.repset_show_table('t', '{default}')", &[]).unwrap().get(0);
    assert_eq!(relname, "t");
    plain.batch_execute("SELECT spock.spock_version(), spock.spock_max_proto_version()").unwrap();
    plain
        .batch_execute(
            "SELECT * FROM spock.tables; SELECT * FROM spock.progress; SELECT * FROM spock.lag_tracker;
             SELECT * FROM spock.apply_workers",
        )
        .unwrap();

    // A subscription whose provider DSN names the replication role: sub_create reads
    // the provider's node and sets as that role, the apply worker streams as it.
    b.execute(&format!(
        "SELECT spock.sub_create('sub_repl', '{} user=repl')",
        a.dsn("postgres").replace(" user=postgres", "")
    ))
    .unwrap();
    wait_replicating(b, 1);
    a.execute("INSERT INTO t VALUES (1, 'through repl')").unwrap();
    wait_for("the row on b", WAIT, || count_in(b, "SELECT count(*) FROM t WHERE v = 'through repl'"), 1);
    // What the subscriber shows about it stays private there.
    b.execute("CREATE ROLE plain LOGIN").unwrap();
    let mut plain_b = connect_as(b, "plain");
    assert_eq!(sqlstate_in(&mut plain_b, "SELECT * FROM spock.sub_show_status()"), "42501");
    assert_eq!(sqlstate_in(&mut plain_b, "SELECT * FROM spock.sub_show_table('sub_repl', 't')"), "42501");

    // The event trigger still cleans up after a plain role drops its replicated table.
    a.execute("GRANT CREATE ON SCHEMA public TO plain").unwrap();
    plain.batch_execute("CREATE TABLE mine (id int PRIMARY KEY)").unwrap();
    a.execute("SELECT spock.repset_add_table('default', 'mine')").unwrap();
    plain.batch_execute("DROP TABLE mine CASCADE").unwrap();
    assert_eq!(count_in(a, "SELECT count(*) FROM spock.replication_set_table WHERE set_reloid::oid >= 16384 AND NOT EXISTS (SELECT FROM pg_class WHERE oid = set_reloid)"), 0);
    assert_eq!(count_in(a, "SELECT count(*) FROM spock.replication_set_table"), 1, "only t is left");
}

fn count_in(n: &TestNode, sql: &str) -> i64 {
    n.query_one::<i64>(sql).unwrap()
}
