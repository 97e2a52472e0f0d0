//! `spock._table_diff()`, behind `spock.table_diff()` (sql/api/operations.sql):
//! the rows in which this node's copy of a table and a peer's differ, found
//! without shipping the table (the method: spock_core::diff).
//!
//! Both sides run the same queries, this node through SPI and the peer over a
//! libpq connection at the same time, with the same output settings (UTC ISO
//! dates, all float digits, hex bytea, C money), so that a row's text, and so its
//! hash, is the same where its values are:
//!
//! 1. per bucket of key hashes: row count and XOR of row hashes;
//! 2. for the buckets that differ: each row's key and row hash;
//! 3. for the keys that differ, after each side has applied what the other had
//!    committed (a sync event each way, when the two replicate each other): the
//!    rows whole, with their commit timestamps and origins. A difference that
//!    replication closed meanwhile is not reported.
//!
//! Columns are compared by name, those both sides have; rows are read with
//! `FROM ONLY`. Run it outside a REPEATABLE READ transaction, or step 3 sees the
//! rows as they were.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use spock_core::diff::{bucket_count, differing_buckets, differing_keys, is_connection_string, Bucket, Status};
use spock_core::ident::quote_identifier as ident;

use crate::error::{spi_failed, PgError};
use crate::libpq::{Connection, Rows};

/// Output settings both sides use (the local ones are the function's SET clauses).
pub(crate) const PEER_SETTINGS: &str = "SET DateStyle = ISO; SET TimeZone = UTC; SET extra_float_digits = 3;
    SET bytea_output = hex; SET IntervalStyle = postgres; SET lc_monetary = 'C';
    SET standard_conforming_strings = on; SET search_path = pg_catalog";

/// A table as one side has it.
struct Table {
    qualified: String,
    reltuples: f64,
    key: Vec<String>,
    /// Per key column, the extended hash function of its type's default hash
    /// operator class, when it has one (else its text is hashed).
    key_hashes: Vec<Option<String>>,
    columns: Vec<String>,
}

/// One side's row of step 3.
struct Row {
    hash: i64,
    json: String,
    commit_ts: Option<String>,
    origin: Option<String>,
}

/// The two sides: this node (SPI) and the peer.
struct Sides {
    peer: Connection,
    peer_label: String,
    /// Bytes of the peer's answers, for the DEBUG1 summary.
    received: usize,
}

impl Sides {
    /// Runs `sql` on both sides at once: the peer's answer, then this node's.
    fn both(&mut self, sql: &str, what: &str) -> (Rows, Rows) {
        self.peer.send_query(sql).unwrap_or_else(|e| self.peer_failed(what, e));
        let local = local_rows(sql, what);
        let peer = self.peer.finish_query().unwrap_or_else(|e| self.peer_failed(what, e));
        self.received += peer.iter().flatten().flatten().map(String::len).sum::<usize>();
        (local, peer)
    }

    fn peer_query(&mut self, sql: &str, what: &str) -> Rows {
        let rows = self.peer.query(sql).unwrap_or_else(|e| self.peer_failed(what, e));
        self.received += rows.iter().flatten().flatten().map(String::len).sum::<usize>();
        rows
    }

    fn peer_failed(&self, what: &str, e: crate::libpq::LibpqError) -> ! {
        let code = e.sqlstate.as_deref().map_or(PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE, |s| {
            PgSqlErrorCode::from(crate::error::sqlstate_code(s))
        });
        PgError::new(code, format!("spock.table_diff: {what} on peer {}: {}", self.peer_label, e.message)).raise()
    }
}

/// This node's rows of `sql`, every column as text.
fn local_rows(sql: &str, what: &str) -> Rows {
    Spi::connect(|client| {
        let table = client.select(sql, None, &[]).unwrap_or_else(|e| spi_failed(what, e));
        let n = table.columns().unwrap_or(0);
        table
            .map(|row| (1..=n).map(|i| row.get::<String>(i).unwrap_or_else(|e| spi_failed(what, e))).collect())
            .collect()
    })
}

/// A string literal (standard_conforming_strings is on on both sides).
pub(crate) fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The table `rel` names (an expression giving its oid) on one side, or `None`
/// when that side has no such table.
fn table_spec(rel: &str, run: &mut dyn FnMut(&str) -> Rows) -> Option<Table> {
    let head = run(&format!(
        "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), c.reltuples::pg_catalog.float8::text
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE c.oid = {rel}"
    ));
    let first = head.into_iter().next()?;
    let key = run(&format!(
        "SELECT a.attname::text,
                (SELECT p.amproc::pg_catalog.regproc::text FROM pg_catalog.pg_opclass c
                   JOIN pg_catalog.pg_amproc p ON p.amprocfamily = c.opcfamily AND p.amproclefttype = c.opcintype
                                              AND p.amprocrighttype = c.opcintype AND p.amprocnum = 2
                  WHERE c.opcmethod = (SELECT oid FROM pg_catalog.pg_am WHERE amname = 'hash')
                    AND c.opcdefault AND c.opcintype = a.atttypid)
           FROM pg_catalog.pg_index i
          CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::pg_catalog.int2[]) WITH ORDINALITY AS k(attnum, ord)
           JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
          WHERE i.indexrelid = (SELECT j.indexrelid FROM pg_catalog.pg_index j
                                 WHERE j.indrelid = {rel} AND (j.indisprimary OR j.indisreplident)
                                 ORDER BY j.indisprimary DESC LIMIT 1)
          ORDER BY k.ord"
    ));
    let columns = run(&format!(
        "SELECT attname::text FROM pg_catalog.pg_attribute
          WHERE attrelid = {rel} AND attnum > 0 AND NOT attisdropped ORDER BY attname"
    ));
    let texts = |rows: Rows| rows.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect();
    Some(Table {
        qualified: first[0].clone().unwrap_or_default(),
        reltuples: first[1].as_deref().and_then(|s| s.parse().ok()).unwrap_or(-1.0),
        key_hashes: key.iter().map(|r| r.get(1).cloned().flatten()).collect(),
        key: texts(key),
        columns: texts(columns),
    })
}

/// The DSN of `peer`: itself when it is a connection string, else the interface
/// of the node of that name (the one named like the node first).
fn peer_dsn(peer: &str) -> String {
    if is_connection_string(peer) {
        return peer.to_string();
    }
    Spi::get_one_with_args::<String>(
        "SELECT i.if_dsn FROM spock.node n JOIN spock.node_interface i ON i.if_nodeid = n.node_id
          WHERE n.node_name = $1 ORDER BY (i.if_name = n.node_name) DESC, i.if_id LIMIT 1",
        &[peer.into()],
    )
    .unwrap_or_else(|e| match e {
        pgrx::spi::SpiError::InvalidPosition => None,
        e => spi_failed("reading spock.node_interface", e),
    })
    .unwrap_or_else(|| {
        PgError::new(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("node \"{peer}\" not found"))
            .hint("Give a node name of spock.node (with an interface) or a connection string.")
            .raise()
    })
}

/// What [`compute_diff`] found: the differing rows, in key order.
pub(crate) struct Diff {
    pub rows: Vec<DiffRow>,
}

/// One key whose rows differ.
pub(crate) struct DiffRow {
    /// The key as a JSON object.
    pub key: String,
    pub status: Status,
    pub local: Option<Side>,
    pub peer: Option<Side>,
}

/// One side's row.
pub(crate) struct Side {
    pub json: String,
    pub commit_ts: Option<String>,
    pub origin: Option<String>,
}

/// `spock._table_diff(relation, peer, recheck_timeout)`: see the module. Every
/// column is text; the SQL function spock.table_diff() types them.
#[pg_extern(
    volatile,
    sql = "CREATE FUNCTION spock._table_diff(relation regclass, peer text, recheck_timeout_ms int8,
    OUT key text, OUT status text, OUT local_row text, OUT peer_row text,
    OUT local_commit_ts text, OUT peer_commit_ts text, OUT local_origin text, OUT peer_origin text)
RETURNS SETOF record VOLATILE STRICT LANGUAGE c
SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO' SET TimeZone = 'UTC' SET extra_float_digits = 3
SET bytea_output = 'hex' SET IntervalStyle = 'postgres' SET lc_monetary = 'C' SET standard_conforming_strings = on
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';"
)]
#[allow(clippy::type_complexity)]
fn table_diff_rows(
    relation: pg_sys::Oid,
    peer: &str,
    recheck_timeout_ms: i64,
) -> TableIterator<
    'static,
    (
        name!(key, String),
        name!(status, String),
        name!(local_row, Option<String>),
        name!(peer_row, Option<String>),
        name!(local_commit_ts, Option<String>),
        name!(peer_commit_ts, Option<String>),
        name!(local_origin, Option<String>),
        name!(peer_origin, Option<String>),
    ),
> {
    let diff = compute_diff(relation, peer, recheck_timeout_ms);
    let split = |s: Option<Side>| s.map_or((None, None, None), |s| (Some(s.json), s.commit_ts, s.origin));
    TableIterator::new(diff.rows.into_iter().map(move |r| {
        let (lj, lts, lo) = split(r.local);
        let (pj, pts, po) = split(r.peer);
        (r.key, r.status.as_str().to_string(), lj, pj, lts, pts, lo, po)
    }))
}

/// Compares `relation` here and on `peer` (the steps of the module's comment).
pub(crate) fn compute_diff(relation: pg_sys::Oid, peer: &str, recheck_timeout_ms: i64) -> Diff {
    // Even where EXECUTE was granted: the server connects to the peer, as the role
    // of a node's stored connection string or of any string given.
    crate::privilege::require_superuser("compare a table with a peer");
    let local = table_spec(&u32::from(relation).to_string(), &mut |sql| local_rows(sql, "reading the table"))
        .unwrap_or_else(|| {
            PgError::new(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!("relation with OID {relation} does not exist"),
            )
            .raise()
        });
    if local.key.is_empty() {
        PgError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("table {} has no primary key or replica identity index", local.qualified),
        )
        .hint("table_diff compares rows by key.")
        .raise();
    }
    let dsn = peer_dsn(peer);
    let conn = Connection::connect(&dsn, &[("application_name", "spock table_diff")]).unwrap_or_else(|e| {
        PgError::new(PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE, format!("could not connect to peer {peer}: {e}"))
            .raise()
    });
    let mut sides = Sides { peer: conn, peer_label: peer.to_string(), received: 0 };
    sides.peer_query(PEER_SETTINGS, "setting up the session");
    let theirs = table_spec(&format!("pg_catalog.to_regclass({})", lit(&local.qualified)), &mut |sql| {
        sides.peer_query(sql, "reading the table")
    })
    .unwrap_or_else(|| {
        PgError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("table {} does not exist on peer {peer}", local.qualified),
        )
        .raise()
    });
    if theirs.key != local.key {
        PgError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "table {} has key ({}) here and ({}) on peer {peer}",
                local.qualified,
                local.key.join(", "),
                theirs.key.join(", ")
            ),
        )
        .raise();
    }
    let common: Vec<String> = local.columns.iter().filter(|c| theirs.columns.contains(c)).cloned().collect();
    let only = |a: &Table, b: &Table| -> Vec<String> {
        a.columns.iter().filter(|c| !b.columns.contains(c)).cloned().collect()
    };
    let (only_here, only_there) = (only(&local, &theirs), only(&theirs, &local));
    if !only_here.is_empty() || !only_there.is_empty() {
        pgrx::notice!(
            "spock.table_diff: columns of {} not compared (only here: {}; only on peer {peer}: {})",
            local.qualified,
            if only_here.is_empty() { "none".into() } else { only_here.join(", ") },
            if only_there.is_empty() { "none".into() } else { only_there.join(", ") }
        );
    }

    let q = &local.qualified;
    let cols = |prefix: &str, names: &[String]| -> String {
        names.iter().map(|c| format!("{prefix}.{}", ident(c))).collect::<Vec<_>>().join(", ")
    };
    let key_expr = format!("ROW({})::text", cols("t", &local.key));
    let row_expr = format!("ROW({})::text", cols("t", &common));
    let buckets = bucket_count(local.reltuples.max(theirs.reltuples));
    let mask = buckets - 1;
    // The key's own types' hash functions (no text output; this node's choice,
    // run on both): the pass of step 2 computes only this for the rows outside the
    // differing buckets.
    let key_hash = local
        .key
        .iter()
        .zip(&local.key_hashes)
        .enumerate()
        .map(|(i, (c, f))| match f {
            Some(f) => format!("{f}(t.{}, {i})", ident(c)),
            None => format!("pg_catalog.hashtextextended(t.{}::text, {i})", ident(c)),
        })
        .collect::<Vec<_>>()
        .join(" # ");
    let bucket_expr = format!("(({key_hash}) & {mask})");
    let row_hash = format!("pg_catalog.hashtextextended({row_expr}, 0)");

    // 1. Bucket summaries.
    let started = Instant::now();
    let mut steps: Vec<u128> = Vec::new();
    let (mine, peers) = sides.both(
        &format!(
            "SELECT {bucket_expr}::text, pg_catalog.count(*)::text, pg_catalog.bit_xor({row_hash})::text
               FROM ONLY {q} t GROUP BY 1"
        ),
        "hashing the table",
    );
    let summaries = |rows: Rows| -> HashMap<i64, Bucket> {
        rows.into_iter()
            .map(|r| {
                let n = |i: usize| r[i].as_deref().and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
                (n(0), Bucket { rows: n(1), hash: n(2) })
            })
            .collect()
    };
    let differing = differing_buckets(&summaries(mine), &summaries(peers));
    let mut out = Diff { rows: Vec::new() };
    if differing.is_empty() {
        pgrx::debug1!(
            "spock.table_diff {q}: {buckets} buckets, none differ; {} bytes from peer {peer}",
            sides.received
        );
        return out;
    }

    steps.push(started.elapsed().as_millis());
    // 2. Row hashes of the differing buckets.
    let list = differing.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let key_json = format!(
        "pg_catalog.jsonb_build_object({})::text",
        local.key.iter().map(|c| format!("{}, t.{}", lit(c), ident(c))).collect::<Vec<_>>().join(", ")
    );
    let (mine, peers) = sides.both(
        &format!(
            "SELECT {key_expr}, {row_hash}::text, {key_json} FROM ONLY {q} t
              WHERE {bucket_expr} = ANY ('{{{list}}}'::pg_catalog.int8[])"
        ),
        "hashing rows",
    );
    let mut keys_json: HashMap<String, String> = HashMap::new();
    let mut hashes = |rows: Rows| -> HashMap<String, i64> {
        rows.into_iter()
            .filter_map(|r| {
                let mut r = r.into_iter();
                let (k, h, j) = (r.next()??, r.next()??, r.next()??);
                keys_json.entry(k.clone()).or_insert(j);
                Some((k, h.parse().ok()?))
            })
            .collect()
    };
    let (mine, peers) = (hashes(mine), hashes(peers));
    let compared = mine.len() + peers.len();
    let suspects = differing_keys(&mine, &peers);
    if suspects.is_empty() {
        return out;
    }

    steps.push(started.elapsed().as_millis());
    // 3. Let replication catch up both ways, then read the rows whole.
    if recheck_timeout_ms > 0 {
        catch_up(&mut sides, Duration::from_millis(recheck_timeout_ms as u64));
    }
    let json =
        format!("[{}]", suspects.iter().filter_map(|(k, _)| keys_json.get(k).cloned()).collect::<Vec<_>>().join(","));
    let committed = |track: bool| -> (String, String) {
        if !track {
            return ("NULL::text".into(), "NULL::text".into());
        }
        (
            "pg_catalog.pg_xact_commit_timestamp(t.xmin)::text".into(),
            "(SELECT CASE WHEN o.roident = 0 THEN (SELECT i.node_name::text FROM spock.node_info() i)
                     ELSE coalesce((SELECT n.node_name::text FROM spock.subscription s
                                      JOIN spock.node n ON n.node_id = s.sub_origin
                                      JOIN pg_catalog.pg_replication_origin r ON r.roname = s.sub_slot_name
                                     WHERE r.roident = o.roident),
                                   (SELECT r.roname FROM pg_catalog.pg_replication_origin r WHERE r.roident = o.roident))
                     END
                FROM pg_catalog.pg_xact_commit_timestamp_origin(t.xmin) o)"
                .into(),
        )
    };
    let fetch = |track: bool| -> String {
        let (ts, origin) = committed(track);
        format!(
            "SELECT {key_expr}, {row_hash}::text, pg_catalog.to_jsonb(t)::text, {ts}, {origin}
               FROM ONLY {q} t
              WHERE ({}) IN (SELECT {} FROM pg_catalog.jsonb_populate_recordset(NULL::{q}, {}::pg_catalog.jsonb) r)",
            cols("t", &local.key),
            cols("r", &local.key),
            lit(&json)
        )
    };
    let track_sql = "SELECT current_setting('track_commit_timestamp')::bool::text";
    steps.push(started.elapsed().as_millis());
    let tracks_here =
        local_rows(track_sql, "reading a setting").first().and_then(|r| r[0].clone()) == Some("true".into());
    let tracks_there =
        sides.peer_query(track_sql, "reading a setting").first().and_then(|r| r[0].clone()) == Some("true".into());
    let peers = sides.peer_query(&fetch(tracks_there), "reading rows");
    let mine = local_rows(&fetch(tracks_here), "reading rows");
    let rows = |rows: Rows| -> HashMap<String, Row> {
        rows.into_iter()
            .filter_map(|r| {
                let mut r = r.into_iter();
                let k = r.next()??;
                let hash = r.next()??.parse().ok()?;
                let json = r.next()??;
                Some((k, Row { hash, json, commit_ts: r.next().flatten(), origin: r.next().flatten() }))
            })
            .collect()
    };
    let (mut mine, mut peers) = (rows(mine), rows(peers));
    for (k, _) in &suspects {
        let (l, p) = (mine.remove(k), peers.remove(k));
        let Some(status) = Status::of(l.as_ref().map(|r| r.hash), p.as_ref().map(|r| r.hash)) else { continue };
        let side = |r: Row| Side { json: r.json, commit_ts: r.commit_ts, origin: r.origin };
        out.rows.push(DiffRow {
            key: keys_json.get(k).cloned().unwrap_or_default(),
            status,
            local: l.map(side),
            peer: p.map(side),
        });
    }
    steps.push(started.elapsed().as_millis());
    pgrx::debug1!(
        "spock.table_diff {q}: {buckets} buckets, {} differ, {compared} rows compared by hash, {} rows differ (steps done at {steps:?} ms); {} bytes from peer {peer}",
        differing.len(),
        out.rows.len(),
        sides.received
    );
    out
}

/// Waits, at most `timeout`, until this node has applied what the peer had
/// committed and the peer what this node had (a sync event each way), when the two
/// replicate each other directly; says so when they do not or it timed out.
fn catch_up(sides: &mut Sides, timeout: Duration) {
    let node = "SELECT node_id::int8::text, node_name::text FROM spock.node_info()";
    let here = local_rows(node, "reading the local node").into_iter().next();
    let has_spock = !sides
        .peer_query("SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'spock'", "reading extensions")
        .is_empty();
    let there = if has_spock { sides.peer_query(node, "reading its node").into_iter().next() } else { None };
    let (Some(here), Some(there)) = (here, there) else {
        pgrx::notice!("spock.table_diff: not re-checked: the peer and this node are not both spock nodes");
        return;
    };
    let (here_id, here_name) = (here[0].clone().unwrap_or_default(), here[1].clone().unwrap_or_default());
    let there_id = there[0].clone().unwrap_or_default();
    let subscribed = |id: &str| {
        format!(
            "SELECT '1'::text FROM spock.subscription WHERE sub_origin = {}::pg_catalog.oid AND sub_enabled",
            lit(id)
        )
    };
    let from_peer = !local_rows(&subscribed(&there_id), "reading subscriptions").is_empty();
    let from_here = !sides.peer_query(&subscribed(&here_id), "reading subscriptions").is_empty();
    if !from_peer || !from_here {
        pgrx::notice!(
            "spock.table_diff: not re-checked: this node and peer {} do not both subscribe to each other",
            sides.peer_label
        );
        return;
    }
    let event = "SELECT spock.sync_event()::text";
    let here_lsn = local_rows(event, "writing a sync event").into_iter().next().and_then(|r| r[0].clone());
    let there_lsn = sides.peer_query(event, "writing a sync event").into_iter().next().and_then(|r| r[0].clone());
    let (Some(here_lsn), Some(there_lsn)) = (here_lsn, there_lsn) else { return };
    let secs = timeout.as_secs().max(1);
    let wait = format!(
        "CALL spock.wait_for_sync_event(NULL, {}::pg_catalog.name, {}::pg_catalog.pg_lsn, {secs})",
        lit(&here_name),
        lit(&here_lsn)
    );
    sides.peer.send_query(&wait).unwrap_or_else(|e| sides.peer_failed("waiting for a sync event", e));
    let reached = format!(
        "SELECT spock._sync_event_reached({}::pg_catalog.oid, {}::pg_catalog.pg_lsn, false)::text",
        lit(&there_id),
        lit(&there_lsn)
    );
    let started = Instant::now();
    let mut caught_up = false;
    while started.elapsed() < timeout {
        if local_rows(&reached, "waiting for a sync event").first().and_then(|r| r[0].clone()) == Some("true".into()) {
            caught_up = true;
            break;
        }
        nap(Duration::from_millis(20));
    }
    let there_done = sides.peer.finish_query().unwrap_or_else(|e| sides.peer_failed("waiting for a sync event", e));
    let there_caught_up = there_done.first().and_then(|r| r[0].clone()) == Some("t".into())
        || there_done.first().and_then(|r| r[0].clone()) == Some("true".into());
    if !caught_up || !there_caught_up {
        pgrx::notice!(
            "spock.table_diff: replication between this node and peer {} did not catch up within {} ms: rows are compared as they are",
            sides.peer_label,
            timeout.as_millis()
        );
    }
}

/// Sleeps on the latch for `d`, answering interrupts.
fn nap(d: Duration) {
    // SAFETY: waits on this backend's own latch; the postmaster's death ends it.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            d.as_millis() as i64,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pgrx::check_for_interrupts!();
}
