//! A seeded randomized race test: three nodes in a full mesh write conflicting
//! upserts, increments and deletes of a few hot keys while some of the six
//! directions are held back (as a lag does), then catch up; after every round all
//! nodes hold the same rows. The seed is
//! printed and can be given back with SPOCK_TEST_SEED=<n> to replay a run.
//!
//! Dead row versions are what deletes are decided by (docs/apply.md, "Deletes are
//! row versions"); spock keeps them while a subscription is behind
//! (`spock.deleted_version_retention`), so every round runs VACUUM on both nodes
//! before the held directions catch up.

use spock_tests::fixtures::{full_mesh, sync_mesh};
use spock_tests::{Cluster, NodeOptions, TestNode};

/// xorshift64*: small, seeded, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn rows(n: &TestNode) -> String {
    n.query_text("SELECT coalesce(string_agg(k || '=' || v, ',' ORDER BY k), '') FROM kv").unwrap()
}

#[test]
fn three_nodes_converge_under_random_races() {
    let seed: u64 = std::env::var("SPOCK_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("mesh_convergence seed: {seed} (replay with SPOCK_TEST_SEED={seed})");
    let mut rng = Rng(seed);

    let c = Cluster::start(
        ["n1", "n2", "n3"].into_iter().map(|n| NodeOptions::new(n).setting("spock.save_resolutions", "on")).collect(),
    )
    .unwrap();
    let nodes = [c.node(0), c.node(1), c.node(2)];
    full_mesh(&nodes);
    for n in nodes {
        n.execute("CREATE TABLE kv(k int PRIMARY KEY, v int NOT NULL)").unwrap();
        n.execute("SELECT spock.repset_add_table('default', 'kv')").unwrap();
    }
    sync_mesh(&nodes);
    // Every direction: (subscriber, its subscription to the provider).
    let subs: Vec<(&TestNode, String)> = nodes
        .iter()
        .flat_map(|s| {
            nodes.iter().filter(|p| p.name != s.name).map(move |p| (*s, format!("sub_{}_{}", s.name, p.name)))
        })
        .collect();

    for round in 1..=8 {
        // Hold back some directions (at least one).
        let mut held: Vec<&(&TestNode, String)> = subs.iter().filter(|_| rng.below(2) == 0).collect();
        if held.is_empty() {
            held.push(&subs[rng.below(subs.len() as u64) as usize]);
        }
        for (n, sub) in &held {
            n.execute(&format!("SELECT spock.sub_disable('{sub}', immediate := true)")).unwrap();
        }
        let mut ops = Vec::new();
        for _ in 0..12 {
            let n = nodes[rng.below(3) as usize];
            let k = 1 + rng.below(6);
            let sql = match rng.below(3) {
                0 => format!(
                    "INSERT INTO kv VALUES ({k}, {}) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                    rng.below(1000)
                ),
                1 => format!("UPDATE kv SET v = v + 1 WHERE k = {k}"),
                _ => format!("DELETE FROM kv WHERE k = {k}"),
            };
            n.execute(&sql).unwrap();
            ops.push(format!("{}: {sql}", n.name));
        }
        for n in nodes {
            n.execute("VACUUM kv").unwrap();
        }
        for (n, sub) in &held {
            n.execute(&format!("SELECT spock.sub_enable('{sub}')")).unwrap();
        }
        sync_mesh(&nodes);
        let resolutions = |n: &TestNode| {
            n.query_text("SELECT coalesce(string_agg(conflict_type || ':' || conflict_resolution, ',' ORDER BY id), '') FROM spock.resolutions").unwrap()
        };
        let first = rows(nodes[0]);
        for n in &nodes[1..] {
            assert_eq!(
                rows(n),
                first,
                "seed {seed}, round {round}: {} differs from n1 after\n{}\nheld: {:?}\nresolutions: n1 {}; n2 {}; n3 {}",
                n.name,
                ops.join("\n"),
                held.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>(),
                resolutions(nodes[0]),
                resolutions(nodes[1]),
                resolutions(nodes[2]),
            );
        }
    }
}
