//! The apply worker's half of keeping deleted row versions (the rule and the
//! manager's half: spock_core::retention and workers::retention): about every
//! second it asks the provider, on a second, ordinary connection, for its clock and
//! a WAL position taken just after it, and once the stream has been applied and
//! flushed past that position it publishes the clock, less a margin, as the
//! subscription's safe time in shared memory.
//!
//! The position is that of a small non-transactional logical message the probe
//! writes (prefix `spock.probe`, which output plugins skip): on a provider where
//! nothing else is written the walsender still moves past it, so the safe time keeps
//! up with an idle provider. The query is sent and read without blocking the
//! replication loop.

use std::time::{Duration, Instant};

use spock_core::proto::{parse_lsn, Lsn};
use spock_core::retention::{safe_after_applied, Probe, ProbeState};
use spock_core::status::WalStatus;

use super::subscription::SubscriptionInfo;
use crate::libpq::{Connection, Rows};
use crate::workers::shmem;

/// How often a subscription asks its provider.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long after a failed probe the next connection is tried.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// The provider's clock (PostgreSQL microseconds) first, then the position of a
/// message written after it: the clock is read before the position is taken; last
/// the state of the subscription's slot (`wal_status` and `safe_wal_size`, for
/// `spock.sub_show_status`).
fn probe_sql(conn: &Connection, slot: &str) -> String {
    format!(
        "SELECT (extract(epoch FROM s.t) * 1000000)::int8 - 946684800000000, \
         pg_logical_emit_message(false, 'spock.probe', '')::text, \
         (SELECT r.wal_status || ' ' || coalesce(r.safe_wal_size::text, '') FROM pg_catalog.pg_replication_slots r \
           WHERE r.slot_name = {}) \
         FROM (SELECT clock_timestamp() AS t OFFSET 0) s",
        conn.literal(slot)
    )
}

/// The probe cycle of one apply worker.
pub struct Prober {
    conn: Option<Connection>,
    state: ProbeState,
    /// No new connection before this (after a failure).
    retry_at: Option<Instant>,
    /// A failure was logged and nothing has succeeded since.
    warned: bool,
}

impl Prober {
    /// A cycle that has asked nothing yet.
    pub fn new() -> Prober {
        Prober { conn: None, state: ProbeState::new(PROBE_INTERVAL), retry_at: None, warned: false }
    }

    /// One step, between the steps of the replication loop: publishes a safe time
    /// `flushed` (the remote position applied and durable here) covers, or that
    /// `applied` (the newest commit timestamp of the provider's own transactions
    /// applied and durable here) gives, reads an answer that arrived, sends the
    /// next probe when one is due.
    pub fn step(&mut self, sub: &SubscriptionInfo, progress_slot: Option<usize>, flushed: Lsn, applied: Option<i64>) {
        let Some(slot) = progress_slot else { return };
        if crate::gucs::deleted_version_retention_us().is_none() {
            self.conn = None;
            return;
        }
        let safe = self.state.covered(flushed).max(applied.map(safe_after_applied));
        if let Some(t) = safe {
            shmem::update_progress(slot, |p| p.safe_ts = p.safe_ts.max(t));
        }
        if self.state.awaiting_answer() {
            let Some(answer) = self.conn.as_ref().and_then(|c| c.poll_query()) else { return };
            match answer.map_err(|e| e.to_string()).and_then(|rows| parse(&rows)) {
                Ok((p, wal)) => {
                    if let Some((status, safe)) = wal {
                        let at = now_pg();
                        shmem::update_progress(slot, |s| {
                            s.slot_wal_status = status.code();
                            s.slot_safe_wal_size = safe;
                            s.slot_checked_at = at;
                        });
                    }
                    self.state.answered(p);
                    self.warned = false;
                }
                Err(e) => self.failed(sub, &e),
            }
            return;
        }
        let now = Instant::now();
        if !self.state.due(now) || self.retry_at.is_some_and(|t| now < t) {
            return;
        }
        if self.conn.is_none() {
            match Connection::connect(&sub.provider_dsn, &[("application_name", &format!("{} probe", sub.slot_name))]) {
                Ok(c) => self.conn = Some(c),
                Err(e) => return self.failed(sub, &e.to_string()),
            }
        }
        self.state.sent(now);
        let conn = self.conn.as_ref().expect("connected above");
        if let Err(e) = conn.send_query(&probe_sql(conn, &sub.slot_name)) {
            self.failed(sub, &e.to_string());
        }
    }

    fn failed(&mut self, sub: &SubscriptionInfo, e: &str) {
        if !self.warned {
            pgrx::warning!(
                "spock subscription {}: could not ask provider {} how far it is: {e}; deleted row versions are kept until it answers (at most spock.deleted_version_retention)",
                sub.name,
                sub.provider_name
            );
            self.warned = true;
        }
        self.conn = None;
        self.state.failed();
        self.retry_at = Some(Instant::now() + RETRY_AFTER);
    }
}

/// The probe's answer, and the slot's `wal_status` and `safe_wal_size` when the
/// provider has the slot.
#[allow(clippy::type_complexity)]
fn parse(rows: &Rows) -> Result<(Probe, Option<(WalStatus, Option<i64>)>), String> {
    let row = rows.first().ok_or("the probe returned no row")?;
    let time = row.first().cloned().flatten().and_then(|s| s.parse::<i64>().ok());
    let lsn = row.get(1).cloned().flatten().and_then(|s| parse_lsn(&s));
    let wal = row.get(2).cloned().flatten().map(|s| {
        let (status, safe) = s.split_once(' ').unwrap_or((s.as_str(), ""));
        (WalStatus::parse(status), safe.parse::<i64>().ok())
    });
    match (time, lsn) {
        (Some(provider_time), Some(lsn)) => Ok((Probe { lsn, provider_time }, wal)),
        _ => Err(format!("unexpected probe answer {row:?}")),
    }
}

fn now_pg() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pgrx::pg_sys::GetCurrentTimestamp() }
}
