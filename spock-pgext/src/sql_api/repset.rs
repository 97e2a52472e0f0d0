//! Rust helpers behind the node and replication-set SQL API (the functions
//! themselves are in `sql/api/repset.sql`): ids derived from names, relation-cache
//! invalidation so walsenders see membership changes, row-filter parsing, slot names.

use std::ffi::{CStr, CString};

use pgrx::prelude::*;
use pgrx::{pg_sys, PgList, PgSqlErrorCode};

use crate::error::PgError;

/// `spock._scoped_id(node_id, name)`: the id Spock gives an interface or a
/// replication set of a node.
#[pg_extern(immutable, parallel_safe, name = "_scoped_id")]
fn scoped_id(node_id: pg_sys::Oid, name: &str) -> pg_sys::Oid {
    pg_sys::Oid::from(spock_core::names::node_scoped_id(u32::from(node_id), name))
}

/// `spock._invalidate_relcache(relation)`: makes every session (walsenders
/// included) rebuild what it cached about the table when this transaction commits.
#[pg_extern(volatile, name = "_invalidate_relcache")]
fn invalidate_relcache(relation: pg_sys::Oid) {
    crate::privilege::require_superuser("invalidate cached relation metadata");
    require_relation(relation);
    // SAFETY: registers an invalidation message for the current transaction; the
    // function only records the oid and is valid inside any transaction.
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relation) }
}

/// `spock._invalidate_all()`: the same for every relation (replication set flags
/// changed, or a set or node went away).
#[pg_extern(volatile, name = "_invalidate_all")]
fn invalidate_all() {
    crate::privilege::require_superuser("invalidate cached relation metadata");
    // SAFETY: as above; registers a transactional "invalidate everything" message.
    unsafe { pg_sys::CacheInvalidateRelcacheAll() }
}

/// `spock._set_needs_replica_identity(replicate_update, replicate_delete)`: whether
/// the tables of a set with these flags need a replica identity
/// ([`spock_core::repset::RepSet::needs_replica_identity`]).
#[pg_extern(immutable, strict, parallel_safe, name = "_set_needs_replica_identity")]
fn set_needs_replica_identity(replicate_update: bool, replicate_delete: bool) -> bool {
    spock_core::repset::RepSet {
        id: 0,
        name: String::new(),
        replicate_insert: true,
        replicate_update,
        replicate_delete,
        replicate_truncate: true,
    }
    .needs_replica_identity()
}

/// `spock._gen_slot_name(dbname, provider_node, subscription)`, behind
/// `spock.spock_gen_slot_name(name, name, name)` (Spock's signature, in SQL). The C
/// symbol keeps the name 0.1.0 declared, so a server runs the old SQL until
/// `ALTER EXTENSION spock UPDATE`.
#[pg_extern(name = "_gen_slot_name", immutable, strict, parallel_safe)]
pub fn spock_gen_slot_name(dbname: &str, provider_node: &str, subscription: &str) -> String {
    spock_core::names::slot_name(dbname, provider_node, subscription)
}

/// Raises 42P01 (not "cache lookup failed") when no relation has oid `relation`.
fn require_relation(relation: pg_sys::Oid) {
    // SAFETY: a syscache lookup by oid; '\0' when there is no such relation.
    if unsafe { pg_sys::get_rel_relkind(relation) } == 0 {
        PgError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("relation with OID {} does not exist", u32::from(relation)),
        )
        .raise();
    }
}

fn invalid_row_filter(row_filter: &str) -> ! {
    PgError::new(PgSqlErrorCode::ERRCODE_SYNTAX_ERROR, format!("invalid row_filter expression \"{row_filter}\""))
        .hint("A row filter is one boolean expression over the table's columns, as in a CHECK constraint.")
        .raise()
}

/// Whether a parsed `SELECT <expr> FROM <table>` is exactly that: one target, no
/// other clause (which a crafted filter could smuggle in).
///
/// SAFETY: `stmt` must point to a valid `SelectStmt` node.
unsafe fn is_plain_single_target_select(stmt: *mut pg_sys::SelectStmt) -> Option<*mut pg_sys::Node> {
    // SAFETY: the caller guarantees `stmt` is a valid SelectStmt.
    let s = unsafe { &*stmt };
    let clean = s.distinctClause.is_null()
        && s.intoClause.is_null()
        && s.whereClause.is_null()
        && s.groupClause.is_null()
        && s.havingClause.is_null()
        && s.windowClause.is_null()
        && s.valuesLists.is_null()
        && s.sortClause.is_null()
        && s.limitOffset.is_null()
        && s.limitCount.is_null()
        && s.lockingClause.is_null()
        && s.withClause.is_null()
        && s.op == pg_sys::SetOperation::SETOP_NONE;
    if !clean {
        return None;
    }
    // SAFETY: targetList is a List of ResTarget nodes (or NIL) in a parsed SELECT.
    let targets = unsafe { PgList::<pg_sys::ResTarget>::from_pg(s.targetList) };
    if targets.len() != 1 {
        return None;
    }
    let target = targets.get_ptr(0)?;
    // SAFETY: element of a valid List of ResTarget.
    let t = unsafe { &*target };
    if !t.name.is_null() || !t.indirection.is_null() || t.val.is_null() {
        return None;
    }
    Some(t.val)
}

/// `spock._parse_row_filter(relation, row_filter) RETURNS pg_node_tree`: parses and
/// checks a row filter the way a CHECK constraint is checked (only the table's
/// columns, immutable functions, no subqueries), coerced to boolean, and returns its
/// node tree. pgrx has no pg_node_tree type, so the declaration is written out here
/// (pg_node_tree is a text varlena: returning text is binary-identical); pgrx fills
/// in the C symbol.
#[pg_extern(
    volatile,
    name = "_parse_row_filter",
    sql = "CREATE FUNCTION spock._parse_row_filter(relation regclass, row_filter text) RETURNS pg_node_tree
    STRICT VOLATILE LANGUAGE c SET search_path = pg_catalog, pg_temp AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';"
)]
fn parse_row_filter(relation: pg_sys::Oid, row_filter: &str) -> String {
    // SAFETY: a node tree in the current memory context.
    with_parsed_row_filter(relation, row_filter, |_, expr| unsafe {
        CStr::from_ptr(pg_sys::nodeToString(expr.cast())).to_string_lossy().into_owned()
    })
}

/// `spock._row_filter_old_values_logged(relation, row_filter) RETURNS boolean`:
/// whether the WAL of an UPDATE holds the old values of every column the row filter
/// reads (REPLICA IDENTITY FULL, or only replica identity columns), so that the
/// output plugin can tell when a row enters or leaves the filter
/// (`spock_core::repset::UpdateRoute`).
#[pg_extern(volatile, strict, name = "_row_filter_old_values_logged")]
fn row_filter_old_values_logged(relation: pg_sys::Oid, row_filter: &str) -> bool {
    with_parsed_row_filter(relation, row_filter, |rel, expr| {
        // SAFETY: rel is open; expr is a parsed expression over it (range table
        // index 1); both bitmaps are palloc'd in the current context.
        unsafe {
            if (*(*rel).rd_rel).relreplident == pg_sys::REPLICA_IDENTITY_FULL as std::ffi::c_char {
                return true;
            }
            let mut columns: *mut pg_sys::Bitmapset = std::ptr::null_mut();
            pg_sys::pull_varattnos(expr.cast(), 1, &mut columns);
            let identity =
                pg_sys::RelationGetIndexAttrBitmap(rel, pg_sys::IndexAttrBitmapKind::INDEX_ATTR_BITMAP_IDENTITY_KEY);
            pg_sys::bms_is_subset(columns, identity)
        }
    })
}

/// Parses and checks `row_filter` over `relation` (see `_parse_row_filter`) and
/// hands the open relation and the boolean expression to `f`.
fn with_parsed_row_filter<R>(
    relation: pg_sys::Oid,
    row_filter: &str,
    f: impl FnOnce(pg_sys::Relation, *mut pg_sys::Node) -> R,
) -> R {
    require_relation(relation);
    // SAFETY: every call below is a plain backend function used as the server's own
    // CHECK-constraint code uses it, inside the current transaction; the relation
    // stays open (AccessShareLock) for the whole parse and is closed at the end.
    unsafe {
        let rel = pg_sys::table_open(relation, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let relform = &*(*rel).rd_rel;
        let nspname = pg_sys::get_namespace_name(relform.relnamespace);
        let qualified = pg_sys::quote_qualified_identifier(nspname, relform.relname.data.as_ptr());
        let qualified = CStr::from_ptr(qualified).to_string_lossy().into_owned();
        let query = CString::new(format!("SELECT {row_filter} FROM {qualified}"))
            .unwrap_or_else(|_| invalid_row_filter(row_filter));
        let raw = PgList::<pg_sys::RawStmt>::from_pg(pg_sys::pg_parse_query(query.as_ptr()));
        if raw.len() != 1 {
            invalid_row_filter(row_filter);
        }
        let stmt = (*raw.get_ptr(0).unwrap_or_else(|| invalid_row_filter(row_filter))).stmt;
        if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_SelectStmt {
            invalid_row_filter(row_filter);
        }
        let expr = is_plain_single_target_select(stmt.cast()).unwrap_or_else(|| invalid_row_filter(row_filter));

        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        let nsitem = pg_sys::addRangeTableEntryForRelation(
            pstate,
            rel,
            pg_sys::AccessShareLock as pg_sys::LOCKMODE,
            std::ptr::null_mut(),
            false,
            true,
        );
        pg_sys::addNSItemToQuery(pstate, nsitem, true, true, true);
        let expr = pg_sys::transformExpr(pstate, expr, pg_sys::ParseExprKind::EXPR_KIND_CHECK_CONSTRAINT);
        let expr = pg_sys::coerce_to_boolean(pstate, expr, c"row_filter".as_ptr());
        pg_sys::assign_expr_collations(pstate, expr);
        require_simple_row_filter(expr);
        let result = f(rel, expr);
        pg_sys::free_parsestate(pstate);
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        result
    }
}

/// What a row filter may contain, as PostgreSQL allows in a publication's WHERE
/// clause (and Spock in its row filters): the table's own columns, constants,
/// built-in operators, types and collations, and immutable built-in functions.
/// The output plugin evaluates the filter while decoding, as the replication role,
/// under a historic snapshot: a user-defined function there would run arbitrary
/// code as that role, and a mutable one would not see what the transaction saw.
///
/// SAFETY: `expr` is an analysed expression; inside a transaction.
unsafe fn require_simple_row_filter(expr: *mut pg_sys::Node) {
    let mut problem: Option<&'static str> = None;
    // SAFETY: walks the expression with a callback that only reads it and writes
    // `problem`, which outlives the walk.
    unsafe { simple_row_filter_walker(expr, (&mut problem as *mut Option<&'static str>).cast()) };
    if let Some(detail) = problem {
        PgError::new(PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED, "invalid publication WHERE expression")
            .detail(detail)
            .raise();
    }
}

/// Expression-walker callback of [`require_simple_row_filter`]: stores the first
/// reason the filter is refused in `*context` (an `Option<&'static str>`) and stops.
///
/// SAFETY: `node` is null or part of an analysed expression; `context` points to the
/// caller's `Option<&'static str>`.
#[pg_guard]
unsafe extern "C-unwind" fn simple_row_filter_walker(node: *mut pg_sys::Node, context: *mut std::ffi::c_void) -> bool {
    use pg_sys::NodeTag::*;
    if node.is_null() {
        return false;
    }
    let user_defined = |oid: pg_sys::Oid| u32::from(oid) >= pg_sys::FirstNormalObjectId;
    // SAFETY: each arm reads the node type its tag names; the checks are catalog
    // lookups of what the expression references.
    unsafe {
        let problem = &mut *context.cast::<Option<&'static str>>();
        let tag = (*node).type_;
        *problem = match tag {
            T_Var if (*node.cast::<pg_sys::Var>()).varattno < 0 => Some("System columns are not allowed."),
            T_OpExpr | T_DistinctExpr | T_NullIfExpr if user_defined((*node.cast::<pg_sys::OpExpr>()).opno) => {
                Some("User-defined operators are not allowed.")
            }
            T_ScalarArrayOpExpr if user_defined((*node.cast::<pg_sys::ScalarArrayOpExpr>()).opno) => {
                Some("User-defined operators are not allowed.")
            }
            T_RowCompareExpr
                if PgList::<std::ffi::c_void>::from_pg((*node.cast::<pg_sys::RowCompareExpr>()).opnos)
                    .iter_oid()
                    .any(user_defined) =>
            {
                Some("User-defined operators are not allowed.")
            }
            T_Var | T_OpExpr | T_DistinctExpr | T_NullIfExpr | T_ScalarArrayOpExpr | T_RowCompareExpr | T_Const
            | T_FuncExpr | T_BoolExpr | T_RelabelType | T_CollateExpr | T_CaseExpr | T_CaseTestExpr | T_ArrayExpr
            | T_RowExpr | T_CoalesceExpr | T_MinMaxExpr | T_XmlExpr | T_NullTest | T_BooleanTest | T_List => None,
            _ => Some(
                "Only columns, constants, built-in operators, built-in data types, built-in collations, and immutable built-in functions are allowed.",
            ),
        };
        if problem.is_none() && tag != T_List {
            *problem = if user_defined(pg_sys::exprType(node)) {
                Some("User-defined types are not allowed.")
            } else if pg_sys::check_functions_in_node(node, Some(mutable_or_user_function), std::ptr::null_mut()) {
                Some("User-defined or built-in mutable functions are not allowed.")
            } else if user_defined(pg_sys::exprCollation(node)) || user_defined(pg_sys::exprInputCollation(node)) {
                Some("User-defined collations are not allowed.")
            } else {
                None
            };
        }
        if problem.is_some() {
            return true;
        }
        pg_sys::expression_tree_walker_impl(node, Some(simple_row_filter_walker), context)
    }
}

/// Function callback of [`simple_row_filter_walker`]: a user-defined function, or a
/// built-in one that is not immutable.
///
/// SAFETY: `func` is a function the expression calls.
#[pg_guard]
unsafe extern "C-unwind" fn mutable_or_user_function(func: pg_sys::Oid, _context: *mut std::ffi::c_void) -> bool {
    // SAFETY: a syscache lookup of an existing function.
    u32::from(func) >= pg_sys::FirstNormalObjectId
        || unsafe { pg_sys::func_volatile(func) } != pg_sys::PROVOLATILE_IMMUTABLE as std::ffi::c_char
}
