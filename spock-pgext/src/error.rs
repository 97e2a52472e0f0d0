//! Raising PostgreSQL errors with a SQLSTATE, message, detail and hint.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

/// An error to raise: SQLSTATE, message and optional detail and hint.
pub struct PgError {
    code: PgSqlErrorCode,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
}

impl PgError {
    /// An error with `code` and `message`.
    pub fn new(code: PgSqlErrorCode, message: impl Into<String>) -> PgError {
        PgError { code, message: message.into(), detail: None, hint: None }
    }

    /// Adds a detail line.
    pub fn detail(mut self, detail: impl Into<String>) -> PgError {
        self.detail = Some(detail.into());
        self
    }

    /// Adds a hint line.
    pub fn hint(mut self, hint: impl Into<String>) -> PgError {
        self.hint = Some(hint.into());
        self
    }

    /// Raises the error (does not return).
    pub fn raise(self) -> ! {
        let mut report = ErrorReport::new(self.code, self.message, "spock");
        if let Some(d) = self.detail {
            report = report.set_detail(d);
        }
        if let Some(h) = self.hint {
            report = report.set_hint(h);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }
}

/// The error code for a SQLSTATE string that spock-core reports.
pub fn code_for_sqlstate(sqlstate: &str) -> PgSqlErrorCode {
    match sqlstate {
        "22023" => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        "0A000" => PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        "42704" => PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
        "55000" => PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        "08P01" => PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION,
        _ => PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
    }
}

/// Raises an SPI failure as an internal error with context.
pub fn spi_failed(what: &str, e: impl std::fmt::Display) -> ! {
    PgError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("spock: {what} failed: {e}")).raise()
}

/// The packed error code of a five-character SQLSTATE (PostgreSQL's
/// MAKE_SQLSTATE), internal_error for anything else.
pub fn sqlstate_code(sqlstate: &str) -> i32 {
    let b = sqlstate.as_bytes();
    if b.len() != 5 || !b.iter().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()) {
        return sqlstate_code("XX000");
    }
    b.iter().enumerate().map(|(i, c)| (((*c - b'0') & 0x3f) as i32) << (6 * i)).sum()
}
