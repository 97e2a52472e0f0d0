//! Conflict decisions of the apply session: the local row's version (commit
//! timestamp and origin, mapped to the node that wrote it), `spock_core::conflict`
//! for the decision, the log line and the `spock.resolutions` row.

use super::*;
use crate::catalog;

impl SessionState {
    pub(super) fn remote_version(&self) -> RowVersion {
        RowVersion { commit_ts: self.txn.remote.as_ref().map_or(0, |r| r.commit_time), origin: self.session_origin }
    }

    /// Node id and tiebreaker of the node that wrote under local origin `origin`.
    pub(super) fn node_of_origin(&mut self, origin: pg_sys::RepOriginId) -> (u16, i64) {
        if let Some(v) = self.origin_nodes.get(&origin) {
            return *v;
        }
        let node = if origin == 0 {
            self.sub.local_node_id
        } else {
            match catalog::system::origin_name(origin) {
                Some(name) => match names::origin_node_of(&self.sub.slot_name, &name) {
                    Some(None) => self.sub.provider_node_id,
                    Some(Some(n)) => n,
                    // Another subscription's origin: its provider.
                    None => catalog::subscriptions::provider_of_origin(&name)
                        .or_else(|| names::origin_node_of(name.rsplit_once('_').map_or("", |x| x.0), &name).flatten())
                        .unwrap_or(0),
                },
                None => 0,
            }
        };
        let v = (node, catalog::nodes::tiebreaker(node));
        self.origin_nodes.insert(origin, v);
        v
    }

    /// Decides a conflict of `kind` against the local row version (the live row, or
    /// the DELETE of a deleted one).
    pub(super) fn decide(&mut self, kind: ConflictKind, local: Option<RowVersion>, relation: &str) -> Decision {
        self.decide_by(kind, local, relation, |remote, policy, tiebreakers| {
            conflict::decide(kind, local, remote, policy, tiebreakers)
        })
    }

    /// Decides an UPDATE that found neither row nor deleted version
    /// ([`conflict::decide_update_missing`]); `complete_row`: it carries every value.
    pub(super) fn decide_update_missing(&mut self, complete_row: bool, relation: &str) -> Decision {
        self.decide_by(ConflictKind::UpdateMissing, None, relation, |_, policy, _| {
            conflict::decide_update_missing(complete_row, policy)
        })
    }

    /// Takes the decision `rule` gives for the remote change's version, the policy in
    /// force and the writers' tiebreakers, then logs and records it.
    fn decide_by(
        &mut self,
        kind: ConflictKind,
        local: Option<RowVersion>,
        relation: &str,
        rule: impl FnOnce(RowVersion, conflict::ConflictPolicy, Tiebreakers) -> Result<Decision, conflict::Unresolvable>,
    ) -> Decision {
        if let Some(r) = self.txn.remote.as_mut().filter(|r| r.eager) {
            // Needs the remote commit timestamp: replayed at commit instead.
            r.needs_commit = true;
            return Decision { kind, resolution: conflict::Resolution::Skip, reason: conflict::Reason::Policy };
        }
        // The bookkeeping below (spock's catalogs, spock.resolutions) is the worker's,
        // not the table owner's the change runs as.
        // SAFETY: `as_owner` is set only while that switch is in force (with_writer).
        let _worker = self.txn.as_owner.map(|s| unsafe { crate::apply::owner::WorkerSwitch::enter(s) });
        let remote = self.remote_version();
        let remote_node = self.txn.remote.as_ref().map_or(self.sub.provider_node_id, |r| r.origin_node);
        let remote_tb = {
            let o = self.session_origin;
            self.node_of_origin(o).1
        };
        let local_tb = local.map_or(0, |l| self.node_of_origin(l.origin).1);
        let policy = gucs::conflict_policy();
        match rule(remote, policy, Tiebreakers { local_node: local_tb, remote_node: remote_tb }) {
            Ok(d) => {
                // Spock's statistics count its seven kinds. An UPDATE of a row
                // deleted here is update_missing there (Spock keeps no deleted
                // versions); an INSERT of a deleted key is no conflict for Spock.
                self.count_conflict(if d.kind == ConflictKind::UpdateDeleted {
                    ConflictKind::UpdateMissing
                } else {
                    d.kind
                });
                let msg = format!(
                    "CONFLICT: remote {} on relation {relation} (local origin {}, ts {}; remote node {remote_node}, ts {}). Resolution: {}",
                    d.kind,
                    local.map_or(0, |l| l.origin),
                    local.map_or(0, |l| l.commit_ts),
                    remote.commit_ts,
                    d.resolution
                );
                if d.needs_warning() {
                    pgrx::warning!("spock: nodes writing the conflicting versions of a row in {relation} have equal tiebreakers; set distinct spock.node info->'tiebreaker' values");
                }
                // (counted above; a later write by another node is not a conflict to record)
                if !d.is_normal_flow() {
                    log_conflict(&msg);
                    if gucs::SAVE_RESOLUTIONS.get() {
                        self.save_resolution(&d, local, relation);
                    }
                }
                d
            }
            Err(e) => PgError::new(
                PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
                format!("spock: {e} on relation {relation}"),
            )
            .raise(),
        }
    }

    /// Counts a conflict of `kind` in this subscription's statistics
    /// (`get_subscription_stats`: Spock's seven kinds; others are not counted).
    pub(super) fn count_conflict(&self, kind: ConflictKind) {
        let k = ConflictKind::ALL[..crate::workers::shmem::CONFLICT_COUNTERS].iter().position(|c| *c == kind);
        if let (Some(k), Some(slot)) = (k, self.progress_slot) {
            crate::workers::shmem::update_progress(slot, |p| p.conflicts[k] += 1);
        }
    }

    pub(super) fn save_resolution(&self, d: &Decision, local: Option<RowVersion>, relation: &str) {
        let remote = self.remote_version();
        let node_name = self.sub.local_name.clone();
        let (local_slot, remote_slot) = self.txn.conflict_rows;
        // SAFETY: the slots were set by the handler deciding this conflict and are
        // alive until it returns.
        let (local_tuple, local_xid, remote_tuple) = unsafe {
            (
                (!local_slot.is_null()).then(|| crate::apply::rows::slot_json(local_slot)),
                (!local_slot.is_null()).then(|| crate::apply::rows::slot_xmin(local_slot).to_string()),
                (!remote_slot.is_null()).then(|| crate::apply::rows::slot_json(remote_slot)),
            )
        };
        Spi::connect_mut(|client| {
            client
                .update(
                    "INSERT INTO spock.resolutions (node_name, log_time, relname, conflict_type, conflict_resolution,
                        local_origin, local_timestamp, remote_origin, remote_timestamp, remote_xid, remote_lsn,
                        local_tuple, local_xid, remote_tuple)
                     VALUES ($1, now(), $2, $3, $4, $5, CASE WHEN $6 = 0 THEN NULL ELSE '2000-01-01 00:00:00+00'::timestamptz + $6 * interval '1 microsecond' END,
                             $7, '2000-01-01 00:00:00+00'::timestamptz + $8 * interval '1 microsecond',
                             $9::text::xid, $10::text::pg_lsn, $11, $12::text::xid, $13)",
                    None,
                    &[
                        node_name.as_str().into(),
                        relation.into(),
                        d.kind.as_str().into(),
                        d.resolution.as_str().into(),
                        local.map(|l| i32::from(l.origin)).into(),
                        local.map_or(0i64, |l| l.commit_ts).into(),
                        i32::from(self.txn.remote.as_ref().map_or(0, |r| r.origin_node)).into(),
                        remote.commit_ts.into(),
                        self.txn.remote.as_ref().map_or(0, |r| r.xid).to_string().into(),
                        proto::format_lsn(self.txn.remote.as_ref().map_or(0, |r| r.final_lsn)).into(),
                        local_tuple.as_deref().into(),
                        local_xid.as_deref().into(),
                        remote_tuple.as_deref().into(),
                    ],
                )
                .unwrap_or_else(|e| spi_failed("recording a resolution", e));
        });
    }

    /// Whether an UPDATE or INSERT applies over the deleted version of its row (`kind`
    /// `update_deleted` or `insert_deleted`): always when the DELETE came from the
    /// same origin as the change (that node deleted and wrote the row again, in this
    /// order), otherwise as decided against the DELETE.
    pub(super) fn remote_wins_over_deleted(&mut self, deleted: RowVersion, kind: ConflictKind, relation: &str) -> bool {
        !conflict::origin_differs(deleted, self.remote_version())
            || self.decide(kind, Some(deleted), relation).applies_remote()
    }

    /// Whether an UPDATE or DELETE applies to the local row it found: always, unless
    /// the row was last written by another origin and the conflict (`kind`) is decided
    /// for the local version.
    pub(super) fn remote_wins_over(&mut self, local: LocalVersion, kind: ConflictKind, relation: &str) -> bool {
        match local {
            LocalVersion::Committed { commit_ts, origin } => {
                let local = RowVersion { commit_ts, origin };
                !conflict::origin_differs(local, self.remote_version())
                    || self.decide(kind, Some(local), relation).applies_remote()
            }
            LocalVersion::ThisTransaction | LocalVersion::Unknown => true,
        }
    }
}

/// Looks for the row an UPDATE or DELETE targets, retrying `spock.read_retry_count`
/// times: in a mesh the row may still be arriving through another subscription.
///
/// SAFETY: as [`TableWriter::find`].
pub(super) unsafe fn find_with_retries(
    w: &mut TableWriter,
    map: &LocalRelation,
    search: *mut pg_sys::TupleTableSlot,
) -> bool {
    let retries = gucs::READ_RETRY_COUNT.get().max(0) as i64;
    for attempt in 0..=retries {
        // SAFETY: forwarded.
        if unsafe { w.find(map, search) } {
            return true;
        }
        if attempt < retries {
            // SAFETY: a plain sleep; interrupts are checked after it.
            unsafe { pg_sys::pg_usleep(10_000 * (attempt + 1)) };
            pgrx::check_for_interrupts!();
        }
    }
    false
}

fn log_conflict(msg: &str) {
    match gucs::CONFLICT_LOG_LEVEL.get() {
        gucs::LogLevelGuc::Debug => pgrx::debug1!("{msg}"),
        gucs::LogLevelGuc::Log => pgrx::log!("{msg}"),
        gucs::LogLevelGuc::Info => pgrx::info!("{msg}"),
        gucs::LogLevelGuc::Notice => pgrx::notice!("{msg}"),
        gucs::LogLevelGuc::Warning => pgrx::warning!("{msg}"),
    }
}
