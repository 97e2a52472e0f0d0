//! The benchmark's PostgreSQL servers: nodes of the shared harness
//! (`spock_tests::TestNode`) with the benchmark's settings.
//!
//! A server runs the installation its system names (PostgreSQL 18 for native
//! replication and spock, Debian's PostgreSQL 15 for pglogical), as the unprivileged
//! server user (`SPOCK_RUN_USER`, default `postgres`), in a directory
//! `spock-rs-bench-*` under the data root (default `/dev/shm`), with a unix socket
//! there on a free port number, no TCP. The harness stops a server and removes its
//! directory when its node is dropped (also while an error or panic unwinds), when
//! the runner gets SIGINT/SIGTERM/SIGHUP (`spock_tests::stop_all_registered`), and,
//! for servers of a runner that was killed outright, on the next run
//! ([`reap_orphans`]).

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use spock_tests::{NodeOptions, PgInstall, TestNode};

use super::Result;

/// Prefix of every server directory the benchmark creates.
pub const DIR_PREFIX: &str = "spock-rs-bench-";

/// A benchmark server: a harness node.
pub type Node = TestNode;

/// Settings every server gets, whatever the system: the same for all systems.
pub fn common_settings() -> Vec<(String, String)> {
    [
        ("wal_level", "logical"),
        // off while the initial data is loaded; switched on before measuring
        ("track_commit_timestamp", "off"),
        ("max_replication_slots", "10"),
        ("max_wal_senders", "10"),
        ("max_worker_processes", "16"),
        ("shared_buffers", "'512MB'"),
        ("max_wal_size", "'8GB'"),
        ("checkpoint_timeout", "'30min'"),
        ("log_line_prefix", "'%m [%p] %q%a '"),
        ("log_min_messages", "info"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// initdb's a server of `install` under `data_root` with the common settings plus
/// `settings` (later ones win), and starts it. Data checksums are off on every
/// major version (PostgreSQL 18 would enable them by default, 15 does not).
pub fn start(
    install: &PgInstall,
    name: &str,
    data_root: &Path,
    settings: &[(String, String)],
    keep: bool,
) -> Result<Node> {
    let mut opts = NodeOptions::new(name)
        .install(install.clone())
        .data_root(data_root, DIR_PREFIX)
        .base_settings(common_settings())
        .without_data_checksums()
        .keep(keep)
        .application_name("replication-bench");
    opts.settings = settings.to_vec();
    TestNode::start(opts)
}

/// Stops servers of earlier benchmark runs that were killed before they could clean
/// up, and removes their directories.
pub fn reap_orphans(data_root: &Path) {
    spock_tests::reap_orphans_in(data_root, DIR_PREFIX);
}

/// Memory of one process, from `/proc/<pid>/status` (KiB).
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    /// Resident set size (includes the shared memory the process touched).
    pub rss_kb: u64,
    /// Resident anonymous memory: what the process allocated privately.
    pub anon_kb: u64,
}

/// Memory of process `pid`, if it still exists.
pub fn mem_of(pid: u32) -> Option<Mem> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some(Mem { rss_kb: field("VmRSS:"), anon_kb: field("RssAnon:") })
}

/// Runs `pgbench` (the client program at `pgbench`, the same for every server
/// version) against database `postgres` of `node`; returns its stdout.
pub fn run_pgbench(node: &Node, pgbench: &Path, args: &[String]) -> Result<String> {
    let mut cmd = Command::new(pgbench);
    cmd.args(["-h", &node.root().display().to_string(), "-p", &node.port.to_string(), "-U", "postgres"])
        .args(args)
        .arg("postgres")
        .env_remove("PGDATA")
        .env_remove("PGHOST")
        .env_remove("PGPORT")
        .stdin(Stdio::null());
    let what = format!("pgbench {} on {}", args.join(" "), node.name);
    let out = spock_tests::run(cmd, &what)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
