//! Delta apply (`spock.set_delta_apply`, docs/multimaster.md) on real servers:
//! nodes adding to the same counters at the same time lose no addition, also
//! across a crash.

use std::process::Output;

use spock_tests::fixtures::{count, full_mesh, mutual_pair, sync_mesh};
use spock_tests::Cluster;
use spock_tests::TestNode;

/// The counters table on `n` (created on each node, as DDL is not replicated here).
fn counters(n: &TestNode, rows: i32) {
    n.execute(&format!(
        "CREATE TABLE counters(id int PRIMARY KEY, balance bigint NOT NULL DEFAULT 0,
                               amount numeric NOT NULL DEFAULT 0, plain bigint NOT NULL DEFAULT 0);
         ALTER TABLE counters REPLICA IDENTITY FULL;
         SELECT spock.repset_add_table('default', 'counters');
         CREATE TABLE additions(id uuid PRIMARY KEY DEFAULT gen_random_uuid(), node text NOT NULL);
         SELECT spock.repset_add_table('default', 'additions');
         SELECT {rows}"
    ))
    .unwrap();
}

/// pgbench on `n`: `transactions` per client (2 clients), each adding 1 to a random
/// counter (and 0.5 to its amount, 1 to its plain column) and recording the
/// addition.
fn pgbench(n: &TestNode, transactions: u32) -> std::thread::JoinHandle<Output> {
    let script = n.root().join("add.sql");
    std::fs::write(
        &script,
        format!(
            "\\set id random(1, 10)
BEGIN;
UPDATE counters SET balance = balance + 1, amount = amount + 0.5, plain = plain + 1 WHERE id = :id;
INSERT INTO additions(node) VALUES ('{}');
COMMIT;
",
            n.name
        ),
    )
    .unwrap();
    let (install, dsn, t) = (n.install().clone(), n.dsn("postgres"), transactions.to_string());
    std::thread::spawn(move || {
        install.command("pgbench").args(["-n", "-c", "2", "-t", &t, "-f"]).arg(&script).arg(&dsn).output().unwrap()
    })
}

fn ok(out: Output) {
    assert!(out.status.success(), "pgbench: {}", String::from_utf8_lossy(&out.stderr));
}

/// (sum of balance, sum of amount as text, additions) on `n`.
fn sums(n: &TestNode) -> (i64, String, i64) {
    (
        count(n, "SELECT sum(balance)::int8 FROM counters"),
        n.query_text("SELECT sum(amount)::text FROM counters").unwrap(),
        count(n, "SELECT count(*) FROM additions"),
    )
}

#[test]
fn two_nodes_adding_to_the_same_counters_lose_no_addition() {
    let c = Cluster::start_n(2).unwrap();
    let (n1, n2) = (c.node(0), c.node(1));
    mutual_pair(n1, n2);
    for n in [n1, n2] {
        counters(n, 10);
    }
    n1.execute("INSERT INTO counters(id) SELECT g FROM generate_series(1, 10) g").unwrap();
    n1.execute("CREATE TABLE keyless(v bigint); CREATE TABLE notes(id int PRIMARY KEY, v text, n bigint)").unwrap();

    // Bad input: not FULL, no key, a type it cannot add, no such column.
    let e = n1.query_text("SELECT spock.set_delta_apply('notes', 'n')::text").unwrap_err().to_string();
    assert!(e.contains("55000") && e.contains("REPLICA IDENTITY FULL"), "{e}");
    n1.execute("ALTER TABLE keyless REPLICA IDENTITY FULL; ALTER TABLE notes REPLICA IDENTITY FULL").unwrap();
    let e = n1.query_text("SELECT spock.set_delta_apply('keyless', 'v')::text").unwrap_err().to_string();
    assert!(e.contains("55000") && e.contains("primary key"), "{e}");
    let e = n1.query_text("SELECT spock.set_delta_apply('notes', 'v')::text").unwrap_err().to_string();
    assert!(e.contains("42804"), "{e}");
    let e = n1.query_text("SELECT spock.set_delta_apply('notes', 'nope')::text").unwrap_err().to_string();
    assert!(e.contains("42703"), "{e}");
    let e = n1.query_text("SECURITY LABEL FOR spock ON TABLE notes IS 'delta_apply'").unwrap_err().to_string();
    assert!(e.contains("22023"), "{e}");
    let e = n1.query_text("SECURITY LABEL FOR spock ON COLUMN notes.n IS 'other'").unwrap_err().to_string();
    assert!(e.contains("22023"), "{e}");

    // Marked on n1; the marks reach n2 through the DDL queue.
    n1.execute(
        "SELECT spock.set_delta_apply('counters', 'balance'); SELECT spock.set_delta_apply('counters', 'amount')",
    )
    .unwrap();
    sync_mesh(&[n1, n2]);
    let marks = "SELECT string_agg(a.attname || '=' || l.label, ',' ORDER BY a.attname) FROM pg_seclabel l
                   JOIN pg_attribute a ON a.attrelid = l.objoid AND a.attnum = l.objsubid
                  WHERE l.provider = 'spock' AND l.objoid = 'counters'::regclass";
    assert_eq!(n2.query_text(marks).unwrap(), "amount=delta_apply,balance=delta_apply");

    let (b1, b2) = (pgbench(n1, 500), pgbench(n2, 500));
    ok(b1.join().unwrap());
    ok(b2.join().unwrap());
    sync_mesh(&[n1, n2]);
    for n in [n1, n2] {
        assert_eq!(sums(n), (2000, "1000.0".to_string(), 2000), "on {}", n.name);
    }
    let rows =
        "SELECT string_agg(id || ':' || balance || ':' || amount || ':' || plain, ',' ORDER BY id) FROM counters";
    assert_eq!(n1.query_text(rows).unwrap(), n2.query_text(rows).unwrap());
    // The plain column is last-update-wins: additions made at the same time on
    // both nodes are lost there (for comparison).
    eprintln!("plain column: {} of 2000 additions kept", count(n1, "SELECT sum(plain)::int8 FROM counters"));
}

#[test]
fn three_nodes_adding_to_the_same_counters_through_a_crash_lose_no_addition() {
    let c = Cluster::start_n(3).unwrap();
    let (n1, n2, n3) = (c.node(0), c.node(1), c.node(2));
    full_mesh(&[n1, n2, n3]);
    for n in [n1, n2, n3] {
        counters(n, 10);
    }
    n1.execute("INSERT INTO counters(id) SELECT g FROM generate_series(1, 10) g").unwrap();
    n1.execute(
        "SELECT spock.set_delta_apply('counters', 'balance'); SELECT spock.set_delta_apply('counters', 'amount')",
    )
    .unwrap();
    sync_mesh(&[n1, n2, n3]);

    let (b1, b2, b3) = (pgbench(n1, 600), pgbench(n2, 600), pgbench(n3, 600));
    spock_tests::wait_for(
        "n3 under way",
        std::time::Duration::from_secs(120),
        || count(n3, "SELECT count(*) FROM additions WHERE node = 'n3'") > 100,
        true,
    );
    // n3 crashes in the middle of it all (its pgbench fails), then starts again.
    n3.kill9().unwrap();
    let _ = b3.join().unwrap();
    n3.restart().unwrap();
    ok(pgbench(n3, 200).join().unwrap());
    ok(b1.join().unwrap());
    ok(b2.join().unwrap());
    sync_mesh(&[n1, n2, n3]);
    let additions = count(n1, "SELECT count(*) FROM additions");
    assert!(additions > 2400, "{additions}");
    for n in [n1, n2, n3] {
        let (balance, amount, seen) = sums(n);
        assert_eq!(seen, additions, "additions on {}", n.name);
        assert_eq!(balance, additions, "balance on {}", n.name);
        assert_eq!(amount, format!("{:.1}", additions as f64 / 2.0), "amount on {}", n.name);
    }
}

#[test]
fn a_joining_node_gets_the_marks_with_the_structure() {
    let c = Cluster::start_n(2).unwrap();
    let (n1, n2) = (c.node(0), c.node(1));
    for n in [n1, n2] {
        n.execute("CREATE EXTENSION spock").unwrap();
    }
    n1.execute(&format!("SELECT spock.node_create('n1', '{}')", n1.dsn("postgres"))).unwrap();
    counters(n1, 10);
    n1.execute(
        "INSERT INTO counters(id) SELECT g FROM generate_series(1, 10) g;
         SELECT spock.set_delta_apply('counters', 'balance');
         SELECT spock.set_delta_apply('counters', 'amount')",
    )
    .unwrap();
    n2.execute(&format!("CALL spock.add_node('n1', '{}', 'n2', '{}')", n1.dsn("postgres"), n2.dsn("postgres")))
        .unwrap();
    assert_eq!(
        n2.query_text(
            "SELECT string_agg(a.attname || '=' || l.label, ',' ORDER BY a.attname) FROM pg_seclabel l
               JOIN pg_attribute a ON a.attrelid = l.objoid AND a.attnum = l.objsubid
              WHERE l.provider = 'spock' AND l.objoid = 'counters'::regclass"
        )
        .unwrap(),
        "amount=delta_apply,balance=delta_apply"
    );
    assert_eq!(n2.query_text("SELECT relreplident::text FROM pg_class WHERE oid = 'counters'::regclass").unwrap(), "f");
    let (b1, b2) = (pgbench(n1, 300), pgbench(n2, 300));
    ok(b1.join().unwrap());
    ok(b2.join().unwrap());
    sync_mesh(&[n1, n2]);
    for n in [n1, n2] {
        assert_eq!(sums(n), (1200, "600.0".to_string(), 1200), "on {}", n.name);
    }
}

#[test]
fn autoddl_carries_a_security_label_that_marks_a_column() {
    let c = Cluster::start_n(2).unwrap();
    let (n1, n2) = (c.node(0), c.node(1));
    mutual_pair(n1, n2);
    for n in [n1, n2] {
        counters(n, 10);
    }
    n1.execute(
        "SET spock.enable_ddl_replication = on; SECURITY LABEL FOR spock ON COLUMN counters.balance IS 'delta_apply'",
    )
    .unwrap();
    sync_mesh(&[n1, n2]);
    assert_eq!(
        n2.query_text(
            "SELECT string_agg(a.attname || '=' || l.label, ',') FROM pg_seclabel l
               JOIN pg_attribute a ON a.attrelid = l.objoid AND a.attnum = l.objsubid
              WHERE l.provider = 'spock' AND l.objoid = 'counters'::regclass"
        )
        .unwrap(),
        "balance=delta_apply"
    );
}
