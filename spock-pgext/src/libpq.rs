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

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;

use crate::error::PgError;

type PGconn = c_void;
type PGresult = c_void;

/// `ConnStatusType::CONNECTION_OK`.
const CONNECTION_OK: c_int = 0;
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
/// `PG_DIAG_SQLSTATE`.
const PG_DIAG_SQLSTATE: c_int = b'C' as c_int;

struct Api {
    connectdb_params: unsafe extern "C" fn(*const *const c_char, *const *const c_char, c_int) -> *mut PGconn,
    status: unsafe extern "C" fn(*const PGconn) -> c_int,
    error_message: unsafe extern "C" fn(*const PGconn) -> *const c_char,
    finish: unsafe extern "C" fn(*mut PGconn),
    exec: unsafe extern "C" fn(*mut PGconn, *const c_char) -> *mut PGresult,
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

fn api() -> &'static Api {
    API.get_or_init(|| {
        // SAFETY: loads a library of the server's own installation (idempotent),
        // then resolves the functions with their libpq-fe.h signatures.
        unsafe {
            pg_sys::load_file(c"libpqwalreceiver".as_ptr(), false);
            Api {
                connectdb_params: symbol(c"PQconnectdbParams"),
                status: symbol(c"PQstatus"),
                error_message: symbol(c"PQerrorMessage"),
                finish: symbol(c"PQfinish"),
                exec: symbol(c"PQexec"),
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
            }
        }
    })
}

/// A failed libpq call: message and SQLSTATE when the server sent one.
#[derive(Debug, Clone)]
pub struct LibpqError {
    /// The message (trimmed).
    pub message: String,
    /// The server's SQLSTATE, if any.
    pub sqlstate: Option<String>,
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

/// A libpq connection, closed on drop.
pub struct Connection {
    conn: *mut PGconn,
}

impl Connection {
    /// Connects with `dsn` (any libpq connection string), adding `extra` key/values
    /// (e.g. `replication=database`, `application_name`).
    pub fn connect(dsn: &str, extra: &[(&str, &str)]) -> Result<Connection, LibpqError> {
        let api = api();
        let mut keys = vec![CString::new("dbname").unwrap()];
        let mut vals = vec![CString::new(dsn).map_err(|_| LibpqError { message: "DSN contains a NUL byte".into(), sqlstate: None })?];
        for (k, v) in extra {
            keys.push(CString::new(*k).unwrap_or_default());
            vals.push(CString::new(*v).unwrap_or_default());
        }
        let mut kp: Vec<*const c_char> = keys.iter().map(|c| c.as_ptr()).collect();
        let mut vp: Vec<*const c_char> = vals.iter().map(|c| c.as_ptr()).collect();
        kp.push(std::ptr::null());
        vp.push(std::ptr::null());
        // SAFETY: NULL-terminated arrays of C strings that outlive the call;
        // expand_dbname = 1 lets `dsn` be a full connection string or URI.
        let conn = unsafe { (api.connectdb_params)(kp.as_ptr(), vp.as_ptr(), 1) };
        let c = Connection { conn };
        // SAFETY: a non-null PGconn (libpq returns one even on failure, unless out of memory).
        if conn.is_null() || unsafe { (api.status)(conn) } != CONNECTION_OK {
            return Err(c.error(None));
        }
        Ok(c)
    }

    fn error(&self, result: Option<*const PGresult>) -> LibpqError {
        let api = api();
        // SAFETY: valid connection/result; messages are C strings owned by libpq.
        unsafe {
            let (message, sqlstate) = match result {
                Some(r) if !r.is_null() => {
                    let m = CStr::from_ptr((api.result_error_message)(r)).to_string_lossy().trim().to_string();
                    let s = (api.result_error_field)(r, PG_DIAG_SQLSTATE);
                    (m, (!s.is_null()).then(|| CStr::from_ptr(s).to_string_lossy().into_owned()))
                }
                _ if self.conn.is_null() => ("out of memory".to_string(), None),
                _ => (CStr::from_ptr((api.error_message)(self.conn)).to_string_lossy().trim().to_string(), None),
            };
            LibpqError { message, sqlstate }
        }
    }

    /// Runs `sql`; returns its rows (empty for commands).
    pub fn query(&self, sql: &str) -> Result<Rows, LibpqError> {
        let api = api();
        let c = CString::new(sql).map_err(|_| LibpqError { message: "query contains a NUL byte".into(), sqlstate: None })?;
        // SAFETY: valid connection; the result is cleared before returning.
        unsafe {
            let r = (api.exec)(self.conn, c.as_ptr());
            let status = if r.is_null() { -1 } else { (api.result_status)(r) };
            if status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK {
                let e = self.error(Some(r));
                (api.clear)(r);
                return Err(e);
            }
            let mut rows = Vec::new();
            for i in 0..(api.ntuples)(r) {
                let mut row = Vec::new();
                for j in 0..(api.nfields)(r) {
                    row.push(if (api.getisnull)(r, i, j) != 0 {
                        None
                    } else {
                        Some(CStr::from_ptr((api.getvalue)(r, i, j)).to_string_lossy().into_owned())
                    });
                }
                rows.push(row);
            }
            (api.clear)(r);
            Ok(rows)
        }
    }

    /// Sends a command that enters COPY BOTH mode (`START_REPLICATION`).
    pub fn start_copy_both(&self, command: &str) -> Result<(), LibpqError> {
        let api = api();
        let c = CString::new(command).map_err(|_| LibpqError { message: "command contains a NUL byte".into(), sqlstate: None })?;
        // SAFETY: valid connection; the result is cleared.
        unsafe {
            let r = (api.exec)(self.conn, c.as_ptr());
            let status = if r.is_null() { -1 } else { (api.result_status)(r) };
            if status != PGRES_COPY_BOTH {
                let e = self.error(Some(r));
                (api.clear)(r);
                return Err(e);
            }
            (api.clear)(r);
        }
        Ok(())
    }

    /// Sends a command that must enter COPY OUT (`out`) or COPY IN mode.
    pub fn start_copy(&self, command: &str, out: bool) -> Result<(), LibpqError> {
        let api = api();
        let c = CString::new(command).map_err(|_| LibpqError { message: "command contains a NUL byte".into(), sqlstate: None })?;
        let want = if out { PGRES_COPY_OUT } else { PGRES_COPY_IN };
        // SAFETY: valid connection; the result is cleared.
        unsafe {
            let r = (api.exec)(self.conn, c.as_ptr());
            let status = if r.is_null() { -1 } else { (api.result_status)(r) };
            if status != want {
                let e = self.error(Some(r));
                (api.clear)(r);
                return Err(e);
            }
            (api.clear)(r);
        }
        Ok(())
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
                    let r = (api.get_result)(self.conn);
                    let status = if r.is_null() { PGRES_COMMAND_OK } else { (api.result_status)(r) };
                    let out = if status == PGRES_COMMAND_OK { Ok(CopyMessage::Done) } else { Err(self.error(Some(r))) };
                    if !r.is_null() {
                        (api.clear)(r);
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
            if (api.put_copy_data)(self.conn, data.as_ptr().cast(), data.len() as c_int) != 1 || (api.flush)(self.conn) != 0 {
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
