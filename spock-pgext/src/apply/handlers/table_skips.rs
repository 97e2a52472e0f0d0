//! Changes skipped while a table sync holds the table: a table copied at an LSN
//! the stream has not passed already contains the changes of transactions that
//! committed before it (docs/sync.md, table sync).

use super::*;
use spock_core::table_skip::{self, InCopy};

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

    /// Whether some synchronised table waits for the stream to pass its copy (its
    /// changes are sorted by commit LSN: the leader of a parallel apply applies
    /// until then alone).
    pub fn catching_up_tables(&self) -> bool {
        !self.s.table_skips.is_empty()
    }
}

impl SessionState {
    /// Whether a change to remote relation `rel` of a transaction that committed at
    /// `commit_lsn` (None: not known yet, eager apply) is already in a table
    /// sync's copy.
    pub(super) fn in_table_copy(&self, rel: Option<&proto::Relation>, commit_lsn: Option<u64>) -> InCopy {
        if self.table_skips.is_empty() {
            return InCopy::No;
        }
        let copied_at = rel.and_then(|r| self.table_skips.get(&(r.nspname.clone(), r.relname.clone())));
        copied_at.map_or(InCopy::No, |&c| table_skip::in_copy(c, commit_lsn))
    }

    /// After the transaction that committed at `final_lsn`: tables whose copy it
    /// passed are replicating.
    pub(in crate::apply) fn note_tables_caught_up(&mut self, final_lsn: u64) {
        if self.table_skips.values().any(|&s| table_skip::caught_up(s, final_lsn)) {
            let id = self.sub.id;
            pgrx::bgworkers::BackgroundWorker::transaction(|| crate::apply::sync::tables_caught_up(id, final_lsn));
            self.table_skips.retain(|_, s| !table_skip::caught_up(*s, final_lsn));
        }
    }
}
