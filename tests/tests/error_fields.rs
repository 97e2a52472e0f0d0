//! An ERROR that passes through spock's hooks reaches the client as PostgreSQL
//! raised it: same SQLSTATE, message, DETAIL, HINT, CONTEXT lines, cursor position
//! (or internal query and position), schema/table/column/datatype/constraint
//! names and source location as on a server without spock. The hooks are the
//! ProcessUtility hook (AutoDDL: DO, CALL, CREATE/ALTER ... run through it) and the
//! ExecutorStart hook (removals: a function run while the executor starts).
//!
//! Each statement runs on a node with spock preloaded (the extension created, a
//! node, AutoDDL on) and on one without spock, each time in a new session; the
//! error fields must be equal. A few fields are also pinned to their expected text,
//! so that the comparison cannot pass with both sides wrong.

use spock_tests::fixtures::setup_node;
use spock_tests::postgres::error::ErrorPosition;
use spock_tests::{Cluster, NodeOptions, TestNode};

/// What a client sees of an error.
#[derive(Debug, PartialEq)]
struct Fields {
    severity: String,
    sqlstate: String,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
    context: Option<String>,
    position: Option<ErrorPosition>,
    schema: Option<String>,
    table: Option<String>,
    column: Option<String>,
    datatype: Option<String>,
    constraint: Option<String>,
    file: Option<String>,
    line: Option<u32>,
    routine: Option<String>,
}

/// The error `sql` fails with on `n`, in a new session (simple query protocol).
fn error_of(n: &TestNode, sql: &str) -> Fields {
    let e = n.connect().unwrap().batch_execute(sql).expect_err(sql);
    fields(&e, sql)
}

/// The error `sql` fails with on `n` through the extended query protocol, in a new
/// session that first runs `setup`.
fn extended_error_of(n: &TestNode, setup: &str, sql: &str) -> Fields {
    let mut c = n.connect().unwrap();
    c.batch_execute(setup).unwrap();
    let e = c.query(sql, &[]).expect_err(sql);
    fields(&e, sql)
}

fn fields(e: &spock_tests::postgres::Error, sql: &str) -> Fields {
    let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: not a server error: {e}"));
    let own = |s: Option<&str>| s.map(str::to_string);
    Fields {
        severity: db.severity().to_string(),
        sqlstate: db.code().code().to_string(),
        message: db.message().to_string(),
        detail: own(db.detail()),
        hint: own(db.hint()),
        context: own(db.where_()),
        position: db.position().cloned(),
        schema: own(db.schema()),
        table: own(db.table()),
        column: own(db.column()),
        datatype: own(db.datatype()),
        constraint: own(db.constraint()),
        file: own(db.file()),
        line: db.line(),
        routine: own(db.routine()),
    }
}

/// Objects the statements below use, on both nodes.
const SETUP: &str = r#"
    CREATE SCHEMA errs;
    CREATE FUNCTION errs.inner_fn() RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'inner failure' USING ERRCODE = '22012', DETAIL = 'inner detail', HINT = 'inner hint';
    END$$;
    CREATE FUNCTION errs.outer_fn() RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM errs.inner_fn();
    END$$;
    CREATE PROCEDURE errs.failing_proc(n int) LANGUAGE plpgsql AS $$
    BEGIN
        IF n > 0 THEN
            CALL errs.failing_proc(n - 1);
        ELSE
            RAISE EXCEPTION 'procedure failure' USING ERRCODE = 'P7777', DETAIL = 'at depth zero';
        END IF;
    END$$;
    CREATE FUNCTION errs.ddl_fn() RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        EXECUTE 'DO $d$BEGIN RAISE EXCEPTION ''deep'' USING HINT = ''from a DO in EXECUTE''; END$d$';
    END$$;
    CREATE TABLE errs.checked (a int);
    INSERT INTO errs.checked VALUES (-1);
    CREATE FUNCTION errs.prune_key() RETURNS int STABLE LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'pruning failure' USING ERRCODE = 'P9999', DETAIL = 'raised while the executor starts';
    END$$;
    CREATE TABLE errs.parts (a int) PARTITION BY LIST (a);
    CREATE TABLE errs.parts_1 PARTITION OF errs.parts FOR VALUES IN (1);
    CREATE TABLE errs.parts_2 PARTITION OF errs.parts FOR VALUES IN (2);
"#;

/// Failing utility statements (each reaches ProcessUtility from the client).
const UTILITY: &[&str] = &[
    // The report of the bug: the CONTEXT line of a DO block's RAISE.
    "DO $$BEGIN RAISE EXCEPTION 'boom'; END$$",
    // Every field RAISE can set, with a SQLSTATE pgrx has no name for.
    "DO $$BEGIN RAISE EXCEPTION 'all fields' USING ERRCODE = 'P1234', DETAIL = 'the detail', HINT = 'the hint',
        SCHEMA = 'a_schema', TABLE = 'a_table', COLUMN = 'a_column', DATATYPE = 'a_type', CONSTRAINT = 'a_constraint';
     END$$",
    // Nested function calls: one CONTEXT line per level.
    "DO $$BEGIN PERFORM errs.outer_fn(); END$$",
    // CALL, recursively (a utility statement inside a utility statement).
    "CALL errs.failing_proc(2)",
    // A DO run by EXECUTE inside a function called by SELECT.
    "SELECT errs.ddl_fn()",
    // A parse error inside PL/pgSQL: internal query and position.
    "DO $$BEGIN PERFORM no_such_column FROM pg_class; END$$",
    // A run-time error inside PL/pgSQL: a "SQL statement" CONTEXT line.
    "DO $$BEGIN PERFORM 1/0; END$$",
    // DDL errors: the cursor position of a type that does not exist ...
    "CREATE TABLE errs.bad (a no_such_type)",
    // ... and the schema, table and constraint of a violated CHECK.
    "ALTER TABLE errs.checked ADD CONSTRAINT positive CHECK (a > 0)",
    // A DDL statement AutoDDL queues (both halves of the hook run), then a failing
    // one, in one string (one implicit transaction, rolled back).
    "CREATE TABLE errs.fine (a int); DO $$BEGIN RAISE EXCEPTION 'second statement'; END$$",
];

#[test]
fn errors_keep_their_fields_through_spock_hooks() {
    let cluster = Cluster::start(vec![
        NodeOptions::new("spock").setting("spock.enable_ddl_replication", "on"),
        NodeOptions::new("plain").without_preload(),
    ])
    .expect("start two PostgreSQL 18 nodes");
    let (spock, plain) = (cluster.node(0), cluster.node(1));
    setup_node(spock);
    for n in [spock, plain] {
        n.execute(SETUP).unwrap();
    }
    // AutoDDL still queues the DDL that succeeds.
    let queued: i64 = spock
        .query_one("SELECT count(*) FROM spock.queue WHERE message_type = 'D' AND message::text LIKE '%errs.outer_fn%'")
        .unwrap();
    assert_eq!(queued, 1);

    for sql in UTILITY {
        assert_eq!(error_of(spock, sql), error_of(plain, sql), "{sql}");
    }

    // A function run by initial partition pruning, while the executor starts a
    // generic plan (ExecutorStart hook; extended protocol, so no EXECUTE statement).
    let setup = "SET plan_cache_mode = force_generic_plan";
    let pruning = "SELECT * FROM errs.parts WHERE a = errs.prune_key()";
    let through_executor = extended_error_of(spock, setup, pruning);
    assert_eq!(through_executor, extended_error_of(plain, setup, pruning));
    assert_eq!(through_executor.sqlstate, "P9999");
    assert_eq!(through_executor.context.as_deref(), Some("PL/pgSQL function errs.prune_key() line 3 at RAISE"));

    // Pinned: what a server without spock says.
    let boom = error_of(spock, UTILITY[0]);
    assert_eq!(
        (boom.sqlstate.as_str(), boom.message.as_str(), boom.context.as_deref()),
        ("P0001", "boom", Some("PL/pgSQL function inline_code_block line 1 at RAISE"))
    );
    let all = error_of(spock, UTILITY[1]);
    assert_eq!(all.sqlstate, "P1234");
    assert_eq!((all.detail.as_deref(), all.hint.as_deref()), (Some("the detail"), Some("the hint")));
    assert_eq!(
        (all.schema.as_deref(), all.table.as_deref(), all.column.as_deref()),
        (Some("a_schema"), Some("a_table"), Some("a_column"))
    );
    assert_eq!((all.datatype.as_deref(), all.constraint.as_deref()), (Some("a_type"), Some("a_constraint")));
    let nested = error_of(spock, UTILITY[2]);
    assert_eq!(nested.sqlstate, "22012");
    assert_eq!(
        nested.context.as_deref(),
        Some(
            "PL/pgSQL function errs.inner_fn() line 3 at RAISE\n\
             SQL statement \"SELECT errs.inner_fn()\"\n\
             PL/pgSQL function errs.outer_fn() line 3 at PERFORM\n\
             SQL statement \"SELECT errs.outer_fn()\"\n\
             PL/pgSQL function inline_code_block line 1 at PERFORM"
        )
    );
    let internal = error_of(spock, UTILITY[5]);
    assert_eq!(
        internal.position,
        Some(ErrorPosition::Internal { position: 8, query: "SELECT no_such_column FROM pg_class".to_string() })
    );
    let bad_type = error_of(spock, UTILITY[7]);
    assert_eq!((bad_type.sqlstate.as_str(), bad_type.position), ("42704", Some(ErrorPosition::Original(26))));
    let check = error_of(spock, UTILITY[8]);
    assert_eq!(
        (check.sqlstate.as_str(), check.schema.as_deref(), check.table.as_deref(), check.constraint.as_deref()),
        ("23514", Some("errs"), Some("checked"), Some("positive"))
    );
}

/// Errors and warnings raised inside spock's SQL functions come without the
/// CONTEXT lines of spock's own PL/pgSQL frames, as from Spock's C functions; the
/// lines of the caller's frames stay.
#[test]
fn spock_functions_report_errors_without_their_own_frames() {
    let cluster = Cluster::start(vec![NodeOptions::new("spock")]).expect("start a node");
    let n = cluster.node(0);
    setup_node(n);
    let direct = error_of(n, "SELECT spock.repset_add_table('nonexisting', 't')");
    assert_eq!((direct.sqlstate.as_str(), direct.message.as_str()), ("42704", "replication set nonexisting not found"));
    assert_eq!(direct.context, None);
    let from_do = error_of(n, "DO $$BEGIN PERFORM spock.repset_add_table('nonexisting', 't'); END$$");
    assert_eq!(
        from_do.context.as_deref(),
        Some(
            "SQL statement \"SELECT spock.repset_add_table('nonexisting', 't')\"\n\
             PL/pgSQL function inline_code_block line 1 at PERFORM"
        )
    );
    // The server log keeps the same report.
    let log = n.log_offset();
    let _ = error_of(n, "SELECT spock.repset_create('')");
    n.wait_for_log(log, "replication set name cannot be empty", 1, std::time::Duration::from_secs(10));
    assert!(!n.log_since(log).contains("PL/pgSQL function spock."), "{}", n.log_since(log));
}
