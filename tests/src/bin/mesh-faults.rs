//! The long convergence check with faults (docs/apply.md, "Deletes are row
//! versions"): three PostgreSQL 18 nodes in a full spock mesh, pgbench on every
//! node writing conflicting upserts, increments and deletes of a few hot keys plus
//! insert-only rows, while faults hit the mesh: immediate stops and restarts of a
//! node, terminated walsenders and apply workers, subscriptions disabled and
//! enabled again. After each round every subscription is enabled, the mesh is
//! waited for (sync events) and compared: divergent keys of the hot table, and
//! insert-only rows lost (written on one node, missing on another) or duplicated.
//!
//! `mesh-faults [--rounds N] [--secs S] [--keys K] [--rate T] [--seed X]`
//! (defaults 5 rounds of 180 s, 200 keys, 50 transactions per second per node; the
//! seed from the clock, printed). Exit status 1 when a round diverged.
//! Run it with `bash scripts/mesh-faults.sh [options]`, which builds and installs
//! first.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use spock_tests::fixtures::{full_mesh, sync_mesh};
use spock_tests::{Cluster, NodeOptions, TestNode};

/// xorshift64*: seeded choices, replayable with --seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

struct Options {
    rounds: usize,
    secs: u64,
    keys: u64,
    rate: u64,
    seed: u64,
}

fn options() -> Options {
    let mut o = Options {
        rounds: 5,
        secs: 180,
        keys: 200,
        rate: 50,
        seed: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
            | 1,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).and_then(|v| v.parse::<u64>().ok());
        match (pair[0].as_str(), value) {
            ("--rounds", Some(v)) => o.rounds = v as usize,
            ("--secs", Some(v)) => o.secs = v,
            ("--keys", Some(v)) => o.keys = v,
            ("--rate", Some(v)) => o.rate = v.max(1),
            ("--seed", Some(v)) => o.seed = v | 1,
            _ => {
                eprintln!("usage: mesh-faults [--rounds N] [--secs S] [--keys K] [--rate T] [--seed X]");
                std::process::exit(2);
            }
        }
    }
    o
}

fn main() {
    let o = options();
    println!(
        "mesh-faults: {} rounds of {} s, {} hot keys, {} transactions/s per node, seed {}",
        o.rounds, o.secs, o.keys, o.rate, o.seed
    );
    // Every decision in spock.resolutions: printed for the keys that diverge.
    let c = Cluster::start(
        ["n1", "n2", "n3"].into_iter().map(|n| NodeOptions::new(n).setting("spock.save_resolutions", "on")).collect(),
    )
    .expect("start nodes");
    let nodes = [c.node(0), c.node(1), c.node(2)];
    full_mesh(&nodes);
    for n in nodes {
        n.execute(
            "CREATE TABLE kv(k int PRIMARY KEY, v int NOT NULL);
             CREATE TABLE ins(node text NOT NULL, id bigint NOT NULL);
             CREATE SEQUENCE ins_id;
             SELECT spock.repset_add_table('default', 'kv');
             SELECT spock.repset_add_table('default_insert_only', 'ins');",
        )
        .expect("tables");
        // Each node's own history of kv (local and applied changes; not replicated),
        // printed for the keys that diverge.
        n.execute(
            "CREATE TABLE kv_audit(id bigserial, op text, k int, old_v int, new_v int,
                 xid xid8 DEFAULT pg_current_xact_id(), applied bool DEFAULT pg_replication_origin_session_is_setup(),
                 at timestamptz DEFAULT clock_timestamp());
             CREATE FUNCTION kv_audit_f() RETURNS trigger LANGUAGE plpgsql SET search_path = public, pg_catalog AS $$
             BEGIN
                 INSERT INTO public.kv_audit(op, k, old_v, new_v) VALUES (TG_OP, coalesce(NEW.k, OLD.k), OLD.v, NEW.v);
                 RETURN NULL;
             END $$;
             CREATE TRIGGER kv_audit_t AFTER INSERT OR UPDATE OR DELETE ON kv FOR EACH ROW EXECUTE FUNCTION kv_audit_f();
             ALTER TABLE kv ENABLE ALWAYS TRIGGER kv_audit_t;",
        )
        .expect("audit of kv");
    }
    sync_mesh(&nodes);
    let scripts: Vec<std::path::PathBuf> = nodes.iter().map(|n| pgbench_script(&n.name, o.keys)).collect();
    let mut rng = Rng(o.seed);
    let mut failed = 0;
    for round in 1..=o.rounds {
        let started = Instant::now();
        let faults = run_round(&nodes, &scripts, o.secs, o.rate, &mut rng);
        let r = check(&nodes);
        println!(
            "round {round}: {} s, faults: {faults}; divergent keys {}, lost rows {}, duplicated rows {}, insert-only rows {}",
            started.elapsed().as_secs(),
            r.divergent,
            r.lost,
            r.duplicated,
            r.rows
        );
        if r.divergent + r.lost + r.duplicated > 0 {
            failed += 1;
            for line in r.details.iter().take(20) {
                println!("  {line}");
            }
            for k in r.divergent_keys.iter().take(5) {
                print_history(&nodes, *k);
            }
        }
    }
    println!("mesh-faults: {failed} of {} rounds diverged (seed {})", o.rounds, o.seed);
    drop(c);
    std::process::exit(i32::from(failed > 0));
}

/// The pgbench script of node `node`: an upsert, an increment or a delete of a hot
/// key, and one insert-only row.
fn pgbench_script(node: &str, keys: u64) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("spock-mesh-faults-{}-{node}.sql", std::process::id()));
    std::fs::write(
        &path,
        format!(
            "\\set k random(1, {keys})\n\\set op random(1, 10)\n\
             \\if :op <= 4\nINSERT INTO kv VALUES (:k, 1) ON CONFLICT (k) DO UPDATE SET v = kv.v + 1;\n\
             \\elif :op <= 8\nUPDATE kv SET v = v + 1 WHERE k = :k;\n\
             \\else\nDELETE FROM kv WHERE k = :k;\n\\endif\n\
             INSERT INTO ins SELECT '{node}', nextval('ins_id');\n"
        ),
    )
    .expect("write the pgbench script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("script readable");
    path
}

/// One round: pgbench on every node for `secs`, faults meanwhile; returns what
/// faults were made.
fn run_round(nodes: &[&TestNode; 3], scripts: &[std::path::PathBuf], secs: u64, rate: u64, rng: &mut Rng) -> String {
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut made: BTreeMap<&str, u32> = BTreeMap::new();
    std::thread::scope(|s| {
        for (n, script) in nodes.iter().zip(scripts) {
            let stop = &stop;
            s.spawn(move || {
                // pgbench ends when its node stops; it starts again until the end.
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let left = deadline.saturating_duration_since(Instant::now()).as_secs().max(1);
                    let mut cmd = n.install().command("pgbench");
                    cmd.args(["-n", "-c", "2", "-R", &rate.to_string(), "-T", &left.to_string(), "-f"])
                        .arg(script)
                        .arg(n.dsn("postgres"))
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null());
                    let _ = cmd.status();
                    std::thread::sleep(Duration::from_millis(500));
                }
            });
        }
        while Instant::now() + Duration::from_secs(10) < deadline {
            std::thread::sleep(Duration::from_secs(3 + rng.below(8)));
            let n = nodes[rng.below(3) as usize];
            let kind = match rng.below(4) {
                0 => {
                    if n.stop_immediate().is_ok() {
                        std::thread::sleep(Duration::from_secs(1 + rng.below(4)));
                    }
                    restart(n);
                    "immediate stop"
                }
                1 => {
                    let _ = n.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_replication");
                    "walsenders terminated"
                }
                2 => {
                    let _ = n.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'spock apply'",
                    );
                    "apply workers terminated"
                }
                _ => {
                    let sub = subscription_of(n, rng);
                    let _ = n.execute(&format!("SELECT spock.sub_disable('{sub}', immediate := true)"));
                    std::thread::sleep(Duration::from_secs(2 + rng.below(10)));
                    let _ = n.execute(&format!("SELECT spock.sub_enable('{sub}')"));
                    "subscription toggled"
                }
            };
            *made.entry(kind).or_default() += 1;
        }
        stop.store(true, Ordering::Relaxed);
    });
    for n in nodes {
        restart(n);
        n.execute("SELECT spock.sub_enable(sub_name) FROM spock.subscription").expect("enable");
    }
    made.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ")
}

/// One of `n`'s subscriptions, at random.
fn subscription_of(n: &TestNode, rng: &mut Rng) -> String {
    let others: Vec<&str> = ["n1", "n2", "n3"].into_iter().filter(|o| *o != n.name).collect();
    format!("sub_{}_{}", n.name, others[rng.below(2) as usize])
}

/// Starts `n` again if it is down (after an immediate stop).
fn restart(n: &TestNode) {
    if n.query_text("SELECT 1").is_ok() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = n.restart() {
        assert!(Instant::now() < deadline, "node {} does not start again: {e}", n.name);
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What every node did to key `k` (its audit of kv, with commit times and origins)
/// and decided about it (spock.resolutions).
fn print_history(nodes: &[&TestNode; 3], k: i64) {
    println!("  history of key {k}:");
    for n in nodes {
        let audit = n
            .query_text(&format!(
                "SELECT string_agg(format('      %s %s %s->%s xid %s %s commit %s origin %s', a.at::time, a.op, a.old_v, a.new_v,
                        a.xid, CASE WHEN a.applied THEN 'applied' ELSE 'local' END, c.timestamp::time, c.roident), E'\\n' ORDER BY a.id)
                   FROM kv_audit a
                   LEFT JOIN LATERAL pg_xact_commit_timestamp_origin((a.xid::text::int8 % 4294967296)::text::xid) c ON true
                  WHERE a.k = {k}"
            ))
            .unwrap_or_else(|e| format!("(audit unreadable: {e})"));
        let resolutions = n
            .query_text(&format!(
                "SELECT string_agg(format('      %s %s/%s local %s@%s remote %s@%s', log_time::time, conflict_type, conflict_resolution,
                        local_origin, local_timestamp::time, remote_origin, remote_timestamp::time), E'\\n' ORDER BY log_time)
                   FROM spock.resolutions
                  WHERE coalesce(local_tuple::jsonb ->> 'k', remote_tuple::jsonb ->> 'k') = '{k}'"
            ))
            .unwrap_or_else(|e| format!("(resolutions unreadable: {e})"));
        let origins = n
            .query_text("SELECT string_agg(roident || '=' || roname, ', ' ORDER BY roident) FROM pg_replication_origin")
            .unwrap_or_default();
        println!("    {} (origins {origins}):\n{audit}\n    resolutions:\n{resolutions}", n.name);
    }
}

struct Report {
    divergent_keys: Vec<i64>,
    divergent: usize,
    lost: usize,
    duplicated: usize,
    rows: usize,
    details: Vec<String>,
}

/// Waits until every node has applied what every other wrote (sync events); on a
/// timeout prints what the subscriptions say and the errors the nodes logged, and
/// gives up.
fn settle(nodes: &[&TestNode; 3]) {
    for p in nodes {
        let lsn: String = p.query_one("SELECT spock.sync_event()::text").expect("sync event");
        for s in nodes.iter().filter(|s| s.name != p.name) {
            let sql = format!("CALL spock.wait_for_sync_event(NULL, '{}'::name, '{lsn}'::pg_lsn, 600)", p.name);
            if s.query_one::<bool>(&sql).unwrap_or(false) {
                continue;
            }
            println!("node {} did not apply node {}'s sync event at {lsn} within 600 s", s.name, p.name);
            for n in nodes {
                let status = n
                    .query_text(
                        "SELECT string_agg(subscription_name || ': ' || status, ', ') FROM spock.sub_show_status()",
                    )
                    .unwrap_or_default();
                println!("  {}: {status}", n.name);
                for line in n.log().lines().filter(|l| l.contains("ERROR") || l.contains("WARNING")).rev().take(10) {
                    println!("    {line}");
                }
            }
            for n in nodes {
                println!("  {} dsn: {}", n.name, n.dsn("postgres"));
            }
            if let Some(secs) = std::env::var("MESH_FAULTS_HOLD").ok().and_then(|v| v.parse().ok()) {
                // Time to look at the servers by hand before they are stopped.
                std::thread::sleep(Duration::from_secs(secs));
            }
            std::process::exit(1);
        }
    }
}

/// Waits for the mesh, then compares the nodes.
fn check(nodes: &[&TestNode; 3]) -> Report {
    settle(nodes);
    let kv: Vec<BTreeMap<i64, i64>> = nodes
        .iter()
        .map(|n| {
            let mut c = n.connect().expect("connect");
            c.query("SELECT k::int8, v::int8 FROM kv", &[]).expect("kv").iter().map(|r| (r.get(0), r.get(1))).collect()
        })
        .collect();
    let mut details = Vec::new();
    let keys: std::collections::BTreeSet<i64> = kv.iter().flat_map(|m| m.keys().copied()).collect();
    let mut divergent = 0;
    let mut divergent_keys = Vec::new();
    for k in keys {
        let vs: Vec<Option<&i64>> = kv.iter().map(|m| m.get(&k)).collect();
        if vs.iter().any(|v| *v != vs[0]) {
            divergent += 1;
            divergent_keys.push(k);
            details.push(format!("key {k}: {vs:?}"));
        }
    }
    // Insert-only rows: each node's own rows (by the name it writes) must be on every
    // node exactly once.
    let ins: Vec<BTreeMap<(String, i64), i64>> = nodes
        .iter()
        .map(|n| {
            let mut c = n.connect().expect("connect");
            c.query("SELECT node, id, count(*) FROM ins GROUP BY node, id", &[])
                .expect("ins")
                .iter()
                .map(|r| ((r.get(0), r.get(1)), r.get(2)))
                .collect()
        })
        .collect();
    let (mut lost, mut duplicated, mut rows) = (0, 0, 0);
    for (i, own) in ins.iter().enumerate() {
        let name = nodes[i].name.as_str();
        for (key, _) in own.iter().filter(|((node, _), _)| node == name) {
            rows += 1;
            for (j, other) in ins.iter().enumerate() {
                match other.get(key) {
                    None => {
                        lost += 1;
                        details.push(format!("row {key:?} missing on {}", nodes[j].name));
                    }
                    Some(n) if *n > 1 => {
                        duplicated += 1;
                        details.push(format!("row {key:?} {n} times on {}", nodes[j].name));
                    }
                    _ => {}
                }
            }
        }
    }
    Report { divergent_keys, divergent, lost, duplicated, rows, details }
}
