//! Pure Rust core of spock-rs.
//!
//! This crate owns everything that can be decided without a running PostgreSQL:
//!
//! * [`proto`]: Spock's native logical replication protocol (versions 4 and 5), one
//!   `encode`/`decode` pair per message, byte-compatible with pgEdge Spock.
//! * [`conflict`]: conflict kinds (PostgreSQL 18 names), resolution policies and the
//!   pure [`conflict::resolve`] function with Spock's tie-break.
//! * [`repset`]: which change of which table goes to a subscriber (actions, column
//!   lists, row-filter hook).
//! * [`origin`]: loop prevention and origin forwarding.
//! * [`names`]: PostgreSQL's `hash_any`, Spock's node ids, slot and origin names.
//! * [`ident`]: PostgreSQL identifier-list parsing (`SplitIdentifierString`).
//! * [`ddl`]: `spock.queue` messages (DDL, sequences), AutoDDL set placement.
//! * [`holds`]: the slots that keep apply workers stopped while a transaction
//!   changes their subscriptions.
//! * [`walsender`]: the walsender's framing around plugin messages (`w`, `k`, `r`)
//!   and when a subscriber owes feedback.
//! * [`spill`]: the subscriber's CRC32-framed spill files for streamed transactions.
//! * [`eager`]: when a streamed transaction is applied as it arrives, and when that
//!   falls back to replaying its spill file at commit.
//! * [`table_skip`]: which changes a subscriber skips because a table sync's copy
//!   holds them.
//! * [`retention`]: how long deleted row versions are kept (the probe of a
//!   provider's progress, the removal horizon and its cap).
//! * [`parallel`]: parallel apply: key dependencies between transactions in commit
//!   order, barriers, and which writer takes each transaction (not used yet).
//! * [`conninfo`]: connection settings for programs we run, the password kept off
//!   their command line.
//!
//! It performs no I/O and contains no unsafe code: the pgrx crate `spock` gathers
//! facts from the server and asks this crate what to do.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod conflict;
pub mod conninfo;
pub mod ddl;
pub mod diff;
pub mod eager;
pub mod error_context;
pub mod exception;
pub mod global_ids;
pub mod holds;
pub mod ident;
pub mod names;
pub mod origin;
pub mod parallel;
pub mod proto;
pub mod repset;
pub mod retention;
pub mod spill;
pub mod status;
pub mod table_skip;
pub mod walsender;

/// Version of spock-rs as reported by `spock.spock_version()`.
pub const SPOCK_RS_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The Spock release whose SQL API and protocol we are compatible with, as a string.
pub const SPOCK_COMPAT_VERSION: &str = "6.0.0";

/// The same as a number (`spock.spock_version_num()`), Spock's `MAJOR*10000+MINOR*100+PATCH`.
pub const SPOCK_COMPAT_VERSION_NUM: u32 = 60000;
