//! AutoDDL: a ProcessUtility hook that, with `spock.enable_ddl_replication` on,
//! queues each DDL statement (as `log_statement = ddl` counts them) into
//! `spock.queue` as a `D` message for the set `default_insert_only`, with the
//! session's `search_path`, run as the current user on subscribers. It follows
//! Spock's `spock_autoddl.c`:
//!
//! * only statements run at top level, or from functions when
//!   `spock.allow_ddl_from_functions` is on (never CREATE/DROP EXTENSION or CREATE
//!   SCHEMA from a function, nor what an extension script runs); only this
//!   statement's text of a multi-statement string;
//! * never while replicated SQL runs (`spock.replicate_ddl`, the apply worker) or
//!   with `session_replication_role = replica`;
//! * not statements about temporary objects, nor those that cannot run in a
//!   transaction on the subscriber (CONCURRENTLY, databases, tablespaces,
//!   subscriptions, ALTER SYSTEM); a WARNING says so;
//! * with `spock.include_ddl_repset`, a created table joins `default` (replica
//!   identity) or `default_insert_only`; ALTER TABLE moves it when its primary key or
//!   replica identity appears or goes ([`place_tables_of`], rules in
//!   `spock_core::ddl::place_table`).
//!
//! `spock.deny_all_ddl` refuses every DDL statement.

use std::ffi::CStr;
use std::sync::OnceLock;

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{pg_sys, PgList, PgSqlErrorCode};
use spock_core::ddl::{self as core_ddl, PlacementNote, QueuedMessage, SetMembership, TableFacts, TableStatement};

use super::{command_name, is_ddl, queue_message, running_replicated_sql, UserSwitch};
use crate::error::{spi_failed, PgError};
use crate::gucs;

/// The hook that was installed before ours.
static PREVIOUS_HOOK: OnceLock<pg_sys::ProcessUtility_hook_type> = OnceLock::new();

/// Installs the hook (from `_PG_init`, once per backend), chaining the previous one.
pub fn install_hook() {
    // SAFETY: _PG_init runs in the backend's only thread before any statement; the
    // previous hook is kept and called from ours.
    unsafe {
        if PREVIOUS_HOOK.set(pg_sys::ProcessUtility_hook).is_ok() {
            pg_sys::ProcessUtility_hook = Some(spock_process_utility);
        }
    }
}

// `standard_ProcessUtility` itself, not pgrx's wrapper of it (see the hook).
unsafe extern "C-unwind" {
    #[link_name = "standard_ProcessUtility"]
    fn standard_process_utility(
        pstmt: *mut pg_sys::PlannedStmt,
        query_string: *const std::ffi::c_char,
        read_only_tree: bool,
        context: pg_sys::ProcessUtilityContext::Type,
        params: pg_sys::ParamListInfo,
        query_env: *mut pg_sys::QueryEnvironment,
        dest: *mut pg_sys::DestReceiver,
        qc: *mut pg_sys::QueryCompletion,
    );
}

/// The ProcessUtility hook: deny, run, then queue.
///
/// Not `#[pg_guard]`, and the statement does not run through `pg_sys`: pgrx turns
/// an ERROR that crosses its guard into a Rust panic and raises it again with only
/// its message, detail, hint and (known) SQLSTATE, which would drop the CONTEXT
/// lines, the cursor position, the internal query and the schema/table/column/
/// datatype/constraint names of every error of every utility statement (a DO
/// block's RAISE, a CALL). Our own work runs in the guarded [`before_utility`] and
/// [`after_utility`]; the statement runs through plain C function pointers, so its
/// ERROR goes by longjmp from PostgreSQL to the handler above us, untouched. The
/// jump crosses this frame only, which holds nothing to drop (`Copy` values) and no
/// `catch_unwind`. Nothing here may panic either: no guard would catch it.
///
/// SAFETY: called by PostgreSQL with the arguments of `ProcessUtility`.
#[allow(clippy::too_many_arguments)] // ProcessUtility's signature
unsafe extern "C-unwind" fn spock_process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: the statement PostgreSQL gave us, in its transaction.
    let before = unsafe { before_utility(pstmt) };
    let run = PREVIOUS_HOOK.get().copied().flatten().unwrap_or(standard_process_utility);
    // SAFETY: the arguments we were given, forwarded.
    unsafe { run(pstmt, query_string, read_only_tree, context, params, query_env, dest, qc) };
    // SAFETY: the statement ran; same arguments.
    unsafe { after_utility(pstmt, query_string, context, before) };
}

/// Before the statement runs: `spock.deny_all_ddl`, and what AutoDDL must see
/// before the statement changes it (a DROP's targets are gone afterwards, and a
/// CREATE TABLE's LIKE clauses may be expanded away).
///
/// SAFETY: `pstmt` is the utility statement given to the hook.
#[pg_guard]
unsafe extern "C-unwind" fn before_utility(pstmt: *mut pg_sys::PlannedStmt) -> BeforeRun {
    // SAFETY: a utility PlannedStmt always has its statement.
    let parsetree = unsafe { (*pstmt).utilityStmt };
    let ddl = is_ddl(parsetree);
    if ddl && gucs::DENY_ALL_DDL.get() {
        PgError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("cannot execute {} within spock cluster", command_name(parsetree)),
        )
        .raise();
    }
    // SAFETY: inside the statement's transaction.
    unsafe { crate::readonly::enforce() };
    if ddl {
        // SAFETY: a valid parse tree, inside the statement's transaction.
        unsafe {
            super::membership::note_statement_search_path();
            super::membership::refuse_restricted_drop(parsetree);
        }
    }
    if ddl && gucs::ENABLE_DDL_REPLICATION.get() {
        // SAFETY: a valid parse tree, inside the statement's transaction.
        unsafe { BeforeRun::inspect(parsetree) }
    } else {
        BeforeRun { ddl, ..BeforeRun::NOTHING }
    }
}

/// After the statement ran: queue it.
///
/// SAFETY: the hook's arguments, after the statement ran; `before` is what
/// [`before_utility`] returned for it.
#[pg_guard]
unsafe extern "C-unwind" fn after_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    context: pg_sys::ProcessUtilityContext::Type,
    before: BeforeRun,
) {
    // SAFETY: a utility PlannedStmt always has its statement.
    let parsetree = unsafe { (*pstmt).utilityStmt };
    if before.ddl && can_proceed(parsetree, context) {
        // SAFETY: as the caller guarantees.
        unsafe { queue_statement(pstmt, query_string, &before) };
    }
}

/// Spock's `autoddl_can_proceed`: cheap checks, no catalog access.
fn can_proceed(parsetree: *mut pg_sys::Node, context: pg_sys::ProcessUtilityContext::Type) -> bool {
    use pg_sys::ProcessUtilityContext::*;
    if !gucs::ENABLE_DDL_REPLICATION.get() || running_replicated_sql() || gucs::REPLICATION_REPAIR_MODE.get() {
        return false;
    }
    // SAFETY: plain reads of backend globals.
    let (replica, creating_extension) = unsafe {
        (pg_sys::SessionReplicationRole == pg_sys::SESSION_REPLICATION_ROLE_REPLICA as i32, pg_sys::creating_extension)
    };
    if replica {
        return false;
    }
    match context {
        PROCESS_UTILITY_TOPLEVEL => true,
        _ if creating_extension => false,
        PROCESS_UTILITY_QUERY | PROCESS_UTILITY_QUERY_NONATOMIC if gucs::ALLOW_DDL_FROM_FUNCTIONS.get() => {
            // SAFETY: reads the tag (and a DropStmt's type) of a valid parse tree.
            unsafe {
                match (*parsetree).type_ {
                    pg_sys::NodeTag::T_CreateExtensionStmt | pg_sys::NodeTag::T_CreateSchemaStmt => false,
                    pg_sys::NodeTag::T_DropStmt => {
                        (*parsetree.cast::<pg_sys::DropStmt>()).removeType != pg_sys::ObjectType::OBJECT_EXTENSION
                    }
                    _ => true,
                }
            }
        }
        _ => false,
    }
}

/// The relation a RangeVar resolves to now, or InvalidOid (no lock, missing is fine).
///
/// SAFETY: `rv` is a valid RangeVar; inside a transaction.
pub(super) unsafe fn existing_relid(rv: *mut pg_sys::RangeVar) -> pg_sys::Oid {
    // SAFETY: as the caller guarantees; RVR_MISSING_OK never raises for a missing
    // relation.
    unsafe {
        pg_sys::RangeVarGetRelidExtended(
            rv,
            pg_sys::NoLock as i32,
            pg_sys::RVROption::RVR_MISSING_OK,
            None,
            std::ptr::null_mut(),
        )
    }
}

/// Whether a RangeVar names a temporary relation (by its declaration, or, when it
/// exists, by what it resolves to).
///
/// SAFETY: `rv` is null or a valid RangeVar; inside a transaction.
unsafe fn rangevar_is_temp(rv: *mut pg_sys::RangeVar) -> bool {
    if rv.is_null() {
        return false;
    }
    // SAFETY: valid RangeVar; lookup without locking, missing is fine.
    unsafe {
        if (*rv).relpersistence == pg_sys::RELPERSISTENCE_TEMP as std::ffi::c_char {
            return true;
        }
        let relid = existing_relid(rv);
        relid != pg_sys::InvalidOid
            && pg_sys::get_rel_persistence(relid) == pg_sys::RELPERSISTENCE_TEMP as std::ffi::c_char
    }
}

/// What is only known before a statement runs. `Copy`, so nothing to drop: the
/// hook's frame holds it while the statement runs, and an ERROR leaves that frame by
/// longjmp.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct BeforeRun {
    /// The statement is DDL (as `log_statement = ddl` counts them).
    ddl: bool,
    /// A DROP of relations that names only temporary ones.
    drops_only_temp: bool,
    /// A DROP whose objects (schemas or relations) all lie in schemas whose DDL
    /// stays on this node (spock.reserved_object, replicate_ddl = false).
    drops_only_ddl_local: bool,
    /// The temporary relation a CREATE TABLE copies with LIKE: its name, palloc'd in
    /// the statement's memory context; null when none.
    like_temp_source: *const std::ffi::c_char,
}

impl BeforeRun {
    /// Nothing seen.
    const NOTHING: BeforeRun = BeforeRun {
        ddl: false,
        drops_only_temp: false,
        drops_only_ddl_local: false,
        like_temp_source: std::ptr::null(),
    };

    /// SAFETY: `parsetree` is a valid parse tree of a DDL statement; inside a
    /// transaction.
    unsafe fn inspect(parsetree: *mut pg_sys::Node) -> BeforeRun {
        use pg_sys::ObjectType::*;
        let mut before = BeforeRun { ddl: true, ..BeforeRun::NOTHING };
        // SAFETY: each branch reads the node type its tag names.
        unsafe {
            match (*parsetree).type_ {
                pg_sys::NodeTag::T_DropStmt => {
                    let drop = &*parsetree.cast::<pg_sys::DropStmt>();
                    if matches!(
                        drop.removeType,
                        OBJECT_TABLE
                            | OBJECT_INDEX
                            | OBJECT_SEQUENCE
                            | OBJECT_VIEW
                            | OBJECT_MATVIEW
                            | OBJECT_FOREIGN_TABLE
                    ) {
                        let objects = PgList::<pg_sys::List>::from_pg(drop.objects);
                        before.drops_only_temp = !objects.is_empty()
                            && objects
                                .iter_ptr()
                                .all(|names| rangevar_is_temp(pg_sys::makeRangeVarFromNameList(names)));
                    }
                    // Before the DROP, while the objects still resolve.
                    before.drops_only_ddl_local = drop_targets_only_ddl_local(drop);
                }
                pg_sys::NodeTag::T_CreateStmt => {
                    let create = &*parsetree.cast::<pg_sys::CreateStmt>();
                    before.like_temp_source = PgList::<pg_sys::Node>::from_pg(create.tableElts)
                        .iter_ptr()
                        .find_map(|e| {
                            let rv = if (*e).type_ == pg_sys::NodeTag::T_TableLikeClause {
                                (*e.cast::<pg_sys::TableLikeClause>()).relation
                            } else {
                                std::ptr::null_mut()
                            };
                            (!rv.is_null() && rangevar_is_temp(rv)).then(|| pg_sys::pstrdup((*rv).relname).cast_const())
                        })
                        .unwrap_or(std::ptr::null());
                }
                _ => {}
            }
        }
        before
    }
}

/// Whether DDL of schema `nspname` stays on this node: a spock.reserved_object
/// schema with replicate_ddl = false (Spock's node-local schemas, e.g. pgedge_ace).
fn schema_is_ddl_local(nspname: &str) -> bool {
    // SAFETY: syscache lookups; the catalog is missing while the extension is
    // created or updated from a version without it.
    let present = unsafe {
        let spock = pg_sys::get_namespace_oid(c"spock".as_ptr(), true);
        spock != pg_sys::InvalidOid
            && pg_sys::get_relname_relid(c"reserved_object".as_ptr(), spock) != pg_sys::InvalidOid
    };
    if !present {
        return false;
    }
    // The session user need not be allowed to read spock's catalogs.
    let _superuser = UserSwitch::to(pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID));
    let _snapshot = SnapshotGuard::ensure();
    Spi::get_one_with_args::<bool>("SELECT spock._is_reserved('schema', 'ddl', $1)", &[nspname.into()])
        .unwrap_or_else(|e| spi_failed("reading spock.reserved_object", e))
        .unwrap_or(false)
}

/// The schema a RangeVar names, or that the relation it names now lives in (None:
/// unqualified and missing).
///
/// SAFETY: `rv` is null or a valid RangeVar; inside a transaction.
unsafe fn rangevar_schema(rv: *mut pg_sys::RangeVar) -> Option<String> {
    if rv.is_null() {
        return None;
    }
    // SAFETY: a valid RangeVar; syscache lookups of an existing relation.
    unsafe {
        let nsp = if !(*rv).schemaname.is_null() {
            (*rv).schemaname
        } else {
            let relid = existing_relid(rv);
            if relid == pg_sys::InvalidOid {
                return None;
            }
            pg_sys::get_namespace_name(pg_sys::get_rel_namespace(relid))
        };
        (!nsp.is_null()).then(|| CStr::from_ptr(nsp).to_string_lossy().into_owned())
    }
}

/// Whether every object a DROP names (schemas, or relations of any kind) lies in
/// a schema whose DDL stays on this node. Asked before the DROP runs, so that
/// unqualified names still resolve.
///
/// SAFETY: `drop` is a valid DropStmt; inside a transaction.
unsafe fn drop_targets_only_ddl_local(drop: &pg_sys::DropStmt) -> bool {
    use pg_sys::ObjectType::*;
    // SAFETY: the object list's element types follow the DropStmt's removeType.
    unsafe {
        if pg_sys::creating_extension || drop.objects.is_null() {
            return false;
        }
        let objects = PgList::<pg_sys::Node>::from_pg(drop.objects);
        let schema_of = |o: *mut pg_sys::Node| -> Option<String> {
            match drop.removeType {
                OBJECT_SCHEMA => {
                    let sval = (*o.cast::<pg_sys::String>()).sval;
                    (!sval.is_null()).then(|| CStr::from_ptr(sval).to_string_lossy().into_owned())
                }
                OBJECT_TABLE | OBJECT_INDEX | OBJECT_SEQUENCE | OBJECT_VIEW | OBJECT_MATVIEW | OBJECT_FOREIGN_TABLE => {
                    rangevar_schema(pg_sys::makeRangeVarFromNameList(o.cast::<pg_sys::List>()))
                }
                _ => None,
            }
        };
        !objects.is_empty() && objects.iter_ptr().all(|o| schema_of(o).is_some_and(|s| schema_is_ddl_local(&s)))
    }
}

/// Spock's node-local DDL: a statement whose targets all lie in schemas whose DDL
/// stays on this node is not replicated (nor are its tables placed in sets). Only
/// statements whose target schema is known are classified.
///
/// SAFETY: `parsetree` is the analysed statement that just ran.
unsafe fn targets_only_ddl_local(parsetree: *mut pg_sys::Node, before: &BeforeRun) -> bool {
    use pg_sys::NodeTag::*;
    // SAFETY: each arm reads the node type its tag names.
    unsafe {
        let rv = match (*parsetree).type_ {
            T_CreateSchemaStmt => {
                let name = (*parsetree.cast::<pg_sys::CreateSchemaStmt>()).schemaname;
                return !name.is_null() && schema_is_ddl_local(&CStr::from_ptr(name).to_string_lossy());
            }
            T_DropStmt => return before.drops_only_ddl_local,
            T_CreateStmt => (*parsetree.cast::<pg_sys::CreateStmt>()).relation,
            T_CreateTableAsStmt => {
                let into = (*parsetree.cast::<pg_sys::CreateTableAsStmt>()).into;
                if into.is_null() {
                    return false;
                }
                (*into).rel
            }
            T_AlterTableStmt => (*parsetree.cast::<pg_sys::AlterTableStmt>()).relation,
            T_ViewStmt => (*parsetree.cast::<pg_sys::ViewStmt>()).view,
            T_CreateSeqStmt => (*parsetree.cast::<pg_sys::CreateSeqStmt>()).sequence,
            T_IndexStmt => (*parsetree.cast::<pg_sys::IndexStmt>()).relation,
            _ => return false,
        };
        rangevar_schema(rv).is_some_and(|s| schema_is_ddl_local(&s))
    }
}

/// What AutoDDL does with a statement.
enum Decision {
    /// Not replicated; an optional WARNING (with Spock's DETAIL) says why before the
    /// usual one.
    Skip(Option<String>),
    /// Replicated; `search_path`: with the `SET search_path` prefix; `unsafe_`: warn.
    Replicate { search_path: bool, unsafe_: bool },
}

/// Spock's statement filter (`spock_auto_replicate_ddl`), plus temporary targets of
/// ALTER TABLE, CREATE INDEX and DROP.
///
/// SAFETY: `parsetree` is the analysed statement that just ran.
unsafe fn classify(parsetree: *mut pg_sys::Node, before: &BeforeRun) -> Decision {
    use pg_sys::NodeTag::*;
    use pg_sys::ObjectType::*;
    const SKIP: Decision = Decision::Skip(None);
    const NO_PATH: Decision = Decision::Replicate { search_path: false, unsafe_: false };
    const REPLICATE: Decision = Decision::Replicate { search_path: true, unsafe_: false };
    // SAFETY: the statement that ran, in its transaction.
    if unsafe { targets_only_ddl_local(parsetree, before) } {
        return SKIP;
    }
    // SAFETY: each arm reads the node type its tag names.
    unsafe {
        match (*parsetree).type_ {
            T_FetchStmt
            | T_NotifyStmt
            | T_ListenStmt
            | T_UnlistenStmt
            | T_CreateTableSpaceStmt
            | T_DropTableSpaceStmt
            | T_VacuumStmt
            | T_ExplainStmt => SKIP,
            T_CreatedbStmt
            | T_DropdbStmt
            | T_AlterDatabaseStmt
            | T_AlterDatabaseRefreshCollStmt
            | T_AlterDatabaseSetStmt
            | T_AlterSystemStmt
            | T_CreateSubscriptionStmt
            | T_DropSubscriptionStmt
            | T_AlterSubscriptionStmt => SKIP,
            T_AlterOwnerStmt => match (*parsetree.cast::<pg_sys::AlterOwnerStmt>()).objectType {
                OBJECT_DATABASE | OBJECT_SUBSCRIPTION => SKIP,
                OBJECT_TABLESPACE => NO_PATH,
                _ => REPLICATE,
            },
            T_RenameStmt => match (*parsetree.cast::<pg_sys::RenameStmt>()).renameType {
                OBJECT_DATABASE | OBJECT_SUBSCRIPTION => SKIP,
                OBJECT_TABLESPACE => NO_PATH,
                _ => REPLICATE,
            },
            T_AlterTableSpaceOptionsStmt => NO_PATH,
            T_CreateTableAsStmt => {
                let ctas = &*parsetree.cast::<pg_sys::CreateTableAsStmt>();
                if ctas.into.is_null() || rangevar_is_temp((*ctas.into).rel) {
                    return SKIP;
                }
                let query = ctas.query;
                if !query.is_null() && (*query).type_ == T_Query {
                    let q = query.cast::<pg_sys::Query>();
                    if (*q).commandType == pg_sys::CmdType::CMD_UTILITY
                        && !(*q).utilityStmt.is_null()
                        && (*(*q).utilityStmt).type_ == T_ExecuteStmt
                    {
                        return SKIP;
                    }
                    if pg_sys::isQueryUsingTempRelation(q) {
                        return Decision::Skip(Some("CREATE TABLE AS reads a temporary relation".to_string()));
                    }
                }
                Decision::Replicate { search_path: true, unsafe_: true }
            }
            T_CreateStmt => {
                let create = &*parsetree.cast::<pg_sys::CreateStmt>();
                if rangevar_is_temp(create.relation) {
                    return SKIP;
                }
                if !before.like_temp_source.is_null() {
                    let source = CStr::from_ptr(before.like_temp_source).to_string_lossy();
                    return Decision::Skip(Some(format!(
                        "CREATE TABLE copies the definition of temporary relation \"{source}\""
                    )));
                }
                REPLICATE
            }
            T_CreateSeqStmt if rangevar_is_temp((*parsetree.cast::<pg_sys::CreateSeqStmt>()).sequence) => SKIP,
            T_ViewStmt if rangevar_is_temp((*parsetree.cast::<pg_sys::ViewStmt>()).view) => SKIP,
            T_ClusterStmt => {
                let rv = (*parsetree.cast::<pg_sys::ClusterStmt>()).relation;
                if rv.is_null() {
                    return SKIP;
                }
                let relid = existing_relid(rv);
                if relid == pg_sys::InvalidOid
                    || pg_sys::get_rel_relkind(relid) == pg_sys::RELKIND_PARTITIONED_TABLE as std::ffi::c_char
                    || pg_sys::get_rel_persistence(relid) == pg_sys::RELPERSISTENCE_TEMP as std::ffi::c_char
                {
                    return SKIP;
                }
                NO_PATH
            }
            T_AlterTableStmt => {
                let alter = &*parsetree.cast::<pg_sys::AlterTableStmt>();
                let cmds = PgList::<pg_sys::AlterTableCmd>::from_pg(alter.cmds);
                let detach_concurrently = cmds.iter_ptr().any(|c| {
                    (*c).subtype == pg_sys::AlterTableType::AT_DetachPartition
                        && !(*c).def.is_null()
                        && (*(*c).def).type_ == T_PartitionCmd
                        && (*(*c).def.cast::<pg_sys::PartitionCmd>()).concurrent
                });
                if detach_concurrently || rangevar_is_temp(alter.relation) {
                    return SKIP;
                }
                REPLICATE
            }
            T_IndexStmt => {
                let index = &*parsetree.cast::<pg_sys::IndexStmt>();
                if index.concurrent || rangevar_is_temp(index.relation) {
                    return SKIP;
                }
                REPLICATE
            }
            T_ReindexStmt => {
                let params = PgList::<pg_sys::DefElem>::from_pg((*parsetree.cast::<pg_sys::ReindexStmt>()).params);
                let concurrently = params
                    .iter_ptr()
                    .filter(|d| CStr::from_ptr((**d).defname).to_bytes() == b"concurrently")
                    .last()
                    .is_some_and(|d| pg_sys::defGetBoolean(d));
                if concurrently {
                    return SKIP;
                }
                REPLICATE
            }
            T_DropStmt => {
                let drop = &*parsetree.cast::<pg_sys::DropStmt>();
                if (drop.removeType == OBJECT_INDEX && drop.concurrent) || before.drops_only_temp {
                    return SKIP;
                }
                REPLICATE
            }
            _ => REPLICATE,
        }
    }
}

/// Pushes an active snapshot when there is none, popped on drop.
pub(super) struct SnapshotGuard(bool);

impl SnapshotGuard {
    pub(super) fn ensure() -> SnapshotGuard {
        // SAFETY: snapshot stack calls inside a transaction.
        unsafe {
            if pg_sys::ActiveSnapshotSet() {
                SnapshotGuard(false)
            } else {
                pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
                SnapshotGuard(true)
            }
        }
    }
}

impl Drop for SnapshotGuard {
    fn drop(&mut self) {
        if self.0 && !std::thread::panicking() {
            // SAFETY: pops the snapshot pushed in `ensure` (an ERROR resets the stack).
            unsafe { pg_sys::PopActiveSnapshot() };
        }
    }
}

/// The `SET search_path TO ...; ` prefix for the session's current search_path.
fn current_search_path_command() -> String {
    // SAFETY: returns a palloc'd copy of the setting's value.
    let value =
        unsafe { CStr::from_ptr(pg_sys::GetConfigOptionByName(c"search_path".as_ptr(), std::ptr::null_mut(), false)) }
            .to_string_lossy()
            .into_owned();
    core_ddl::search_path_command(&value).unwrap_or_else(|e| {
        PgError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid value for search_path: \"{value}\": {e}"),
        )
        .raise()
    })
}

/// Queues the statement that just ran, if AutoDDL replicates it (Spock's
/// `spock_autoddl_process`).
///
/// SAFETY: arguments of the hook, after the statement ran.
unsafe fn queue_statement(pstmt: *mut pg_sys::PlannedStmt, query_string: *const std::ffi::c_char, before: &BeforeRun) {
    // SAFETY: plain state checks and a syscache lookup.
    let usable = unsafe {
        !query_string.is_null()
            && pg_sys::IsTransactionState()
            && pg_sys::get_extension_oid(c"spock".as_ptr(), true) != pg_sys::InvalidOid
    };
    if !usable {
        return;
    }
    // SAFETY: the statement's text within the query string (only this statement of a
    // multi-statement string), copied out.
    let text = unsafe {
        let mut location = (*pstmt).stmt_location;
        let mut len = (*pstmt).stmt_len;
        let start = pg_sys::CleanQuerytext(query_string, &mut location, &mut len);
        String::from_utf8_lossy(std::slice::from_raw_parts(start.cast::<u8>(), len.max(0) as usize)).into_owned()
    };
    // SAFETY: reads the current user before we become superuser.
    let role =
        unsafe { CStr::from_ptr(pg_sys::GetUserNameFromId(pg_sys::GetUserId(), false)) }.to_string_lossy().into_owned();
    // The session user need not be allowed to touch spock's catalogs.
    let _superuser = UserSwitch::to(pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID));
    let _snapshot = SnapshotGuard::ensure();
    let is_node = Spi::get_one::<bool>("SELECT EXISTS (SELECT 1 FROM spock.local_node)")
        .unwrap_or_else(|e| spi_failed("looking up the local node", e))
        .unwrap_or(false);
    if !is_node {
        return;
    }
    // SAFETY: the analysed statement that just ran.
    let parsetree = unsafe { (*pstmt).utilityStmt };
    // SAFETY: as above.
    match unsafe { classify(parsetree, before) } {
        Decision::Skip(reason) => {
            if let Some(r) = reason {
                ErrorReport::new(PgSqlErrorCode::ERRCODE_WARNING, r, "spock")
                    .set_detail("Temporary relations are session-private and do not exist on other nodes.")
                    .report(PgLogLevel::WARNING);
            }
            pgrx::warning!("This DDL statement will not be replicated.");
        }
        Decision::Replicate { search_path, unsafe_ } => {
            Spi::run_with_args("SELECT spock._repset($1)", &[core_ddl::AUTODDL_REPLICATION_SET.into()])
                .unwrap_or_else(|e| spi_failed("looking up the replication set of AutoDDL", e));
            if unsafe_ {
                pgrx::warning!("DDL statement replicated, but could be unsafe.");
            } else {
                pgrx::info!("DDL statement replicated.");
            }
            let sql = if search_path { current_search_path_command() + &text } else { text };
            queue_message(Some(&[core_ddl::AUTODDL_REPLICATION_SET.to_string()]), &role, &QueuedMessage::Ddl(sql));
            place_tables_of(parsetree);
        }
    }
}

/// What an ALTER TABLE's subcommands may do to the primary key / replica identity.
#[derive(Debug, Clone, Copy, Default)]
struct AlterIdentityIntent {
    adds: bool,
    may_drop: bool,
}

/// Spock's reading of ALTER TABLE subcommands (`classify_alter_pkri_change`).
///
/// SAFETY: `cmds` is a List of AlterTableCmd (raw or analysed).
unsafe fn alter_identity_intent(cmds: *mut pg_sys::List) -> AlterIdentityIntent {
    use pg_sys::AlterTableType as At;
    let mut intent = AlterIdentityIntent::default();
    // SAFETY: each subcommand's `def` is read as the node its tag names.
    unsafe {
        let is_primary = |n: *mut pg_sys::Node| {
            !n.is_null()
                && (*n).type_ == pg_sys::NodeTag::T_Constraint
                && (*n.cast::<pg_sys::Constraint>()).contype == pg_sys::ConstrType::CONSTR_PRIMARY
        };
        for cmd in PgList::<pg_sys::AlterTableCmd>::from_pg(cmds).iter_ptr() {
            let def = (*cmd).def;
            match (*cmd).subtype {
                At::AT_AddConstraint | At::AT_AddIndexConstraint if is_primary(def) => intent.adds = true,
                At::AT_AddColumn if !def.is_null() && (*def).type_ == pg_sys::NodeTag::T_ColumnDef => {
                    let constraints = PgList::<pg_sys::Node>::from_pg((*def.cast::<pg_sys::ColumnDef>()).constraints);
                    if constraints.iter_ptr().any(is_primary) {
                        intent.adds = true;
                    }
                }
                At::AT_ReplicaIdentity if !def.is_null() && (*def).type_ == pg_sys::NodeTag::T_ReplicaIdentityStmt => {
                    match (*def.cast::<pg_sys::ReplicaIdentityStmt>()).identity_type as u8 {
                        b'f' | b'i' => intent.adds = true,
                        b'n' => intent.may_drop = true,
                        _ => {
                            intent.adds = true;
                            intent.may_drop = true;
                        }
                    }
                }
                At::AT_DropConstraint | At::AT_DropColumn => intent.may_drop = true,
                _ => {}
            }
        }
    }
    intent
}

/// The tables a statement creates or alters, each with its ALTER intent (None for
/// a creation).
///
/// SAFETY: `stmt` is a valid parse tree, raw or analysed.
unsafe fn table_targets(stmt: *mut pg_sys::Node) -> Vec<(*mut pg_sys::RangeVar, Option<AlterIdentityIntent>)> {
    use pg_sys::NodeTag::*;
    // SAFETY: each arm reads the node type its tag names.
    unsafe {
        match (*stmt).type_ {
            T_AlterTableStmt => {
                let alter = &*stmt.cast::<pg_sys::AlterTableStmt>();
                if alter.objtype == pg_sys::ObjectType::OBJECT_TABLE {
                    vec![(alter.relation, Some(alter_identity_intent(alter.cmds)))]
                } else {
                    vec![]
                }
            }
            T_CreateStmt => vec![((*stmt.cast::<pg_sys::CreateStmt>()).relation, None)],
            T_CreateTableAsStmt => {
                let ctas = &*stmt.cast::<pg_sys::CreateTableAsStmt>();
                if ctas.objtype == pg_sys::ObjectType::OBJECT_TABLE && !ctas.into.is_null() {
                    vec![((*ctas.into).rel, None)]
                } else {
                    vec![]
                }
            }
            T_CreateSchemaStmt => {
                let schema = &*stmt.cast::<pg_sys::CreateSchemaStmt>();
                PgList::<pg_sys::Node>::from_pg(schema.schemaElts)
                    .iter_ptr()
                    .filter(|e| (**e).type_ == T_CreateStmt)
                    .map(|e| {
                        let rv = (*e.cast::<pg_sys::CreateStmt>()).relation;
                        // Elements may name their table without the schema being
                        // created; look it up there (on a new RangeVar: the tree may
                        // be a cached plan's).
                        if !rv.is_null() && (*rv).schemaname.is_null() && !schema.schemaname.is_null() {
                            (pg_sys::makeRangeVar(schema.schemaname, (*rv).relname, -1), None)
                        } else {
                            (rv, None)
                        }
                    })
                    .collect()
            }
            _ => vec![],
        }
    }
}

/// Puts the tables `stmt` created or altered into this node's replication sets, when
/// `spock.include_ddl_repset` is on (Spock's `add_ddl_to_repset`). Partitioned tables
/// bring their partitions. Runs after the statement, on the origin (AutoDDL) and on
/// subscribers applying a `D` message.
pub fn place_tables_of(stmt: *mut pg_sys::Node) {
    if !gucs::INCLUDE_DDL_REPSET.get() {
        return;
    }
    // SAFETY: a valid parse tree of the statement that ran.
    for (rv, intent) in unsafe { table_targets(stmt) } {
        if rv.is_null() {
            continue;
        }
        // SAFETY: valid RangeVar; the statement that ran holds the table's lock.
        let relid = unsafe { existing_relid(rv) };
        if relid == pg_sys::InvalidOid {
            continue;
        }
        // SAFETY: syscache lookup of an existing relation.
        let partitioned =
            unsafe { pg_sys::get_rel_relkind(relid) } == pg_sys::RELKIND_PARTITIONED_TABLE as std::ffi::c_char;
        let relids: Vec<i64> = if partitioned {
            Spi::connect(|c| {
                c.select(
                    "SELECT relid::oid::int8 FROM pg_catalog.pg_partition_tree($1::int8::oid::regclass)",
                    None,
                    &[i64::from(u32::from(relid)).into()],
                )
                .unwrap_or_else(|e| spi_failed("listing partitions", e))
                .filter_map(|r| r.get::<i64>(1).ok().flatten())
                .collect()
            })
        } else {
            vec![i64::from(u32::from(relid))]
        };
        for r in relids {
            with_pinned_search_path(|| place_table(r, intent));
        }
    }
}

/// Runs `f` with `search_path = pg_catalog, pg_temp`. AutoDDL's queries run as
/// superuser in the session of whoever ran the DDL: through the session's path, an
/// operator that role planted (say `public.=(oid, oid)`) would run as superuser.
fn with_pinned_search_path<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: opens a GUC nest level and sets search_path in it, as a function's SET
    // clause does; closed below, or unwound with the (sub)transaction on ERROR.
    let level = unsafe {
        let level = pg_sys::NewGUCNestLevel();
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        level
    };
    let out = f();
    // SAFETY: closes the level opened above, restoring the session's search_path.
    unsafe { pg_sys::AtEOXact_GUC(true, level) };
    out
}

/// Applies the placement rules to one table.
fn place_table(relid: i64, intent: Option<AlterIdentityIntent>) {
    let (facts, relname) = Spi::connect(|c| {
        let row = c
            .select(
                "SELECT c.relpersistence = 'p' AND NOT spock._is_reserved('schema', 'repset', n.nspname),
                        coalesce(spock._has_replica_identity(c.oid), false), c.relname::text
                   FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.oid = $1::int8::oid",
                Some(1),
                &[relid.into()],
            )
            .unwrap_or_else(|e| spi_failed("reading a table's replica identity", e))
            .next()
            .map(|r| {
                (
                    r.get::<bool>(1).ok().flatten().unwrap_or(false),
                    r.get::<bool>(2).ok().flatten().unwrap_or(false),
                    r.get::<String>(3).ok().flatten().unwrap_or_default(),
                )
            });
        let Some((logged, has_identity, relname)) = row else { return (None, String::new()) };
        let memberships = c
            .select(
                "SELECT s.set_name::text, s.replicate_update OR s.replicate_delete
                   FROM spock.replication_set_table t JOIN spock.replication_set s ON s.set_id = t.set_id
                  WHERE t.set_reloid = $1::int8::oid AND s.set_nodeid = spock._local_node_id()
                  ORDER BY s.set_name",
                None,
                &[relid.into()],
            )
            .unwrap_or_else(|e| spi_failed("reading a table's replication sets", e))
            .map(|r| SetMembership {
                name: r.get::<String>(1).ok().flatten().unwrap_or_default(),
                replicates_update_or_delete: r.get::<bool>(2).ok().flatten().unwrap_or(false),
            })
            .collect();
        (Some(TableFacts { logged, has_identity, memberships }), relname)
    });
    let Some(facts) = facts else { return };
    let statement = match intent {
        None => TableStatement::Create,
        Some(i) => TableStatement::Alter(core_ddl::classify_identity_change(facts.has_identity, i.adds, i.may_drop)),
    };
    let placement = core_ddl::place_table(statement, &facts);
    match placement.note {
        Some(PlacementNote::IdentityLostInCustomSet) => pgrx::warning!(
            "table \"{relname}\" has no replica identity while in a replication set that replicates UPDATE/DELETE; moving to \"{}\"",
            core_ddl::DEFAULT_INSERT_ONLY_SET
        ),
        Some(PlacementNote::IdentityGainedInCustomSet) => ErrorReport::new(
            PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
            format!("table \"{relname}\" gained a primary key while in a custom replication set; leaving membership unchanged"),
            "spock",
        )
        .set_hint(format!("Move the table to \"{}\" manually if full UPDATE/DELETE replication is desired.", core_ddl::DEFAULT_SET))
        .report(PgLogLevel::NOTICE),
        None => {}
    }
    for set in &placement.remove_from {
        Spi::run_with_args(
            "SELECT spock._autoddl_leave_set($1::int8::oid::regclass, $2)",
            &[relid.into(), set.as_str().into()],
        )
        .unwrap_or_else(|e| spi_failed("removing a table from a replication set", e));
    }
    if let Some(set) = &placement.add_to {
        Spi::run_with_args(
            "SELECT spock._autoddl_join_set($1::int8::oid::regclass, $2)",
            &[relid.into(), set.as_str().into()],
        )
        .unwrap_or_else(|e| spi_failed("adding a table to a replication set", e));
    }
}
