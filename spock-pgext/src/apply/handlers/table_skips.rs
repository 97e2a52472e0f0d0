//! Changes skipped while a table sync holds the table: a table copied at an LSN
//! the stream has not passed already contains the changes of transactions that
//! committed before it (docs/sync.md, table sync).

use super::*;

impl ApplySession {
    /// Reads which synchronised tables the stream still has to catch up with.
    pub fn reload_table_skips(&mut self) {
        let id = self.s.sub.id;
        self.s.table_skips =
            pgrx::bgworkers::BackgroundWorker::transaction(|| crate::apply::sync::catching_up_tables(id))
                .into_iter()
                .map(|(n, r, lsn)| ((n, r), lsn))
                .collect();
    }
}

impl SessionState {
    /// Whether a change to remote relation `rel` of a transaction that committed at
    /// `final_lsn` is already in a table sync's copy.
    pub(super) fn in_table_copy(&self, rel: Option<&proto::Relation>, final_lsn: u64) -> bool {
        if self.table_skips.is_empty() {
            return false;
        }
        let Some(rel) = rel else { return false };
        self.table_skips
            .get(&(rel.nspname.clone(), rel.relname.clone()))
            .is_some_and(|&copied_at| final_lsn < copied_at)
    }

    /// After the transaction that committed at `final_lsn`: tables whose copy it
    /// passed are replicating.
    pub(super) fn note_tables_caught_up(&mut self, final_lsn: u64) {
        if self.table_skips.values().any(|&s| s <= final_lsn) {
            let id = self.sub.id;
            pgrx::bgworkers::BackgroundWorker::transaction(|| crate::apply::sync::tables_caught_up(id, final_lsn));
            self.table_skips.retain(|_, s| *s > final_lsn);
        }
    }
}
