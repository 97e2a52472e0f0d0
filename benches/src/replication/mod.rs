//! End-to-end replication benchmark: the pieces of `replication-bench`.
//!
//! * [`node`]: PostgreSQL servers of any installed version (PostgreSQL 18 for
//!   native replication, Debian's PostgreSQL 15 for pglogical), in a data root on
//!   tmpfs, run as the unprivileged server user, stopped on drop and on signals;
//! * [`systems`]: the pluggable replication systems (`native`, `pglogical`,
//!   `spock`);
//! * [`workload`]: the measurements (backlog catch-up, steady lag, one large
//!   transaction) on one provider/subscriber pair;
//! * [`join`]: joining a node: initial copy of a provider's pgbench database to a
//!   new subscriber;
//! * [`report`]: medians, ratios, JSON and Markdown;
//! * [`plot`]: SVG charts.

pub mod join;
pub mod node;
pub mod plot;
pub mod report;
pub mod systems;
pub mod workload;

use std::time::Duration;

/// Error of the benchmark runner: a readable message.
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<spock_tests::postgres::Error> for Error {
    fn from(e: spock_tests::postgres::Error) -> Self {
        Error(spock_tests::describe_pg_error(&e))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error(e.to_string())
    }
}

impl From<spock_tests::HarnessError> for Error {
    fn from(e: spock_tests::HarnessError) -> Self {
        Error(e.0)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error(e.to_string())
    }
}

impl From<String> for Error {
    fn from(s: String) -> Self {
        Error(s)
    }
}

/// Result of the runner's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An [`Error`] result with `msg`.
pub fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error(msg.into()))
}

/// Workload groups `--workloads` can select: `replication` (backlog catch-up,
/// steady lag, large transaction: they share one pair per round), `join` (initial
/// copy to a new node), `decode` (`decode-bench`).
pub const WORKLOADS: &[&str] = &["replication", "join", "decode"];

fn default_workloads() -> Vec<String> {
    // runs recorded before `--workloads` existed ran these
    vec!["replication".into(), "decode".into()]
}

/// What to run: sizes and durations of the workloads.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Config {
    /// Smoke-test mode: small, one round, nothing asserted about speed.
    pub quick: bool,
    /// Selected workload groups (of [`WORKLOADS`]).
    #[serde(default = "default_workloads")]
    pub workloads: Vec<String>,
    /// Interleaved rounds (A/B/A/B...); medians are over rounds.
    pub rounds: usize,
    /// pgbench scale factor of the initial data (same on both sides).
    pub scale: u32,
    /// pgbench clients and threads (`-c`, `-j`).
    pub clients: u32,
    /// pgbench threads.
    pub threads: u32,
    /// Seconds of `pgbench -b simple-update` while the subscription is disabled.
    pub backlog_secs: u32,
    /// Fixed rate (`pgbench -R`) of the steady-lag test.
    pub steady_rate: u32,
    /// Seconds of the steady-lag test.
    pub steady_secs: u32,
    /// Rows of the one large transaction.
    pub large_rows: u64,
    /// Polling interval of the catch-up and visibility loops.
    #[serde(skip)]
    pub poll: Duration,
    /// Longest wait for a subscriber to catch up before giving up.
    #[serde(skip)]
    pub catchup_timeout: Duration,
}

impl Config {
    /// Full mode (the default): the method of DESIGN.md section 6.
    pub fn full() -> Config {
        Config {
            quick: false,
            workloads: WORKLOADS.iter().map(|w| w.to_string()).collect(),
            rounds: 4,
            scale: 10,
            clients: 4,
            threads: 2,
            backlog_secs: 30,
            steady_rate: 500,
            steady_secs: 30,
            large_rows: 1_000_000,
            poll: Duration::from_millis(10),
            catchup_timeout: Duration::from_secs(900),
        }
    }

    /// Quick mode: a smoke test for CI (well under 3 minutes).
    pub fn quick() -> Config {
        Config {
            quick: true,
            // decode-bench only in full mode
            workloads: vec!["replication".into(), "join".into()],
            rounds: 1,
            scale: 1,
            backlog_secs: 5,
            steady_secs: 5,
            large_rows: 20_000,
            catchup_timeout: Duration::from_secs(120),
            ..Config::full()
        }
    }

    /// Whether workload group `name` is selected.
    pub fn runs(&self, name: &str) -> bool {
        self.workloads.iter().any(|w| w == name)
    }
}

/// Seconds since the Unix epoch (the servers run on this machine: same clock).
pub fn epoch_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}
