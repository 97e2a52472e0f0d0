//! The apply worker: one per enabled subscription. It connects to the provider with
//! libpq in replication mode, creates the slot on first start, streams from the
//! position its replication origins recorded ([`receiver`]), applies every
//! transaction ([`handlers`], on the state of an [`ApplySession`]) and tells the
//! provider how far it got (flush positions only once the local commits are
//! durable, so the provider never frees WAL we still need).
//!
//! * `receiver`: the replication loop, in named steps;
//! * `stream`: streamed (large, in-progress) transactions, spilled and applied at
//!   commit or eagerly;
//! * `session`: the apply session and the [`Outcome`](session::Outcome) of a message;
//! * `writers`: its relation cache (local mappings, kept executor states);
//! * `transaction`: its per-transaction state;
//! * `handlers`: one handler per protocol message (conflicts, exceptions, table
//!   skips in its submodules);
//! * `executor`, `owner`, `rows`, `queue`: executor calls, running as the table
//!   owner, rows as JSON, `spock.queue` messages;
//! * `sync`, `copy_from`: initial and table synchronisation;
//! * `retention`: asks the provider how far it is, so that deleted row versions
//!   are kept until they cannot matter.

mod copy_from;
mod executor;
mod handlers;
mod owner;
mod parallel;
pub(crate) mod queue;
mod receiver;
mod resync;
mod retention;
mod rows;
mod session;
mod stream;
pub mod subscription;
mod sync;
mod transaction;
mod writers;

use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use spock_core::ident::quote_identifier;
use spock_core::proto::{format_lsn, parse_lsn};

use crate::error::{spi_failed, PgError};
use crate::libpq::Connection;
use crate::workers::APPLY_TYPE;
pub use parallel::MAX_WRITERS;
use receiver::Exit;
use session::ApplySession;
use subscription::SubscriptionInfo;

/// The id of replication origin `name`, created if it does not exist, in a short
/// transaction of its own (call it between remote transactions).
pub(crate) fn origin_named(name: &str) -> pg_sys::RepOriginId {
    let c = std::ffi::CString::new(name).unwrap_or_default();
    // SAFETY: catalog lookup and insert in a transaction of their own.
    unsafe {
        pg_sys::StartTransactionCommand();
        let mut id = pg_sys::replorigin_by_name(c.as_ptr(), true);
        if id == 0 {
            id = pg_sys::replorigin_create(c.as_ptr());
        }
        pg_sys::CommitTransactionCommand();
        id
    }
}

/// The provider cannot be reached or ended the conversation: the worker ends (an
/// error, so that what it holds is let go on the way: its writers stopped, its
/// transaction rolled back) and its manager starts it again, later after each
/// failure in a row. Logged as a WARNING, not an ERROR (`crate::error_context`
/// relabels SQLSTATE 08006 in apply workers): a provider that restarts is normal
/// operation. The error is kept for `spock.sub_show_status`; errors that retrying
/// cannot cure are handled before this, by [`disable_over`].
pub(crate) fn fail(sub: &SubscriptionInfo, what: &str, e: impl std::fmt::Display) -> ! {
    PgError::new(PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE, format!("spock subscription {}: {what}: {e}", sub.name))
        .hint(
            "The worker tries again after spock.restart_delay_default, twice as long after each failure in a row \
             up to spock.restart_delay_max; spock.sub_show_status() shows the last error.",
        )
        .raise()
}

/// The provider answered with an error that retrying cannot cure (`why`): the
/// subscription is disabled and the error recorded with its reason and the slot's
/// state on the provider (`spock.subscription_error`, shown by
/// `spock.sub_show_status`), in one transaction; a WARNING says what to do. The
/// worker then ends without an error.
pub(crate) fn disable_over(
    sub: &SubscriptionInfo,
    conn: &Connection,
    why: spock_core::status::Permanent,
    e: &crate::libpq::LibpqError,
) {
    // The slot's state as the provider reports it (a replication connection runs
    // SQL too).
    let slot = conn
        .query(&format!(
            "SELECT wal_status, invalidation_reason::text FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
            conn.literal(&sub.slot_name)
        ))
        .ok()
        .and_then(|rows| rows.into_iter().next());
    let wal_status = slot.as_ref().and_then(|r| r.first().cloned().flatten());
    let invalidation = slot.as_ref().and_then(|r| r.get(1).cloned().flatten());
    let sqlstate = e.sqlstate.clone().unwrap_or_else(|| "08006".into());
    BackgroundWorker::transaction(|| {
        Spi::run_with_args(
            "UPDATE spock.subscription SET sub_enabled = false WHERE sub_id = $1::int8::oid",
            &[i64::from(sub.id).into()],
        )
        .unwrap_or_else(|e| spi_failed("disabling the subscription", e));
        crate::workers::record_subscription_error(&crate::workers::SubscriptionError {
            sub_id: sub.id,
            sqlstate: &sqlstate,
            message: &e.message,
            at: None,
            next_attempt_ms: None,
            reason: Some(why.name()),
            slot: (wal_status.as_deref(), invalidation.as_deref()),
        })
        .unwrap_or_else(|e| spi_failed("recording why the subscription stopped", e));
    });
    if let Some(i) = crate::workers::shmem::progress_slot(u32::from(my_database()), sub.id) {
        let status =
            wal_status.as_deref().map_or(spock_core::status::WalStatus::Unknown, spock_core::status::WalStatus::parse);
        crate::workers::shmem::update_progress(i, |p| {
            p.slot_wal_status = status.code();
            p.slot_safe_wal_size = None;
            p.slot_checked_at = now_pg();
        });
    }
    pgrx::pg_sys::panic::ErrorReport::new(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!(
            "spock subscription {} disabled: {} ({}): {}{}",
            sub.name,
            why.name(),
            sqlstate,
            e.message,
            invalidation.map(|r| format!(" (slot invalidated: {r})")).unwrap_or_default()
        ),
        "spock",
    )
    .set_hint(why.hint(&sub.name))
    .report(PgLogLevel::WARNING);
}

fn now_pg() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

fn my_database() -> pg_sys::Oid {
    // SAFETY: reads this backend's database id.
    unsafe { pg_sys::MyDatabaseId }
}

/// Creates the subscription's slot on the provider (dropping a leftover one from an
/// interrupted earlier attempt) and starts the origin at its consistent point.
pub(crate) fn create_slot(sub: &SubscriptionInfo) {
    let conn =
        Connection::connect(&sub.provider_dsn, &[("replication", "database"), ("application_name", &sub.slot_name)])
            .unwrap_or_else(|e| fail(sub, "could not connect to the provider in replication mode", e));
    let cmd = format!("CREATE_REPLICATION_SLOT {} LOGICAL spock_output", quote_identifier(&sub.slot_name));
    let rows = match conn.query(&cmd) {
        Ok(r) => r,
        Err(e) if e.sqlstate.as_deref() == Some("42710") => {
            conn.query(&format!("DROP_REPLICATION_SLOT {} WAIT", quote_identifier(&sub.slot_name)))
                .unwrap_or_else(|e| fail(sub, "could not drop the leftover slot", e));
            conn.query(&cmd).unwrap_or_else(|e| fail(sub, "could not create the replication slot", e))
        }
        Err(e) => fail(sub, "could not create the replication slot", e),
    };
    let lsn = rows
        .first()
        .and_then(|r| r.get(1).cloned().flatten())
        .and_then(|s| parse_lsn(&s))
        .unwrap_or_else(|| fail(sub, "CREATE_REPLICATION_SLOT", "no consistent point returned"));
    BackgroundWorker::transaction(|| {
        Spi::run_with_args(
            "SELECT pg_catalog.pg_replication_origin_advance($1, $2::text::pg_lsn)",
            &[sub.slot_name.as_str().into(), format_lsn(lsn).into()],
        )
        .unwrap_or_else(|e| spi_failed("starting the origin at the slot's consistent point", e));
        // (ready: the position is the origin's; 0/0 here, as Spock keeps it)
        subscription::set_sync_status(sub.id, 'r', 0);
    });
    pgrx::log!("spock subscription {}: created slot {} at {}", sub.name, sub.slot_name, format_lsn(lsn));
}

fn report_activity(text: &str) {
    let c = std::ffi::CString::new(text).unwrap_or_default();
    // SAFETY: reports this backend's activity text.
    unsafe { pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, c.as_ptr()) };
}

/// Entry point of an apply worker: the argument is the database, the extra data the
/// subscription id.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn spock_apply_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = pg_sys::Oid::from(arg.value() as u32);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(db), None);
    crate::workers::pin_search_path();
    let sub_id: u32 = BackgroundWorker::get_extra().trim().parse().unwrap_or(0);
    crate::workers::set_worker_subscription(u32::from(db), sub_id);
    let Some(sub) = BackgroundWorker::transaction(|| subscription::load(sub_id)) else {
        return;
    };
    let appname = std::ffi::CString::new(sub.slot_name.as_str()).unwrap_or_default();
    // SAFETY: sets this backend's application_name and applies changes as a replica
    // (user triggers and FK checks do not fire, as in any logical apply).
    unsafe {
        pg_sys::pgstat_report_appname(appname.as_ptr());
        pg_sys::SetConfigOption(
            c"session_replication_role".as_ptr(),
            c"replica".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
        pg_sys::SetConfigOption(
            c"synchronous_commit".as_ptr(),
            c"off".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
    // A transaction that stops this subscription's worker (sub_drop, sub_disable
    // immediate, ...) takes its hold, then terminates workers by application_name.
    // A worker started just before the hold may have set its name after that scan:
    // it sees the hold here and leaves (the hold and the name are the two halves of
    // one handshake, so one side always sees the other).
    if crate::workers::shmem::is_held(u32::from(db), sub_id) {
        pgrx::log!("{APPLY_TYPE} for subscription {}: a transaction is changing the subscription; exiting", sub.name);
        return;
    }
    pgrx::log!("{APPLY_TYPE} for subscription {} started", sub.name);
    parallel::stop_old_writers(&sub);

    if sub.sync_status != 'r' {
        report_activity("initial synchronisation");
        sync::run(&sub);
    }
    crate::invalidation::register();
    let mut session = ApplySession::new(sub.clone());
    session.attach_progress(u32::from(db));
    session.reserve_tombstone_origin();
    // A replayed transaction ends with a reconnect (back to binary transfer); so
    // does a table sync request: tables are copied while the stream stops.
    loop {
        session.release_origin();
        report_activity("synchronising tables");
        session.close_tables();
        sync::sync_pending_tables(&sub);
        session.reload_table_skips();
        if receiver::stream(&sub, &mut session) == Exit::Stop {
            break;
        }
    }
    if crate::workers::sigterm_seen() {
        session.note_stopped_on_request();
    }
    pgrx::log!("{APPLY_TYPE} for subscription {} stopping", sub.name);
}
