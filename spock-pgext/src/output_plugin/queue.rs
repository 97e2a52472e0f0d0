//! `spock.queue` on the wire, as Spock sends it: the queue table is in no
//! replication set, yet its INSERTs (queued DDL, sequence positions, table-sync
//! requests) go to every subscriber whose sets share a name with the row's
//! `replication_sets` (a NULL array means every subscriber); its UPDATEs, DELETEs and
//! TRUNCATEs are never sent. A connection that catches up one table
//! (`spock.replicate_only_table`, table sync) gets no queue rows.
//!
//! Which table is the queue and what of it is published are
//! `spock_core::ddl::is_queue_table` and `spock_core::repset::table_publication`;
//! which rows go to whom is `spock_core::ddl::queue_row_wanted`. This module reads
//! the row's sets.

use pgrx::pg_sys;
use pgrx::FromDatum;
use spock_core::repset::RepSet;

/// `spock.queue.replication_sets` (1-based attribute number, as in Spock).
const ANUM_QUEUE_REPLICATION_SETS: i32 = 3;

/// Whether an INSERT into `spock.queue` (`rel`) of `newtuple` goes to a subscriber
/// of `sets`: when the row names one of them, or no set at all.
///
/// SAFETY: `rel` is the open queue table and `newtuple` null or a tuple of it.
pub unsafe fn row_wanted(rel: pg_sys::Relation, newtuple: pg_sys::HeapTuple, sets: &[RepSet]) -> bool {
    if newtuple.is_null() {
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
