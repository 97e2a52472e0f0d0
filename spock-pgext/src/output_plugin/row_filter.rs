//! Row filters of a relation, prepared once per relation entry and evaluated on
//! each decoded row. Which filters apply and how their results combine (all must
//! return true, NULL rejects the row) is `spock_core::repset::TablePublication`.

use std::ffi::CString;

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;

use crate::error::PgError;

/// One prepared filter expression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterExpr(*mut pg_sys::ExprState);

/// The slot and expression context the filters of one relation run in. Created in
/// the relation entry's memory context, which is deleted after the value.
pub struct RowFilters {
    econtext: *mut pg_sys::ExprContext,
    slot: *mut pg_sys::TupleTableSlot,
    /// The slot holds the row being filtered.
    stored: bool,
}

impl RowFilters {
    /// The evaluation state for filters over `rel`, in the current memory context.
    ///
    /// SAFETY: `rel` must be open.
    pub unsafe fn new(rel: pg_sys::Relation) -> RowFilters {
        // SAFETY: plain executor-state constructors in the current memory context.
        unsafe {
            let econtext = pg_sys::CreateStandaloneExprContext();
            // A private copy of the descriptor: the relation's own is reference-counted
            // under the resource owner of the moment, which is gone when we drop the slot.
            let desc = pg_sys::CreateTupleDescCopy((*rel).rd_att);
            let slot = pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsHeapTuple);
            RowFilters { econtext, slot, stored: false }
        }
    }

    /// Prepares `tree` (`nodeToString` output of a boolean expression over the
    /// relation) in the current memory context.
    ///
    /// SAFETY: the expression comes from our own catalog, written by
    /// `spock._parse_row_filter`.
    pub unsafe fn prepare(tree: &str) -> FilterExpr {
        let c = CString::new(tree).unwrap_or_else(|_| {
            PgError::new(PgSqlErrorCode::ERRCODE_DATA_CORRUPTED, "row filter contains a NUL byte").raise()
        });
        // SAFETY: see above.
        unsafe {
            let node = pg_sys::stringToNode(c.as_ptr()) as *mut pg_sys::Expr;
            let planned = pg_sys::expression_planner(node);
            FilterExpr(pg_sys::ExecInitExpr(planned, std::ptr::null_mut()))
        }
    }

    /// The result of `expr` on `tuple` (`None` for NULL). Call [`RowFilters::finish`]
    /// after the last filter of a row.
    ///
    /// SAFETY: `expr` was prepared for the relation and `tuple` is a tuple of it,
    /// the same for every call until `finish`.
    pub unsafe fn evaluate(&mut self, expr: FilterExpr, tuple: pg_sys::HeapTuple) -> Option<bool> {
        // SAFETY: evaluating a prepared expression on a slot holding the tuple, in
        // the expression context's per-tuple memory.
        unsafe {
            if !self.stored {
                pg_sys::ExecStoreHeapTuple(tuple, self.slot, false);
                (*self.econtext).ecxt_scantuple = self.slot;
                self.stored = true;
            }
            let old = pg_sys::MemoryContextSwitchTo((*self.econtext).ecxt_per_tuple_memory);
            let mut isnull = false;
            let eval = (*expr.0).evalfunc.expect("initialized ExprState has an evalfunc");
            let result = eval(expr.0, self.econtext, &mut isnull);
            pg_sys::MemoryContextSwitchTo(old);
            (!isnull).then(|| result.value() != 0)
        }
    }

    /// Releases the row and what the evaluations allocated.
    ///
    /// SAFETY: the econtext and slot are valid (created by `new`).
    pub unsafe fn finish(&mut self) {
        if !std::mem::take(&mut self.stored) {
            return;
        }
        // SAFETY: see above.
        unsafe {
            pg_sys::ExecClearTuple(self.slot);
            pg_sys::MemoryContextReset((*self.econtext).ecxt_per_tuple_memory);
        }
    }
}

impl Drop for RowFilters {
    fn drop(&mut self) {
        // SAFETY: the slot and expression context were created by `new`, in memory
        // that is still there (the entry deletes its context after this), and are not
        // used after this.
        unsafe {
            pg_sys::ExecDropSingleTupleTableSlot(self.slot);
            pg_sys::FreeExprContext(self.econtext, false);
        }
    }
}
