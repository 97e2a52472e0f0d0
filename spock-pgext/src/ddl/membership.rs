//! Replication-set membership as a dependency of its table, sequence and row-filter
//! columns, as Spock keeps it in `spock.depend`:
//!
//! * `DROP TABLE t` / `DROP SEQUENCE s` (RESTRICT) of a member fails like any drop
//!   of an object others depend on (2BP01, one DETAIL line per membership, the
//!   CASCADE hint); so does `ALTER TABLE t DROP COLUMN c` when a row filter of `t`
//!   reads `c` (the filter would fail on every later change and the table's copy
//!   with 42703);
//! * with CASCADE the memberships go with the object, each with a NOTICE `drop
//!   cascades to table t membership in replication set s`
//!   (`spock._forget_dropped_relations`, the sql_drop event trigger);
//! * the apply worker (`session_replication_role = replica`) always cascades, as
//!   Spock's does: the provider already decided.
//!
//! Spock checks in an object-access hook during the deletion; the check here runs
//! in the ProcessUtility hook before the statement, on what the statement names
//! (a DROP SCHEMA or DROP OWNED that reaches a member needs CASCADE anyway).

use pgrx::prelude::*;
use pgrx::{pg_sys, PgList, PgSqlErrorCode};

use super::autoddl::{existing_relid, SnapshotGuard};
use super::UserSwitch;
use crate::error::{spi_failed, PgError};

/// Raises 2BP01 when a RESTRICT drop named by `parsetree` would remove a
/// replication-set membership.
///
/// SAFETY: `parsetree` is a valid utility statement; inside its transaction.
pub unsafe fn refuse_restricted_drop(parsetree: *mut pg_sys::Node) {
    use pg_sys::ObjectType::*;
    // SAFETY: plain reads of backend globals and a syscache lookup.
    let applies = unsafe {
        pg_sys::SessionReplicationRole != pg_sys::SESSION_REPLICATION_ROLE_REPLICA as i32
            && pg_sys::MyBackendType != pg_sys::BackendType::B_BG_WORKER
            && pg_sys::IsTransactionState()
    };
    if !applies {
        return;
    }
    let mut targets: Vec<(pg_sys::Oid, i16)> = Vec::new();
    // SAFETY: each branch reads the node type its tag names.
    unsafe {
        match (*parsetree).type_ {
            pg_sys::NodeTag::T_DropStmt => {
                let drop = &*parsetree.cast::<pg_sys::DropStmt>();
                // With AutoDDL on, a DROP cascades to memberships as if it said
                // CASCADE (Spock: replicated tables drop without it there).
                if drop.behavior == pg_sys::DropBehavior::DROP_RESTRICT
                    && !crate::gucs::ENABLE_DDL_REPLICATION.get()
                    && matches!(drop.removeType, OBJECT_TABLE | OBJECT_SEQUENCE | OBJECT_FOREIGN_TABLE)
                {
                    for names in PgList::<pg_sys::List>::from_pg(drop.objects).iter_ptr() {
                        let relid = existing_relid(pg_sys::makeRangeVarFromNameList(names));
                        if relid != pg_sys::InvalidOid {
                            targets.push((relid, 0));
                        }
                    }
                }
            }
            pg_sys::NodeTag::T_AlterTableStmt => {
                let alter = &*parsetree.cast::<pg_sys::AlterTableStmt>();
                let cmds = PgList::<pg_sys::AlterTableCmd>::from_pg(alter.cmds);
                let drops_column = cmds.iter_ptr().any(|c| {
                    (*c).subtype == pg_sys::AlterTableType::AT_DropColumn
                        && (*c).behavior == pg_sys::DropBehavior::DROP_RESTRICT
                });
                if drops_column && !alter.relation.is_null() {
                    let relid = existing_relid(alter.relation);
                    if relid != pg_sys::InvalidOid {
                        for c in cmds.iter_ptr() {
                            if (*c).subtype == pg_sys::AlterTableType::AT_DropColumn
                                && (*c).behavior == pg_sys::DropBehavior::DROP_RESTRICT
                                && !(*c).name.is_null()
                            {
                                let attnum = pg_sys::get_attnum(relid, (*c).name);
                                if attnum > 0 {
                                    targets.push((relid, attnum));
                                }
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if targets.is_empty() {
        return;
    }
    // SAFETY: a syscache lookup.
    if unsafe { pg_sys::get_extension_oid(c"spock".as_ptr(), true) } == pg_sys::InvalidOid {
        return;
    }
    // The session's role need not be allowed to read spock's catalogs.
    let _superuser = UserSwitch::to(pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID));
    let _snapshot = SnapshotGuard::ensure();
    for (relid, attnum) in targets {
        let found = Spi::connect(|client| {
            client
                .select(
                    "SELECT kind, set_name FROM spock._dependent_memberships($1, $2)",
                    None,
                    &[relid.into(), attnum.into()],
                )
                .unwrap_or_else(|e| spi_failed("reading the replication sets of a dropped object", e))
                .map(|r| {
                    (
                        r.get::<String>(1).ok().flatten().unwrap_or_default(),
                        r.get::<String>(2).ok().flatten().unwrap_or_default(),
                    )
                })
                .collect::<Vec<_>>()
        });
        if let Some((kind, _)) = found.first() {
            // Worded as PostgreSQL describes objects (getObjectDescription): the
            // relation qualified only when the search_path does not show it.
            // SAFETY: catalog lookups of an existing relation and column.
            let name = unsafe { relation_name(relid) };
            let object = if attnum == 0 {
                format!("{kind} {name}")
            } else {
                // SAFETY: as above.
                let column = unsafe { pg_sys::get_attname(relid, attnum, false) };
                // SAFETY: a palloc'd NUL-terminated name.
                format!("column {} of table {name}", unsafe { std::ffi::CStr::from_ptr(column) }.to_string_lossy())
            };
            let detail = found
                .iter()
                .map(|(kind, set)| format!("{kind} {name} membership in replication set {set} depends on {object}"))
                .collect::<Vec<_>>()
                .join("\n");
            PgError::new(
                PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
                format!("cannot drop {object} because other objects depend on it"),
            )
            .detail(detail)
            .hint("Use DROP ... CASCADE to drop the dependent objects too.")
            .raise();
        }
    }
}

/// A relation's name as PostgreSQL's messages give it: quoted as needed, with its
/// schema unless the search_path shows it.
///
/// SAFETY: `relid` is an existing relation; inside a transaction.
unsafe fn relation_name(relid: pg_sys::Oid) -> String {
    use spock_core::ident::quote_identifier;
    // SAFETY: syscache lookups of an existing relation; the names are palloc'd.
    unsafe {
        let relname = std::ffi::CStr::from_ptr(pg_sys::get_rel_name(relid)).to_string_lossy().into_owned();
        if pg_sys::RelationIsVisible(relid) {
            quote_identifier(&relname)
        } else {
            let nsp = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(relid));
            format!(
                "{}.{}",
                quote_identifier(&std::ffi::CStr::from_ptr(nsp).to_string_lossy()),
                quote_identifier(&relname)
            )
        }
    }
}

thread_local! {
    /// The schemas of the search_path when the current utility statement started
    /// (set by the ProcessUtility hook for each DDL statement).
    static STATEMENT_SEARCH_PATH: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Notes the search_path's schemas as the statement about to run sees them: the
/// sql_drop event trigger runs with its own pinned search_path and words its NOTICEs
/// with this one ([`statement_search_path`]).
///
/// SAFETY: inside a transaction.
pub unsafe fn note_statement_search_path() {
    // SAFETY: a plain state check.
    if !unsafe { pg_sys::IsTransactionState() } {
        return;
    }
    // SAFETY: the namespace OIDs of the active search_path (a palloc'd list) and
    // their names.
    let names = unsafe {
        PgList::<std::ffi::c_void>::from_pg(pg_sys::fetch_search_path(false))
            .iter_oid()
            .filter_map(|nsp| {
                let name = pg_sys::get_namespace_name(nsp);
                (!name.is_null()).then(|| std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned())
            })
            .collect::<Vec<_>>()
    };
    STATEMENT_SEARCH_PATH.with(|p| *p.borrow_mut() = names);
}

/// `spock._statement_search_path()`: the schemas of the search_path when the
/// current utility statement started (for the sql_drop event trigger's NOTICEs).
#[pg_extern(name = "_statement_search_path", stable, parallel_unsafe)]
fn statement_search_path() -> Vec<String> {
    STATEMENT_SEARCH_PATH.with(|p| p.borrow().clone())
}

/// `spock._row_filter_columns(filter)`: the attribute numbers a stored row filter
/// (`replication_set_table.set_row_filter`, the relation as range table entry 1)
/// reads.
#[pg_extern(name = "_row_filter_columns", immutable, strict, parallel_safe)]
fn row_filter_columns(filter: &str) -> Vec<i16> {
    let text = std::ffi::CString::new(filter).unwrap_or_else(|_| {
        PgError::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "a row filter cannot contain NUL bytes").raise()
    });
    // SAFETY: stringToNode parses the text of a stored expression (it raises an
    // ERROR on what it cannot read); pull_varattnos walks it and collects the
    // attribute numbers of range table entry 1, offset by
    // FirstLowInvalidHeapAttributeNumber, into a palloc'd set.
    unsafe {
        let node = pg_sys::stringToNode(text.as_ptr()).cast::<pg_sys::Node>();
        let mut attrs: *mut pg_sys::Bitmapset = std::ptr::null_mut();
        pg_sys::pull_varattnos(node, 1, &mut attrs);
        let mut out = Vec::new();
        let mut member = -1;
        loop {
            member = pg_sys::bms_next_member(attrs, member);
            if member < 0 {
                break;
            }
            out.push((member + pg_sys::FirstLowInvalidHeapAttributeNumber) as i16);
        }
        out
    }
}
