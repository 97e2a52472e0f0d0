//! Global sequences (`spock.convert_sequence_to_global`, docs/multimaster.md) on real
//! servers: every node hands out its own ids, which never meet another node's, under
//! pgbench on three nodes at once and across a crash; joining nodes get their own.

use spock_tests::fixtures::{count, sync_mesh};
use spock_tests::{Cluster, TestNode};

fn add_node(new: &TestNode, src: &TestNode) {
    new.execute("CREATE EXTENSION spock").unwrap();
    new.execute(&format!(
        "CALL spock.add_node('{}', '{}', '{}', '{}')",
        src.name,
        src.dsn("postgres"),
        new.name,
        new.dsn("postgres")
    ))
    .unwrap();
}

/// This node's id, and the node id its global sequence `seq` hands out.
fn ids_of(n: &TestNode, seq: &str) -> (i64, i64) {
    let local = count(n, "SELECT node_id::int8 FROM spock.local_node");
    let of_seq = count(
        n,
        &format!(
            "SELECT g.node_id::int8 FROM spock.global_sequence g JOIN pg_sequence s ON s.seqrelid = g.seqoid
              WHERE g.seqoid = '{seq}'::regclass AND s.seqincrement = 65536"
        ),
    );
    (local, of_seq)
}

fn insert_exists_conflicts(n: &TestNode) -> i64 {
    count(
        n,
        "SELECT coalesce(sum((spock.get_subscription_stats(sub_id)).confl_insert_exists), 0)::int8 FROM spock.subscription",
    )
}

#[test]
fn nodes_hand_out_ids_that_never_meet_under_pgbench_and_after_a_crash() {
    let c = Cluster::start_n(3).unwrap();
    let (n1, n2, n3) = (c.node(0), c.node(1), c.node(2));
    n1.execute("CREATE EXTENSION spock").unwrap();
    n1.execute(&format!("SELECT spock.node_create('n1', '{}')", n1.dsn("postgres"))).unwrap();
    n1.execute(
        "CREATE SEQUENCE g_seq AS bigint;
         SELECT setval('g_seq', 1000);
         CREATE TABLE g(id bigint PRIMARY KEY DEFAULT nextval('g_seq'), node text NOT NULL, n int);
         SELECT spock.repset_add_table('default', 'g');
         CREATE SEQUENCE small AS integer",
    )
    .unwrap();

    // Bad input: an int4 sequence, a table.
    let e = n1.query_text("SELECT spock.convert_sequence_to_global('small')::text").unwrap_err().to_string();
    assert!(e.contains("22023") && e.contains("bigint"), "{e}");
    let e = n1.query_text("SELECT spock.convert_sequence_to_global('g')::text").unwrap_err().to_string();
    assert!(e.contains("42809"), "{e}");

    // In place: the next id is above the value it had, with n1's id in its low bits.
    let next = count(n1, "SELECT spock.convert_sequence_to_global('g_seq')");
    let (node1, _) = ids_of(n1, "g_seq");
    assert!(next > 1000 && next - 1000 <= 65536, "{next}");
    assert_eq!(next % 65536, node1);
    assert_eq!(
        n1.query_text("SELECT coalesce(spock.convert_sequence_to_global('g_seq')::text, 'null')").unwrap(),
        "null"
    );
    let e = n1.query_text("SELECT spock.repset_add_seq('default', 'g_seq')::text").unwrap_err().to_string();
    assert!(e.contains("55000") && e.contains("global"), "{e}");

    // Joining nodes get the sequence from the structure copy, global with their own id.
    add_node(n2, n1);
    add_node(n3, n1);
    let mut seen = Vec::new();
    for n in [n1, n2, n3] {
        let (local, of_seq) = ids_of(n, "g_seq");
        assert_eq!(local, of_seq, "{}'s global sequence hands out its own ids", n.name);
        seen.push(local);
    }
    seen.dedup();
    assert_eq!(seen.len(), 3);

    // pgbench inserts on the three nodes at once.
    let benches: Vec<_> = [n1, n2, n3]
        .iter()
        .map(|n| {
            let script = n.root().join("insert.sql");
            std::fs::write(&script, format!("INSERT INTO g(node, n) VALUES ('{}', :client_id);\n", n.name)).unwrap();
            let dsn = n.dsn("postgres");
            let install = n.install().clone();
            std::thread::spawn(move || {
                install
                    .command("pgbench")
                    .args(["-n", "-c", "2", "-t", "500", "-f"])
                    .arg(&script)
                    .arg(&dsn)
                    .output()
                    .unwrap()
            })
        })
        .collect();
    for b in benches {
        let out = b.join().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    sync_mesh(&[n1, n2, n3]);
    for n in [n1, n2, n3] {
        assert_eq!(count(n, "SELECT count(*) FROM g"), 3000, "rows on {}", n.name);
        assert_eq!(count(n, "SELECT count(DISTINCT id) FROM g"), 3000);
        assert_eq!(
            count(n, "SELECT count(*) FROM g JOIN spock.node x ON x.node_name = g.node WHERE g.id % 65536 <> x.node_id::int8"),
            0,
            "every id carries its writer's node id"
        );
        assert_eq!(insert_exists_conflicts(n), 0, "insert_exists conflicts on {}", n.name);
    }

    // A crash: the sequence goes on above every id it gave, never repeating.
    let before = count(n2, "SELECT max(id) FROM g WHERE node = 'n2'");
    n2.kill9().unwrap();
    n2.restart().unwrap();
    n2.execute("INSERT INTO g(node, n) SELECT 'n2', 1000 + g FROM generate_series(1, 50) g").unwrap();
    assert!(count(n2, "SELECT min(id) FROM g WHERE node = 'n2' AND n > 1000") > before);
    sync_mesh(&[n1, n2, n3]);
    for n in [n1, n2, n3] {
        assert_eq!(count(n, "SELECT count(DISTINCT id) FROM g"), 3050);
    }

    // A sequence made global later, on n2: the call goes to every node through the
    // DDL queue, each with its own id.
    n2.execute("SELECT spock.replicate_ddl('CREATE SEQUENCE public.h_seq AS bigint')").unwrap();
    n2.execute("SELECT spock.convert_sequence_to_global('h_seq')").unwrap();
    sync_mesh(&[n1, n2, n3]);
    for n in [n1, n2, n3] {
        let (local, of_seq) = ids_of(n, "h_seq");
        assert_eq!(local, of_seq, "h_seq on {}", n.name);
    }
}
