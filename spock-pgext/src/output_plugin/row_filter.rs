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
    /// The row the slot holds (null: none).
    stored: pg_sys::HeapTuple,
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
            RowFilters { econtext, slot, stored: std::ptr::null_mut() }
        }
    }

    /// Prepares `tree` (`nodeToString` output of a boolean expression over the
    /// relation) in the current memory context, adding the columns it reads to
    /// `columns` (attribute numbers offset by `FirstLowInvalidHeapAttributeNumber`,
    /// as `pull_varattnos` and `RelationGetIndexAttrBitmap` give them).
    ///
    /// SAFETY: the expression comes from our own catalog, written by
    /// `spock._parse_row_filter`; `columns` is a valid (possibly empty) bitmap.
    pub unsafe fn prepare(tree: &str, columns: &mut *mut pg_sys::Bitmapset) -> FilterExpr {
        let c = CString::new(tree).unwrap_or_else(|_| {
            PgError::new(PgSqlErrorCode::ERRCODE_DATA_CORRUPTED, "row filter contains a NUL byte").raise()
        });
        // SAFETY: see above.
        unsafe {
            let node = pg_sys::stringToNode(c.as_ptr()) as *mut pg_sys::Expr;
            // The filter's expression is over the relation alone: range table index 1.
            pg_sys::pull_varattnos(node.cast(), 1, columns);
            let planned = pg_sys::expression_planner(node);
            FilterExpr(pg_sys::ExecInitExpr(planned, std::ptr::null_mut()))
        }
    }

    /// The result of `expr` on `tuple` (`None` for NULL). Call [`RowFilters::finish`]
    /// after the last filter of a change.
    ///
    /// SAFETY: `expr` was prepared for the relation and `tuple` is a tuple of it,
    /// valid until `finish`.
    pub unsafe fn evaluate(&mut self, expr: FilterExpr, tuple: pg_sys::HeapTuple) -> Option<bool> {
        // SAFETY: evaluating a prepared expression on a slot holding the tuple, in
        // the expression context's per-tuple memory.
        unsafe {
            if self.stored != tuple {
                pg_sys::ExecStoreHeapTuple(tuple, self.slot, false);
                (*self.econtext).ecxt_scantuple = self.slot;
                self.stored = tuple;
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
        if std::mem::replace(&mut self.stored, std::ptr::null_mut()).is_null() {
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
