//! Exceptions (`spock.exception_behaviour`): what happens when a remote
//! transaction fails to apply, how it is remembered across the worker's restart and
//! replayed (discard / transdiscard / sub_disable), and the `spock.exception_log`
//! rows (docs/apply.md, Exceptions).

use super::*;

impl ApplySession {
    /// Whether a failed transaction waits to be replayed (the worker then asks for
    /// text transfer, so exception_log shows readable values).
    pub fn replay_pending(&self) -> bool {
        self.s.exception.is_some()
    }

    /// Whether the open remote transaction is a replay of one that failed.
    pub fn replaying_failed_transaction(&self) -> bool {
        self.s.txn.remote.as_ref().is_some_and(|r| r.replay.is_some())
    }

    /// Records where the open remote transaction failed with `error`, so that the
    /// next attempt (from memory at once, or after the worker's restart) replays
    /// it per `spock.exception_behaviour`; true when it is to be replayed (a
    /// transient error is simply retried). `stopping`: the worker stops now, so a
    /// subscription to be disabled gets its SUB_DISABLE row at once.
    pub fn note_failure(&mut self, sqlstate: &str, message: &str, stopping: bool) -> bool {
        let s = &self.s;
        let (Some(remote), Some(slot)) = (s.txn.remote.as_ref(), s.progress_slot) else { return false };
        if remote.skip {
            return false;
        }
        if exc::is_transient(sqlstate) {
            pgrx::log!(
                "spock subscription {}: transient error ({sqlstate}) applying remote transaction {}; it will be retried",
                s.sub.name,
                remote.xid
            );
            return false;
        }
        // (counted once, on the first attempt, as Spock counts it)
        if let Some(kind) = spock_core::conflict::failure_counts_as(sqlstate, s.txn.current_is_update) {
            if remote.replay.is_none() {
                s.count_conflict(kind);
            }
        }
        let next = match remote.replay {
            None => ReplayMode::for_behaviour(gucs::exception_behaviour()),
            Some(m) => m.escalate().unwrap_or(ReplayMode::Disable),
        };
        let message = format!("{message} (SQLSTATE {sqlstate})");
        crate::workers::shmem::record_exception(slot, remote.final_lsn, s.txn.current_change, next.code(), &message);
        let (xid, final_lsn) = (remote.xid, remote.final_lsn);
        pgrx::log!(
            "spock subscription {}: remote transaction {xid} (commit LSN {}) failed at change {}: {message}; it will be replayed in {} mode",
            s.sub.name,
            proto::format_lsn(final_lsn),
            s.txn.current_change,
            match next {
                ReplayMode::Discard => "discard",
                ReplayMode::LogOnly => "transdiscard",
                ReplayMode::Disable => "sub_disable",
            }
        );
        if stopping && next == ReplayMode::Disable && gucs::exception_logging() != exc::ExceptionLogging::None {
            self.log_disable_at_failure(slot);
        }
        self.s.exception = crate::workers::shmem::pending_exception(slot);
        true
    }

    /// Rolls back the local transaction of a remote transaction that just failed
    /// (its error caught) and forgets it, for a replay from memory.
    pub fn abandon_failed(&mut self) {
        self.roll_back_failure();
        self.abandon_remote();
    }

    /// Rolls back the local transaction of the remote transaction that just failed
    /// (its error caught), keeping the remote transaction itself.
    fn roll_back_failure(&mut self) {
        if let Some(r) = self.s.txn.remote.as_mut() {
            r.local_started = false;
        }
        self.s.txn.as_owner = None;
        self.rels.forget_transaction();
        // SAFETY: the error was caught (and its state flushed) by the caller's
        // catch_unwind; whatever transaction is open, and any subtransaction of
        // it, is rolled back as PG_CATCH blocks do before new work.
        unsafe { pg_sys::AbortOutOfAnyTransaction() };
        self.rels.forget_mappings();
    }

    /// The subscription will be disabled (`sub_disable`): its SUB_DISABLE row of
    /// spock.exception_log, with the skip_lsn to give `sub_alter_skiplsn`, is
    /// written now, as the failure is caught, as Spock does: whoever watches for the
    /// row (the worker is gone until it restarts to replay) sees it at once. The
    /// failed local transaction is rolled back first; the replay after the restart
    /// logs the changes and disables the subscription without a second row.
    fn log_disable_at_failure(&mut self, slot: usize) {
        let Some(final_lsn) = self.s.txn.remote.as_ref().map(|r| r.final_lsn) else { return };
        self.roll_back_failure();
        let msg = exc::disable_message(&self.s.sub.name, &proto::format_lsn(final_lsn));
        let n = self.s.txn.current_change;
        let logged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.log_exception(None, n, &msg);
            // SAFETY: commits the row alone, without origin progress.
            unsafe {
                pg_sys::replorigin_session_origin_lsn = pg_sys::InvalidXLogRecPtr as u64;
                pg_sys::CommitTransactionCommand();
            }
        }));
        self.s.txn.remote = None;
        match logged {
            Ok(()) => crate::workers::shmem::mark_disable_logged(slot),
            Err(e) => {
                // SAFETY: as above, for an error while writing the row; the replay
                // writes it instead.
                unsafe { pg_sys::AbortOutOfAnyTransaction() };
                let (code, m) = describe_error(e.as_ref());
                pgrx::log!(
                    "spock subscription {}: could not record the SUB_DISABLE exception now ({code}): {m}",
                    self.s.sub.name
                );
            }
        }
    }

    /// Runs `f` like [`Self::in_change`] but in a subtransaction: an error rolls back
    /// only this change and is returned as text.
    pub(super) fn in_change_isolated(&mut self, f: impl FnOnce(&mut Self)) -> Result<(), String> {
        self.s.ensure_local_transaction();
        // Tables are opened inside the subtransaction and closed before it ends: a
        // rollback releases them, a release would report them as leaked.
        self.rels.close_all();
        // SAFETY: the subtransaction protocol of PL/pgSQL's exception blocks: begin,
        // keep the caller's memory context and resource owner, and on error restore
        // them, flush the error state and roll the subtransaction back (which also
        // pops snapshots pushed inside and releases relations opened inside).
        unsafe {
            let cxt = pg_sys::CurrentMemoryContext;
            let owner = pg_sys::CurrentResourceOwner;
            pg_sys::BeginInternalSubTransaction(std::ptr::null());
            pg_sys::MemoryContextSwitchTo(cxt);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.in_change(f)));
            match r {
                Ok(()) => {
                    self.rels.close_all();
                    pg_sys::ReleaseCurrentSubTransaction();
                    pg_sys::MemoryContextSwitchTo(cxt);
                    pg_sys::CurrentResourceOwner = owner;
                    Ok(())
                }
                Err(payload) => {
                    pg_sys::MemoryContextSwitchTo(cxt);
                    let (code, msg) = describe_error(payload.as_ref());
                    pg_sys::FlushErrorState();
                    pg_sys::RollbackAndReleaseCurrentSubTransaction();
                    // The rollback released the slots of tables opened inside.
                    self.s.txn.as_owner = None;
                    self.rels.forget_transaction();
                    pg_sys::MemoryContextSwitchTo(cxt);
                    pg_sys::CurrentResourceOwner = owner;
                    pg_sys::MemoryContextReset(self.s.change_cxt);
                    Err(format!("{msg} (SQLSTATE {code})"))
                }
            }
        }
    }

    /// The local row change `c` is about (found by its key as apply finds it, as
    /// the table owner), in `spock.exception_log`'s tuple form, with its commit
    /// timestamp and origin when known. `None` when there is none, or when looking
    /// fails (the table is missing here, say): the lookup runs in a subtransaction
    /// of its own and changes nothing.
    fn local_row_of(&mut self, c: Change<'_>) -> Option<(String, Option<RowVersion>)> {
        let relid = c.relid().filter(|_| !matches!(c, Change::Truncate(_)))?;
        let key = c.old_tuple().or(c.new_tuple())?;
        let mut found = None;
        let _ = self.in_change_isolated(|s| {
            // SAFETY: inside the apply transaction with an active snapshot
            // (in_change); the slots are the writer's.
            found = unsafe {
                s.with_writer(relid, |_, w, map| {
                    map.fill_search_slot(w.search, key, w.econtext);
                    if !w.find(map, w.search) {
                        return None;
                    }
                    let version = match w.local_row_version() {
                        LocalVersion::Committed { commit_ts, origin } => Some(RowVersion { commit_ts, origin }),
                        LocalVersion::ThisTransaction | LocalVersion::Unknown => None,
                    };
                    Some((crate::apply::rows::slot_json_array(w.local), version))
                })
            };
        });
        found
    }

    /// Adds a row to spock.exception_log for change `n` (or for the transaction when
    /// `c` is None: `operation` SUB_DISABLE), in the local transaction, with the
    /// local row the change is about where there is one.
    pub(super) fn log_exception(&mut self, c: Option<Change<'_>>, n: u32, message: &str) {
        if self.s.txn.remote.is_none() {
            return;
        }
        // The lookup starts the local transaction if needed; without a change, this does.
        let local = c.and_then(|c| self.local_row_of(c));
        self.s.ensure_local_transaction();
        let Some(remote) = self.s.txn.remote.as_ref() else { return };
        let rel = c.and_then(|c| c.relid()).and_then(|r| self.rels.remote(r));
        let (schema, table) = rel.map_or((None, None), |r| (Some(r.nspname.clone()), Some(r.relname.clone())));
        let operation = c.map_or("SUB_DISABLE", |c| c.operation());
        let (origin, commit_time, xid) = (i64::from(remote.origin_node), remote.commit_time, i64::from(remote.xid));
        let (old, new) = (c.and_then(|c| c.old_tuple()).cloned(), c.and_then(|c| c.new_tuple()).cloned());
        // Column names with the provider's type (oid, typmod).
        let columns: Vec<(String, (u32, i32))> = match rel {
            Some(r) => r.columns.iter().map(|col| (col.name.clone(), (col.type_oid, col.typmod))).collect(),
            None => Vec::new(),
        };
        // SAFETY: SPI needs an active snapshot; pushed and popped around it.
        unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
        Spi::connect_mut(|client| {
            // Local types (oid, typmod), when the table exists here; without it, a
            // built-in type of the provider is the same type here (an oid below
            // FirstNormalObjectId).
            let local_types: HashMap<String, (u32, i32)> = match (&schema, &table) {
                (Some(sch), Some(tab)) => client
                    .select(
                        "SELECT a.attname::text, a.atttypid::int8, a.atttypmod
                           FROM pg_catalog.pg_attribute a
                          WHERE a.attrelid = pg_catalog.to_regclass(pg_catalog.format('%I.%I', $1, $2))
                            AND a.attnum > 0 AND NOT a.attisdropped",
                        None,
                        &[sch.as_str().into(), tab.as_str().into()],
                    )
                    .map(|t| {
                        t.into_iter()
                            .filter_map(|r| {
                                let ty = (r.get::<i64>(2).ok()?? as u32, r.get::<i32>(3).ok()??);
                                Some((r.get::<String>(1).ok()??, ty))
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                _ => HashMap::new(),
            };
            // (typname, oid, typmod, typcategory) per column
            let types: HashMap<String, (String, u32, i32, u8)> = columns
                .iter()
                .filter_map(|(name, remote)| {
                    let (oid, typmod) = local_types
                        .get(name)
                        .copied()
                        .or_else(|| (remote.0 < pg_sys::FirstNormalObjectId).then_some(*remote))?;
                    let (typname, category) = crate::apply::rows::type_name_and_category(pg_sys::Oid::from(oid))?;
                    Some((name.clone(), (typname, oid, typmod, category)))
                })
                .collect();
            let labels: Vec<exc::ColumnLabel> = columns
                .iter()
                .map(|(name, _)| exc::ColumnLabel {
                    name: name.clone(),
                    type_name: types.get(name).map(|t| t.0.clone()),
                    json_type: types.get(name).map(|t| (t.1, t.3)),
                })
                .collect();
            // Values that came in binary are shown as text, as they are after a
            // restart (which asks for text transfer).
            let readable = |t: &proto::Tuple| {
                let mut t = t.clone();
                for (d, (name, _)) in t.columns.iter_mut().zip(&columns) {
                    if let (proto::Datum::Binary(b), Some(&(_, oid, typmod, _))) = (&*d, types.get(name)) {
                        *d = proto::Datum::Text(binary_as_text(pg_sys::Oid::from(oid), typmod, b).into());
                    }
                }
                t
            };
            let old_json = old.as_ref().map(|t| exc::tuple_json(&labels, &readable(t)));
            let new_json = new.as_ref().map(|t| exc::tuple_json(&labels, &readable(t)));
            client
                .update(
                    "INSERT INTO spock.exception_log (remote_origin, remote_commit_ts, command_counter, retry_errored_at,
                        remote_xid, table_schema, table_name, operation, remote_old_tup, remote_new_tup, error_message,
                        local_tup, local_origin, local_commit_ts)
                     VALUES ($1::int8::oid, '2000-01-01 00:00:00+00'::timestamptz + $2 * interval '1 microsecond', $3,
                             pg_catalog.clock_timestamp(), $4, $5, $6, $7, $8::jsonb, $9::jsonb, $10,
                             $11::jsonb, $12::int8::oid,
                             '2000-01-01 00:00:00+00'::timestamptz + $13 * interval '1 microsecond')",
                    None,
                    &[
                        origin.into(),
                        commit_time.into(),
                        (n as i32).into(),
                        xid.into(),
                        schema.as_deref().into(),
                        table.as_deref().into(),
                        operation.into(),
                        old_json.as_deref().into(),
                        new_json.as_deref().into(),
                        message.into(),
                        local.as_ref().map(|(row, _)| row.as_str()).into(),
                        local.as_ref().and_then(|(_, v)| v.map(|v| i64::from(v.origin))).into(),
                        local.as_ref().and_then(|(_, v)| v.map(|v| v.commit_ts)).into(),
                    ],
                )
                .unwrap_or_else(|e| spi_failed("recording an exception", e));
        });
        // SAFETY: pops the snapshot pushed above.
        unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommandCounterIncrement();
        }
    }
    /// `spock.exception_behaviour = sub_disable`: records the transaction's changes
    /// (already logged) and a SUB_DISABLE row, disables the subscription and commits
    /// without moving the origin, so that re-enabling retries the transaction and
    /// `sub_alter_skiplsn` can skip it.
    pub(super) fn disable_after_exception(&mut self, remote: RemoteTxn) {
        let lsn = proto::format_lsn(remote.final_lsn);
        let xid = remote.xid;
        let changes = remote.changes;
        self.s.txn.remote = Some(remote);
        self.rels.end_transaction();
        self.s.ensure_local_transaction();
        let msg = exc::disable_message(&self.s.sub.name, &lsn);
        // SAFETY: SPI in the open local transaction needs an active snapshot.
        unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
        if self.s.exception.is_some_and(|e| e.disable_logged) {
            // The row written at the failure makes way for this one, which comes
            // after the changes' rows in command order (one row, whoever looks).
            Spi::run_with_args(
                "DELETE FROM spock.exception_log WHERE ctid = (SELECT ctid FROM spock.exception_log
                   WHERE operation = 'SUB_DISABLE' AND remote_xid = $1 AND error_message = $2
                   ORDER BY retry_errored_at DESC LIMIT 1)",
                &[i64::from(xid).into(), msg.as_str().into()],
            )
            .unwrap_or_else(|e| spi_failed("replacing the SUB_DISABLE exception row", e));
        }
        // SAFETY: pops the snapshot pushed above.
        unsafe { pg_sys::PopActiveSnapshot() };
        if gucs::exception_logging() != exc::ExceptionLogging::None {
            self.log_exception(None, changes + 1, &msg);
        }
        // SAFETY: SPI in the open local transaction needs an active snapshot.
        unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
        Spi::run_with_args(
            "UPDATE spock.subscription SET sub_enabled = false WHERE sub_id = $1::int8::oid",
            &[i64::from(self.s.sub.id).into()],
        )
        .unwrap_or_else(|e| spi_failed("disabling the subscription", e));
        // SAFETY: commits without origin progress (the transaction stays unapplied).
        unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::replorigin_session_origin_lsn = pg_sys::InvalidXLogRecPtr as u64;
            pg_sys::CommitTransactionCommand();
        }
        self.s.txn.remote = None;
        self.s.forget_exception();
        pgrx::warning!(
            "spock subscription {}: disabled after remote transaction {xid} (commit LSN {lsn}) failed; see spock.exception_log. \
             Fix the cause and run spock.sub_enable('{}'), or skip the transaction with spock.sub_alter_skiplsn('{}', '{lsn}') first",
            self.s.sub.name,
            self.s.sub.name,
            self.s.sub.name
        );
    }
}

/// The text output of a value received in a type's binary format, through the
/// type's receive and output functions (the receive function validates it, as
/// when the change applied).
fn binary_as_text(typoid: pg_sys::Oid, typmod: i32, bytes: &[u8]) -> String {
    // SAFETY: catalog lookups of an existing type; the value is a palloc'd copy
    // in a StringInfo, as receive functions expect; the output is a palloc'd C
    // string.
    unsafe {
        let (mut recv, mut ioparam, mut out, mut varlena) =
            (pg_sys::InvalidOid, pg_sys::InvalidOid, pg_sys::InvalidOid, false);
        pg_sys::getTypeBinaryInputInfo(typoid, &mut recv, &mut ioparam);
        pg_sys::getTypeOutputInfo(typoid, &mut out, &mut varlena);
        let mut buf = crate::apply::executor::string_info_copy(bytes);
        let value = pg_sys::OidReceiveFunctionCall(recv, &mut buf, ioparam, typmod);
        std::ffi::CStr::from_ptr(pg_sys::OidOutputFunctionCall(out, value)).to_string_lossy().into_owned()
    }
}

impl SessionState {
    /// Forgets the failed transaction once it (replayed or skipped) is done.
    pub(super) fn forget_exception(&mut self) {
        if self.exception.take().is_some() {
            if let Some(i) = self.progress_slot {
                crate::workers::shmem::clear_exception(i);
            }
        }
    }
}

/// Writes a caught error to the server log (LOG) with its SQLSTATE, DETAIL and
/// HINT, as the worker's exit would have: the failed transaction is replayed
/// without one.
pub fn log_caught_error(subscription: &str, payload: &(dyn std::any::Any + Send)) {
    use pgrx::pg_sys::panic::{CaughtError, ErrorReport as Report, ErrorReportWithLevel};
    let (_, msg) = describe_error(payload);
    let report: Option<&ErrorReportWithLevel> = match payload.downcast_ref::<CaughtError>() {
        Some(
            CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) | CaughtError::RustPanic { ereport: r, .. },
        ) => Some(r),
        None => payload.downcast_ref::<ErrorReportWithLevel>(),
    };
    let code = report.map_or(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, |r| r.sql_error_code());
    let mut out = Report::new(code, format!("spock subscription {subscription}: {msg}"), "spock");
    if let Some(d) = report.and_then(|r| r.detail()) {
        out = out.set_detail(d.to_string());
    }
    if let Some(h) = report.and_then(|r| r.hint()) {
        out = out.set_hint(h.to_string());
    }
    out.report(PgLogLevel::LOG);
}

/// SQLSTATE and message of a caught error (a PostgreSQL ERROR turned into a panic
/// by pgrx, a raised [`PgError`], or a Rust panic).
pub fn describe_error(payload: &(dyn std::any::Any + Send)) -> (String, String) {
    use pgrx::pg_sys::panic::{CaughtError, ErrorReport, ErrorReportWithLevel};
    let report: Option<&ErrorReportWithLevel> = match payload.downcast_ref::<CaughtError>() {
        Some(
            CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) | CaughtError::RustPanic { ereport: r, .. },
        ) => Some(r),
        None => payload.downcast_ref::<ErrorReportWithLevel>(),
    };
    if let Some(r) = report {
        return (sqlstate_text(r.sql_error_code() as isize as i64), r.message().to_string());
    }
    if let Some(r) = payload.downcast_ref::<ErrorReport>() {
        return ("XX000".to_string(), r.message().to_string());
    }
    let msg = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
        .unwrap_or_else(|| "internal error".to_string());
    ("XX000".to_string(), msg)
}

/// The five characters of a packed SQLSTATE.
pub(super) fn sqlstate_text(code: i64) -> String {
    (0..5).map(|i| char::from(((code >> (6 * i)) & 0x3f) as u8 + b'0')).collect()
}
