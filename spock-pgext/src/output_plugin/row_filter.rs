//! Row filters of a relation, prepared once per relation and connection and
//! evaluated on each decoded row: all must return true (NULL rejects the row).

use std::ffi::CString;

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;

use crate::error::PgError;

/// Prepared filters with the slot and expression context they run in. Everything is
/// allocated in one memory context that is deleted with the value.
pub struct RowFilters {
    cxt: pg_sys::MemoryContext,
    states: Vec<*mut pg_sys::ExprState>,
    econtext: *mut pg_sys::ExprContext,
    slot: *mut pg_sys::TupleTableSlot,
}

impl RowFilters {
    /// Prepares `trees` (`nodeToString` output of boolean expressions over `rel`).
    ///
    /// SAFETY: `rel` must be open.
    pub unsafe fn prepare(rel: pg_sys::Relation, trees: &[String]) -> RowFilters {
        // SAFETY: creating a child of CacheMemoryContext and building executor state
        // in it; the expressions come from our own catalog, written by
        // spock._parse_row_filter.
        unsafe {
            let cxt = pg_sys::AllocSetContextCreateInternal(
                pg_sys::CacheMemoryContext,
                c"spock row filters".as_ptr(),
                0,
                8 * 1024,
                8 * 1024 * 1024,
            );
            let old = pg_sys::MemoryContextSwitchTo(cxt);
            let mut states = Vec::with_capacity(trees.len());
            for tree in trees {
                let c = CString::new(tree.as_str()).unwrap_or_else(|_| {
                    PgError::new(PgSqlErrorCode::ERRCODE_DATA_CORRUPTED, "row filter contains a NUL byte").raise()
                });
                let node = pg_sys::stringToNode(c.as_ptr()) as *mut pg_sys::Expr;
                let planned = pg_sys::expression_planner(node);
                states.push(pg_sys::ExecInitExpr(planned, std::ptr::null_mut()));
            }
            let econtext = pg_sys::CreateStandaloneExprContext();
            // A private copy of the descriptor: the relation's own is reference-counted
            // under the resource owner of the moment, which is gone when we drop the slot.
            let desc = pg_sys::CreateTupleDescCopy((*rel).rd_att);
            let slot = pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsHeapTuple);
            pg_sys::MemoryContextSwitchTo(old);
            RowFilters { cxt, states, econtext, slot }
        }
    }

    /// Whether every filter returns true for `tuple`.
    ///
    /// SAFETY: `tuple` must be a tuple of the relation the filters were prepared for.
    pub unsafe fn all_pass(&mut self, tuple: pg_sys::HeapTuple) -> bool {
        // SAFETY: evaluating prepared expressions on a slot holding the tuple, in the
        // expression context's per-tuple memory, which is reset afterwards.
        unsafe {
            pg_sys::ExecStoreHeapTuple(tuple, self.slot, false);
            (*self.econtext).ecxt_scantuple = self.slot;
            let old = pg_sys::MemoryContextSwitchTo((*self.econtext).ecxt_per_tuple_memory);
            let mut pass = true;
            for &state in &self.states {
                let mut isnull = false;
                let eval = (*state).evalfunc.expect("initialized ExprState has an evalfunc");
                let result = eval(state, self.econtext, &mut isnull);
                if isnull || result.value() == 0 {
                    pass = false;
                    break;
                }
            }
            pg_sys::MemoryContextSwitchTo(old);
            pg_sys::ExecClearTuple(self.slot);
            pg_sys::MemoryContextReset((*self.econtext).ecxt_per_tuple_memory);
            pass
        }
    }
}

impl Drop for RowFilters {
    fn drop(&mut self) {
        // SAFETY: the slot, context and states were created by `prepare` and are not
        // used after this.
        unsafe {
            pg_sys::ExecDropSingleTupleTableSlot(self.slot);
            pg_sys::FreeExprContext(self.econtext, false);
            pg_sys::MemoryContextDelete(self.cxt);
        }
    }
}
