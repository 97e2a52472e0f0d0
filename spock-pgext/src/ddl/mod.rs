//! DDL replication through `spock.queue`, as pgEdge Spock does it.
//!
//! * [`queue_message`] writes a queue row; the output plugin sends its INSERT to
//!   the subscribers of the row's sets (`output_plugin/queue.rs`), whose apply worker
//!   acts on it (`apply/queue.rs`).
//! * [`execute_sql`] runs queued SQL (or `spock.replicate_ddl`'s command) statement
//!   by statement as a given role, with its `SET search_path` kept to the execution.
//! * [`autoddl`] is the ProcessUtility hook that queues DDL statements by itself
//!   (`spock.enable_ddl_replication`) and puts new tables into replication sets
//!   (`spock.include_ddl_repset`).
//!
//! The message layouts and placement rules are in `spock_core::ddl`.

pub mod autoddl;
pub mod membership;

use std::cell::Cell;
use std::ffi::{CStr, CString};

use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::{pg_sys, PgList, PgSqlErrorCode};
use spock_core::ddl::QueuedMessage;

use crate::error::{spi_failed, PgError};

thread_local! {
    /// Set while this backend runs replicated SQL (`replicate_ddl`'s local run, or a
    /// queued message in the apply worker): AutoDDL must not queue it again.
    static RUNNING_REPLICATED_SQL: Cell<bool> = const { Cell::new(false) };
}

/// Whether replicated SQL is being run (AutoDDL stays out of the way).
pub fn running_replicated_sql() -> bool {
    RUNNING_REPLICATED_SQL.with(Cell::get)
}

/// Sets [`running_replicated_sql`] until dropped (also while an ERROR unwinds).
struct ReplicatedSqlGuard(bool);

impl ReplicatedSqlGuard {
    fn enter() -> ReplicatedSqlGuard {
        ReplicatedSqlGuard(RUNNING_REPLICATED_SQL.with(|f| f.replace(true)))
    }
}

impl Drop for ReplicatedSqlGuard {
    fn drop(&mut self) {
        RUNNING_REPLICATED_SQL.with(|f| f.set(self.0));
    }
}

/// Runs as another user until dropped, like `SetUserIdAndSecContext` with
/// `SECURITY_LOCAL_USERID_CHANGE` in Spock. Restoring is a plain assignment, so it
/// is also done while an ERROR unwinds (the transaction abort would do the same).
pub(crate) struct UserSwitch {
    saved_user: pg_sys::Oid,
    saved_context: i32,
}

impl UserSwitch {
    /// Becomes `user` for what follows.
    pub(crate) fn to(user: pg_sys::Oid) -> UserSwitch {
        let mut saved_user = pg_sys::InvalidOid;
        let mut saved_context = 0;
        // SAFETY: reads and sets the backend's current user id and security context;
        // both are plain globals, restored on drop.
        unsafe {
            pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
            pg_sys::SetUserIdAndSecContext(user, saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
        }
        UserSwitch { saved_user, saved_context }
    }
}

impl Drop for UserSwitch {
    fn drop(&mut self) {
        // SAFETY: restores the values read in `to`.
        unsafe { pg_sys::SetUserIdAndSecContext(self.saved_user, self.saved_context) };
    }
}

/// The oid of role `name` (ERROR 42704 when it does not exist).
pub(crate) fn role_oid(name: &str) -> pg_sys::Oid {
    let c = CString::new(name).unwrap_or_else(|_| {
        PgError::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "role name contains a NUL byte").raise()
    });
    // SAFETY: catalog lookup by name; raises the server's own error when missing.
    unsafe { pg_sys::get_role_oid(c.as_ptr(), false) }
}

/// Inserts a `spock.queue` row (`sets` None: NULL, a message for every subscriber).
/// `role` is recorded as the role the subscriber runs the message as.
pub fn queue_message(sets: Option<&[String]>, role: &str, message: &QueuedMessage) {
    let kind = char::from(message.message_type()).to_string();
    Spi::run_with_args(
        "SELECT spock._queue_message($1::text[], $2::name, $3::\"char\", $4)",
        &[sets.map(<[String]>::to_vec).into(), role.into(), kind.as_str().into(), message.to_json().into()],
    )
    .unwrap_or_else(|e| spi_failed("queueing a message in spock.queue", e));
}

/// `search_path` of queued SQL that does not set its own: PostgreSQL's default.
const QUEUED_SQL_SEARCH_PATH: &str = "\"$user\", public";

/// How [`execute_sql`] runs its statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Execution {
    /// The local run of `spock.replicate_ddl`: DDL statements only.
    ReplicateDdl,
    /// A queued `Q` message on a subscriber.
    QueuedSql,
    /// A queued `D` (AutoDDL) message on a subscriber: new and altered tables are
    /// placed into this node's sets when `spock.include_ddl_repset` is on, as the
    /// origin did.
    QueuedDdl,
}

/// One statement of a SQL string: its text and raw parse tree.
struct Statement {
    text: String,
    node: *mut pg_sys::Node,
}

/// Splits `sql` into statements with the server's parser.
fn parse_statements(sql: &str) -> Vec<Statement> {
    let c = CString::new(sql).unwrap_or_else(|_| {
        PgError::new(PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED, "spock: SQL text contains a NUL byte").raise()
    });
    // SAFETY: pg_parse_query returns a List of RawStmt in the current memory context
    // (raising a syntax error itself); CleanQuerytext points into `c`, which outlives
    // the copy made here.
    unsafe {
        let raw = PgList::<pg_sys::RawStmt>::from_pg(pg_sys::pg_parse_query(c.as_ptr()));
        raw.iter_ptr()
            .map(|stmt| {
                let mut location = (*stmt).stmt_location;
                let mut len = (*stmt).stmt_len;
                let start = pg_sys::CleanQuerytext(c.as_ptr(), &mut location, &mut len);
                let bytes = std::slice::from_raw_parts(start.cast::<u8>(), len.max(0) as usize);
                Statement { text: String::from_utf8_lossy(bytes).into_owned(), node: (*stmt).stmt }
            })
            .collect()
    }
}

/// The server's name of a statement ("CREATE TABLE").
pub(crate) fn command_name(node: *mut pg_sys::Node) -> String {
    // SAFETY: a valid parse tree; returns a constant string.
    unsafe { CStr::from_ptr(pg_sys::CreateCommandName(node)) }.to_string_lossy().into_owned()
}

/// Whether `node` is a DDL statement (what `log_statement = ddl` logs).
pub(crate) fn is_ddl(node: *mut pg_sys::Node) -> bool {
    // SAFETY: a valid parse tree (raw or analysed).
    unsafe { pg_sys::GetCommandLogLevel(node) == pg_sys::LogStmtLevel::LOGSTMT_DDL }
}

/// Runs `sql`, statement by statement, as `role`. `search_path`, when given, is in
/// force for the statements (queued SQL carries its own `SET search_path`); either
/// way the setting is back to what it was afterwards. AutoDDL does not see these
/// statements. An ERROR names the SQL that failed.
pub fn execute_sql(sql: &str, role: &str, search_path: Option<&str>, how: Execution) {
    // Queued SQL normally starts with its own SET search_path (replicate_ddl and
    // AutoDDL write one). Without it, PostgreSQL's default path applies, not the
    // worker's pinned one (which would create objects in pg_catalog) nor a database
    // setting that the database's owner controls.
    let search_path = match how {
        Execution::QueuedSql | Execution::QueuedDdl => search_path.or(Some(QUEUED_SQL_SEARCH_PATH)),
        Execution::ReplicateDdl => search_path,
    };
    let role = role_oid(role);
    let statements = parse_statements(sql);
    let _replicated = ReplicatedSqlGuard::enter();
    // SAFETY: opens a GUC nesting level, closed (changes undone) below; an ERROR
    // unwinds it with the (sub)transaction.
    let nest_level = unsafe { pg_sys::NewGUCNestLevel() };
    if let Some(path) = search_path {
        let value = CString::new(path).unwrap_or_default();
        // SAFETY: sets search_path at the level just opened.
        unsafe {
            pg_sys::set_config_option(
                c"search_path".as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
    }
    for stmt in &statements {
        if how == Execution::ReplicateDdl && !is_ddl(stmt.node) {
            PgError::new(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("spock.replicate_ddl() cannot execute {} statement", command_name(stmt.node)),
            )
            .raise();
        }
        {
            let _as_role = UserSwitch::to(role);
            run_statement(&stmt.text, sql, how);
        }
        // SAFETY: reads the node tag of a valid parse tree.
        let is_set = unsafe { (*stmt.node).type_ } == pg_sys::NodeTag::T_VariableSetStmt;
        if how == Execution::QueuedDdl && !is_set {
            autoddl::place_tables_of(stmt.node);
        }
    }
    // SAFETY: closes the level opened above, undoing what was set in it.
    unsafe { pg_sys::AtEOXact_GUC(false, nest_level) };
}

/// Runs one statement through SPI; an ERROR keeps its SQLSTATE and message and says
/// which queued SQL it came from.
fn run_statement(text: &str, whole: &str, how: Execution) {
    PgTryBuilder::new(|| {
        if let Err(e) = Spi::run(text) {
            PgError::new(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("spock: cannot execute \"{text}\": {e}"),
            )
            .raise();
        }
    })
    .catch_others(|e| match e {
        CaughtError::PostgresError(report) | CaughtError::ErrorReport(report) if how != Execution::ReplicateDdl => {
            let what = if how == Execution::QueuedDdl { "queued DDL statement" } else { "queued SQL statement" };
            let context = format!("during execution of {what}: {whole}");
            let detail = match report.detail() {
                Some(d) => format!("{d}\n{context}"),
                None => context,
            };
            let mut out = PgError::new(report.sql_error_code(), report.message().to_string()).detail(detail);
            if let Some(h) = report.hint() {
                out = out.hint(h.to_string());
            }
            out.raise()
        }
        other => other.rethrow(),
    })
    .execute()
}
