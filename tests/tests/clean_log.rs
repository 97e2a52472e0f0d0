//! Normal operation leaves no ERROR in any server log: on real servers, a node
//! that already has rows is copied (structure and data) by a second one and the
//! two replicate both ways; both write; a table is resynchronised (emptied first,
//! then merged by key); a subscription is disabled and enabled again, then
//! resynchronised whole (`sub_resync`); a third node
//! joins with `CALL spock.add_node`; the three write; one node is restarted cleanly
//! and they write again; the third node leaves with `CALL spock.remove_node`.
//! Once everything has replicated, no node has logged a line with `ERROR:`,
//! `FATAL:` or `PANIC:` since the servers started.
//!
//! Why: an operator watches the logs for errors. If the ordinary steps of
//! docs/operations.md and docs/sync.md log errors (a worker ended by a signal, a
//! slot dropped twice, a peer's restart reported as a failure), real failures
//! drown among them and alerts fire for nothing. The test provokes no error on
//! purpose: every line it finds is one normal operation produced.

use std::time::Duration;

use spock_tests::fixtures::{count, sync_mesh, sync_through, wait_replicating};
use spock_tests::{wait_for, Cluster, TestNode};

/// The log levels an operator takes for a failure.
const LEVELS: [&str; 3] = ["ERROR:", "FATAL:", "PANIC:"];

/// Where each node's log stood when a step began, to say which step logged a line.
struct Steps<'a> {
    nodes: Vec<&'a TestNode>,
    /// (step, log offset of each node when it began)
    marks: Vec<(String, Vec<usize>)>,
}

impl<'a> Steps<'a> {
    fn new(nodes: &[&'a TestNode]) -> Steps<'a> {
        Steps { nodes: nodes.to_vec(), marks: Vec::new() }
    }

    /// A step begins now.
    fn step(&mut self, name: &str) {
        let offsets = self.nodes.iter().map(|n| n.log_offset()).collect();
        self.marks.push((name.to_string(), offsets));
    }

    /// The lines at one of [`LEVELS`] every node logged since the first step, each
    /// with its node, the step during which it was written and the DETAIL, HINT and
    /// CONTEXT lines of the same process that follow it.
    fn offending_lines(&self) -> Vec<String> {
        let mut found = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let start = self.marks[0].1[i];
            let log = n.log_since(start);
            let mut pos = start;
            let lines: Vec<&str> = log.split_inclusive('\n').collect();
            for (j, line) in lines.iter().enumerate() {
                let at = pos;
                pos += line.len();
                if !LEVELS.iter().any(|l| line.contains(l)) {
                    continue;
                }
                let step = self
                    .marks
                    .iter()
                    .rev()
                    .find(|(_, offsets)| offsets[i] <= at)
                    .map(|(s, _)| s.as_str())
                    .unwrap_or("?");
                let mut text = format!("{} [{step}]: {}", n.name, line.trim_end());
                let pid = pid_of(line);
                for next in lines.iter().skip(j + 1).take(6) {
                    if pid.is_some()
                        && pid_of(next) == pid
                        && ["DETAIL:", "HINT:", "CONTEXT:", "STATEMENT:"].iter().any(|k| next.contains(k))
                    {
                        text.push_str(&format!("\n        {}", next.trim_end()));
                    } else if pid_of(next).is_some() {
                        break;
                    }
                }
                found.push(text);
            }
        }
        found
    }
}

/// The process id of a log line (`log_line_prefix = '%m [%p] %q%a '`).
fn pid_of(line: &str) -> Option<&str> {
    let open = line.find(" [")?;
    let close = line[open..].find("] ")?;
    let pid = &line[open + 2..open + close];
    pid.chars().all(|c| c.is_ascii_digit()).then_some(pid)
}

/// Rows of `t` on `n`, as `count:md5`.
fn rows(n: &TestNode) -> String {
    n.query_text("SELECT count(*) || ':' || coalesce(md5(string_agg(id || '=' || v, ',' ORDER BY id)), '') FROM t")
        .unwrap()
}

/// Waits until `n` has `want` subscriptions, all replicating.
fn all_replicating(n: &TestNode, want: i64) {
    wait_for(
        &format!("{want} subscriptions of {} replicating", n.name),
        Duration::from_secs(120),
        || {
            n.query_text(
                "SELECT format('%s of %s', count(*) FILTER (WHERE status = 'replicating'), count(*))
                   FROM spock.sub_show_status()",
            )
            .unwrap()
        },
        format!("{want} of {want}"),
    );
}

#[test]
fn normal_operation_logs_no_error_on_any_node() {
    let c = Cluster::start_n(3).unwrap();
    let (n1, n2, n3) = (c.node(0), c.node(1), c.node(2));
    let mut steps = Steps::new(&[n1, n2, n3]);

    // n1 has rows before anyone subscribes; n2 copies structure and data from it.
    steps.step("initial sync n1 -> n2");
    for n in [n1, n2, n3] {
        n.execute("CREATE EXTENSION spock").unwrap();
    }
    for n in [n1, n2] {
        n.execute(&format!("SELECT spock.node_create('{}', '{}')", n.name, n.dsn("postgres"))).unwrap();
    }
    n1.execute(
        "CREATE TABLE t(id int PRIMARY KEY, v text);
         SELECT spock.repset_add_table('default', 't');
         INSERT INTO t SELECT g, 'n1 before' FROM generate_series(1, 1000) g",
    )
    .unwrap();
    n2.execute(&format!(
        "SELECT spock.sub_create('sub_n1_n2', '{}', synchronize_structure := true, synchronize_data := true)",
        n1.dsn("postgres")
    ))
    .unwrap();
    n2.execute("SET statement_timeout = '120s'; SELECT spock.sub_wait_for_sync('sub_n1_n2')").unwrap();
    assert_eq!(count(n2, "SELECT count(*) FROM t"), 1000);
    // Sets are per node: n2 publishes the copied table, and n1 subscribes to n2.
    if count(n2, "SELECT count(*) FROM spock.replication_set_table WHERE set_reloid = 't'::regclass") == 0 {
        n2.execute("SELECT spock.repset_add_table('default', 't')").unwrap();
    }
    n1.execute(&format!("SELECT spock.sub_create('sub_n2_n1', '{}')", n2.dsn("postgres"))).unwrap();
    wait_replicating(n1, 1);
    wait_replicating(n2, 1);

    steps.step("writes on n1 and n2");
    n1.execute(
        "INSERT INTO t SELECT g, 'n1' FROM generate_series(1001, 1100) g; UPDATE t SET v = 'n1 upd' WHERE id <= 50",
    )
    .unwrap();
    n2.execute(
        "INSERT INTO t SELECT g, 'n2' FROM generate_series(2001, 2100) g; DELETE FROM t WHERE id BETWEEN 900 AND 949",
    )
    .unwrap();
    sync_mesh(&[n1, n2]);
    assert_eq!(rows(n1), rows(n2));

    steps.step("sub_resync_table truncate := true");
    n2.execute("SELECT spock.sub_resync_table('sub_n1_n2', 't', truncate := true)").unwrap();
    n2.execute("SELECT spock.table_wait_for_sync('sub_n1_n2', 't')").unwrap();
    sync_mesh(&[n1, n2]);

    steps.step("sub_resync_table truncate := false");
    n2.execute("SELECT spock.sub_resync_table('sub_n1_n2', 't', truncate := false)").unwrap();
    n2.execute("SELECT spock.table_wait_for_sync('sub_n1_n2', 't')").unwrap();
    sync_mesh(&[n1, n2]);
    assert_eq!(rows(n1), rows(n2));

    steps.step("sub_disable / sub_enable");
    n2.execute("SELECT spock.sub_disable('sub_n1_n2')").unwrap();
    wait_for(
        "n2's subscription from n1 disabled",
        Duration::from_secs(60),
        || n2.query_text("SELECT status FROM spock.sub_show_status('sub_n1_n2')").unwrap(),
        "disabled".to_string(),
    );
    n1.execute("INSERT INTO t SELECT g, 'n1 while disabled' FROM generate_series(3001, 3050) g").unwrap();
    n2.execute("SELECT spock.sub_enable('sub_n1_n2')").unwrap();
    wait_replicating(n2, 1);
    // The same the other way, the worker stopped at once (`immediate`).
    n1.execute("SELECT spock.sub_disable('sub_n2_n1', immediate := true)").unwrap();
    n2.execute("INSERT INTO t SELECT g, 'n2 while disabled' FROM generate_series(3051, 3100) g").unwrap();
    n1.execute("SELECT spock.sub_enable('sub_n2_n1', immediate := true)").unwrap();
    wait_replicating(n1, 1);
    sync_mesh(&[n1, n2]);
    assert_eq!(rows(n1), rows(n2));

    steps.step("sub_resync (the way back from a lost slot, here with the slot intact)");
    n2.execute("SELECT spock.sub_resync('sub_n1_n2')").unwrap();
    n2.execute("SET statement_timeout = '120s'; SELECT spock.sub_wait_for_sync('sub_n1_n2')").unwrap();
    wait_replicating(n2, 1);
    n1.execute("INSERT INTO t SELECT g, 'n1 after resync' FROM generate_series(3101, 3150) g").unwrap();
    sync_mesh(&[n1, n2]);
    assert_eq!(rows(n1), rows(n2));

    steps.step("add_node n3 from n1");
    n3.execute(&format!("CALL spock.add_node('n1', '{}', 'n3', '{}')", n1.dsn("postgres"), n3.dsn("postgres")))
        .unwrap();
    for n in [n1, n2, n3] {
        all_replicating(n, 2);
    }

    steps.step("writes on n1, n2, n3");
    n1.execute("INSERT INTO t SELECT g, 'n1 mesh' FROM generate_series(4001, 4050) g").unwrap();
    n2.execute("INSERT INTO t SELECT g, 'n2 mesh' FROM generate_series(5001, 5050) g").unwrap();
    n3.execute("INSERT INTO t SELECT g, 'n3 mesh' FROM generate_series(6001, 6050) g; UPDATE t SET v = 'n3 upd' WHERE id BETWEEN 100 AND 120")
        .unwrap();
    sync_mesh(&[n1, n2, n3]);
    assert_eq!(rows(n1), rows(n2));
    assert_eq!(rows(n1), rows(n3));

    steps.step("restart n2");
    n2.restart().unwrap();
    for n in [n1, n2, n3] {
        all_replicating(n, 2);
    }
    steps.step("writes after the restart");
    n1.execute("INSERT INTO t SELECT g, 'n1 after restart' FROM generate_series(7001, 7050) g").unwrap();
    n2.execute("INSERT INTO t SELECT g, 'n2 after restart' FROM generate_series(8001, 8050) g").unwrap();
    n3.execute("INSERT INTO t SELECT g, 'n3 after restart' FROM generate_series(9001, 9050) g").unwrap();
    sync_mesh(&[n1, n2, n3]);
    assert_eq!(rows(n1), rows(n2));
    assert_eq!(rows(n1), rows(n3));

    steps.step("remove_node n3");
    n3.execute(&format!("CALL spock.remove_node('n3', '{}')", n3.dsn("postgres"))).unwrap();
    for n in [n1, n2] {
        all_replicating(n, 1);
    }

    steps.step("writes after remove_node, quiesce");
    n1.execute("INSERT INTO t SELECT g, 'n1 last' FROM generate_series(10001, 10050) g").unwrap();
    n2.execute("INSERT INTO t SELECT g, 'n2 last' FROM generate_series(11001, 11050) g").unwrap();
    sync_through(n1, n2);
    sync_through(n2, n1);
    assert_eq!(rows(n1), rows(n2));
    // Everything of n3 is gone: no apply worker left on n3, no walsender of it on
    // the others, so nothing still to be logged about it.
    let spock_processes = "SELECT count(*) FROM pg_stat_activity
                            WHERE backend_type IN ('spock apply', 'walsender') OR application_name LIKE '%n3%'";
    wait_for("no spock process on n3", Duration::from_secs(60), || count(n3, spock_processes), 0);
    for n in [n1, n2] {
        wait_for(
            &format!("one apply worker and one walsender on {}", n.name),
            Duration::from_secs(60),
            || {
                n.query_text(
                    "SELECT format('%s apply %s walsender',
                            count(*) FILTER (WHERE backend_type = 'spock apply'),
                            count(*) FILTER (WHERE backend_type = 'walsender'))
                       FROM pg_stat_activity",
                )
                .unwrap()
            },
            "1 apply 1 walsender".to_string(),
        );
    }

    let offending = steps.offending_lines();
    assert!(
        offending.is_empty(),
        "{} lines at ERROR, FATAL or PANIC during normal operation (node [step]: line):\n{}",
        offending.len(),
        offending.join("\n")
    );
}
