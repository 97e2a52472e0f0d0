//! What the SQL API's Rust helpers (`sql_api/`) and the workers (`workers/`) read
//! from the catalogs, one module per group of tables; the apply worker and the
//! output plugin have their own readers (`apply/`, `output_plugin/catalog.rs`).
//! A value that is NULL or of another type than the catalog declares is an error
//! with a clear message, never a silent default.

pub mod relations;
