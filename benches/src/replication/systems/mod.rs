//! The replication systems under test, behind one trait: each knows which
//! PostgreSQL it runs on, what its servers need in `postgresql.conf`, how to set up
//! a provider/subscriber pair for the benchmark tables, how to pause and resume the
//! subscription, and how to find its apply processes. Everything that is measured
//! is generic ([`super::workload`]): catch-up is read from the subscriber's
//! replication origin, lag from commit timestamps and a subscriber-side column
//! default, visibility from plain queries.
//!
//! To add a system: implement [`System`] and list it in [`all`].

pub mod native;
pub mod pglogical;
pub mod spock;

use std::path::PathBuf;

use super::node::Node;
use super::Result;
use spock_tests::PgInstall;

/// The tables `pgbench -i` creates, which the join workload copies.
pub const PGBENCH_TABLES: &[&str] = &["pgbench_accounts", "pgbench_branches", "pgbench_history", "pgbench_tellers"];

/// One way a system joins a node: a new subscriber gets a copy of the provider's
/// tables, then streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinVariant {
    /// Short name (labels, JSON).
    pub name: &'static str,
    /// The subscriber has pgbench's tables and primary keys (no rows) before the
    /// clock starts; otherwise its database is empty and the system copies the
    /// structure too.
    pub schema_beforehand: bool,
    /// How the subscription is created, for the report.
    pub how: &'static str,
}

/// Tables the benchmark replicates, in every system.
pub const TABLES: &[&str] = &[
    "pgbench_accounts",
    "pgbench_branches",
    "pgbench_tellers",
    "pgbench_history",
    "big",
    "bench_marker",
    "bench_queue",
    "bench_ins_a",
    "bench_ins_b",
    "bench_ins_c",
];

/// What systems need from the runner.
#[derive(Debug, Clone)]
pub struct Env {
    /// PostgreSQL 18 (the native system's server; its pgbench is the client for all).
    pub pg18: PgInstall,
    /// Where server directories go (tmpfs by default).
    pub data_root: PathBuf,
    /// Keep server directories.
    pub keep: bool,
    /// May install missing Debian packages.
    pub allow_install: bool,
}

/// A provider and a subscriber of one system, both running.
#[derive(Debug)]
pub struct Pair {
    /// Where the changes happen.
    pub provider: Node,
    /// Where they are applied.
    pub subscriber: Node,
}

/// One logical replication system.
pub trait System {
    /// Short name used in tables, plots and JSON.
    fn name(&self) -> &'static str;

    /// Whether it runs without being named in `--systems` (variants of a system
    /// for one question run only when asked for).
    fn by_default(&self) -> bool {
        true
    }

    /// Checks what the system needs, installing missing packages when
    /// `env.allow_install`. `Ok(description)` (versions) when it can run,
    /// `Err(reason)` to skip it.
    fn prepare(&mut self, env: &Env) -> std::result::Result<String, String>;

    /// The server installation of both nodes (after a successful `prepare`).
    fn install(&self) -> &PgInstall;

    /// `postgresql.conf` settings this system's servers need on top of the common ones.
    fn settings(&self) -> Vec<(String, String)>;

    /// Substrings of the process titles of the subscriber's apply processes.
    fn apply_process_patterns(&self) -> &'static [&'static str];

    /// Creates the replication objects on both nodes, for [`TABLES`], which exist
    /// with the same data on both. The subscription starts enabled, without initial
    /// copy, without streaming of in-progress transactions.
    fn setup(&self, pair: &Pair) -> Result<()>;

    /// Stops applying (the apply processes exit; the slot keeps the WAL).
    fn disable(&self, pair: &Pair) -> Result<()>;

    /// Resumes applying.
    fn enable(&self, pair: &Pair) -> Result<()>;

    /// Streaming modes for in-progress transactions to measure in the large
    /// transaction test, besides the default (none).
    fn streaming_modes(&self) -> &'static [&'static str] {
        &[]
    }

    /// Switches the subscription to streaming mode `mode` (one of `streaming_modes`).
    fn set_streaming(&self, _pair: &Pair, mode: &str) -> Result<()> {
        super::err(format!("{}: streaming mode {mode} is not supported", self.name()))
    }

    /// The ways this system can join a node; empty: the join workload skips it.
    fn join_variants(&self) -> &'static [JoinVariant] {
        &[]
    }

    /// Publishes the [`PGBENCH_TABLES`] of `pair.provider`, loaded by `pgbench -i`
    /// (before the clock starts).
    fn join_provider(&self, _pair: &Pair) -> Result<()> {
        super::err(format!("{}: joining a node is not supported", self.name()))
    }

    /// What the subscriber needs besides the schema before the clock starts
    /// (extension, node).
    fn join_subscriber(&self, _pair: &Pair) -> Result<()> {
        Ok(())
    }

    /// The statement (on the subscriber) that creates the subscription with initial
    /// copy; the clock starts right before it.
    fn join_start_sql(&self, _pair: &Pair, _variant: &JoinVariant) -> String {
        String::new()
    }

    /// One autocommit query (on the subscriber) returning the state of the initial
    /// copy as one text value, `ready` when the subscriber has everything and
    /// streams; the other values name the phases.
    fn join_state_sql(&self) -> &'static str {
        "SELECT 'ready'"
    }

    /// Run once the state is `ready` (not timed): the system's own way to wait.
    fn join_ready_sql(&self) -> Option<&'static str> {
        None
    }
}

/// Every system, in the order rounds run them (A/B/A/B...).
pub fn all() -> Vec<Box<dyn System>> {
    vec![
        Box::new(native::Native::default()),
        Box::new(pglogical::Pglogical::default()),
        Box::new(spock::Spock::default()),
        Box::new(spock::Spock::without_retention()),
        Box::new(spock::Spock::parallel(2)),
        Box::new(spock::Spock::parallel(4)),
        Box::new(spock::Spock::adaptive()),
    ]
}

/// The provider statements of the pglogical-like systems: `CREATE EXTENSION`,
/// `create_node` (a whole statement), and every table of [`TABLES`] added by
/// function `add_table(set, table)` to set `default`, `pgbench_history` (no primary
/// key; pgbench only inserts) to `default_insert_only`.
pub fn provider_sql(extension: &str, create_node: String, add_table: &str) -> String {
    let mut provider = vec![format!("CREATE EXTENSION {extension}"), create_node];
    for t in TABLES {
        let set = if *t == "pgbench_history" { "default_insert_only" } else { "default" };
        provider.push(format!("SELECT {add_table}('{set}', '{t}')"));
    }
    provider.join(";\n")
}

/// `'text'` as an SQL literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
