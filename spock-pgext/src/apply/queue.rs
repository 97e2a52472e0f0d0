//! Subscriber side of `spock.queue` (Spock's `handle_queued_message`): a queue row
//! arrives as an INSERT into `spock.queue`, which the apply worker inserts like any
//! row (as Spock does) and then acts on, inside the same local transaction:
//!
//! * `Q` (`replicate_ddl`) and `D` (AutoDDL): run the SQL as the recorded role; the
//!   SQL starts with the origin's `SET search_path`, undone afterwards. Relation
//!   mappings see the new schema through relcache invalidation. A failing statement
//!   is an ERROR of the change, handled like any failing change.
//! * `S`: move the sequence forward to the announced value (never back).
//! * `A`: a table-sync request, handed to [`table_sync_requested`].

use pgrx::prelude::*;
use pgrx::{pg_sys, FromDatum, PgSqlErrorCode};
use spock_core::ddl::{LocalSequence, QueuedMessage};
use spock_core::ident::quote_identifier;

use super::executor::LocalRelation;
use super::subscription::SubscriptionInfo;
use crate::ddl::{self, Execution};
use crate::error::{spi_failed, PgError};

/// A `spock.queue` row as inserted here.
pub struct QueuedRow {
    role: String,
    message_type: u8,
    message: String,
}

/// Whether a remote relation mapped to `map` is `spock.queue`.
pub fn is_queue(map: &LocalRelation) -> bool {
    map.qualified.split_once('.').is_some_and(|(schema, table)| spock_core::ddl::is_queue_table(schema, table))
}

impl QueuedRow {
    /// Reads the row from the slot it was inserted from (columns of the local
    /// `spock.queue`: queued_at, role, replication_sets, message_type, message).
    ///
    /// SAFETY: `slot` holds a row of this node's `spock.queue`.
    pub unsafe fn from_slot(slot: *mut pg_sys::TupleTableSlot) -> QueuedRow {
        // SAFETY: the slot's arrays have natts entries once all attributes are
        // deformed; name, "char" and json datums are read as their types are stored.
        unsafe {
            pg_sys::slot_getallattrs(slot);
            let natts = (*(*slot).tts_tupleDescriptor).natts as usize;
            if natts < 5 {
                PgError::new(
                    PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    "spock: spock.queue has an unexpected shape",
                )
                .raise();
            }
            let values = std::slice::from_raw_parts((*slot).tts_values, natts);
            let nulls = std::slice::from_raw_parts((*slot).tts_isnull, natts);
            let role = if nulls[1] {
                String::new()
            } else {
                std::ffi::CStr::from_ptr(values[1].cast_mut_ptr::<std::ffi::c_char>()).to_string_lossy().into_owned()
            };
            let message_type = if nulls[3] { 0 } else { values[3].value() as u8 };
            let message = String::from_polymorphic_datum(values[4], nulls[4], pg_sys::JSONOID).unwrap_or_default();
            QueuedRow { role, message_type, message }
        }
    }
}

/// Acts on a queue row that was just inserted, in the apply transaction.
pub fn handle_queued_row(sub: &SubscriptionInfo, row: QueuedRow) {
    let message = QueuedMessage::decode(row.message_type, &row.message).unwrap_or_else(|e| {
        PgError::new(PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION, format!("spock subscription {}: {e}", sub.name))
            .detail(format!("message_type '{}', message {}", char::from(row.message_type), row.message))
            .raise()
    });
    match message {
        QueuedMessage::Sql(sql) => {
            pgrx::debug1!("spock subscription {}: running queued SQL as {}: {sql}", sub.name, row.role);
            ddl::execute_sql(&sql, &row.role, None, Execution::QueuedSql);
        }
        QueuedMessage::Ddl(sql) => {
            pgrx::debug1!("spock subscription {}: running queued DDL as {}: {sql}", sub.name, row.role);
            ddl::execute_sql(&sql, &row.role, None, Execution::QueuedDdl);
        }
        // ---- 'A': table sync. Handled by the sync code (table_sync_requested). ----
        QueuedMessage::TableSync { schema, table } => table_sync_requested(sub, &schema, &table),
        QueuedMessage::Sequence { schema, name, last_value } => apply_sequence(sub, &schema, &name, last_value),
    }
}

/// A table-sync request ('A', from `repset_add_table(..., synchronize_data := true)`
/// on the provider) for `schema.table`: recorded in spock.local_sync_status with
/// this transaction; the worker copies the table (merged by key into rows that may
/// exist here) once the transaction is committed.
pub fn table_sync_requested(sub: &SubscriptionInfo, schema: &str, table: &str) {
    pgrx::log!("spock subscription {}: the provider asks for a sync of table {schema}.{table}", sub.name);
    super::sync::request_table_sync(sub.id, schema, table, false);
    SYNC_REQUESTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// A table sync was requested since the last [`take_sync_request`]: the worker
/// looks for waiting tables at the next point between transactions instead of
/// at its next periodic check.
static SYNC_REQUESTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a table sync was requested (and forgets it).
pub fn take_sync_request() -> bool {
    SYNC_REQUESTED.swap(false, std::sync::atomic::Ordering::Relaxed)
}

/// Moves sequence `schema.name` to `last_value` unless it is already there or past
/// it (`spock_core::ddl::sequence_catch_up`).
fn apply_sequence(sub: &SubscriptionInfo, schema: &str, name: &str, last_value: i64) {
    let found = Spi::connect(|c| {
        c.select(
            "SELECT c.oid::int8, s.seqincrement, s.seqmin, s.seqmax
               FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_catalog.pg_sequence s ON s.seqrelid = c.oid
              WHERE n.nspname = $1 AND c.relname = $2",
            Some(1),
            &[schema.into(), name.into()],
        )
        .unwrap_or_else(|e| spi_failed("looking up a sequence", e))
        .next()
        .map(|r| {
            (
                r.get::<i64>(1).ok().flatten().unwrap_or(0),
                r.get::<i64>(2).ok().flatten().unwrap_or(1),
                r.get::<i64>(3).ok().flatten().unwrap_or(i64::MIN),
                r.get::<i64>(4).ok().flatten().unwrap_or(i64::MAX),
            )
        })
    });
    let Some((oid, increment, min_value, max_value)) = found else {
        PgError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("spock subscription {}: sequence {schema}.{name} replicated from the provider does not exist on this node", sub.name),
        )
        .raise()
    };
    let qualified = format!("{}.{}", quote_identifier(schema), quote_identifier(name));
    // A global sequence hands out this node's own ids: another node's value would
    // put it among that node's (docs/multimaster.md).
    let global = Spi::get_one_with_args::<bool>("SELECT spock._is_global_sequence($1::int8::oid)", &[oid.into()])
        .unwrap_or_else(|e| spi_failed("looking up a sequence", e))
        .unwrap_or(false);
    if global {
        pgrx::log!(
            "spock subscription {}: sequence {qualified} is global here: its value from the provider is ignored",
            sub.name
        );
        return;
    }
    let current = Spi::get_one::<i64>(&format!("SELECT last_value FROM {qualified}"))
        .unwrap_or_else(|e| spi_failed("reading a sequence", e))
        .unwrap_or(min_value);
    let local = LocalSequence { last_value: current, increment, min_value, max_value };
    if let Some(target) = spock_core::ddl::sequence_catch_up(local, last_value) {
        Spi::run_with_args("SELECT pg_catalog.setval($1::int8::oid::regclass, $2)", &[oid.into(), target.into()])
            .unwrap_or_else(|e| spi_failed("setting a sequence", e));
        pgrx::debug1!("spock subscription {}: sequence {qualified} set to {target}", sub.name);
    }
}
