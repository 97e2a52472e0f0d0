//! The README's demo: three local PostgreSQL 18 nodes replicating both ways with
//! spock, built with Spock's SQL API, and a conflict resolved before your eyes.
//! Servers are stopped when the demo ends, also on error (and by the next run of the
//! demo or tests after Ctrl-C).

use std::sync::Barrier;
use std::time::{Duration, Instant};

use spock_tests::{Cluster, NodeOptions, TestNode};

fn main() {
    if let Err(e) = run() {
        eprintln!("demo failed: {e}");
        std::process::exit(1);
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn wait(what: &str, mut ok: impl FnMut() -> Res<bool>) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok()? {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn show(node: &TestNode, sql: &str) -> Res<()> {
    let client = &mut node.connect()?;
    for row in client.simple_query(sql)? {
        if let postgres::SimpleQueryMessage::Row(r) = row {
            let cols: Vec<String> = (0..r.len()).map(|i| r.get(i).unwrap_or("NULL").to_string()).collect();
            println!("   {:<4} | {}", node.name, cols.join(" | "));
        }
    }
    Ok(())
}

fn run() -> Res<()> {
    println!("== starting three PostgreSQL 18 nodes (n1, n2, n3) with shared_preload_libraries = 'spock'");
    let cluster = Cluster::start(
        ["n1", "n2", "n3"].iter().map(|n| NodeOptions::new(*n).setting("spock.save_resolutions", "on")).collect(),
    )?;
    let nodes: Vec<&TestNode> = cluster.nodes.iter().collect();
    for n in &nodes {
        println!("   {}: {}", n.name, n.dsn("postgres"));
    }

    println!("\n== on every node: CREATE EXTENSION spock; spock.node_create(); a table in replication set 'default'");
    for n in &nodes {
        n.execute("CREATE EXTENSION spock")?;
        n.execute(&format!("SELECT spock.node_create(node_name := '{}', dsn := '{}')", n.name, n.dsn("postgres")))?;
        n.execute("CREATE TABLE accounts(id int PRIMARY KEY, owner text, balance int)")?;
        n.execute("SELECT spock.repset_add_table('default', 'accounts')")?;
    }

    println!("\n== full mesh: every node subscribes to every other (spock.sub_create)");
    for s in &nodes {
        for p in &nodes {
            if s.name != p.name {
                let sub = format!("sub_{}_{}", s.name, p.name);
                s.execute(&format!(
                    "SELECT spock.sub_create(subscription_name := '{sub}', provider_dsn := '{}')",
                    p.dsn("postgres")
                ))?;
                println!("   {}: sub_create('{sub}') -> provider {}", s.name, p.name);
            }
        }
    }
    for n in &nodes {
        wait("subscriptions replicating", || {
            Ok(n.query_one::<i64>("SELECT count(*) FROM spock.sub_show_status() WHERE status = 'replicating'")? == 2)
        })?;
    }
    println!("   spock.sub_show_status() on n1:");
    show(nodes[0], "SELECT subscription_name, status, provider_node, slot_name FROM spock.sub_show_status()")?;

    println!("\n== each node writes its own rows");
    for (i, n) in nodes.iter().enumerate() {
        let base = (i as i32 + 1) * 100;
        n.execute(&format!(
            "INSERT INTO accounts VALUES ({}, '{} customer A', 100), ({}, '{} customer B', 200)",
            base + 1,
            n.name,
            base + 2,
            n.name
        ))?;
        println!("   {}: inserted accounts {} and {}", n.name, base + 1, base + 2);
    }
    for n in &nodes {
        wait("rows everywhere", || Ok(n.query_one::<i64>("SELECT count(*) FROM accounts")? == 6))?;
    }
    println!("   every node now has all six rows:");
    for n in &nodes {
        show(n, "SELECT string_agg(id::text, ', ' ORDER BY id) FROM accounts")?;
    }

    println!("\n== a conflict: n1 and n2 change account 101 at the same moment");
    let barrier = Barrier::new(2);
    std::thread::scope(|s| -> Res<()> {
        let handles: Vec<_> = [(nodes[0], 150), (nodes[1], 175)]
            .into_iter()
            .map(|(n, amount)| {
                let barrier = &barrier;
                s.spawn(move || -> Result<(), String> {
                    let mut c = n.connect().map_err(|e| e.to_string())?;
                    let mut tx = c.transaction().map_err(|e| e.to_string())?;
                    tx.execute("UPDATE accounts SET balance = $1 WHERE id = 101", &[&amount])
                        .map_err(|e| e.to_string())?;
                    barrier.wait();
                    tx.commit().map_err(|e| e.to_string())?;
                    println!("   {}: UPDATE accounts SET balance = {amount} WHERE id = 101; COMMIT", n.name);
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| "writer panicked")??;
        }
        Ok(())
    })?;
    for n in &nodes {
        wait("the same balance everywhere", || {
            let balances: Vec<i32> = nodes
                .iter()
                .map(|m| m.query_one::<i32>("SELECT balance FROM accounts WHERE id = 101"))
                .collect::<Result<_, _>>()?;
            Ok(balances.iter().all(|b| *b == balances[0])
                && n.query_one::<i64>("SELECT count(*) FROM spock.sub_show_status() WHERE status = 'replicating'")?
                    == 2)
        })?;
    }
    // Every node's changes applied everywhere (sync events): resolutions recorded.
    spock_tests::fixtures::sync_mesh(&nodes);
    println!("   account 101 on every node (last update wins, the same winner everywhere):");
    for n in &nodes {
        show(n, "SELECT id, owner, balance FROM accounts WHERE id = 101")?;
    }
    println!("   spock.resolutions (each node records how it resolved the change it received):");
    for n in &nodes {
        show(
            n,
            "SELECT relname, conflict_type, conflict_resolution, remote_origin, to_char(local_timestamp, 'HH24:MI:SS.US') AS local_ts, to_char(remote_timestamp, 'HH24:MI:SS.US') AS remote_ts FROM spock.resolutions ORDER BY id",
        )?;
    }
    println!("\n== stopping the nodes");
    drop(cluster);
    println!("done.");
    Ok(())
}
