//! `CALL spock.add_node(...)` (Zodan's procedure, sql/api/operations.sql) on real
//! servers: a node joins a running mesh in one call while every node writes; a
//! failed join says which step failed, resumes when called again, and
//! `remove_node` undoes it on every node.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use spock_tests::fixtures::count;
use spock_tests::{wait_for, Cluster, TestNode};

/// md5 of a query's rows in order.
fn digest(n: &TestNode, sql: &str) -> String {
    n.query_one::<String>(&format!(
        "SELECT coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') FROM ({sql}) x"
    ))
    .unwrap()
}

fn pgbench_digests(n: &TestNode) -> Vec<String> {
    [
        "SELECT aid, bid, abalance FROM pgbench_accounts",
        "SELECT bid, bbalance FROM pgbench_branches",
        "SELECT tid, bid, tbalance FROM pgbench_tellers",
        "SELECT tid, bid, aid, delta, mtime FROM pgbench_history",
    ]
    .iter()
    .map(|q| digest(n, q))
    .collect()
}

/// `CALL spock.add_node(...)` on `new` from `src`, with `extra` arguments.
fn add_node(new: &TestNode, src: &TestNode, extra: &str) -> Result<(), String> {
    new.execute(&format!(
        "CALL spock.add_node('{}', '{}', '{}', '{}'{extra})",
        src.name,
        src.dsn("postgres"),
        new.name,
        new.dsn("postgres")
    ))
    .map_err(|e| e.to_string())
}

/// SQLSTATE, message and hint of a failing `add_node` on `new` from `src`.
fn add_node_error(new: &TestNode, src: &TestNode) -> (String, String, String) {
    new.error_of(&format!(
        "CALL spock.add_node('{}', '{}', '{}', '{}')",
        src.name,
        src.dsn("postgres"),
        new.name,
        new.dsn("postgres")
    ))
}

/// pgbench on `n` until `stop_pgbench` (a client per node: 2 vCPUs serve every
/// node). It runs under runuser: its connection is ended on the server.
fn pgbench(n: &TestNode) -> Child {
    n.install()
        .command("pgbench")
        .args(["-n", "-c", "1", "-T", "3600", &n.dsn("postgres")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn stop_pgbench(n: &TestNode, bench: &mut Child) {
    wait_for(
        "pgbench's connection ended",
        Duration::from_secs(30),
        || {
            n.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgbench'")
                .unwrap();
            bench.try_wait().unwrap().is_some()
        },
        true,
    );
}

/// Waits until `n`'s subscriptions are as `want` says ("replicating of all", at
/// most 60 s: an apply worker may be restarting after a deadlock between the
/// workers of different subscriptions, which PostgreSQL resolves by cancelling
/// one), and returns them.
fn subscriptions(n: &TestNode, want: &str) -> String {
    let sql = "SELECT format('%s of %s', count(*) FILTER (WHERE status = 'replicating'), count(*)) FROM spock.sub_show_status()";
    wait_for(
        &format!("subscriptions of {}", n.name),
        Duration::from_secs(60),
        || n.query_text(sql).unwrap(),
        want.to_string(),
    );
    n.query_text(sql).unwrap()
}

/// Until each node has confirmed everything the others have written.
fn quiesce(nodes: &[&TestNode]) {
    for _ in 0..2 {
        for n in nodes {
            n.execute("SELECT spock.wait_slot_confirm_lsn(NULL, NULL)").unwrap();
        }
    }
}

/// The DSN of `n` as a replication role (`repl`) that reads everything and
/// manages nothing: what the subscriptions connect as.
fn repl_dsn(n: &TestNode) -> String {
    n.dsn("postgres").replace("user=postgres", "user=repl")
}

/// `add_node` on `new` from `src` with replication DSNs, managing the nodes as
/// the superuser (admin_conninfo).
fn add_node_as_repl(new: &TestNode, src: &TestNode, extra: &str) -> Result<(), String> {
    new.execute(&format!(
        "CALL spock.add_node('{}', '{}', '{}', '{}', admin_conninfo := 'user=postgres'{extra})",
        src.name,
        repl_dsn(src),
        new.name,
        repl_dsn(new)
    ))
    .map_err(|e| e.to_string())
}

#[test]
fn a_fourth_node_joins_a_three_node_mesh_under_pgbench_on_every_node() {
    let c = Cluster::start_n(4).unwrap();
    let (n1, n2, n3, n4) = (c.node(0), c.node(1), c.node(2), c.node(3));
    for n in [n1, n2, n3, n4] {
        // What a provider role needs for a copy (docs/operations.md).
        n.execute(
            "CREATE EXTENSION spock;
             CREATE ROLE repl LOGIN REPLICATION IN ROLE pg_read_all_data;
             GRANT EXECUTE ON FUNCTION spock.pause_apply_workers(), spock.resume_apply_workers(),
                   spock._apply_workers_paused(), pg_show_replication_origin_status() TO repl",
        )
        .unwrap();
    }
    n1.execute(&format!("SELECT spock.node_create('n1', '{}')", repl_dsn(n1))).unwrap();
    let (ok, _, err) = n1.run_tool("pgbench", &["-i", "-s", "2", "-q", &n1.dsn("postgres")]).unwrap();
    assert!(ok, "{err}");
    n1.execute("SELECT spock.repset_add_all_tables('default', '{public}')").unwrap();
    n1.execute("SELECT spock.repset_add_table('default_insert_only', 'pgbench_history')").unwrap();
    // The mesh of three is built with add_node too: n2 from n1 (no other node),
    // n3 from n1 (n2 the other node). Replication connects as repl.
    add_node_as_repl(n2, n1, "").unwrap();
    add_node_as_repl(n3, n1, "").unwrap();
    for n in [n1, n2, n3] {
        assert_eq!(subscriptions(n, "2 of 2"), "2 of 2", "on {}", n.name);
    }
    let mut benches: Vec<Child> = [n1, n2, n3].iter().map(|n| pgbench(n)).collect();
    wait_for(
        "pgbench under way on every node",
        Duration::from_secs(120),
        || count(n3, "SELECT count(*) FROM pgbench_history") > 300,
        true,
    );
    let before: String = n1.query_text("SELECT clock_timestamp()::text").unwrap();
    let started = Instant::now();
    // n4 copies from n2; its changes from n1 and n3 come from them.
    let joined = add_node_as_repl(n4, n2, ", verb := true");
    let took = started.elapsed();
    let after: String = n1.query_text("SELECT clock_timestamp()::text").unwrap();
    if let Err(e) = joined {
        for (n, b) in [n1, n2, n3].iter().zip(&mut benches) {
            stop_pgbench(n, b);
        }
        panic!("add_node: {e}\n{}", n4.log_tail(40));
    }
    for n in [n1, n2, n3, n4] {
        assert_eq!(subscriptions(n, "3 of 3"), "3 of 3", "on {}", n.name);
    }
    for n in [n1, n2, n3, n4] {
        assert_eq!(
            n.query_text("SELECT string_agg(DISTINCT usename, ',') FROM pg_stat_replication").unwrap(),
            "repl",
            "the walsenders of {}",
            n.name
        );
    }
    // n4 writes too once joined; then every node stops.
    let (ok, _, err) = n4.run_tool("pgbench", &["-n", "-c", "1", "-t", "300", &n4.dsn("postgres")]).unwrap();
    assert!(ok, "{err}");
    for (n, b) in [n1, n2, n3].iter().zip(&mut benches) {
        stop_pgbench(n, b);
    }
    quiesce(&[n1, n2, n3, n4]);
    let d = pgbench_digests(n1);
    for n in [n2, n3, n4] {
        assert_eq!(pgbench_digests(n), d, "{} differs from n1", n.name);
    }
    // Writes of every node committed while n4 joined are there (the digests say once).
    let during =
        count(n4, &format!("SELECT count(*) FROM pgbench_history WHERE mtime > '{before}' AND mtime < '{after}'"));
    assert!(during > 0, "pgbench wrote during the join ({took:?})");
    // n4's replication sets are n2's.
    let sets = "SELECT string_agg(s.set_name || ':' || t.set_reloid::text, ',' ORDER BY 1)
                  FROM spock.replication_set s JOIN spock.local_node l ON l.node_id = s.set_nodeid
                  JOIN spock.replication_set_table t ON t.set_id = s.set_id";
    assert_eq!(n4.query_text(sets).unwrap(), n2.query_text(sets).unwrap());
}

/// What of node n3 node `n` has: subscriptions, slots, origins, node rows.
fn traces_of_n3(n: &TestNode) -> String {
    n.query_text(
        "SELECT format('subs %s slots %s origins %s nodes %s',
                (SELECT count(*) FROM spock.subscription WHERE sub_name LIKE '%n3%'),
                (SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE '%n3%'),
                (SELECT count(*) FROM pg_replication_origin WHERE roname LIKE '%n3%'),
                (SELECT count(*) FROM spock.node WHERE node_name = 'n3'))",
    )
    .unwrap()
}

/// n1's subscription from n2.
fn sub_from_n2(n1: &TestNode) -> String {
    n1.query_text(
        "SELECT s.sub_name::text FROM spock.subscription s JOIN spock.node n ON n.node_id = s.sub_origin WHERE n.node_name = 'n2'",
    )
    .unwrap()
}

#[test]
fn a_failed_join_resumes_when_called_again_or_is_undone_by_remove_node() {
    let c = Cluster::start_n(3).unwrap();
    let (n1, n2, n3) = (c.node(0), c.node(1), c.node(2));
    for n in [n1, n2, n3] {
        n.execute("CREATE EXTENSION spock").unwrap();
    }
    n1.execute(&format!("SELECT spock.node_create('n1', '{}')", n1.dsn("postgres"))).unwrap();
    n1.execute(
        "CREATE TABLE t(id int PRIMARY KEY, v text);
         SELECT spock.repset_add_table('default', 't');
         INSERT INTO t SELECT g, 'n1' FROM generate_series(1, 100) g",
    )
    .unwrap();
    add_node(n2, n1, "").unwrap();
    n2.execute("INSERT INTO t SELECT g, 'n2' FROM generate_series(101, 200) g").unwrap();

    // Clear refusals, nothing created.
    let e = n1
        .execute(&format!("CALL spock.add_node('n2', '{}', 'n9', '{}')", n2.dsn("postgres"), n1.dsn("postgres")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("55000") && e.contains("node n1 already"), "{e}");
    let e = n3
        .execute(&format!("CALL spock.add_node('n1', '{}', 'n3', '{}')", n1.dsn("postgres"), n2.dsn("postgres")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("22023") && e.contains("another database"), "{e}");
    let e = n3
        .execute(&format!("CALL spock.add_node('n2', '{}', 'n3', '{}')", n1.dsn("postgres"), n3.dsn("postgres")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("42704") && e.contains("leads to node n1"), "{e}");
    assert_eq!(n3.query_text("SELECT count(*)::text FROM spock.node").unwrap(), "0");

    // A peer is down: the step that needs it fails, saying so; n1 has nothing of n3.
    n2.stop().unwrap();
    let (code, message, hint) = add_node_error(n3, n1);
    assert_eq!(code, "08006", "{message}");
    assert!(message.contains("subscription from node n2"), "{message}");
    assert!(hint.contains("again") && hint.contains("spock.remove_node('n3'"), "says what to do: {hint}");
    assert_eq!(traces_of_n3(n1), "subs 0 slots 0 origins 0 nodes 0");
    n2.restart().unwrap();

    // n1 does not apply n2's changes (its subscription is disabled): the step fails
    // after the slot on n2 exists. remove_node leaves nothing behind anywhere.
    let n1_from_n2 = sub_from_n2(n1);
    n1.execute(&format!("SELECT spock.sub_disable('{n1_from_n2}')")).unwrap();
    let e = add_node(n3, n1, "").unwrap_err();
    assert!(e.contains("55000") && e.contains("the subscription from node n2 is disabled"), "{e}");
    assert_eq!(traces_of_n3(n2), "subs 0 slots 1 origins 0 nodes 0", "the slot for n3 on n2");
    n3.execute(&format!("CALL spock.remove_node('n3', '{}')", n3.dsn("postgres"))).unwrap();
    for n in [n1, n2, n3] {
        assert_eq!(traces_of_n3(n), "subs 0 slots 0 origins 0 nodes 0", "on {}", n.name);
    }

    // n1 lags behind n2 (its apply waits for a lock): the wait gives up after the
    // timeout; once n1 has caught up, the same call resumes and completes.
    n1.execute(&format!("SELECT spock.sub_enable('{n1_from_n2}')")).unwrap();
    spock_tests::fixtures::wait_replicating(n1, 1);
    let mut lock = n1.connect().unwrap();
    lock.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").unwrap();
    n2.execute("INSERT INTO t SELECT g, 'n2 later' FROM generate_series(201, 300) g").unwrap();
    let e = add_node(n3, n1, ", timeout := 2").unwrap_err();
    assert!(e.contains("57014") && e.contains("has not applied the changes of node n2"), "{e}");
    lock.batch_execute("COMMIT").unwrap();
    add_node(n3, n1, "").unwrap();
    for n in [n1, n2, n3] {
        assert_eq!(subscriptions(n, "2 of 2"), "2 of 2", "on {}", n.name);
    }
    n3.execute("INSERT INTO t SELECT g, 'n3' FROM generate_series(301, 400) g").unwrap();
    n1.execute("UPDATE t SET v = 'everywhere' WHERE id % 10 = 0").unwrap();
    quiesce(&[n1, n2, n3]);
    let all = "SELECT id, v FROM t";
    for n in [n2, n3] {
        assert_eq!(digest(n, all), digest(n1, all), "{} differs from n1", n.name);
    }
    assert_eq!(count(n3, "SELECT count(*) FROM t"), 400);
    // A call on a node that has joined changes nothing.
    add_node(n3, n1, "").unwrap();
    assert_eq!(subscriptions(n3, "2 of 2"), "2 of 2");
}

/// The script of the CloudNativePG join Job (deploy/cnpg/common/join-job.yaml),
/// as the ConfigMap holds it.
fn join_script() -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let yaml = std::fs::read_to_string(root.join("deploy/cnpg/common/join-job.yaml")).unwrap();
    let mut lines = yaml.lines().skip_while(|l| l.trim_end() != "  join.sh: |").skip(1);
    let mut script = String::new();
    for line in lines.by_ref() {
        if !line.is_empty() && !line.starts_with("    ") {
            break;
        }
        script.push_str(line.strip_prefix("    ").unwrap_or(""));
        script.push('\n');
    }
    assert!(script.contains("spock.add_node"), "join.sh not found:\n{script}");
    script
}

/// Runs the join Job's script for `n` (source `source`, after `after`) as the Job
/// would, against the local servers: unix sockets for the services, psql of this
/// installation, no TLS (SPOCK_SSLMODE).
fn run_join_script(n: &TestNode, source: Option<&TestNode>, after: &str, peers: &[&TestNode]) -> std::process::Child {
    let sock = |t: &TestNode| {
        t.dsn("postgres").split_whitespace().find_map(|kv| kv.strip_prefix("host=")).unwrap().to_string()
    };
    let port = |t: &TestNode| {
        t.dsn("postgres").split_whitespace().find_map(|kv| kv.strip_prefix("port=")).unwrap().to_string()
    };
    let bindir = n.install().program("psql").parent().unwrap().to_path_buf();
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(join_script())
        .env("PATH", format!("{}:{}", bindir.display(), std::env::var("PATH").unwrap_or_default()))
        .env("SPOCK_NODE", &n.name)
        .env("SPOCK_DBNAME", "postgres")
        .env("SPOCK_LOCAL_HOST", sock(n))
        .env("SPOCK_LOCAL_PORT", port(n))
        .env("SPOCK_NODE_HOST", sock(n))
        .env("SPOCK_NODE_PORT", port(n))
        .env("SPOCK_SOURCE", source.map_or(String::new(), |s| s.name.clone()))
        .env("SPOCK_JOIN_AFTER", after)
        .env("SPOCK_SSLMODE", "disable")
        .env("SPOCK_WAIT_SECONDS", "1")
        .env("PGUSER", "postgres")
        .env("PGPASSWORD", "unused")
        .env("REPLICATOR_PASSWORD", "unused")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for p in peers {
        cmd.env(format!("SPOCK_PEER_HOST_{}", p.name), sock(p)).env(format!("SPOCK_PEER_PORT_{}", p.name), port(p));
    }
    cmd.spawn().unwrap()
}

fn finished(child: std::process::Child, what: &str) -> String {
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what}:\n{text}");
    text
}

#[test]
fn the_cnpg_join_job_builds_the_mesh_with_add_node() {
    let c = Cluster::start_n(3).unwrap();
    let (n1, n2, n3) = (c.node(0), c.node(1), c.node(2));
    // What the Clusters' bootstrap and managed roles give each node.
    for n in [n1, n2, n3] {
        n.execute("CREATE EXTENSION spock; CREATE ROLE spock_replicator LOGIN REPLICATION IN ROLE pg_read_all_data")
            .unwrap();
    }
    finished(run_join_script(n1, None, "", &[n2, n3]), "the Job of n1");
    n1.execute(
        "CREATE TABLE t(id int PRIMARY KEY, v text);
         SELECT spock.repset_add_table('default', 't');
         INSERT INTO t SELECT g, 'n1' FROM generate_series(1, 100) g",
    )
    .unwrap();
    // The Jobs of n2 and n3 start together; n3's waits until n2 has joined.
    let j3 = run_join_script(n3, Some(n1), "n2", &[n1, n2]);
    let j2 = run_join_script(n2, Some(n1), "", &[n1, n3]);
    let out2 = finished(j2, "the Job of n2");
    let out3 = finished(j3, "the Job of n3");
    assert!(out3.contains("node n3 has joined"), "{out3}");
    assert!(out2.contains("node n2 has joined"), "{out2}");
    for n in [n1, n2, n3] {
        assert_eq!(subscriptions(n, "2 of 2"), "2 of 2", "on {}", n.name);
        assert_eq!(
            n.query_text("SELECT string_agg(DISTINCT usename, ',') FROM pg_stat_replication").unwrap(),
            "spock_replicator",
            "the walsenders of {}",
            n.name
        );
    }
    n2.execute("INSERT INTO t VALUES (200, 'n2')").unwrap();
    n3.execute("INSERT INTO t VALUES (300, 'n3')").unwrap();
    quiesce(&[n1, n2, n3]);
    for n in [n1, n2, n3] {
        assert_eq!(count(n, "SELECT count(*) FROM t"), 102, "on {}", n.name);
    }
    // A Job run again changes nothing.
    finished(run_join_script(n3, Some(n1), "n2", &[n1, n2]), "the Job of n3 again");
    assert_eq!(subscriptions(n3, "2 of 2"), "2 of 2");
}
