//! `spock.queue` on the wire, as Spock sends it: the queue table is in no
//! replication set, yet its INSERTs (queued DDL, sequence positions, table-sync
//! requests) go to every subscriber whose sets share a name with the row's
//! `replication_sets` (a NULL array means every subscriber); its UPDATEs, DELETEs and
//! TRUNCATEs are never sent. A connection that catches up one table
//! (`spock.replicate_only_table`, table sync) gets no queue rows.
//!
//! The decision itself is `spock_core::ddl::queue_row_wanted`; this module reads the
//! row and builds the relation entry (every column, INSERT only).

use std::ffi::CStr;

use pgrx::pg_sys;
use pgrx::FromDatum;
use spock_core::repset::{Action, Membership, RepSet, TablePublication};

use super::relation::RelEntry;

/// `spock.queue.replication_sets` (1-based attribute number, as in Spock).
const ANUM_QUEUE_REPLICATION_SETS: i32 = 3;

/// Whether `rel` is `spock.queue`.
///
/// SAFETY: `rel` is an open relation.
pub unsafe fn is_queue(rel: pg_sys::Relation) -> bool {
    // SAFETY: the relation's form is valid while it is open; the namespace name is a
    // palloc'd copy (or NULL) in the current, short-lived memory context.
    unsafe {
        let form = &*(*rel).rd_rel;
        if CStr::from_ptr(form.relname.data.as_ptr()).to_bytes() != b"queue" {
            return false;
        }
        let nsp = pg_sys::get_namespace_name(form.relnamespace);
        !nsp.is_null() && CStr::from_ptr(nsp).to_bytes() == b"spock"
    }
}

/// The relation entry of `rel` for a connection subscribed to `sets`: the usual one,
/// except for `spock.queue` outside single-table catch-up, which publishes every
/// column of its INSERTs.
///
/// SAFETY: `rel` is an open relation.
pub unsafe fn build_entry(
    rel: pg_sys::Relation,
    sets: &[RepSet],
    only_table: Option<&(String, String)>,
    allow_internal: bool,
    allow_binary: bool,
) -> RelEntry {
    // SAFETY: forwarded precondition.
    if only_table.is_some() || !unsafe { is_queue(rel) } {
        // SAFETY: forwarded precondition.
        return unsafe { RelEntry::build(rel, sets, only_table, allow_internal, allow_binary) };
    }
    // "Only this table" selects every column; then narrow it to INSERTs.
    let queue = ("spock".to_string(), "queue".to_string());
    // SAFETY: forwarded precondition.
    let mut entry = unsafe { RelEntry::build(rel, sets, Some(&queue), allow_internal, allow_binary) };
    let inserts = RepSet {
        id: 0,
        name: String::new(),
        replicate_insert: true,
        replicate_update: false,
        replicate_delete: false,
        replicate_truncate: false,
    };
    entry.publication = TablePublication::new(&[inserts], &[Membership { set_id: 0, columns: None, row_filter: None }]);
    entry
}

/// Whether a change of `rel` may be sent as far as the queue is concerned: always
/// for other tables; for `spock.queue` only INSERTs whose row names a set of `sets`
/// (or no set at all).
///
/// SAFETY: `rel` is an open relation and `newtuple` null or a tuple of it.
pub unsafe fn row_wanted(rel: pg_sys::Relation, action: Action, newtuple: pg_sys::HeapTuple, sets: &[RepSet]) -> bool {
    // SAFETY: forwarded precondition.
    if !unsafe { is_queue(rel) } {
        return true;
    }
    if action != Action::Insert || newtuple.is_null() {
        return false;
    }
    let mut isnull = false;
    // SAFETY: the tuple belongs to rel, whose descriptor has the attribute; a text[]
    // datum is detoasted by the conversion (the reorder buffer has rebuilt external
    // values in memory).
    let row_sets = unsafe {
        let datum = pg_sys::heap_getattr(newtuple, ANUM_QUEUE_REPLICATION_SETS, (*rel).rd_att, &mut isnull);
        Vec::<Option<String>>::from_polymorphic_datum(datum, isnull, pg_sys::TEXTARRAYOID)
    };
    let subscribed: Vec<&str> = sets.iter().map(|s| s.name.as_str()).collect();
    spock_core::ddl::queue_row_wanted(row_sets.as_deref(), &subscribed)
}
