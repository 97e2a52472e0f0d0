//! libpq, as the apply worker uses it to talk to providers.
//!
//! PostgreSQL's own `libpqwalreceiver` cannot pass Spock's startup parameters (it
//! builds pgoutput's), so we call libpq ourselves. We do not link it: loading
//! `libpqwalreceiver` (shipped with every server) brings the server's libpq into the
//! process with global symbol visibility, and we look its functions up by name. So
//! spock.so has no libpq dependency to satisfy at build or install time, and always
//! uses the libpq that matches the server.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;

use crate::error::PgError;

type PGconn = c_void;
type PGresult = c_void;
type PGcancelConn = c_void;

/// `ConnStatusType::CONNECTION_BAD`.
const CONNECTION_BAD: c_int = 1;
/// `PostgresPollingStatusType` values.
const PGRES_POLLING_READING: c_int = 1;
const PGRES_POLLING_WRITING: c_int = 2;
const PGRES_POLLING_OK: c_int = 3;
/// `ExecStatusType` values we look at.
pub const PGRES_COMMAND_OK: c_int = 1;
/// Rows returned.
pub const PGRES_TUPLES_OK: c_int = 2;
/// START_REPLICATION accepted.
pub const PGRES_COPY_BOTH: c_int = 8;
/// `PGRES_COPY_OUT`.
const PGRES_COPY_OUT: c_int = 3;
/// `PGRES_COPY_IN`.
const PGRES_COPY_IN: c_int = 4;
/// `PGRES_FATAL_ERROR`.
const PGRES_FATAL_ERROR: c_int = 7;
/// `PG_DIAG_SQLSTATE`.
const PG_DIAG_SQLSTATE: c_int = b'C' as c_int;
/// `PG_DIAG_MESSAGE_PRIMARY`.
const PG_DIAG_MESSAGE_PRIMARY: c_int = b'M' as c_int;
/// `PG_DIAG_MESSAGE_DETAIL`.
const PG_DIAG_MESSAGE_DETAIL: c_int = b'D' as c_int;

/// `connect_timeout` (seconds) when the DSN sets none: a provider that accepts the
/// TCP connection and never answers fails the connection after this long.
pub const DEFAULT_CONNECT_TIMEOUT_S: u64 = 30;
/// How long a cancel request to the provider may take before we give up on it.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// libpq's `PQconninfoOption`.
#[repr(C)]
struct ConninfoOption {
    keyword: *mut c_char,
    envvar: *mut c_char,
    compiled: *mut c_char,
    val: *mut c_char,
    label: *mut c_char,
    dispchar: *mut c_char,
    dispsize: c_int,
}

struct Api {
    connect_start_params: unsafe extern "C" fn(*const *const c_char, *const *const c_char, c_int) -> *mut PGconn,
    connect_poll: unsafe extern "C" fn(*mut PGconn) -> c_int,
    status: unsafe extern "C" fn(*const PGconn) -> c_int,
    error_message: unsafe extern "C" fn(*const PGconn) -> *const c_char,
    finish: unsafe extern "C" fn(*mut PGconn),
    send_query: unsafe extern "C" fn(*mut PGconn, *const c_char) -> c_int,
    is_busy: unsafe extern "C" fn(*mut PGconn) -> c_int,
    result_status: unsafe extern "C" fn(*const PGresult) -> c_int,
    result_error_message: unsafe extern "C" fn(*const PGresult) -> *const c_char,
    result_error_field: unsafe extern "C" fn(*const PGresult, c_int) -> *const c_char,
    clear: unsafe extern "C" fn(*mut PGresult),
    ntuples: unsafe extern "C" fn(*const PGresult) -> c_int,
    nfields: unsafe extern "C" fn(*const PGresult) -> c_int,
    getvalue: unsafe extern "C" fn(*const PGresult, c_int, c_int) -> *const c_char,
    getisnull: unsafe extern "C" fn(*const PGresult, c_int, c_int) -> c_int,
    get_copy_data: unsafe extern "C" fn(*mut PGconn, *mut *mut c_char, c_int) -> c_int,
    put_copy_data: unsafe extern "C" fn(*mut PGconn, *const c_char, c_int) -> c_int,
    flush: unsafe extern "C" fn(*mut PGconn) -> c_int,
    consume_input: unsafe extern "C" fn(*mut PGconn) -> c_int,
    socket: unsafe extern "C" fn(*const PGconn) -> c_int,
    freemem: unsafe extern "C" fn(*mut c_void),
    get_result: unsafe extern "C" fn(*mut PGconn) -> *mut PGresult,
    escape_literal: unsafe extern "C" fn(*mut PGconn, *const c_char, usize) -> *mut c_char,
    conninfo: unsafe extern "C" fn(*mut PGconn) -> *mut ConninfoOption,
    conninfo_parse: unsafe extern "C" fn(*const c_char, *mut *mut c_char) -> *mut ConninfoOption,
    conninfo_free: unsafe extern "C" fn(*mut ConninfoOption),
    /// Non-blocking cancel requests (libpq 17 and later).
    cancel: Option<CancelApi>,
    get_cancel: unsafe extern "C" fn(*mut PGconn) -> *mut c_void,
    cancel_blocking: unsafe extern "C" fn(*mut c_void, *mut c_char, c_int) -> c_int,
    free_cancel: unsafe extern "C" fn(*mut c_void),
}

struct CancelApi {
    create: unsafe extern "C" fn(*mut PGconn) -> *mut PGcancelConn,
    start: unsafe extern "C" fn(*mut PGcancelConn) -> c_int,
    poll: unsafe extern "C" fn(*mut PGcancelConn) -> c_int,
    socket: unsafe extern "C" fn(*const PGcancelConn) -> c_int,
    finish: unsafe extern "C" fn(*mut PGcancelConn),
}

// The function pointers are plain addresses; backends are single-threaded.
unsafe impl Send for Api {}
unsafe impl Sync for Api {}

static API: OnceLock<Api> = OnceLock::new();

/// Looks up one libpq function.
///
/// SAFETY: `T` must be the C signature of the function named `name`.
unsafe fn symbol<T: Copy>(name: &CStr) -> T {
    // SAFETY: dlsym on the global scope; a null result is turned into an ERROR.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    if p.is_null() {
        PgError::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("spock: libpq function {} not found", name.to_string_lossy()),
        )
        .hint("The server's libpqwalreceiver library must be installed.")
        .raise();
    }
    // SAFETY: the caller names the right signature; function pointers are pointer-sized.
    unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) }
}

/// Looks up a libpq function that older libpq versions lack.
///
/// SAFETY: `T` must be the C signature of the function named `name`.
unsafe fn optional_symbol<T: Copy>(name: &CStr) -> Option<T> {
    // SAFETY: dlsym on the global scope.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    // SAFETY: the caller names the right signature; function pointers are pointer-sized.
    (!p.is_null()).then(|| unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
}

fn api() -> &'static Api {
    API.get_or_init(|| {
        // SAFETY: loads a library of the server's own installation (idempotent),
        // then resolves the functions with their libpq-fe.h signatures.
        unsafe {
            pg_sys::load_file(c"libpqwalreceiver".as_ptr(), false);
            Api {
                connect_start_params: symbol(c"PQconnectStartParams"),
                connect_poll: symbol(c"PQconnectPoll"),
                status: symbol(c"PQstatus"),
                error_message: symbol(c"PQerrorMessage"),
                finish: symbol(c"PQfinish"),
                send_query: symbol(c"PQsendQuery"),
                is_busy: symbol(c"PQisBusy"),
                result_status: symbol(c"PQresultStatus"),
                result_error_message: symbol(c"PQresultErrorMessage"),
                result_error_field: symbol(c"PQresultErrorField"),
                clear: symbol(c"PQclear"),
                ntuples: symbol(c"PQntuples"),
                nfields: symbol(c"PQnfields"),
                getvalue: symbol(c"PQgetvalue"),
                getisnull: symbol(c"PQgetisnull"),
                get_copy_data: symbol(c"PQgetCopyData"),
                put_copy_data: symbol(c"PQputCopyData"),
                flush: symbol(c"PQflush"),
                consume_input: symbol(c"PQconsumeInput"),
                socket: symbol(c"PQsocket"),
                freemem: symbol(c"PQfreemem"),
                get_result: symbol(c"PQgetResult"),
                escape_literal: symbol(c"PQescapeLiteral"),
                conninfo: symbol(c"PQconninfo"),
                conninfo_parse: symbol(c"PQconninfoParse"),
                conninfo_free: symbol(c"PQconninfoFree"),
                cancel: (|| {
                    Some(CancelApi {
                        create: optional_symbol(c"PQcancelCreate")?,
                        start: optional_symbol(c"PQcancelStart")?,
                        poll: optional_symbol(c"PQcancelPoll")?,
                        socket: optional_symbol(c"PQcancelSocket")?,
                        finish: optional_symbol(c"PQcancelFinish")?,
                    })
                })(),
                get_cancel: symbol(c"PQgetCancel"),
                cancel_blocking: symbol(c"PQcancel"),
                free_cancel: symbol(c"PQfreeCancel"),
            }
        }
    })
}

/// The wait event our waits on the provider show in `pg_stat_activity`
/// (`wait_event_type` Extension, `wait_event` SpockProvider).
fn wait_event() -> u32 {
    static EVENT: OnceLock<u32> = OnceLock::new();
    *EVENT.get_or_init(|| {
        // SAFETY: registers (or finds) a named custom wait event in shared memory.
        unsafe { pg_sys::WaitEventExtensionNew(c"SpockProvider".as_ptr()) }
    })
}

/// What a wait on the provider's socket is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Read,
    Write,
}

/// One wait until `socket` is ready for `want`, the latch is set, `timeout_ms`
/// passes or the server dies (which ends the process). Returns whether the latch was
/// set (then reset).
fn wait_once(socket: pg_sys::pgsocket, want: Want, timeout_ms: i64) -> bool {
    let io = match want {
        Want::Read => pg_sys::WL_SOCKET_READABLE,
        Want::Write => pg_sys::WL_SOCKET_WRITEABLE,
    };
    // SAFETY: waits on our own latch and a socket libpq holds open.
    let rc = unsafe {
        pg_sys::WaitLatchOrSocket(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | io | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            socket,
            timeout_ms.max(0),
            wait_event(),
        )
    };
    let latch = rc & pg_sys::WL_LATCH_SET as i32 != 0;
    if latch {
        // SAFETY: resets our own latch.
        unsafe { pg_sys::ResetLatch(pg_sys::MyLatch) };
    }
    latch
}

/// Waits at most `timeout_ms` until `socket` (a provider connection) is readable or
/// our latch is set, then processes interrupts (cancel, statement_timeout,
/// terminate raise their error here); the server's death ends the process.
pub fn wait_for_socket(socket: pg_sys::pgsocket, timeout_ms: i64) {
    wait_once(socket, Want::Read, timeout_ms);
    pgrx::check_for_interrupts!();
}

/// Whether this process is a background worker (an apply worker): SIGTERM only sets
/// a flag there (pgrx's handler), it does not raise an error by itself.
fn in_background_worker() -> bool {
    // SAFETY: a plain read of this process's backend type, set at start.
    unsafe { pg_sys::MyBackendType == pg_sys::BackendType::B_BG_WORKER }
}

/// Milliseconds left until `deadline` (at most a second: waits come up for air).
fn wait_ms(deadline: Option<Instant>) -> i64 {
    deadline.map_or(1000, |d| d.saturating_duration_since(Instant::now()).as_millis().min(1000) as i64)
}

/// Parses a connection string (`key=value` or URI) with libpq's parser into the
/// keyword/value pairs it sets, in libpq's keyword order.
pub fn parse_conninfo(dsn: &str) -> Result<Vec<(String, String)>, LibpqError> {
    let api = api();
    let c = CString::new(dsn).map_err(|_| LibpqError::local("DSN contains a NUL byte"))?;
    let mut errmsg: *mut c_char = std::ptr::null_mut();
    // SAFETY: a NUL-terminated string; the options array and the error message are
    // libpq allocations freed here.
    unsafe {
        let opts = (api.conninfo_parse)(c.as_ptr(), &mut errmsg);
        if opts.is_null() {
            let message = if errmsg.is_null() {
                "out of memory".to_string()
            } else {
                let m = CStr::from_ptr(errmsg).to_string_lossy().trim().to_string();
                (api.freemem)(errmsg.cast());
                m
            };
            return Err(LibpqError::local(message));
        }
        let pairs = options(opts);
        (api.conninfo_free)(opts);
        Ok(pairs)
    }
}

/// The set keyword/value pairs of a libpq options array.
///
/// SAFETY: `opts` is a valid `PQconninfoOption` array ending with a null keyword.
unsafe fn options(opts: *const ConninfoOption) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut p = opts;
    // SAFETY: walks the array up to its terminating entry; strings are libpq's.
    unsafe {
        while !(*p).keyword.is_null() {
            if !(*p).val.is_null() {
                out.push((
                    CStr::from_ptr((*p).keyword).to_string_lossy().into_owned(),
                    CStr::from_ptr((*p).val).to_string_lossy().into_owned(),
                ));
            }
            p = p.add(1);
        }
    }
    out
}

/// A cancel request in flight, freed on drop.
struct CancelConn(*mut PGcancelConn, &'static CancelApi);

impl Drop for CancelConn {
    fn drop(&mut self) {
        // SAFETY: frees the cancel connection we created, once.
        unsafe { (self.1.finish)(self.0) };
    }
}

/// A result, cleared on drop (also when an error unwinds).
struct PgResult(*mut PGresult);

impl PgResult {
    fn status(&self) -> c_int {
        // SAFETY: a valid (or null, handled) result.
        if self.0.is_null() {
            -1
        } else {
            unsafe { (api().result_status)(self.0) }
        }
    }
}

impl Drop for PgResult {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: clears the result we own, once.
            unsafe { (api().clear)(self.0) };
        }
    }
}

/// A failed libpq call: message and SQLSTATE when the server sent one.
#[derive(Debug, Clone)]
pub struct LibpqError {
    /// The message (trimmed).
    pub message: String,
    /// The server's SQLSTATE, if any.
    pub sqlstate: Option<String>,
}

impl LibpqError {
    /// An error found on our side (no SQLSTATE from a server).
    fn local(message: impl Into<String>) -> LibpqError {
        LibpqError { message: message.into(), sqlstate: None }
    }
}

impl std::fmt::Display for LibpqError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.sqlstate {
            Some(s) => write!(f, "{} (SQLSTATE {s})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// The rows of a query, as text.
pub type Rows = Vec<Vec<Option<String>>>;

/// What reading from a COPY BOTH stream gave.
pub enum CopyData {
    /// One message.
    Data(Vec<u8>),
    /// Nothing yet: wait on [`Connection::socket`].
    WouldBlock,
    /// The server ended the stream.
    Done,
}

/// What reading from a COPY stream gave, without copying the data.
pub enum CopyMessage {
    /// One message, in libpq's buffer.
    Data(CopyBuffer),
    /// Nothing yet: wait on [`Connection::socket`].
    WouldBlock,
    /// The server ended the stream.
    Done,
}

/// One CopyData message as libpq allocated it; freed on drop.
pub struct CopyBuffer {
    ptr: *mut c_char,
    len: usize,
}

impl std::ops::Deref for CopyBuffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` holds `len` bytes that libpq gave us and we free only on drop.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for CopyBuffer {
    fn drop(&mut self) {
        // SAFETY: frees the buffer PQgetCopyData allocated, once.
        unsafe { (api().freemem)(self.ptr.cast()) };
    }
}

/// A libpq connection, closed on drop (also when an error unwinds through its
/// owner).
///
/// Every wait for the provider (connecting, a query's result, the end of a COPY)
/// sleeps on the socket and our latch and processes interrupts, as PostgreSQL's
/// `libpq-be-fe-helpers.h` does: `pg_cancel_backend`, `statement_timeout` and
/// `pg_terminate_backend` end it at once, and in a background worker so does
/// SIGTERM. An interrupt that arrives while a query runs on the provider cancels
/// that query there too. Connecting gives up after `connect_timeout` (the DSN's, or
/// [`DEFAULT_CONNECT_TIMEOUT_S`]), over all the hosts the DSN lists.
pub struct Connection {
    conn: *mut PGconn,
}

impl Connection {
    /// Connects with `dsn` (any libpq connection string), adding `extra` key/values
    /// (e.g. `replication=database`, `application_name`), which override the DSN's.
    pub fn connect(dsn: &str, extra: &[(&str, &str)]) -> Result<Connection, LibpqError> {
        let api = api();
        let default_timeout = DEFAULT_CONNECT_TIMEOUT_S.to_string();
        // The default timeout comes before the DSN, so that the DSN's own wins.
        let mut pairs: Vec<(&str, &str)> = vec![("connect_timeout", &default_timeout), ("dbname", dsn)];
        pairs.extend_from_slice(extra);
        let mut keys = Vec::with_capacity(pairs.len());
        let mut vals = Vec::with_capacity(pairs.len());
        for (k, v) in &pairs {
            keys.push(CString::new(*k).map_err(|_| LibpqError::local("connection option contains a NUL byte"))?);
            vals.push(CString::new(*v).map_err(|_| LibpqError::local("connection option contains a NUL byte"))?);
        }
        let mut kp: Vec<*const c_char> = keys.iter().map(|c| c.as_ptr()).collect();
        let mut vp: Vec<*const c_char> = vals.iter().map(|c| c.as_ptr()).collect();
        kp.push(std::ptr::null());
        vp.push(std::ptr::null());
        // SAFETY: NULL-terminated arrays of C strings that outlive the call;
        // expand_dbname = 1 lets `dsn` be a full connection string or URI. The
        // connection is only started: nothing blocks.
        let conn = unsafe { (api.connect_start_params)(kp.as_ptr(), vp.as_ptr(), 1) };
        if conn.is_null() {
            return Err(LibpqError::local("out of memory"));
        }
        let c = Connection { conn };
        // Errors from here may quote the connection string (a malformed one).
        let fail = |c: &Connection| {
            let e = c.error(None);
            let message = match parse_conninfo(dsn) {
                Ok(pairs) => {
                    let password = pairs.into_iter().find(|(k, _)| k == spock_core::conninfo::PASSWORD).map(|(_, v)| v);
                    spock_core::conninfo::redact(&e.message, password.as_deref())
                }
                Err(_) if spock_core::conninfo::unparsable_may_hold_secret(dsn) => {
                    "invalid connection string (libpq's message is not shown: it could quote the password)".to_string()
                }
                Err(_) => e.message,
            };
            LibpqError { message, sqlstate: e.sqlstate }
        };
        // SAFETY: a valid connection.
        if unsafe { (api.status)(conn) } == CONNECTION_BAD {
            return Err(fail(&c));
        }
        let deadline = c.connect_timeout().map(|s| Instant::now() + Duration::from_secs(s));
        let mut poll = PGRES_POLLING_WRITING;
        loop {
            let want = match poll {
                PGRES_POLLING_OK => return Ok(c),
                PGRES_POLLING_READING => Want::Read,
                PGRES_POLLING_WRITING => Want::Write,
                _ => return Err(fail(&c)),
            };
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(LibpqError {
                    message: format!(
                        "connection to the provider timed out (connect_timeout {} s)",
                        c.connect_timeout().unwrap_or(0)
                    ),
                    sqlstate: Some("08001".into()),
                });
            }
            c.wait(want, deadline, false);
            // SAFETY: a valid connection being set up.
            poll = unsafe { (api.connect_poll)(conn) };
        }
    }

    /// The connection's `connect_timeout` in seconds, None for none (libpq's
    /// rules: 0 or less waits forever, 1 means 2).
    fn connect_timeout(&self) -> Option<u64> {
        let api = api();
        // SAFETY: a valid connection; the options array is freed here.
        let pairs = unsafe {
            let opts = (api.conninfo)(self.conn);
            if opts.is_null() {
                return Some(DEFAULT_CONNECT_TIMEOUT_S);
            }
            let pairs = options(opts);
            (api.conninfo_free)(opts);
            pairs
        };
        let v = pairs.iter().find(|(k, _)| k == "connect_timeout").and_then(|(_, v)| v.trim().parse::<i64>().ok())?;
        (v > 0).then_some(v.max(2) as u64)
    }

    /// One wait for the provider (see [`Connection`]); `in_query`: a query runs on
    /// the provider and is cancelled there when an interrupt ends the wait.
    fn wait(&self, want: Want, deadline: Option<Instant>, in_query: bool) {
        wait_once(self.socket(), want, wait_ms(deadline));
        if in_background_worker() && (crate::workers::sigterm_received() || crate::workers::sigterm_seen()) {
            if in_query {
                self.cancel();
            }
            PgError::new(
                PgSqlErrorCode::ERRCODE_ADMIN_SHUTDOWN,
                "spock: stopped waiting for the provider: the worker is stopping",
            )
            .raise();
        }
        // SAFETY: plain reads of interrupt flags set by signal handlers.
        let (pending, dying) = unsafe { (pg_sys::InterruptPending != 0, pg_sys::ProcDiePending != 0) };
        if !pending {
            return;
        }
        if dying && in_query {
            // FATAL ends the process without unwinding: cancel first.
            self.cancel();
        }
        // An ERROR (cancel, statement_timeout) unwinds from here as a Rust panic:
        // the provider's query is cancelled before it goes on, and the owners of
        // this connection close it as the panic passes them.
        let r = std::panic::catch_unwind(|| {
            pgrx::check_for_interrupts!();
        });
        if let Err(e) = r {
            if in_query {
                self.cancel();
            }
            std::panic::resume_unwind(e);
        }
    }

    /// Asks the provider to cancel the running query, waiting at most
    /// [`CANCEL_TIMEOUT`] for it to confirm; failures are ignored (the connection is
    /// closed next anyway).
    fn cancel(&self) {
        let api = api();
        let Some(capi) = &api.cancel else {
            // libpq before 17: the blocking cancel request (the provider usually
            // answers it at once).
            // SAFETY: a valid connection; the PGcancel is freed here.
            unsafe {
                let c = (api.get_cancel)(self.conn);
                if !c.is_null() {
                    let mut errbuf = [0 as c_char; 256];
                    (api.cancel_blocking)(c, errbuf.as_mut_ptr(), errbuf.len() as c_int);
                    (api.free_cancel)(c);
                }
            }
            return;
        };
        // SAFETY: a valid connection; the cancel connection is freed by its guard.
        let cc = unsafe { (capi.create)(self.conn) };
        if cc.is_null() {
            return;
        }
        let cc = CancelConn(cc, capi);
        // SAFETY: a valid cancel connection.
        if unsafe { (capi.start)(cc.0) } == 0 {
            return;
        }
        let deadline = Instant::now() + CANCEL_TIMEOUT;
        loop {
            // SAFETY: a valid, started cancel connection.
            let want = match unsafe { (capi.poll)(cc.0) } {
                PGRES_POLLING_READING => Want::Read,
                PGRES_POLLING_WRITING => Want::Write,
                _ => return,
            };
            if Instant::now() >= deadline {
                return;
            }
            // No interrupt processing here: one is being handled already.
            // SAFETY: a valid cancel connection.
            wait_once(unsafe { (capi.socket)(cc.0) }, want, wait_ms(Some(deadline)));
        }
    }

    fn error(&self, result: Option<*const PGresult>) -> LibpqError {
        let api = api();
        // SAFETY: valid connection/result; messages are C strings owned by libpq.
        unsafe {
            let (message, sqlstate) = match result {
                Some(r) if !r.is_null() => {
                    // The server's message and detail, without libpq's severity
                    // prefix and line breaks (they end up inside spock's own
                    // messages and the server log); libpq's whole text otherwise.
                    let field = |code: c_int| {
                        let f = (api.result_error_field)(r, code);
                        (!f.is_null()).then(|| CStr::from_ptr(f).to_string_lossy().trim().to_string())
                    };
                    let m = match (field(PG_DIAG_MESSAGE_PRIMARY), field(PG_DIAG_MESSAGE_DETAIL)) {
                        (Some(m), Some(d)) => format!("{m} ({d})"),
                        (Some(m), None) => m,
                        _ => CStr::from_ptr((api.result_error_message)(r)).to_string_lossy().trim().to_string(),
                    };
                    let s = (api.result_error_field)(r, PG_DIAG_SQLSTATE);
                    (m, (!s.is_null()).then(|| CStr::from_ptr(s).to_string_lossy().into_owned()))
                }
                _ if self.conn.is_null() => ("out of memory".to_string(), None),
                _ => (CStr::from_ptr((api.error_message)(self.conn)).to_string_lossy().trim().to_string(), None),
            };
            LibpqError { message, sqlstate }
        }
    }

    /// The next result of the command sent, waiting for it (interruptibly); null
    /// when there is none.
    fn next_result(&self) -> PgResult {
        let api = api();
        // SAFETY: valid connection; PQgetResult does not block once PQisBusy is 0
        // (or after a read failure, when it returns the error result).
        unsafe {
            while (api.is_busy)(self.conn) != 0 {
                self.wait(Want::Read, None, true);
                if (api.consume_input)(self.conn) == 0 {
                    break;
                }
            }
            PgResult((api.get_result)(self.conn))
        }
    }

    /// Sends `sql` and waits for its outcome (see [`Connection::outcome`]).
    fn exec(&self, sql: &str) -> Result<PgResult, LibpqError> {
        self.send_query(sql)?;
        self.outcome(PgResult(std::ptr::null_mut()))
    }

    /// Reads the rest of the results of the command sent, `first` being the one
    /// read already (null: none), and returns its outcome: the first COPY result,
    /// else the last result (an error wins over what follows it), as PQexec would.
    fn outcome(&self, first: PgResult) -> Result<PgResult, LibpqError> {
        let copying = |r: &PgResult| matches!(r.status(), PGRES_COPY_OUT | PGRES_COPY_IN | PGRES_COPY_BOTH);
        let mut last = first;
        let mut done = copying(&last);
        while !done {
            let r = self.next_result();
            if r.0.is_null() {
                break;
            }
            done = copying(&r);
            if last.status() != PGRES_FATAL_ERROR {
                last = r;
            }
        }
        if last.0.is_null() {
            return Err(self.error(None));
        }
        Ok(last)
    }

    /// Runs `sql`; returns its rows (empty for commands).
    pub fn query(&self, sql: &str) -> Result<Rows, LibpqError> {
        let r = self.exec(sql)?;
        self.rows(&r)
    }

    /// Sends `sql` without waiting for its outcome, which [`Connection::poll_query`]
    /// reads when it has arrived.
    pub fn send_query(&self, sql: &str) -> Result<(), LibpqError> {
        let c = CString::new(sql).map_err(|_| LibpqError::local("query contains a NUL byte"))?;
        // SAFETY: valid connection and query string.
        if unsafe { (api().send_query)(self.conn, c.as_ptr()) } == 0 {
            return Err(self.error(None));
        }
        Ok(())
    }

    /// Waits (interruptibly) for the outcome of the query sent with
    /// [`Connection::send_query`] and returns its rows.
    pub fn finish_query(&self) -> Result<Rows, LibpqError> {
        let r = self.outcome(PgResult(std::ptr::null_mut()))?;
        self.rows(&r)
    }

    /// The outcome of the query sent with [`Connection::send_query`] once it has
    /// arrived; `None` while it has not (never waits for the provider).
    pub fn poll_query(&self) -> Option<Result<Rows, LibpqError>> {
        let api = api();
        // SAFETY: valid connection; PQgetResult does not block once PQisBusy is 0.
        let first = unsafe {
            if (api.consume_input)(self.conn) == 0 {
                return Some(Err(self.error(None)));
            }
            if (api.is_busy)(self.conn) != 0 {
                return None;
            }
            PgResult((api.get_result)(self.conn))
        };
        // The rest (the end of the command) comes in the same packet: reading it
        // leaves the connection ready for the next query.
        Some(self.outcome(first).and_then(|r| self.rows(&r)))
    }

    /// The rows of a finished command's result (an error result is the error).
    fn rows(&self, r: &PgResult) -> Result<Rows, LibpqError> {
        let api = api();
        let status = r.status();
        if status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK {
            return Err(self.error(Some(r.0)));
        }
        // SAFETY: a valid result, cleared by its guard.
        unsafe {
            let mut rows = Vec::new();
            for i in 0..(api.ntuples)(r.0) {
                let mut row = Vec::new();
                for j in 0..(api.nfields)(r.0) {
                    row.push(if (api.getisnull)(r.0, i, j) != 0 {
                        None
                    } else {
                        Some(CStr::from_ptr((api.getvalue)(r.0, i, j)).to_string_lossy().into_owned())
                    });
                }
                rows.push(row);
            }
            Ok(rows)
        }
    }

    /// Sends `command`, which must enter COPY mode `want`.
    fn start(&self, command: &str, want: c_int) -> Result<(), LibpqError> {
        let r = self.exec(command)?;
        if r.status() != want {
            return Err(self.error(Some(r.0)));
        }
        Ok(())
    }

    /// Sends a command that enters COPY BOTH mode (`START_REPLICATION`).
    pub fn start_copy_both(&self, command: &str) -> Result<(), LibpqError> {
        self.start(command, PGRES_COPY_BOTH)
    }

    /// Sends a command that must enter COPY OUT (`out`) or COPY IN mode.
    pub fn start_copy(&self, command: &str, out: bool) -> Result<(), LibpqError> {
        self.start(command, if out { PGRES_COPY_OUT } else { PGRES_COPY_IN })
    }

    /// Reads the next CopyData message without blocking.
    pub fn read_copy_data(&self) -> Result<CopyData, LibpqError> {
        Ok(match self.next_copy_message()? {
            CopyMessage::Data(buf) => CopyData::Data(buf.to_vec()),
            CopyMessage::WouldBlock => CopyData::WouldBlock,
            CopyMessage::Done => CopyData::Done,
        })
    }

    /// Reads the next CopyData message without blocking, in libpq's own buffer (no
    /// copy).
    pub fn next_copy_message(&self) -> Result<CopyMessage, LibpqError> {
        let api = api();
        // SAFETY: valid connection; a buffer returned by PQgetCopyData is owned by
        // the CopyBuffer, which frees it with PQfreemem.
        unsafe {
            let mut buf: *mut c_char = std::ptr::null_mut();
            let mut n = (api.get_copy_data)(self.conn, &mut buf, 1);
            if n == 0 {
                if (api.consume_input)(self.conn) == 0 {
                    return Err(self.error(None));
                }
                n = (api.get_copy_data)(self.conn, &mut buf, 1);
            }
            match n {
                0 => Ok(CopyMessage::WouldBlock),
                -1 => {
                    let r = self.next_result();
                    let status = if r.0.is_null() { PGRES_COMMAND_OK } else { r.status() };
                    let out =
                        if status == PGRES_COMMAND_OK { Ok(CopyMessage::Done) } else { Err(self.error(Some(r.0))) };
                    // Read up to the end of the command, so that the next one can be
                    // sent (PQsendQuery refuses while results are pending).
                    // A COPY state left (the server ended COPY BOTH; we did not)
                    // gives the same result forever: stop there.
                    let copying = |r: &PgResult| matches!(r.status(), PGRES_COPY_OUT | PGRES_COPY_IN | PGRES_COPY_BOTH);
                    if !r.0.is_null() && !copying(&r) {
                        loop {
                            let next = self.next_result();
                            if next.0.is_null() || copying(&next) {
                                break;
                            }
                        }
                    }
                    out
                }
                n if n < 0 => Err(self.error(None)),
                n => Ok(CopyMessage::Data(CopyBuffer { ptr: buf, len: n as usize })),
            }
        }
    }

    /// Sends one CopyData message (feedback) and flushes.
    pub fn write_copy_data(&self, data: &[u8]) -> Result<(), LibpqError> {
        let api = api();
        // SAFETY: valid connection and buffer.
        unsafe {
            if (api.put_copy_data)(self.conn, data.as_ptr().cast(), data.len() as c_int) != 1
                || (api.flush)(self.conn) != 0
            {
                return Err(self.error(None));
            }
        }
        Ok(())
    }

    /// The socket to wait on.
    pub fn socket(&self) -> pg_sys::pgsocket {
        // SAFETY: valid connection.
        unsafe { (api().socket)(self.conn) }
    }

    /// `s` as an SQL literal for this connection.
    pub fn literal(&self, s: &str) -> String {
        let api = api();
        // SAFETY: valid connection; the returned buffer is freed with PQfreemem.
        unsafe {
            let p = (api.escape_literal)(self.conn, s.as_ptr().cast(), s.len());
            if p.is_null() {
                return format!("'{}'", s.replace('\'', "''"));
            }
            let out = CStr::from_ptr(p).to_string_lossy().into_owned();
            (api.freemem)(p.cast());
            out
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if !self.conn.is_null() {
            // SAFETY: closes the connection we own, once.
            unsafe { (api().finish)(self.conn) };
        }
    }
}
