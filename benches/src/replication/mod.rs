//! End-to-end replication benchmark: the pieces of `replication-bench`.
//!
//! * [`node`]: the benchmark's servers, nodes of the test harness
//!   (`spock_tests::TestNode`) on any installed PostgreSQL (18 for native
//!   replication and spock, Debian's 15 for pglogical), in a data root on tmpfs,
//!   with the benchmark's settings;
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

/// Error of the benchmark runner: a readable message (the harness's error type).
pub use spock_tests::HarnessError as Error;

/// A JSON error as an [`Error`].
pub fn json_err(e: serde_json::Error) -> Error {
    Error(e.to_string())
}

/// Result of the runner's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An [`Error`] result with `msg`.
pub fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error(msg.into()))
}

/// Workload groups `--workloads` can select: `replication` (backlog catch-up,
/// steady lag, large transaction: they share one pair per round), `deletes` (the
/// delete-heavy mix's catch-up, on the same pair: needs `replication`), `parallel`
/// (catch-up of simple-update, tpcb-like and an insert mix with the CPU time of
/// walsender, apply leader and writers, on the same pair), `join`
/// (initial copy to a new node), `decode` (`decode-bench`).
pub const WORKLOADS: &[&str] = &["replication", "deletes", "parallel", "join", "decode"];

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
            workloads: vec!["replication".into(), "deletes".into(), "parallel".into(), "join".into()],
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
