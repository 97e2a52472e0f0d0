//! Initial synchronisation of a subscription (`sub_create(synchronize_structure,
//! synchronize_data)`), run by the apply worker before it streams.
//!
//! 1. The slot is created with an exported snapshot: everything committed before
//!    its consistent point is in the snapshot, everything after comes by streaming.
//! 2. Structure: `pg_dump -Fc -s --snapshot` of the provider (the spock schema and
//!    extension and `skip_schema` left out), `pg_restore --section=pre-data` here
//!    in one transaction with status 'd'.
//! 3. Data: for every table of the subscribed sets, `COPY t (columns) TO STDOUT`
//!    (`COPY (SELECT columns FROM ONLY t WHERE row filters)` when rows are filtered)
//!    on the provider under the snapshot, read by PostgreSQL's COPY FROM running in
//!    this worker ([`copy_from`]). All tables are copied in ONE local transaction,
//!    under the subscription's replication origin (the rows belong to the provider
//!    and are not sent on to other nodes) with the oldest commit timestamp and
//!    `session_replication_role = replica`; the same
//!    transaction records status 'c' and each table's row in
//!    `spock.local_sync_status`. A table that already has rows written here stops
//!    the sync with a clear error instead of mixing data (rows another
//!    subscription replicated here stay: several upstreams of one table).
//! 4. `pg_restore --section=post-data` (indexes, constraints, triggers) in one
//!    transaction with status 'w', then the origin starts at the slot's consistent
//!    point and the status becomes 'r' in one commit.
//!
//! Crash safety: each restored section commits together with the status that
//! follows it (psql runs pg_restore's script and the status update in one
//! transaction): 's' means none of the structure is here, 'd' all of it, 'w' the
//! post-data too. Before 'c' nothing of the data is committed and the sync starts
//! again with a new slot, keeping a structure restored before ('d'). A retry never
//! drops anything: a table (or index) of the same name made on this node stops the
//! sync with pg_restore's error, every attempt, until it is renamed or dropped. At
//! 'c' the data and the slot are kept and only post-data (unless 'w') and the final
//! step are repeated.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Command;

use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};

use super::copy_from;
use super::owner::as_table_owner;
use super::subscription::{set_sync_status, SubscriptionInfo};
use super::{create_slot, fail};
use crate::error::{spi_failed, PgError};
use crate::libpq::Connection;
use spock_core::ident::quote_identifier;
use spock_core::proto::{format_lsn, parse_lsn};

/// What the subscription asked to synchronise.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Kind {
    structure: bool,
    data: bool,
}

/// A failed step of `phase` (initial sync, resync) of `sub`.
pub(super) fn phase_error(sub: &SubscriptionInfo, phase: &str, what: &str, e: impl std::fmt::Display) -> ! {
    PgError::new(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("spock subscription {}: {phase}: {what}: {e}", sub.name),
    )
    .raise()
}

fn sync_error(sub: &SubscriptionInfo, what: &str, e: impl std::fmt::Display) -> ! {
    phase_error(sub, "initial sync", what, e)
}

/// The subscription-level sync row: kind, status, LSN.
fn sync_row(sub: &SubscriptionInfo) -> (char, char, u64) {
    BackgroundWorker::transaction(|| {
        Spi::connect(|client| {
            let t = client
                .select(
                    "SELECT sync_kind::text, sync_status::text, sync_statuslsn::text FROM spock.local_sync_status
                      WHERE sync_subid = $1::int8::oid AND sync_nspname IS NULL",
                    Some(1),
                    &[i64::from(sub.id).into()],
                )
                .unwrap_or_else(|e| spi_failed("reading the sync status", e));
            t.into_iter()
                .next()
                .map(|r| {
                    let c = |i: usize| r.get::<String>(i).ok().flatten().and_then(|s| s.chars().next()).unwrap_or('i');
                    (c(1), c(2), r.get::<String>(3).ok().flatten().and_then(|s| parse_lsn(&s)).unwrap_or(0))
                })
                .unwrap_or(('i', 'i', 0))
        })
    })
}

/// Brings a subscription whose status is not 'r' to 'r'.
pub fn run(sub: &SubscriptionInfo) {
    let (kind_code, status, lsn) = sync_row(sub);
    if kind_code == 'd' && status == 'm' {
        // spock.sub_resync(): a new slot, and the provider's rows merged
        super::resync::run(sub);
        return;
    }
    let kind = Kind { structure: matches!(kind_code, 's' | 'f'), data: matches!(kind_code, 'd' | 'f') };
    if !kind.structure && !kind.data {
        create_slot(sub);
        return;
    }
    let dump = dump_path(sub);
    if matches!(status, 'c' | 'w') && lsn != 0 {
        pgrx::log!("spock subscription {}: initial sync: data was copied before a restart; finishing", sub.name);
        if kind.structure && status == 'c' {
            restore_section(sub, &dump, "post-data", 'w', lsn);
        }
        finish(sub, lsn, &dump);
        return;
    }
    // The structure a previous attempt restored (it committed with status 'd').
    let structure_here = kind.structure && status == 'd';
    pgrx::log!(
        "spock subscription {}: initial sync of {}{}",
        sub.name,
        if kind.structure { "structure" } else { "" },
        match (kind.structure, kind.data) {
            (true, true) => " and data",
            (false, true) => "data",
            _ => "",
        }
    );
    // 1. Slot and snapshot; the replication connection stays open (idle) while the
    // snapshot is used.
    let repl =
        Connection::connect(&sub.provider_dsn, &[("replication", "database"), ("application_name", &sub.slot_name)])
            .unwrap_or_else(|e| fail(sub, "could not connect to the provider in replication mode", e));
    // The provider's apply workers hold still while the snapshot is taken and their
    // progress read: the snapshot then holds exactly the other nodes' transactions
    // up to that progress, and this node's subscriptions to those nodes start there.
    let ctl = Connection::connect(&sub.provider_dsn, &[("application_name", &format!("{}_sync", sub.slot_name))])
        .unwrap_or_else(|e| fail(sub, "could not connect to the provider", e));
    let (created, read) =
        slot_with_snapshot(sub, &repl, &ctl, "initial sync", |ctl| (peer_progress(sub, ctl), restamp_since(sub, ctl)));
    let (peers, restamp) = read.unwrap_or((Vec::new(), Restamp::Nothing));
    let globals = global_sequences(sub, &ctl);
    drop(ctl);
    let rows = created.unwrap_or_else(|e| fail(sub, "could not create the replication slot", e));
    start_peer_subscriptions(sub, &peers);
    let (lsn, snapshot) = consistent_point(&rows).unwrap_or_else(|e| fail(sub, "CREATE_REPLICATION_SLOT", e));
    let restore_structure = kind.structure && !structure_here;
    BackgroundWorker::transaction(|| set_sync_status(sub.id, if restore_structure { 's' } else { 'd' }, lsn));

    // 2. Structure before the data.
    if restore_structure {
        dump_structure(sub, &snapshot, &dump);
        restore_section(sub, &dump, "pre-data", 'd', lsn);
    } else if structure_here {
        pgrx::log!(
            "spock subscription {}: initial sync: the structure was restored before a restart; keeping it",
            sub.name
        );
    }
    // The provider's global sequences are global here too, with this node's ids.
    make_global_here(sub, &globals);
    // 3. Data, one local transaction.
    let (copied, stamps) = if kind.data { copy_data(sub, &snapshot, lsn, restamp) } else { (0, Vec::new()) };
    if !kind.data {
        BackgroundWorker::transaction(|| set_sync_status(sub.id, 'c', lsn));
    }
    drop(repl);
    // 4. Constraints and indexes after the data.
    if kind.structure {
        restore_section(sub, &dump, "post-data", 'w', lsn);
    }
    // With their keys now, the rows that need their own version get it.
    restamp_rows(sub, &stamps);
    finish(sub, lsn, &dump);
    pgrx::log!(
        "spock subscription {}: initial sync done ({copied} tables copied); streaming from {}",
        sub.name,
        format_lsn(lsn)
    );
}

/// Whether the provider has function `f` (a regprocedure text).
fn provider_has(ctl: &Connection, f: &str) -> bool {
    ctl.query(&format!("SELECT pg_catalog.to_regprocedure({}) IS NOT NULL", ctl.literal(f)))
        .ok()
        .and_then(|r| r.first().and_then(|r| r.first().cloned().flatten()))
        .as_deref()
        == Some("t")
}

/// The slot of `sub` created on the provider (`repl`, a replication connection
/// kept open while the snapshot is used) with an exported snapshot, while the
/// provider's apply workers are paused (`ctl`, when it has spock-rs's pause), and
/// what `read` reads on `ctl` then (`None` when it could not pause or the slot
/// was not created): the snapshot holds exactly the other nodes' transactions up
/// to the provider's progress read under the same pause. A slot left by an
/// interrupted earlier attempt (or a lost one) is dropped first; asked first, so
/// that a first sync does not log an error on the provider for a slot that is not
/// there (log-based alerting trips on it). `phase` names the caller in errors.
pub(super) fn slot_with_snapshot<T>(
    sub: &SubscriptionInfo,
    repl: &Connection,
    ctl: &Connection,
    phase: &str,
    read: impl FnOnce(&Connection) -> T,
) -> (Result<crate::libpq::Rows, crate::libpq::LibpqError>, Option<T>) {
    let leftover = ctl
        .query(&format!(
            "SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
            ctl.literal(&sub.slot_name)
        ))
        .is_ok_and(|rows| !rows.is_empty());
    if leftover {
        let _ = repl.query(&format!("DROP_REPLICATION_SLOT {} WAIT", quote_identifier(&sub.slot_name)));
        pgrx::log!("spock subscription {}: {phase}: dropped the old slot {}", sub.name, sub.slot_name);
    }
    let can_pause = provider_has(ctl, "spock.pause_apply_workers()");
    if can_pause {
        ctl.query("SELECT spock.pause_apply_workers()")
            .unwrap_or_else(|e| phase_error(sub, phase, "pausing the provider's apply workers", e));
    }
    let created = repl.query(&format!(
        "CREATE_REPLICATION_SLOT {} LOGICAL spock_output (SNAPSHOT 'export')",
        quote_identifier(&sub.slot_name)
    ));
    let read = (can_pause && created.is_ok()).then(|| read(ctl));
    if can_pause {
        let held = !provider_has(ctl, "spock._apply_workers_paused()")
            || ctl
                .query("SELECT spock._apply_workers_paused()")
                .ok()
                .and_then(|r| r.first().and_then(|r| r.first().cloned().flatten()))
                .as_deref()
                == Some("t");
        let _ = ctl.query("SELECT spock.resume_apply_workers()");
        if created.is_ok() && !held {
            phase_error(
                sub,
                phase,
                "the provider's apply workers resumed before the snapshot was taken",
                "raise spock.pause_timeout on the provider",
            );
        }
    }
    (created, read)
}

/// The consistent point (LSN) and exported snapshot of a `CREATE_REPLICATION_SLOT`
/// result, or what is missing.
pub(super) fn consistent_point(rows: &[Vec<Option<String>>]) -> Result<(u64, String), &'static str> {
    let row = rows.first().ok_or("no result row")?;
    let lsn = row.get(1).cloned().flatten().and_then(|s| parse_lsn(&s)).ok_or("no consistent point")?;
    let snapshot = row.get(2).cloned().flatten().ok_or("no exported snapshot")?;
    Ok((lsn, snapshot))
}

/// The provider's progress per node it subscribes to: (node id, LSN in that node's
/// WAL up to which its transactions are applied there, and so in the snapshot).
fn peer_progress(sub: &SubscriptionInfo, ctl: &Connection) -> Vec<(i64, String)> {
    ctl.query(
        "SELECT s.sub_origin::int8::text, o.remote_lsn::text
           FROM spock.subscription s
           JOIN pg_catalog.pg_replication_origin_status o ON o.external_id = s.sub_slot_name::text
          WHERE o.remote_lsn IS NOT NULL AND o.remote_lsn <> '0/0'",
    )
    .unwrap_or_else(|e| sync_error(sub, "reading the provider's progress", e))
    .into_iter()
    .filter_map(|r| Some((r.first().cloned().flatten()?.parse().ok()?, r.get(1).cloned().flatten()?)))
    .collect()
}

/// The provider's global sequences (schema-qualified names); none when it has no
/// `spock.global_sequence` (an older spock-rs, pgEdge Spock).
fn global_sequences(sub: &SubscriptionInfo, ctl: &Connection) -> Vec<String> {
    let rows = ctl.query(
        "SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname)
           FROM spock.global_sequence g
           JOIN pg_catalog.pg_class c ON c.oid = g.seqoid
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace",
    );
    match rows {
        Ok(rows) => rows.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect(),
        Err(e) if e.sqlstate.as_deref() == Some("42P01") => Vec::new(),
        Err(e) => sync_error(sub, "reading the provider's global sequences", e),
    }
}

/// Makes the sequences `names` that exist here global (`spock._sequence_to_global`:
/// this node's ids), before any row is copied or written here.
fn make_global_here(sub: &SubscriptionInfo, names: &[String]) {
    for name in names {
        let next = BackgroundWorker::transaction(|| {
            Spi::get_one_with_args::<i64>(
                "SELECT spock._sequence_to_global(c) FROM pg_catalog.to_regclass($1) c WHERE c IS NOT NULL",
                &[name.as_str().into()],
            )
            .unwrap_or_else(|e| no_row_or_raise(e, "making a sequence global"))
        });
        if let Some(next) = next {
            pgrx::log!("spock subscription {}: sequence {name} is global here too; its next id is {next}", sub.name);
        }
    }
}

/// This node's (disabled) subscriptions to the nodes in `peers` start where the
/// provider's copy ends: their origins move to the provider's progress, so nothing
/// of those nodes is missed or applied twice when they are enabled.
fn start_peer_subscriptions(sub: &SubscriptionInfo, peers: &[(i64, String)]) {
    for (node, lsn) in peers {
        BackgroundWorker::transaction(|| {
            let subs: Vec<(String, String, bool)> = Spi::connect(|client| {
                client
                    .select(
                        "SELECT sub_name::text, sub_slot_name::text, sub_enabled FROM spock.subscription
                          WHERE sub_origin = $1::int8::oid AND sub_id <> $2::int8::oid",
                        None,
                        &[(*node).into(), i64::from(sub.id).into()],
                    )
                    .map(|t| {
                        t.into_iter()
                            .filter_map(|r| {
                                Some((r.get::<String>(1).ok()??, r.get::<String>(2).ok()??, r.get::<bool>(3).ok()??))
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            });
            for (name, slot, enabled) in subs {
                if enabled {
                    pgrx::warning!(
                        "spock subscription {}: subscription {name} to the same node is enabled during this sync; \
                         create it disabled and enable it after the sync so that it starts at {lsn}",
                        sub.name
                    );
                    continue;
                }
                Spi::run_with_args(
                    "SELECT pg_catalog.pg_replication_origin_create($1)
                      WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_origin WHERE roname = $1)",
                    &[slot.as_str().into()],
                )
                .and_then(|_| {
                    Spi::run_with_args(
                        "SELECT pg_catalog.pg_replication_origin_advance($1, $2::text::pg_lsn)
                          WHERE coalesce(pg_catalog.pg_replication_origin_progress($1, false), '0/0') < $2::text::pg_lsn",
                        &[slot.as_str().into(), lsn.as_str().into()],
                    )
                })
                .unwrap_or_else(|e| spi_failed("starting a peer subscription's origin", e));
                pgrx::log!("spock subscription {}: subscription {name} will start at {lsn} (the provider's progress at the snapshot)", sub.name);
            }
        });
    }
}

/// Starts the origin at the slot's consistent point and marks the subscription ready.
fn finish(sub: &SubscriptionInfo, lsn: u64, dump: &Path) {
    BackgroundWorker::transaction(|| {
        Spi::run_with_args(
            "SELECT pg_catalog.pg_replication_origin_advance($1, $2::text::pg_lsn)",
            &[sub.slot_name.as_str().into(), format_lsn(lsn).into()],
        )
        .unwrap_or_else(|e| spi_failed("starting the origin at the slot's consistent point", e));
        // (ready: the position is the origin's now; 0/0 here, as Spock keeps it)
        set_sync_status(sub.id, 'r', 0);
    });
    // The dump goes only once the status that no longer needs it is durable: apply
    // commits need not wait for their WAL flush, and a crash that lost this commit
    // would find the sync unfinished and its dump gone (seen after a crash).
    // SAFETY: flushes WAL up to this backend's last commit record.
    unsafe { pg_sys::XLogFlush(pg_sys::XactLastCommitEnd) };
    let _ = std::fs::remove_file(dump);
}

/// The end of a resync (apply::resync): the origin at the new slot's consistent
/// point, the subscription ready.
pub(super) fn finish_resync(sub: &SubscriptionInfo, lsn: u64) {
    finish(sub, lsn, &dump_path(sub));
}

/// `pg_spock/sync/<database oid>_<sub_id>.dump` in the data directory
/// (subscription ids are per database).
fn dump_path(sub: &SubscriptionInfo) -> PathBuf {
    let dir = PathBuf::from("pg_spock").join("sync");
    let _ = std::fs::create_dir_all(&dir);
    // SAFETY: reads this backend's database oid.
    let db = u32::from(unsafe { pg_sys::MyDatabaseId });
    dir.join(format!("{db}_{}.dump", sub.id))
}

/// The directory of this server's programs (pg_dump, pg_restore).
fn bindir() -> PathBuf {
    // SAFETY: my_exec_path is a NUL-terminated path set at startup.
    let exe = unsafe { std::ffi::CStr::from_ptr(std::ptr::addr_of!(pg_sys::my_exec_path).cast::<std::ffi::c_char>()) }
        .to_string_lossy()
        .into_owned();
    PathBuf::from(exe).parent().map(PathBuf::from).unwrap_or_default()
}

/// A connection string for this server over its unix socket (pg_restore connects
/// as the bootstrap superuser, like the worker itself).
fn local_dsn() -> String {
    let (dir, port, db, user) = BackgroundWorker::transaction(|| {
        Spi::connect(|client| {
            let r = client
                .select(
                    "SELECT split_part(current_setting('unix_socket_directories'), ',', 1),
                            current_setting('port'), current_database()::text,
                            (SELECT rolname::text FROM pg_catalog.pg_authid WHERE oid = 10)",
                    Some(1),
                    &[],
                )
                .unwrap_or_else(|e| spi_failed("reading the local connection settings", e));
            let row = r.into_iter().next().expect("one row");
            let t = |i: usize| row.get::<String>(i).ok().flatten().unwrap_or_default();
            (t(1).trim().to_string(), t(2), t(3), t(4))
        })
    });
    let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let host = if dir.is_empty() { "127.0.0.1".to_string() } else { dir };
    format!("host={} port={} dbname={} user={}", q(&host), q(&port), q(&db), q(&user))
}

/// Runs a program to its end and returns its stderr; a failure stops the sync. The
/// worker waits on its latch meanwhile: SIGTERM kills the program and stops the
/// worker at once, even when the program waits for a silent provider.
fn run_tool(sub: &SubscriptionInfo, what: &str, cmd: &mut Command) -> String {
    // stderr goes to a file: a pipe nobody reads while we wait could fill up.
    let errfile = dump_path(sub).with_extension("stderr");
    let file = std::fs::File::create(&errfile)
        .unwrap_or_else(|e| sync_error(sub, &format!("could not create {}", errfile.display()), e));
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(file);
    let mut child = cmd.spawn().unwrap_or_else(|e| sync_error(sub, &format!("could not run {what}"), e));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => sync_error(sub, &format!("waiting for {what}"), e),
        }
        if !crate::workers::sleep(std::time::Duration::from_millis(20)) {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&errfile);
            PgError::new(
                PgSqlErrorCode::ERRCODE_ADMIN_SHUTDOWN,
                format!("spock subscription {}: {what} stopped: the worker is stopping", sub.name),
            )
            .raise();
        }
    };
    let stderr = std::fs::read_to_string(&errfile).unwrap_or_default().trim().to_string();
    let _ = std::fs::remove_file(&errfile);
    if !status.success() {
        sync_error(sub, &format!("{what} failed"), if stderr.is_empty() { status.to_string() } else { stderr });
    }
    stderr
}

/// pg_dump of the provider's structure. The DSN's password reaches pg_dump through
/// its environment (`PGPASSWORD`), never its command line, which any local user
/// can read.
fn dump_structure(sub: &SubscriptionInfo, snapshot: &str, dump: &Path) {
    let pairs = crate::libpq::parse_conninfo(&sub.provider_dsn)
        .unwrap_or_else(|e| sync_error(sub, "reading the provider's DSN", e));
    let conn = spock_core::conninfo::tool_connection(&pairs);
    let mut schemas = skip_schemas(sub);
    schemas.extend(reserved_for_dump("schema"));
    let args = spock_core::conninfo::pg_dump_structure_args(
        snapshot,
        &dump.display().to_string(),
        &schemas,
        &reserved_for_dump("extension"),
        &conn.conninfo,
    );
    let mut cmd = Command::new(bindir().join("pg_dump"));
    cmd.args(args);
    for (k, v) in &conn.env {
        cmd.env(k, v);
    }
    run_tool(sub, "pg_dump of the provider's structure", &mut cmd);
}

/// Restores one section of the dump here and records the next status in ONE local
/// transaction: pg_restore writes the section's script, psql runs it and the status
/// update between one BEGIN and COMMIT and stops at the first error (an object of
/// the same name here fails the restore and leaves everything as it was). The
/// status then tells exactly whether the section is here: a retry neither drops
/// nor restores anything twice.
fn restore_section(sub: &SubscriptionInfo, dump: &Path, section: &str, then: char, lsn: u64) {
    if !dump.exists() {
        sync_error(sub, &format!("restoring {section}"), format!("the dump {} is missing", dump.display()));
    }
    let script = dump.with_extension(format!("{section}.sql"));
    let mut cmd = Command::new(bindir().join("pg_restore"));
    cmd.arg(format!("--section={section}")).arg(format!("--file={}", script.display())).arg(dump);
    run_tool(sub, &format!("pg_restore --section={section}"), &mut cmd);
    let mut cmd = Command::new(bindir().join("psql"));
    // As a replica: AutoDDL must not queue the restored statements for other nodes.
    cmd.env("PGOPTIONS", "-c session_replication_role=replica");
    cmd.args(["--no-psqlrc", "--quiet", "--single-transaction", "--set=ON_ERROR_STOP=1"])
        .arg(format!("--dbname={}", local_dsn()))
        .arg(format!("--file={}", script.display()))
        .arg(format!(
            "--command=UPDATE spock.local_sync_status SET sync_status = '{then}', sync_statuslsn = '{}'
                 WHERE sync_subid = {} AND sync_nspname IS NULL",
            format_lsn(lsn),
            sub.id
        ));
    // (On failure the script stays beside the dump for inspection; the next attempt
    // writes it again.)
    let warnings = run_tool(sub, &format!("restoring {section}"), &mut cmd);
    let _ = std::fs::remove_file(&script);
    if !warnings.is_empty() {
        pgrx::log!("spock subscription {}: restoring {section}: {warnings}", sub.name);
    }
}

/// The schemas or extensions (`kind`) spock.reserved_object keeps out of the
/// structure sync: this node has its own (spock, snowflake, lolor, ...).
fn reserved_for_dump(kind: &str) -> Vec<String> {
    BackgroundWorker::transaction(|| {
        Spi::get_one_with_args::<Vec<String>>(
            "SELECT coalesce(array_agg(name::text ORDER BY name), '{}') FROM spock.reserved_object
              WHERE kind = $1 AND exclude_from_dump",
            &[kind.into()],
        )
        .unwrap_or_else(|e| no_row_or_raise(e, "reading spock.reserved_object"))
        .unwrap_or_default()
    })
}

fn skip_schemas(sub: &SubscriptionInfo) -> Vec<String> {
    BackgroundWorker::transaction(|| {
        Spi::get_one_with_args::<Vec<String>>(
            "SELECT coalesce(sub_skip_schema, '{}') FROM spock.subscription WHERE sub_id = $1::int8::oid",
            &[i64::from(sub.id).into()],
        )
        .unwrap_or_else(|e| no_row_or_raise(e, "reading the subscription's skipped schemas"))
        .unwrap_or_default()
    })
}

/// A table to copy: schema, name, quoted column list, row filter (None: all rows).
pub(super) struct CopyTable {
    pub(super) nspname: String,
    pub(super) relname: String,
    pub(super) columns: String,
    pub(super) filter: Option<String>,
}

/// The provider's tables in the subscribed sets, under the snapshot.
pub(super) fn tables_to_copy(
    sub: &SubscriptionInfo,
    provider: &Connection,
    only: Option<(&str, &str)>,
) -> Vec<CopyTable> {
    let sets = format!(
        "ARRAY[{}]::text[]",
        sub.replication_sets.iter().map(|s| provider.literal(s)).collect::<Vec<_>>().join(", ")
    );
    let skip = skip_schemas(sub);
    let skip = format!("ARRAY[{}]::text[]", skip.iter().map(|s| provider.literal(s)).collect::<Vec<_>>().join(", "));
    let only = only
        .map(|(n, r)| {
            format!(" AND n.nspname::text = {} AND c.relname::text = {}", provider.literal(n), provider.literal(r))
        })
        .unwrap_or_default();
    // Column lists: the union of the sets' lists, or every column when one set has
    // none; row filters: OR of the sets' filters, or none when one set has none.
    let sql = format!(
        "WITH m AS (
             SELECT rt.set_reloid::oid AS relid, rt.set_att_list AS atts,
                    pg_catalog.pg_get_expr(rt.set_row_filter, rt.set_reloid) AS filter
               FROM spock.replication_set s
               JOIN spock.replication_set_table rt ON rt.set_id = s.set_id
              WHERE s.set_name = ANY ({sets}))
         SELECT n.nspname::text, c.relname::text,
                (SELECT string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
                   FROM pg_catalog.pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                    AND (bool_or(m.atts IS NULL) OR a.attname::text IN (SELECT x FROM m m2, unnest(m2.atts) x WHERE m2.relid = c.oid))),
                CASE WHEN bool_or(m.filter IS NULL) THEN NULL ELSE string_agg('(' || m.filter || ')', ' OR ') END
           FROM m
           JOIN pg_catalog.pg_class c ON c.oid = m.relid
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind = 'r' AND n.nspname::text <> ALL ({skip}){only}
          GROUP BY c.oid, n.nspname, c.relname
          ORDER BY n.nspname, c.relname"
    );
    let rows = provider.query(&sql).unwrap_or_else(|e| sync_error(sub, "listing the tables to copy", e));
    rows.into_iter()
        .filter_map(|r| {
            Some(CopyTable {
                nspname: r.first().cloned().flatten()?,
                relname: r.get(1).cloned().flatten()?,
                columns: r.get(2).cloned().flatten()?,
                filter: r.get(3).cloned().flatten(),
            })
        })
        .collect()
}

/// Copies every table of the subscribed sets in one local transaction; returns how
/// many tables were copied.
fn copy_data(sub: &SubscriptionInfo, snapshot: &str, lsn: u64, restamp: Restamp) -> (usize, Vec<StampRow>) {
    let appname = format!("{}_sync", sub.slot_name);
    let provider = provider_at_snapshot(sub, snapshot, &appname);
    let tables = tables_to_copy(sub, &provider, None);
    BackgroundWorker::transaction(AssertUnwindSafe(|| {
        // The copy's commit moves the origin to the slot's consistent point.
        copy_from::commit_as_provider(&sub.slot_name, lsn);
        for t in &tables {
            let name = format!("{}.{}", quote_identifier(&t.nspname), quote_identifier(&t.relname));
            let relid = local_table(sub, &name);
            if has_local_rows(&name) {
                sync_error(
                    sub,
                    &format!("table {name} already has rows on this node"),
                    "empty it (or drop it when synchronize_structure is used): the worker tries again by itself (spock.sub_show_status() shows when)",
                );
            }
            copy_table(sub, &provider, t, &name, relid);
            // (kind 'f' for the tables of an initial sync, as Spock records them)
            Spi::run_with_args(
                "INSERT INTO spock.local_sync_status (sync_kind, sync_subid, sync_nspname, sync_relname, sync_status, sync_statuslsn)
                 VALUES ('f', $1::int8::oid, $2, $3, 'r', $4::text::pg_lsn)
                 ON CONFLICT (sync_subid, sync_nspname, sync_relname) DO UPDATE SET sync_status = 'r', sync_statuslsn = EXCLUDED.sync_statuslsn",
                &[i64::from(sub.id).into(), t.nspname.as_str().into(), t.relname.as_str().into(), format_lsn(lsn).into()],
            )
            .unwrap_or_else(|e| sync_error(sub, "recording a table's sync status", e));
        }
        Spi::run_with_args(
            "UPDATE spock.local_sync_status SET sync_status = 'c' WHERE sync_subid = $1::int8::oid AND sync_nspname IS NULL",
            &[i64::from(sub.id).into()],
        )
        .unwrap_or_else(|e| sync_error(sub, "recording the copied data", e));
    }));
    // Committed: the streaming session takes the origin next.
    copy_from::after_copy_commit();
    let stamps = rows_to_restamp(sub, &provider, &tables, restamp);
    let _ = provider.query("COMMIT");
    (tables.len(), stamps)
}

/// Which copied rows must carry their own commit timestamp and writer instead of
/// the oldest one ([`restamp_rows`]).
#[derive(Clone, Copy, Debug)]
enum Restamp {
    /// None: the provider subscribes to no other node.
    Nothing,
    /// The rows committed at or after this time (microseconds since 2000).
    Since(i64),
}

/// While the provider's apply workers are paused: the rows the copy must stamp
/// with their own version. A transaction of another node that the provider has
/// not applied yet reaches this node through its own subscription, and
/// last-update-wins compares it with the copied row: against the oldest
/// timestamp it always wins, but on the provider it loses to a row written after
/// it (by a third node, or the provider). Such rows are at most as old as the
/// last transaction the provider applied from each node (less a margin for
/// commit-time order and clocks), among the nodes whose progress it knows (all
/// of them once each has sent a transaction since the provider started).
fn restamp_since(sub: &SubscriptionInfo, ctl: &Connection) -> Restamp {
    let row = ctl
        .query(
            "SELECT pg_catalog.count(*)::text, pg_catalog.bool_and(p.remote_commit_ts IS NULL)::text,
                    ((pg_catalog.date_part('epoch', pg_catalog.min(p.remote_commit_ts)) - 946684800) * 1000000)::int8::text
               FROM spock.progress p JOIN spock.local_node l ON l.node_id = p.node_id",
        )
        .ok()
        .and_then(|rows| rows.into_iter().next());
    let Some(row) = row else {
        pgrx::log!(
            "spock subscription {}: initial sync: the provider does not report its progress per node; copied rows keep the oldest commit timestamp",
            sub.name
        );
        return Restamp::Nothing;
    };
    let field = |i: usize| row.get(i).cloned().flatten();
    match (field(0).as_deref(), field(2).and_then(|v| v.parse::<i64>().ok())) {
        (Some("0") | None, _) => Restamp::Nothing,
        (_, Some(min)) => Restamp::Since(min - 10_000_000),
        (_, None) => {
            pgrx::log!(
                "spock subscription {}: initial sync: the provider has applied nothing from its peers since it started; copied rows keep the oldest commit timestamp",
                sub.name
            );
            Restamp::Nothing
        }
    }
}

/// A copied row to write again with its own version ([`restamp_since`]).
struct StampRow {
    table: String,
    row: String,
    commit_ts: String,
    writer: String,
}

/// The copied rows `restamp` names, read under the copy's snapshot: the row, its
/// commit timestamp and the node that wrote it (the provider for its own rows).
/// Tables without a primary key or replica identity index keep the oldest
/// timestamp (nothing finds their rows by key).
fn rows_to_restamp(
    sub: &SubscriptionInfo,
    provider: &Connection,
    tables: &[CopyTable],
    restamp: Restamp,
) -> Vec<StampRow> {
    pgrx::debug1!("spock subscription {}: initial sync: rows to stamp again: {restamp:?}", sub.name);
    let Restamp::Since(us) = restamp else { return Vec::new() };
    let mut out = Vec::new();
    for t in tables {
        let name = format!("{}.{}", quote_identifier(&t.nspname), quote_identifier(&t.relname));
        let rows = provider
            .query(&format!(
                "SELECT pg_catalog.to_jsonb(t)::text, o.\"timestamp\"::text,
                        coalesce(n.node_name::text, {provider_name})
                   FROM ONLY {name} t
                  CROSS JOIN LATERAL pg_catalog.pg_xact_commit_timestamp_origin(t.xmin) o
                   LEFT JOIN pg_catalog.pg_replication_origin r ON r.roident = o.roident
                   LEFT JOIN spock.subscription s ON s.sub_slot_name = r.roname
                   LEFT JOIN spock.node n ON n.node_id = s.sub_origin
                  WHERE o.\"timestamp\" >= '2000-01-01 00:00:00+00'::timestamptz + {us} * interval '1 microsecond'
                    AND EXISTS (SELECT FROM pg_catalog.pg_index i WHERE i.indrelid = {rel}::regclass
                                   AND (i.indisprimary OR i.indisreplident))
                  ORDER BY 3, 2",
                provider_name = provider.literal(&sub.provider_name),
                rel = provider.literal(&name),
            ))
            .unwrap_or_else(|e| sync_error(sub, &format!("reading the versions of the rows of {name}"), e));
        for row in rows {
            if let (Some(row), Some(commit_ts), Some(writer)) =
                (row.first().cloned().flatten(), row.get(1).cloned().flatten(), row.get(2).cloned().flatten())
            {
                out.push(StampRow { table: name.clone(), row, commit_ts, writer });
            }
        }
    }
    out
}

/// Once the copied tables have their keys: writes each of `rows` again, the
/// same values, with its commit timestamp and under the origin of this node's
/// subscription from its writer (the provider's when there is none), nothing
/// replicated (`sql_api::repair`), so that last-update-wins decides against it as
/// the provider did.
fn restamp_rows(sub: &SubscriptionInfo, rows: &[StampRow]) {
    let (mut current, mut usable): (Option<&str>, bool) = (None, false);
    let mut stamped = 0usize;
    // Each table's oid, looked up once (tables do not change while the worker syncs).
    let mut relids: std::collections::HashMap<&str, pg_sys::Oid> = std::collections::HashMap::new();
    for r in rows {
        if current != Some(r.writer.as_str()) {
            crate::sql_api::repair::end_session_origin();
            usable = BackgroundWorker::transaction(|| {
                crate::sql_api::repair::session_origin_of(Some(&r.writer))
                    || crate::sql_api::repair::session_origin_of(Some(&sub.provider_name))
            });
            current = Some(r.writer.as_str());
        }
        if !usable {
            continue;
        }
        // (an error ends the worker: the map is not used after an unwind)
        BackgroundWorker::transaction(AssertUnwindSafe(|| {
            let relid = *relids.entry(r.table.as_str()).or_insert_with(|| local_table(sub, &r.table));
            crate::sql_api::repair::rewrite_row(relid, &r.row, Some(&r.row), Some(&r.commit_ts));
        }));
        stamped += 1;
    }
    crate::sql_api::repair::end_session_origin();
    if stamped > 0 {
        pgrx::log!(
            "spock subscription {}: initial sync: {stamped} copied rows written again with their own commit timestamp",
            sub.name
        );
    }
}

/// A normal connection to the provider inside a read-only transaction that sees
/// `snapshot` (exported by a slot on a replication connection kept open).
pub(super) fn provider_at_snapshot(sub: &SubscriptionInfo, snapshot: &str, appname: &str) -> Connection {
    let provider = Connection::connect(&sub.provider_dsn, &[("application_name", appname)])
        .unwrap_or_else(|e| fail(sub, "could not connect to the provider", e));
    provider
        .query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .and_then(|_| provider.query(&format!("SET TRANSACTION SNAPSHOT {}", provider.literal(snapshot))))
        .unwrap_or_else(|e| sync_error(sub, "could not use the slot's snapshot on the provider", e));
    provider
}

/// The oid of local table `name` (quoted); a clear error when it does not exist.
pub(super) fn local_table(sub: &SubscriptionInfo, name: &str) -> pg_sys::Oid {
    Spi::get_one_with_args::<pg_sys::Oid>("SELECT pg_catalog.to_regclass($1)::oid", &[name.into()])
        .unwrap_or_else(|e| spi_failed(&format!("looking up table {name}"), e))
        .unwrap_or_else(|| sync_error(sub, &format!("table {name} on this node"), "it does not exist"))
}

/// Whether table `name` has rows (in the current transaction).
fn has_rows(name: &str) -> bool {
    Spi::get_one::<bool>(&format!("SELECT EXISTS (SELECT 1 FROM {name})"))
        .unwrap_or_else(|e| spi_failed(&format!("reading table {name}"), e))
        .unwrap_or(false)
}

/// Whether table `name` has a row that no subscription brought here: one written
/// on this node, or whose origin is unknown (frozen, or commit timestamps off).
/// Rows another subscription replicated (another upstream of the same table, as in
/// Spock's multiple upstreams) stay and the copy adds the provider's; a key both
/// have stops the copy with the unique violation.
fn has_local_rows(name: &str) -> bool {
    // SAFETY: a plain read of a server setting (without it no row's origin is known).
    if !unsafe { pg_sys::track_commit_timestamp } {
        return has_rows(name);
    }
    Spi::get_one::<bool>(&format!(
        "SELECT EXISTS (SELECT 1 FROM {name}
                         WHERE coalesce((pg_catalog.pg_xact_commit_timestamp_origin(xmin)).roident, 0) = 0)"
    ))
    .unwrap_or_else(|e| spi_failed(&format!("reading table {name}"), e))
    .unwrap_or(true)
}

/// Copies table `t` (`name`: its quoted name) from the provider's snapshot into
/// local table `into` (the table itself, or a merge table) in the current
/// transaction, with COPY FROM in this process.
fn copy_table(sub: &SubscriptionInfo, provider: &Connection, t: &CopyTable, name: &str, into: pg_sys::Oid) {
    // A plain COPY of the table (its own rows only, as ONLY) unless rows are filtered.
    let select = match &t.filter {
        None => format!("COPY {name} ({}) TO STDOUT", t.columns),
        Some(f) => format!("COPY (SELECT {} FROM ONLY {name} WHERE {f}) TO STDOUT", t.columns),
    };
    let columns = spock_core::ident::split_identifier_list(&t.columns, ',')
        .unwrap_or_else(|e| sync_error(sub, &format!("the column list of {name}"), e));
    provider
        .start_copy(&select, true)
        .unwrap_or_else(|e| sync_error(sub, &format!("COPY of {name} on the provider"), e));
    copy_from::copy_from_provider(
        provider,
        into,
        &columns,
        format!("spock subscription {}: initial sync: reading {name} from the provider", sub.name),
    );
}

/// Sets table `nsp.rel`'s sync status for subscription `sub_id`.
fn set_table_status(sub_id: u32, nsp: &str, rel: &str, status: char) {
    BackgroundWorker::transaction(|| {
        Spi::run_with_args(
            "UPDATE spock.local_sync_status SET sync_status = $4::\"char\"
              WHERE sync_subid = $1::int8::oid AND sync_nspname = $2 AND sync_relname = $3",
            &[i64::from(sub_id).into(), nsp.into(), rel.into(), status.to_string().into()],
        )
        .unwrap_or_else(|e| spi_failed("updating a table's sync status", e));
    });
}

// ---------------------------------------------------------------------------
// Table-level sync: sub_resync_table, sub_alter_sync, and 'A' queue messages
// (repset_add_table(..., synchronize_data := true) on the provider).
//
// A table waiting for a sync has a row in spock.local_sync_status with status 'i'
// (sync_kind 'f': empty the local table first; 'd': keep its rows and merge). The
// apply worker syncs such tables between two remote transactions, with its stream
// stopped: a temporary slot on the provider exports a snapshot at LSN S; the table
// is copied under it (into the emptied table, or merged by key into a non-empty
// one) in one local transaction that also sets the table's status to 'y' with S.
// The stream then skips the table's changes from transactions that committed
// before S (the copy has them) and the status becomes 'r' once it is past S.

/// Tables of `sub` waiting for a table sync: (schema, table, truncate first).
pub fn pending_tables(sub_id: u32) -> Vec<(String, String, bool)> {
    Spi::connect(|client| {
        client
            .select(
                "SELECT sync_nspname::text, sync_relname::text, sync_kind = 'f' FROM spock.local_sync_status
                  WHERE sync_subid = $1::int8::oid AND sync_nspname IS NOT NULL AND sync_status = 'i'
                  ORDER BY 1, 2",
                None,
                &[i64::from(sub_id).into()],
            )
            .unwrap_or_else(|e| spi_failed("reading the tables waiting for a sync", e))
            .filter_map(|r| Some((r.get::<String>(1).ok()??, r.get::<String>(2).ok()??, r.get::<bool>(3).ok()??)))
            .collect()
    })
}

/// Tables whose changes the stream skips: copied at an LSN S it has not passed yet
/// ((schema, table, S)), or waiting for their copy (S = the largest LSN: the copy
/// will hold everything until it starts).
pub fn catching_up_tables(sub_id: u32) -> Vec<(String, String, u64)> {
    Spi::connect(|client| {
        client
            .select(
                "SELECT sync_nspname::text, sync_relname::text,
                        CASE WHEN sync_status = 'i' THEN 'FFFFFFFF/FFFFFFFF' ELSE sync_statuslsn::text END
                   FROM spock.local_sync_status
                  WHERE sync_subid = $1::int8::oid AND sync_nspname IS NOT NULL AND sync_status IN ('y', 'i')",
                None,
                &[i64::from(sub_id).into()],
            )
            // Without them the stream would apply changes a copy already holds.
            .unwrap_or_else(|e| spi_failed("reading the tables catching up after a sync", e))
            .filter_map(|r| {
                Some((r.get::<String>(1).ok()??, r.get::<String>(2).ok()??, parse_lsn(&r.get::<String>(3).ok()??)?))
            })
            .collect()
    })
}

/// Marks tables whose copy LSN the stream has passed as replicating.
pub fn tables_caught_up(sub_id: u32, applied_upto: u64) {
    Spi::run_with_args(
        "UPDATE spock.local_sync_status SET sync_status = 'r'
          WHERE sync_subid = $1::int8::oid AND sync_nspname IS NOT NULL AND sync_status = 'y'
            AND sync_statuslsn <= $2::text::pg_lsn",
        &[i64::from(sub_id).into(), format_lsn(applied_upto).into()],
    )
    .unwrap_or_else(|e| spi_failed("marking synchronised tables as replicating", e));
}

/// Asks for a table sync of `schema.table` (inside the caller's transaction).
pub fn request_table_sync(sub_id: u32, schema: &str, table: &str, truncate: bool) {
    Spi::run_with_args(
        "INSERT INTO spock.local_sync_status (sync_kind, sync_subid, sync_nspname, sync_relname, sync_status, sync_statuslsn)
         VALUES (CASE WHEN $4 THEN 'f' ELSE 'd' END, $1::int8::oid, $2, $3, 'i', '0/0')
         ON CONFLICT (sync_subid, sync_nspname, sync_relname)
         DO UPDATE SET sync_kind = EXCLUDED.sync_kind, sync_status = 'i', sync_statuslsn = '0/0'",
        &[i64::from(sub_id).into(), schema.into(), table.into(), truncate.into()],
    )
    .unwrap_or_else(|e| spi_failed("requesting a table sync", e));
}

/// Syncs every table waiting for it. Called by the apply worker while it does not
/// stream and holds no replication origin.
pub fn sync_pending_tables(sub: &SubscriptionInfo) -> bool {
    let pending = BackgroundWorker::transaction(|| pending_tables(sub.id));
    for (nsp, rel, truncate) in &pending {
        sync_table(sub, nsp, rel, *truncate);
    }
    !pending.is_empty()
}

fn sync_table(sub: &SubscriptionInfo, nsp: &str, rel: &str, truncate: bool) {
    let name = format!("{}.{}", quote_identifier(nsp), quote_identifier(rel));
    pgrx::log!(
        "spock subscription {}: synchronising table {name}{}",
        sub.name,
        if truncate { " (emptied first)" } else { "" }
    );
    let slot = spock_core::names::table_sync_slot_name(&sub.slot_name, &name);
    let repl = Connection::connect(&sub.provider_dsn, &[("replication", "database"), ("application_name", &slot)])
        .unwrap_or_else(|e| fail(sub, "could not connect to the provider in replication mode", e));
    let rows = repl
        .query(&format!(
            "CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL spock_output (SNAPSHOT 'export')",
            quote_identifier(&slot)
        ))
        .unwrap_or_else(|e| sync_error(sub, &format!("creating the sync slot for {name}"), e));
    let (lsn, snapshot) = consistent_point(&rows).unwrap_or_else(|e| sync_error(sub, "sync slot", e));

    let provider = provider_at_snapshot(sub, &snapshot, &slot);
    let Some(t) = tables_to_copy(sub, &provider, Some((nsp, rel))).into_iter().next() else {
        // Not (or no longer) in the subscribed sets on the provider.
        pgrx::warning!("spock subscription {}: table {name} is not in the subscribed replication sets on the provider; not synchronised", sub.name);
        set_table_status(sub.id, nsp, rel, 'r');
        return;
    };
    let attempt = std::panic::catch_unwind(AssertUnwindSafe(|| {
        BackgroundWorker::transaction(AssertUnwindSafe(|| {
            // The origin's progress is not moved (0/0): the stream is still behind the copy.
            copy_from::commit_as_provider(&sub.slot_name, 0);
            let relid = local_table(sub, &name);
            if truncate {
                // As the table's owner, as its copy (its TRUNCATE triggers run with its rights).
                // SAFETY: inside the transaction.
                unsafe { as_table_owner(relid, || Spi::run(&format!("TRUNCATE ONLY {name}"))) }
                    .unwrap_or_else(|e| sync_error(sub, &format!("emptying {name}"), e));
            }
            // Rows exist here: merge by key (the provider's version wins), never mix
            // silently or fail on duplicates; without a key the table is marked failed
            // (nothing was written: the commit is empty).
            let key = if has_rows(&name) {
                match merge_key(relid) {
                    Some(key) => Some(key),
                    None => return false,
                }
            } else {
                None
            };
            if let Some(key) = key {
                Spi::run(&format!(
                    "CREATE TEMP TABLE spock_sync_rows ON COMMIT DROP AS SELECT {} FROM {name} WITH NO DATA",
                    t.columns
                ))
                .unwrap_or_else(|e| sync_error(sub, "creating the merge table", e));
                copy_table(sub, &provider, &t, &name, local_table(sub, "pg_temp.spock_sync_rows"));
                let set = t.columns.split(", ").map(|c| format!("{c} = EXCLUDED.{c}")).collect::<Vec<_>>().join(", ");
                // The merge writes the table as its owner, as the copy does (its triggers,
                // defaults and constraints run with the owner's rights), who may read the
                // worker's merge table for that.
                Spi::get_one_with_args::<String>(
                "SELECT (SELECT pg_catalog.format('GRANT SELECT ON pg_temp.spock_sync_rows TO %s', c.relowner::regrole)
                           FROM pg_catalog.pg_class c
                          WHERE c.oid = $1 AND c.relowner <> (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = current_user))",
                &[relid.into()],
            )
            .and_then(|grant| grant.map_or(Ok(()), |g| Spi::run(&g)))
            .unwrap_or_else(|e| sync_error(sub, "granting the table's owner the merge table", e));
                let merge = format!(
                "INSERT INTO {name} ({cols}) SELECT {cols} FROM pg_temp.spock_sync_rows ON CONFLICT ({key}) DO UPDATE SET {set}",
                cols = t.columns
            );
                // SAFETY: inside the transaction.
                unsafe { as_table_owner(relid, || Spi::run(&merge)) }
                    .unwrap_or_else(|e| sync_error(sub, &format!("merging the copy into {name}"), e));
            } else {
                copy_table(sub, &provider, &t, &name, relid);
            }
            Spi::run_with_args(
                "UPDATE spock.local_sync_status SET sync_status = 'y', sync_statuslsn = $4::text::pg_lsn
              WHERE sync_subid = $1::int8::oid AND sync_nspname = $2 AND sync_relname = $3",
                &[i64::from(sub.id).into(), nsp.into(), rel.into(), format_lsn(lsn).into()],
            )
            .unwrap_or_else(|e| sync_error(sub, &format!("committing the copy of {name}"), e));
            true
        }))
    }));
    let copied = match attempt {
        Ok(copied) => copied,
        Err(e) => {
            let (code, msg) = super::handlers::describe_error(e.as_ref());
            // A row a constraint here refuses, say, would fail every time: the
            // table is marked failed, as in Spock, and the rest goes on; nothing of
            // the attempt stays (one transaction). Anything else (the provider's
            // connection, resources): the worker's restart tries again.
            if !spock_core::exception::table_sync_failure_is_permanent(&code) {
                std::panic::resume_unwind(e);
            }
            // SAFETY: the error was caught; its transaction is rolled back before
            // the next one, and the copy's origin set-up is undone.
            unsafe { pg_sys::AbortOutOfAnyTransaction() };
            copy_from::after_copy_commit();
            set_table_status(sub.id, nsp, rel, 'f');
            // The same request again: a merge stays a merge (the default empties
            // the table first and would drop the rows only this node has).
            pgrx::warning!(
                "spock subscription {}: synchronization of table {name} failed: {msg} (SQLSTATE {code}); the table is unchanged. \
                 Fix the cause and resynchronise it: SELECT spock.sub_resync_table({}, {}{})",
                sub.name,
                spock_core::ident::quote_literal(&sub.name),
                spock_core::ident::quote_literal(&name),
                if truncate { "" } else { ", truncate := false" }
            );
            return;
        }
    };
    copy_from::after_copy_commit();
    if !copied {
        set_table_status(sub.id, nsp, rel, 'f');
        pgrx::warning!(
            "spock subscription {}: table {name} has rows on this node and no primary key or replica identity index to merge by; \
             its sync failed. Resynchronise it with truncate: SELECT spock.sub_resync_table('{}', '{name}', true)",
            sub.name,
            sub.name
        );
        let _ = provider.query("COMMIT");
        return;
    }
    let _ = provider.query("COMMIT");
    drop(repl);
    pgrx::log!("spock subscription {}: table {name} copied at {}; catching up", sub.name, format_lsn(lsn));
}

/// The quoted columns of table `relid`'s primary key, or else of its replica
/// identity index, to merge a copy by; None without either.
pub(super) fn merge_key(relid: pg_sys::Oid) -> Option<String> {
    Spi::get_one_with_args::<String>(
        "SELECT string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY k.n)
           FROM pg_catalog.pg_index i
           CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, n)
           JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
          WHERE i.indrelid = $1 AND (i.indisprimary OR i.indisreplident)
          GROUP BY i.indexrelid, i.indisprimary ORDER BY i.indisprimary DESC LIMIT 1",
        &[relid.into()],
    )
    .unwrap_or_else(|e| no_row_or_raise(e, "reading a table's key columns"))
}

/// For a query of at most one row read with `get_one`: no row is `None` (pgrx
/// reports it as an error); any other error raises.
fn no_row_or_raise<T>(e: pgrx::spi::SpiError, what: &str) -> Option<T> {
    match e {
        pgrx::spi::SpiError::InvalidPosition => None,
        e => spi_failed(what, e),
    }
}
