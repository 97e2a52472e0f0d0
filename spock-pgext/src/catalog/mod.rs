//! What the SQL API's Rust helpers (`sql_api/`) and the workers (`workers/`) read
//! from catalogs, one module per group of tables, and the column readers every
//! catalog reader uses; the output plugin's reads, which run inside a decoding
//! callback with their own snapshot, stay in `output_plugin/catalog.rs`.
//!
//! A value that is NULL where the catalog has none, or of another type than the
//! catalog declares, is an error with a clear message, never a silent 0 or "".

pub mod nodes;
pub mod provider;
pub mod repsets;
pub mod subscriptions;
pub mod system;

use pgrx::datum::{FromDatum, IntoDatum};
use pgrx::spi::SpiHeapTupleData;
use pgrx::PgSqlErrorCode;

use crate::error::PgError;

/// Column `n` (1-based) of a catalog row, which must not be NULL. `what` names the
/// column ("spock.subscription.sub_id").
pub fn required<T: FromDatum + IntoDatum>(row: &SpiHeapTupleData<'_>, n: usize, what: &str) -> T {
    match row.get::<T>(n) {
        Ok(Some(v)) => v,
        Ok(None) => unexpected(what, "NULL"),
        Err(e) => unexpected(what, e),
    }
}

/// Column `n` (1-based) of a catalog row that may be NULL; a value of another type is
/// an error.
pub fn optional<T: FromDatum + IntoDatum>(row: &SpiHeapTupleData<'_>, n: usize, what: &str) -> Option<T> {
    row.get::<T>(n).unwrap_or_else(|e| unexpected(what, e))
}

/// A catalog value that is not what this code expects (the catalog was changed by
/// hand, or by another version of spock).
pub fn unexpected(what: &str, found: impl std::fmt::Display) -> ! {
    PgError::new(
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        format!("catalog column {what} holds an unexpected value: {found}"),
    )
    .hint("The catalog was changed by hand or by another version of spock.")
    .raise()
}

/// The value of a query that returns at most one row: no row is `None`, as a NULL is.
pub fn at_most_one<T>(r: Result<Option<T>, pgrx::spi::SpiError>) -> Result<Option<T>, pgrx::spi::SpiError> {
    match r {
        Err(pgrx::spi::SpiError::InvalidPosition) => Ok(None),
        r => r,
    }
}
