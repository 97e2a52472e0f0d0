//! `spock.sub_resync(subscription)`: the way back for a subscription whose slot
//! the provider lost (docs/operations.md "Falling behind"), run by its apply
//! worker instead of the initial sync (sync kind 'd', status 'm').
//!
//! A new slot is created with an exported snapshot (the old one dropped, while the
//! provider's apply workers are paused, as for an initial sync). Everything the
//! provider commits after the slot's consistent point S arrives by streaming; what
//! it had before S is merged into this node's rows, table by table, keeping what
//! was written here:
//!
//! - a provider row this node does not have in the same version is applied as a
//!   remote INSERT of a transaction with the row's own commit timestamp and
//!   writer, through the apply path: last-update-wins decides against a newer
//!   local version or a newer deleted version of the key (`insert_exists`,
//!   `insert_deleted`), as it would have when the change had arrived;
//! - a row only this node has was deleted on the provider while the slot was lost
//!   when the provider had it: written by the provider, or by a node whose
//!   transactions the provider had applied up to a later commit time (its progress
//!   read under the snapshot). It is applied as a remote DELETE with the
//!   provider's time at S. Any other row (written here, or by a node the provider
//!   has not caught up with) stays, and reaches the provider by its own way.
//!
//! The synthetic transactions commit under the subscription's origin at S; the
//! subscription's status stays 'm' until the last table, so a restart merges again
//! from a new slot (a row merged before is the same version then and skipped).
//! Then the origin starts at S and streaming follows: exactly once from S.

use std::collections::HashMap;

use bytes::Bytes;
use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;
use pgrx::prelude::*;
use spock_core::ident::quote_identifier;
use spock_core::proto::message::COLUMN_FLAG_REPLICA_IDENTITY;
use spock_core::proto::{
    self, Begin, Commit, Datum, Decoded, Delete, Insert, Message, OldTuple, OldTupleKind, Origin, RelColumn, Relation,
    Tuple,
};

use super::session::{ApplySession, Outcome};
use super::subscription::{set_sync_status, SubscriptionInfo};
use super::sync::{self, CopyTable};
use super::{copy_from, fail};
use crate::error::spi_failed;
use crate::libpq::Connection;

fn resync_error(sub: &SubscriptionInfo, what: &str, e: impl std::fmt::Display) -> ! {
    sync::phase_error(sub, "resync", what, e)
}

/// What the provider reported under the snapshot.
struct AtSnapshot {
    /// The slot's consistent point.
    lsn: u64,
    /// The exported snapshot.
    snapshot: String,
    /// The provider's clock then (microseconds since 2000).
    clock: i64,
    /// Per node the provider subscribes to: the commit time of the last
    /// transaction it applied from it.
    progress: HashMap<u16, i64>,
    /// The same for this node (read before the merge), from what this node's
    /// workers applied since it started.
    applied_here: HashMap<u16, i64>,
}

/// Merges the provider's rows as of a new slot's snapshot (see the module), then
/// marks the subscription ready to stream from the new slot.
pub fn run(sub: &SubscriptionInfo) {
    pgrx::log!("spock subscription {}: resync: creating the slot again and merging the provider's rows", sub.name);
    let repl =
        Connection::connect(&sub.provider_dsn, &[("replication", "database"), ("application_name", &sub.slot_name)])
            .unwrap_or_else(|e| fail(sub, "could not connect to the provider in replication mode", e));
    let ctl = Connection::connect(&sub.provider_dsn, &[("application_name", &format!("{}_sync", sub.slot_name))])
        .unwrap_or_else(|e| fail(sub, "could not connect to the provider", e));
    let at = new_slot(sub, &repl, &ctl);
    drop(ctl);
    let provider = sync::provider_at_snapshot(sub, &at.snapshot, &format!("{}_sync", sub.slot_name));
    let tables = sync::tables_to_copy(sub, &provider, None);
    let mut session = ApplySession::new(sub.clone());
    // SAFETY: reads this backend's database id.
    session.attach_progress(u32::from(unsafe { pg_sys::MyDatabaseId }));
    session.reserve_tombstone_origin();
    let writers = BackgroundWorker::transaction(|| local_writers(sub));
    let (mut applied, mut deleted) = (0usize, 0usize);
    for (i, t) in tables.iter().enumerate() {
        let (a, d) = merge_table(sub, &provider, &mut session, t, &at, &writers, i as u32 + 1);
        applied += a;
        deleted += d;
    }
    session.release_origin();
    drop(session);
    let _ = provider.query("COMMIT");
    drop(provider);
    drop(repl);
    sync::finish_resync(sub, at.lsn);
    pgrx::log!(
        "spock subscription {}: resync done: {} tables merged, {applied} rows from the provider applied, {deleted} rows deleted on the provider removed; streaming from {}",
        sub.name,
        tables.len(),
        proto::format_lsn(at.lsn)
    );
}

/// Per node a spock node subscribes to, the commit time of the last transaction it
/// applied from it (microseconds since 2000): read on the provider and here.
const PROGRESS_SQL: &str = "SELECT p.remote_node_id::int8,
        ((pg_catalog.date_part('epoch', p.remote_commit_ts) - 946684800) * 1000000)::int8
   FROM spock.progress p JOIN spock.local_node l ON l.node_id = p.node_id
  WHERE p.remote_commit_ts IS NOT NULL";

/// The provider's clock (microseconds since 2000) and its progress per node
/// ([`PROGRESS_SQL`]; none when it cannot tell).
fn provider_clock_and_progress(ctl: &Connection) -> (i64, HashMap<u16, i64>) {
    let clock = ctl
        .query("SELECT ((pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) - 946684800) * 1000000)::int8")
        .ok()
        .and_then(|r| r.first().and_then(|r| r.first().cloned().flatten()))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let progress = ctl
        .query(PROGRESS_SQL)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| Some((r.first().cloned().flatten()?.parse().ok()?, r.get(1).cloned().flatten()?.parse().ok()?)))
        .collect();
    (clock, progress)
}

/// The slot created again with an exported snapshot (sync::slot_with_snapshot:
/// the old one dropped, the provider's apply workers paused), the provider's clock
/// and progress per node read under the pause, and this node's progress.
fn new_slot(sub: &SubscriptionInfo, repl: &Connection, ctl: &Connection) -> AtSnapshot {
    let (created, read) = sync::slot_with_snapshot(sub, repl, ctl, "resync", provider_clock_and_progress);
    // Without the pause (a provider without it): read right after the slot.
    // Without the provider's progress no row of another writer is taken for deleted.
    let (clock, progress) = read.unwrap_or_else(|| provider_clock_and_progress(ctl));
    let rows = created.unwrap_or_else(|e| fail(sub, "could not create the replication slot", e));
    let (lsn, snapshot) = sync::consistent_point(&rows).unwrap_or_else(|e| fail(sub, "CREATE_REPLICATION_SLOT", e));
    BackgroundWorker::transaction(|| set_sync_status(sub.id, 'm', lsn));
    pgrx::log!("spock subscription {}: resync: slot {} created at {}", sub.name, sub.slot_name, proto::format_lsn(lsn));
    let applied_here = BackgroundWorker::transaction(|| {
        Spi::connect(|c| {
            c.select(PROGRESS_SQL, None, &[])
                .unwrap_or_else(|e| spi_failed("reading this node's progress", e))
                .filter_map(|r| Some((r.get::<i64>(1).ok()?? as u16, r.get::<i64>(2).ok()??)))
                .collect()
        })
    });
    AtSnapshot { lsn, snapshot, clock, progress, applied_here }
}

/// Which node wrote the rows of each replication origin here: this node for none
/// (0), a subscription's provider for its origin, the originating node for a
/// forwarded one.
fn local_writers(sub: &SubscriptionInfo) -> HashMap<u32, u16> {
    let subs: Vec<(String, u16)> = Spi::connect(|c| {
        c.select("SELECT sub_slot_name::text, sub_origin::int8 FROM spock.subscription", None, &[])
            .unwrap_or_else(|e| spi_failed("reading the subscriptions", e))
            .filter_map(|r| Some((r.get::<String>(1).ok()??, r.get::<i64>(2).ok()?? as u16)))
            .collect()
    });
    let origins: Vec<(u32, String)> = Spi::connect(|c| {
        c.select("SELECT roident::int8, roname::text FROM pg_catalog.pg_replication_origin", None, &[])
            .unwrap_or_else(|e| spi_failed("reading the replication origins", e))
            .filter_map(|r| Some((r.get::<i64>(1).ok()?? as u32, r.get::<String>(2).ok()??)))
            .collect()
    });
    let mut out = HashMap::from([(0u32, sub.local_node_id)]);
    for (id, name) in origins {
        for (slot, provider) in &subs {
            match spock_core::names::origin_node_of(slot, &name) {
                Some(None) => {
                    out.insert(id, *provider);
                }
                Some(Some(node)) => {
                    out.insert(id, node);
                }
                None => {}
            }
        }
    }
    out
}

/// Values as text (every column, or the key's), the commit time of the version
/// (microseconds since 2000) and who wrote it (a node id on the provider, a
/// replication origin id here).
type VersionedRow = (Vec<Option<String>>, Option<i64>, Option<i64>);

/// One column of the table as merged: name, local type, part of the key.
struct Col {
    name: String,
    type_oid: u32,
    key: bool,
}

/// Merges table `t` (see the module); returns (provider rows applied, rows
/// deleted).
fn merge_table(
    sub: &SubscriptionInfo,
    provider: &Connection,
    session: &mut ApplySession,
    t: &CopyTable,
    at: &AtSnapshot,
    writers: &HashMap<u32, u16>,
    relid_for_stream: u32,
) -> (usize, usize) {
    let name = format!("{}.{}", quote_identifier(&t.nspname), quote_identifier(&t.relname));
    let columns = spock_core::ident::split_identifier_list(&t.columns, ',')
        .unwrap_or_else(|e| resync_error(sub, &format!("the column list of {name}"), e));
    let prepared = BackgroundWorker::transaction(|| {
        let relid = sync::local_table(sub, &name);
        let key = sync::merge_key(relid)?;
        let keys = spock_core::ident::split_identifier_list(&key, ',').unwrap_or_default();
        let cols: Vec<Col> = columns
            .iter()
            .map(|c| {
                let type_oid = Spi::get_one_with_args::<pg_sys::Oid>(
                    "SELECT atttypid FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attname = $2 AND NOT attisdropped",
                    &[relid.into(), c.as_str().into()],
                )
                .ok()
                .flatten()
                .unwrap_or_else(|| resync_error(sub, &format!("column {c} of {name}"), "it does not exist here"));
                Col { name: c.clone(), type_oid: u32::from(type_oid), key: keys.contains(c) }
            })
            .collect();
        Some(cols)
    });
    let Some(cols) = prepared else {
        pgrx::warning!(
            "spock subscription {}: resync: table {name} has no primary key or replica identity index to merge by; not merged. \
             Copy it again with SELECT spock.sub_resync_table({}, {}, truncate := true) once the rows only this node has are saved elsewhere",
            sub.name,
            spock_core::ident::quote_literal(&sub.name),
            spock_core::ident::quote_literal(&name)
        );
        return (0, 0);
    };
    let list = |prefix: &str, f: &dyn Fn(&Col) -> bool| -> String {
        cols.iter()
            .filter(|c| f(c))
            .map(|c| format!("{prefix}{}", quote_identifier(&c.name)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (all, keys) = (|_: &Col| true, |c: &Col| c.key);
    let (m_all, l_all, m_keys, l_keys) = (list("m.", &all), list("l.", &all), list("m.", &keys), list("l.", &keys));
    // (the row filter's column names resolve to the table's: the origin
    // function's columns are named timestamp and roident)
    let filter = t.filter.as_deref().map(|f| format!(" AND ({f})")).unwrap_or_default();

    // 1. The provider's rows with their commit time and writer, into a table here.
    let started = std::time::Instant::now();
    let mut copied_ms = 0u128;
    let (differing, only_here, newest) = BackgroundWorker::transaction(std::panic::AssertUnwindSafe(|| {
        Spi::run(&format!(
            "DROP TABLE IF EXISTS pg_temp.spock_resync_rows;
             CREATE TEMP TABLE spock_resync_rows AS SELECT {} FROM {name} WITH NO DATA;
             ALTER TABLE pg_temp.spock_resync_rows ADD COLUMN spock_resync_ts int8, ADD COLUMN spock_resync_writer int8",
            t.columns
        ))
        .unwrap_or_else(|e| resync_error(sub, "creating the merge table", e));
        let select = format!(
            "COPY (SELECT {cols}, v.spock_resync_ts, v.spock_resync_writer
                     FROM ONLY {name} spock_resync_t
                     CROSS JOIN LATERAL (
                         SELECT ((pg_catalog.date_part('epoch', o.\"timestamp\") - 946684800) * 1000000)::int8 AS spock_resync_ts,
                                CASE WHEN o.roident = 0 THEN NULL
                                     ELSE (SELECT s.sub_origin::int8 FROM spock.subscription s
                                             JOIN pg_catalog.pg_replication_origin r ON r.roname = s.sub_slot_name
                                            WHERE r.roident = o.roident) END AS spock_resync_writer
                           FROM pg_catalog.pg_xact_commit_timestamp_origin(spock_resync_t.xmin) o) v
                    WHERE true{filter}) TO STDOUT",
            cols = t.columns
        );
        provider
            .start_copy(&select, true)
            .unwrap_or_else(|e| resync_error(sub, &format!("COPY of {name} on the provider"), e));
        let mut into = columns.clone();
        into.push("spock_resync_ts".into());
        into.push("spock_resync_writer".into());
        copy_from::copy_from_provider(
            provider,
            sync::local_table(sub, "pg_temp.spock_resync_rows"),
            &into,
            format!("spock subscription {}: resync: reading {name} from the provider", sub.name),
        );
        // Statistics for the comparisons' plans (hash joins over the whole table).
        Spi::run("ANALYZE pg_temp.spock_resync_rows").unwrap_or_else(|e| spi_failed("analyzing the merge table", e));
        copied_ms = started.elapsed().as_millis();
        // 2. Provider rows this node has not in the same version (values as text;
        // rows compared by their binary image, which any type has: equal images
        // are equal values, and a value stored another way only costs an apply
        // that last-update-wins leaves as it is).
        let texts =
            cols.iter().map(|c| format!("m.{}::text", quote_identifier(&c.name))).collect::<Vec<_>>().join(", ");
        // With each: whether this node has the key at all.
        let differing: Vec<(VersionedRow, bool)> = Spi::connect(|c| {
            c.select(
                &format!(
                    "SELECT {texts}, m.spock_resync_ts, m.spock_resync_writer,
                            EXISTS (SELECT 1 FROM ONLY {name} l WHERE ({l_keys}) = ({m_keys}))
                       FROM pg_temp.spock_resync_rows m
                      WHERE NOT EXISTS (SELECT 1 FROM ONLY {name} l
                                         WHERE ({l_keys}) = ({m_keys}) AND pg_catalog.record_image_eq(ROW({l_all}), ROW({m_all})))"
                ),
                None,
                &[],
            )
            .unwrap_or_else(|e| resync_error(sub, &format!("comparing {name}"), e))
            .map(|r| {
                let n = cols.len();
                let values = (1..=n).map(|i| r.get::<String>(i).ok().flatten()).collect();
                let here = r.get::<bool>(n + 3).ok().flatten().unwrap_or(true);
                ((values, r.get::<i64>(n + 1).ok().flatten(), r.get::<i64>(n + 2).ok().flatten()), here)
            })
            .collect()
        });
        // 3. Rows only this node has (in the subscription's rows: its row filter),
        // with the commit time and origin of their version here.
        let key_texts =
            cols.iter().filter(|c| c.key).map(|c| format!("l.{}::text", quote_identifier(&c.name))).collect::<Vec<_>>();
        let nkeys = key_texts.len();
        let only_here: Vec<VersionedRow> = Spi::connect(|c| {
            c.select(
                &format!(
                    "SELECT {}, ((pg_catalog.date_part('epoch', o.\"timestamp\") - 946684800) * 1000000)::int8, o.roident::int8
                       FROM (SELECT l.*, l.xmin AS spock_resync_xmin FROM ONLY {name} l
                              WHERE NOT EXISTS (SELECT 1 FROM pg_temp.spock_resync_rows m WHERE ({m_keys}) = ({l_keys})){}
                             OFFSET 0) l
                       CROSS JOIN LATERAL pg_catalog.pg_xact_commit_timestamp_origin(l.spock_resync_xmin) o",
                    key_texts.join(", "),
                    t.filter.as_deref().map(|f| format!(" AND ({f})")).unwrap_or_default()
                ),
                None,
                &[],
            )
            .unwrap_or_else(|e| resync_error(sub, &format!("reading the rows only this node has of {name}"), e))
            .map(|r| {
                let values = (1..=nkeys).map(|i| r.get::<String>(i).ok().flatten()).collect();
                (values, r.get::<i64>(nkeys + 1).ok().flatten(), r.get::<i64>(nkeys + 2).ok().flatten())
            })
            .collect()
        });
        // 4. Per writing node, the newest version of it this table has here, less
        // 10 ms (commit times of concurrent commits may be a little out of commit
        // order): this node applied every transaction of that node before it.
        // Only needed for provider rows whose key this node does not have.
        let wanted = differing.iter().any(|(_, here)| !here);
        let newest: Vec<(i64, i64)> = if !wanted {
            Vec::new()
        } else {
            Spi::connect(|c| {
                c.select(
                &format!(
                    "SELECT o.roident::int8,
                            pg_catalog.max(((pg_catalog.date_part('epoch', o.\"timestamp\") - 946684800) * 1000000)::int8)
                       FROM ONLY {name} l CROSS JOIN LATERAL pg_catalog.pg_xact_commit_timestamp_origin(l.xmin) o
                      WHERE o.roident <> 0 GROUP BY 1"
                ),
                None,
                &[],
            )
            .unwrap_or_else(|e| resync_error(sub, &format!("reading the versions of {name}"), e))
            .filter_map(|r| Some((r.get::<i64>(1).ok()??, r.get::<i64>(2).ok()??)))
            .collect()
            })
        };
        Spi::run("DROP TABLE pg_temp.spock_resync_rows").unwrap_or_else(|e| spi_failed("dropping the merge table", e));
        (differing, only_here, newest)
    }));
    let mut applied_here = at.applied_here.clone();
    for (origin, ts) in newest {
        if let Some(node) = writers.get(&(origin as u32)) {
            let t = ts - 10_000;
            applied_here.entry(*node).and_modify(|a| *a = (*a).max(t)).or_insert(t);
        }
    }

    let compared_ms = started.elapsed().as_millis() - copied_ms;
    let applying = std::time::Instant::now();
    // 5. Applied through the apply path, one transaction per row.
    let relation = Relation {
        flags: 0,
        relid: relid_for_stream,
        nspname: t.nspname.clone(),
        relname: t.relname.clone(),
        columns: cols
            .iter()
            .map(|c| RelColumn {
                flags: if c.key { COLUMN_FLAG_REPLICA_IDENTITY } else { 0 },
                name: c.name.clone(),
                type_oid: c.type_oid,
                typmod: -1,
            })
            .collect(),
    };
    feed(sub, session, Message::Relation(relation));
    let text = |v: &Option<String>| v.as_ref().map_or(Datum::Null, |s| Datum::Text(Bytes::from(s.clone())));
    let mut applied = 0;
    let mut known_deleted = 0;
    for ((values, ts, writer), here) in &differing {
        let writer = writer.map_or(sub.provider_node_id, |w| w as u16);
        // A version this node applied or wrote itself and no longer has was
        // deleted here since (or lost to a newer DELETE): that DELETE is newer and
        // reaches the provider on its own way, whether or not its deleted version
        // is still kept here.
        if !here
            && (writer == sub.local_node_id || ts.is_some_and(|t| applied_here.get(&writer).is_some_and(|a| t <= *a)))
        {
            known_deleted += 1;
            continue;
        }
        let new = Tuple::new(values.iter().map(text).collect());
        one_transaction(
            sub,
            session,
            at.lsn,
            ts.unwrap_or(0),
            writer,
            Message::Insert(Insert { flags: 0, relid: relid_for_stream, new }),
        );
        applied += 1;
    }
    let mut deleted = 0;
    for (key, ts, origin) in &only_here {
        let writer = origin.and_then(|o| writers.get(&(o as u32)).copied());
        let gone_on_provider = match (writer, ts) {
            (Some(w), _) if w == sub.provider_node_id => true,
            (Some(w), Some(ts)) => at.progress.get(&w).is_some_and(|applied| *ts <= *applied),
            _ => false,
        };
        if !gone_on_provider {
            continue;
        }
        // The key columns in their places, NULL elsewhere.
        let mut k = key.iter();
        let old = Tuple::new(
            cols.iter().map(|c| if c.key { k.next().map_or(Datum::Null, text) } else { Datum::Null }).collect(),
        );
        one_transaction(
            sub,
            session,
            at.lsn,
            at.clock,
            sub.provider_node_id,
            Message::Delete(Delete {
                flags: 0,
                relid: relid_for_stream,
                old: OldTuple { kind: OldTupleKind::Key, tuple: old },
            }),
        );
        deleted += 1;
    }
    pgrx::log!(
        "spock subscription {}: resync: {name}: {applied} rows of the provider applied, {deleted} rows deleted there removed, \
         {known_deleted} rows deleted here kept deleted (copied in {copied_ms} ms, compared in {compared_ms} ms, applied in {} ms)",
        sub.name,
        applying.elapsed().as_millis()
    );
    (applied, deleted)
}

/// Applies one message through the session; anything but going on is an error.
fn feed(sub: &SubscriptionInfo, session: &mut ApplySession, message: Message) {
    match session.handle(Decoded { remote_insert_lsn: None, message }) {
        Outcome::Continue => {}
        other => resync_error(sub, "applying a merged row", format!("unexpected outcome {other:?}")),
    }
}

/// A remote transaction of one change with commit time `ts` written by `writer`,
/// committed at `lsn` (the slot's consistent point).
fn one_transaction(
    sub: &SubscriptionInfo,
    session: &mut ApplySession,
    lsn: u64,
    ts: i64,
    writer: u16,
    change: Message,
) {
    feed(sub, session, Message::Begin(Begin { flags: 0, final_lsn: lsn, commit_time: ts, xid: 0 }));
    let origin_id = if writer == sub.provider_node_id { 0 } else { writer };
    feed(sub, session, Message::Origin(Origin { origin_lsn: 0, origin_id, origin_name: None }));
    feed(sub, session, change);
    feed(sub, session, Message::Commit(Commit { flags: 0, commit_lsn: lsn, end_lsn: lsn, commit_time: ts }));
}
