//! `spock._table_repair()`, behind `spock.table_repair()` (sql/api/operations.sql):
//! makes this node's rows of a table that differ from a source node's
//! ([`compute_diff`]) equal to the source's, without replicating the repair and
//! keeping, for each row written, the source row's commit timestamp and the node
//! that wrote it, so that later last-update-wins decisions come out as they would
//! have on the source.
//!
//! A commit carries one origin and one timestamp, so each repaired row is its own
//! transaction, run over a connection of this node to itself (the local node's
//! interface): per writing node one connection whose session takes that node's
//! replication origin here (the origin of this node's subscription from it, shared
//! with its apply worker as parallel writers share it, `_repair_session`), then one
//! `_repair_row` call per row, each committed with the source's timestamp, in
//! `spock.repair_mode` and with `session_replication_role = replica` (what apply
//! does: no user triggers but ENABLE REPLICA/ALWAYS ones, no foreign-key checks).
//! Rows that only this node has are deleted, under this node's own origin. A row
//! written by a node this one does not subscribe to, or by this node itself, gets
//! this node's origin and the time of the repair (a NOTICE says so).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, Ordering};

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use spock_core::diff::Status;
use spock_core::ident::quote_identifier as ident;

use super::diff::{compute_diff, lit, Side, PEER_SETTINGS};
use crate::error::{spi_failed, PgError};
use crate::libpq::Connection;

/// The replication origin this repair session writes under (0: its own).
static REPAIR_ORIGIN: AtomicU16 = AtomicU16::new(0);

/// `spock._table_repair(relation, source, recheck_timeout_ms, dry_run)`: see the
/// module. Text columns; spock.table_repair() types them.
#[pg_extern(
    volatile,
    sql = "CREATE FUNCTION spock._table_repair(relation regclass, source text, recheck_timeout_ms int8, dry_run boolean,
    OUT key text, OUT action text, OUT origin text, OUT commit_ts text)
RETURNS SETOF record VOLATILE STRICT LANGUAGE c
SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO' SET TimeZone = 'UTC' SET extra_float_digits = 3
SET bytea_output = 'hex' SET IntervalStyle = 'postgres' SET lc_monetary = 'C' SET standard_conforming_strings = on
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';"
)]
#[allow(clippy::type_complexity)]
fn table_repair_rows(
    relation: pg_sys::Oid,
    source: &str,
    recheck_timeout_ms: i64,
    dry_run: bool,
) -> TableIterator<
    'static,
    (name!(key, String), name!(action, String), name!(origin, Option<String>), name!(commit_ts, Option<String>)),
> {
    let diff = compute_diff(relation, source, recheck_timeout_ms);
    // What each differing row becomes: the source's row, or none.
    let plan: Vec<(String, &'static str, Option<Side>)> = diff
        .rows
        .into_iter()
        .map(|r| match r.status {
            Status::Differs => (r.key, "updated", r.peer),
            Status::OnlyPeer => (r.key, "inserted", r.peer),
            Status::OnlyLocal => (r.key, "deleted", None),
        })
        .collect();
    if !dry_run && !plan.is_empty() {
        let dsn = local_dsn();
        let mut by_origin: BTreeMap<Option<String>, Vec<&(String, &'static str, Option<Side>)>> = BTreeMap::new();
        for p in &plan {
            by_origin.entry(p.2.as_ref().and_then(|s| s.origin.clone())).or_default().push(p);
        }
        for (origin, rows) in by_origin {
            let conn = Connection::connect(&dsn, &[("application_name", "spock table_repair")])
                .unwrap_or_else(|e| repair_failed("connect to this node (its interface)", e));
            let run = |sql: &str, what: &str| conn.query(sql).unwrap_or_else(|e| repair_failed(what, e));
            run(PEER_SETTINGS, "set up the repair session");
            run(
                &format!("SELECT spock._repair_session({})", origin.as_deref().map_or("NULL".into(), lit)),
                "take the origin",
            );
            for (key, _, side) in rows {
                let (row, ts) = side.as_ref().map_or((None, None), |s| (Some(s.json.as_str()), s.commit_ts.as_deref()));
                run(
                    &format!(
                        "SELECT spock._repair_row({}::pg_catalog.oid::pg_catalog.regclass, {}, {}, {})",
                        u32::from(relation),
                        lit(key),
                        row.map_or("NULL".into(), lit),
                        ts.map_or("NULL".into(), lit)
                    ),
                    "repair a row",
                );
            }
        }
    }
    TableIterator::new(plan.into_iter().map(|(key, action, side)| {
        let (origin, ts) = side.map_or((None, None), |s| (s.origin, s.commit_ts));
        (key, action.to_string(), origin, ts)
    }))
}

fn repair_failed(what: &str, e: crate::libpq::LibpqError) -> ! {
    let code = e
        .sqlstate
        .as_deref()
        .map_or(PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE, |s| PgSqlErrorCode::from(crate::error::sqlstate_code(s)));
    PgError::new(code, format!("spock.table_repair: could not {what}: {}", e.message)).raise()
}

/// The local node's interface (the one named like the node first).
fn local_dsn() -> String {
    Spi::get_one::<String>(
        "SELECT i.if_dsn FROM spock.local_node l JOIN spock.node n ON n.node_id = l.node_id
           JOIN spock.node_interface i ON i.if_nodeid = n.node_id
          ORDER BY (i.if_name = n.node_name) DESC, i.if_id LIMIT 1",
    )
    .unwrap_or_else(|e| match e {
        pgrx::spi::SpiError::InvalidPosition => None,
        e => spi_failed("reading the local node's interface", e),
    })
    .unwrap_or_else(|| {
        PgError::new(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, "this database has no spock node")
            .hint("Create it with spock.node_create().")
            .raise()
    })
}

/// `spock._repair_session(origin_node)`: this session writes repaired rows under
/// the replication origin of this node's subscription from `origin_node` (shared
/// with the subscription's apply worker while it runs); none for NULL, this node,
/// or a node it does not subscribe to. Only for the connection table_repair opens
/// (it ends with the connection: a shared origin is never released here).
#[pg_extern(volatile, name = "_repair_session")]
fn repair_session(origin_node: Option<&str>) -> bool {
    crate::privilege::require_superuser("repair a table");
    session_origin_of(origin_node)
}

/// [`repair_session`] for a process of the server (the initial sync restamping
/// copied rows); ended by [`end_session_origin`].
pub(crate) fn session_origin_of(origin_node: Option<&str>) -> bool {
    let Some(node) = origin_node else { return false };
    let this: Option<String> = Spi::get_one("SELECT node_name::text FROM spock.node_info()")
        .unwrap_or_else(|e| spi_failed("reading the local node", e));
    if this.as_deref() == Some(node) {
        return false;
    }
    let slot = Spi::get_one_with_args::<String>(
        "SELECT s.sub_slot_name::text FROM spock.subscription s JOIN spock.node n ON n.node_id = s.sub_origin
          WHERE n.node_name = $1 ORDER BY s.sub_id LIMIT 1",
        &[node.into()],
    )
    .unwrap_or_else(|e| match e {
        pgrx::spi::SpiError::InvalidPosition => None,
        e => spi_failed("reading subscriptions", e),
    });
    let cname = slot.as_deref().and_then(|s| std::ffi::CString::new(s).ok());
    // SAFETY: looks an origin up by name (no error when missing).
    let id = cname.as_ref().map_or(0, |c| unsafe { pg_sys::replorigin_by_name(c.as_ptr(), true) });
    if id == 0 {
        pgrx::notice!(
            "spock.table_repair: this node does not subscribe to node {node}: the rows it wrote get this node's origin and the time of the repair"
        );
        return false;
    }
    let holder = Spi::get_one_with_args::<i32>(
        "SELECT pid FROM pg_catalog.pg_stat_activity
          WHERE backend_type = 'spock apply' AND application_name = $1 AND datname = pg_catalog.current_database()
            AND pid <> pg_catalog.pg_backend_pid()",
        &[slot.as_deref().unwrap_or_default().into()],
    )
    .unwrap_or(None);
    // SAFETY: takes the origin for this session, shared with the apply worker that
    // holds it (as its parallel writers do); an origin in use by another process
    // raises an error.
    unsafe { pg_sys::replorigin_session_setup(id, holder.unwrap_or(0)) };
    REPAIR_ORIGIN.store(id, Ordering::Relaxed);
    true
}

/// `spock._repair_row(relation, key, new_row, commit_ts)`: makes the row of `key`
/// (a JSON object of the key columns) equal to `new_row` (a JSON object of the
/// source's row; NULL: deletes it), in this transaction, which commits with
/// `commit_ts` under the session's repair origin (see `_repair_session`).
#[pg_extern(
    volatile,
    sql = "CREATE FUNCTION spock._repair_row(relation regclass, key text, new_row text, commit_ts text) RETURNS text
VOLATILE LANGUAGE c SET search_path = pg_catalog, pg_temp AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';"
)]
fn repair_row(relation: pg_sys::Oid, key: &str, new_row: Option<&str>, commit_ts: Option<&str>) -> String {
    crate::privilege::require_superuser("repair a table");
    rewrite_row(relation, key, new_row, commit_ts)
}

/// Ends what [`session_origin_of`] set up: the session holds no origin again.
pub(crate) fn end_session_origin() {
    if REPAIR_ORIGIN.swap(0, Ordering::Relaxed) != 0 {
        // SAFETY: outside a transaction; resets the origin this process set up.
        unsafe {
            pg_sys::replorigin_session_reset();
            pg_sys::replorigin_session_origin = 0;
            pg_sys::replorigin_session_origin_lsn = 0;
            pg_sys::replorigin_session_origin_timestamp = 0;
        }
    }
}

/// [`repair_row`] without the privilege check, for the server's own processes.
pub(crate) fn rewrite_row(relation: pg_sys::Oid, key: &str, new_row: Option<&str>, commit_ts: Option<&str>) -> String {
    let q: String = Spi::get_one_with_args(
        "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
        &[relation.into()],
    )
    .unwrap_or_else(|e| match e {
        pgrx::spi::SpiError::InvalidPosition => None,
        e => spi_failed("reading the table", e),
    })
    .unwrap_or_else(|| {
        PgError::new(PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE, format!("relation with OID {relation} does not exist"))
            .raise()
    });
    Spi::run(
        "SELECT spock.repair_mode(true); SELECT pg_catalog.set_config('session_replication_role', 'replica', true)",
    )
    .unwrap_or_else(|e| spi_failed("entering repair mode", e));
    let origin = REPAIR_ORIGIN.load(Ordering::Relaxed);
    if origin != 0 {
        let ts = commit_ts.map(|t| {
            Spi::get_one_with_args::<i64>(
                "SELECT ((extract(epoch FROM $1::pg_catalog.timestamptz) - 946684800) * 1000000)::pg_catalog.int8",
                &[t.into()],
            )
            .unwrap_or_else(|e| spi_failed("reading a commit timestamp", e))
            .unwrap_or(0)
        });
        // SAFETY: the session's origin (taken by _repair_session) and the timestamp
        // the commit record carries; no remote LSN: the origin's progress stays.
        unsafe {
            pg_sys::replorigin_session_origin = origin;
            pg_sys::replorigin_session_origin_lsn = 0;
            pg_sys::replorigin_session_origin_timestamp = ts.unwrap_or_else(|| pg_sys::GetCurrentTimestamp());
        }
    }
    let names = |sql: &str| -> Vec<String> {
        Spi::connect(|c| {
            c.select(sql, None, &[relation.into()])
                .unwrap_or_else(|e| spi_failed("reading the table's columns", e))
                .filter_map(|r| r.get::<String>(1).ok().flatten())
                .collect()
        })
    };
    let keys = names(
        "SELECT a.attname::text FROM pg_catalog.pg_index i
          CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::pg_catalog.int2[]) WITH ORDINALITY AS k(attnum, ord)
           JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
          WHERE i.indexrelid = (SELECT j.indexrelid FROM pg_catalog.pg_index j
                                 WHERE j.indrelid = $1 AND (j.indisprimary OR j.indisreplident)
                                 ORDER BY j.indisprimary DESC LIMIT 1)
          ORDER BY k.ord",
    );
    let assignable = names(
        "SELECT attname::text FROM pg_catalog.pg_attribute
          WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
    );
    let list = |prefix: &str, cols: &[String]| -> String {
        cols.iter().map(|c| format!("{prefix}{}", ident(c))).collect::<Vec<_>>().join(", ")
    };
    let (tk, rk) = (list("t.", &keys), list("r.", &keys));
    let of_key = format!("SELECT {rk} FROM pg_catalog.jsonb_populate_record(NULL::{q}, $1::pg_catalog.jsonb) r");
    let Some(row) = new_row else {
        Spi::run_with_args(&format!("DELETE FROM ONLY {q} t WHERE ({tk}) = ({of_key})"), &[key.into()])
            .unwrap_or_else(|e| spi_failed("deleting the row", e));
        return "deleted".into();
    };
    // Only the columns the source's row has: a column this node has alone keeps
    // its value (UPDATE) or gets its default (INSERT).
    let sent: Vec<String> = Spi::connect(|c| {
        c.select("SELECT pg_catalog.jsonb_object_keys($1::pg_catalog.jsonb)", None, &[row.into()])
            .unwrap_or_else(|e| spi_failed("reading the source's row", e))
            .filter_map(|r| r.get::<String>(1).ok().flatten())
            .collect()
    });
    let assignable: Vec<String> = assignable.into_iter().filter(|c| sent.contains(c)).collect();
    let others: Vec<String> = assignable.iter().filter(|c| !keys.contains(c)).cloned().collect();
    let of_row = |cols: &[String]| {
        format!("SELECT {} FROM pg_catalog.jsonb_populate_record(NULL::{q}, $2::pg_catalog.jsonb) r", list("r.", cols))
    };
    let updated = if others.is_empty() {
        0
    } else {
        Spi::connect_mut(|c| {
            c.update(
                &format!(
                    "UPDATE ONLY {q} t SET ({}) = ({}) WHERE ({tk}) = ({of_key})",
                    list("", &others),
                    of_row(&others)
                ),
                None,
                &[key.into(), row.into()],
            )
            .map(|t| t.len())
        })
        .unwrap_or_else(|e| spi_failed("updating the row", e))
    };
    if updated > 0 {
        return "updated".into();
    }
    Spi::run_with_args(
        &format!("INSERT INTO {q} ({}) OVERRIDING SYSTEM VALUE {}", list("", &assignable), of_row(&assignable)),
        &[key.into(), row.into()],
    )
    .unwrap_or_else(|e| spi_failed("inserting the row", e));
    "inserted".into()
}
