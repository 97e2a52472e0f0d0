//! spock's configuration parameters (`spock.*`), with Spock's names and defaults.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use spock_core::conflict::ConflictPolicy;

/// `spock.restart_delay_default`: milliseconds before a failed apply worker is
/// started again.
pub static RESTART_DELAY_DEFAULT: GucSetting<i32> = GucSetting::<i32>::new(5000);

/// Values of `spock.conflict_resolution`.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConflictResolutionGuc {
    /// Newer commit timestamp wins.
    #[name = c"last_update_wins"]
    LastUpdateWins,
    /// Older commit timestamp wins.
    #[name = c"first_update_wins"]
    FirstUpdateWins,
    /// The remote change always wins.
    #[name = c"apply_remote"]
    ApplyRemote,
    /// The local row always wins.
    #[name = c"keep_local"]
    KeepLocal,
    /// Conflicts are errors.
    #[name = c"error"]
    Error,
}

/// `spock.conflict_resolution`.
pub static CONFLICT_RESOLUTION: GucSetting<ConflictResolutionGuc> =
    GucSetting::<ConflictResolutionGuc>::new(ConflictResolutionGuc::LastUpdateWins);

/// Levels for `spock.conflict_log_level`.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum LogLevelGuc {
    /// DEBUG1.
    #[name = c"debug"]
    Debug,
    /// LOG.
    #[name = c"log"]
    Log,
    /// INFO.
    #[name = c"info"]
    Info,
    /// NOTICE.
    #[name = c"notice"]
    Notice,
    /// WARNING.
    #[name = c"warning"]
    Warning,
}

/// `spock.conflict_log_level`.
pub static CONFLICT_LOG_LEVEL: GucSetting<LogLevelGuc> = GucSetting::<LogLevelGuc>::new(LogLevelGuc::Log);

/// `spock.read_retry_count`: how often an UPDATE or DELETE that finds no row looks
/// again before it counts as missing.
pub static READ_RETRY_COUNT: GucSetting<i32> = GucSetting::<i32>::new(5);

/// `spock.save_resolutions`.
pub static SAVE_RESOLUTIONS: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `spock.stream_large_transactions` (spock-rs): apply workers ask the provider to
/// stream large in-progress transactions (`spock_rs.streaming`). Read when a worker
/// connects.
pub static STREAM_LARGE_TRANSACTIONS: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `spock.stream_eager_apply` (spock-rs): apply a streamed transaction while it
/// arrives when nothing else is in flight (rolled back and replayed from the spill
/// file at commit if anything interleaves or conflicts).
pub static STREAM_EAGER_APPLY: GucSetting<bool> = GucSetting::<bool>::new(true);

/// Registers the parameters; called from `_PG_init`.
pub fn init() {
    GucRegistry::define_int_guc(
        c"spock.restart_delay_default",
        c"Delay before a failed spock apply worker is restarted.",
        c"In milliseconds.",
        &RESTART_DELAY_DEFAULT,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_enum_guc(
        c"spock.conflict_resolution",
        c"How conflicts between a remote change and a local row are resolved.",
        c"last_update_wins (newer commit timestamp wins, ties broken by node), first_update_wins, apply_remote, keep_local or error.",
        &CONFLICT_RESOLUTION,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"spock.conflict_log_level",
        c"Log level of conflict reports.",
        c"",
        &CONFLICT_LOG_LEVEL,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"spock.read_retry_count",
        c"Retries of an UPDATE or DELETE that finds no row before it counts as missing.",
        c"In a mesh the row may still be on its way through another subscription; retry n waits 10*n ms.",
        &READ_RETRY_COUNT,
        0,
        100,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"spock.save_resolutions",
        c"Record resolved conflicts in spock.resolutions.",
        c"",
        &SAVE_RESOLUTIONS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"spock.stream_large_transactions",
        c"Ask providers to stream large transactions while they are in progress.",
        c"The subscriber spills them to pg_spock/stream and applies them at commit. Only spock-rs providers stream; takes effect when an apply worker (re)connects.",
        &STREAM_LARGE_TRANSACTIONS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"spock.stream_eager_apply",
        c"Apply a streamed transaction while it arrives when nothing else is in flight.",
        c"Rolled back and replayed from the spill file at commit when another transaction interleaves or a conflict needs the commit timestamp.",
        &STREAM_EAGER_APPLY,
        GucContext::Sighup,
        GucFlags::default(),
    );
}

/// The restart delay in milliseconds.
pub fn restart_delay_ms() -> u64 {
    RESTART_DELAY_DEFAULT.get().max(0) as u64
}

/// The conflict policy in force.
pub fn conflict_policy() -> ConflictPolicy {
    match CONFLICT_RESOLUTION.get() {
        ConflictResolutionGuc::LastUpdateWins => ConflictPolicy::LastUpdateWins,
        ConflictResolutionGuc::FirstUpdateWins => ConflictPolicy::FirstUpdateWins,
        ConflictResolutionGuc::ApplyRemote => ConflictPolicy::ApplyRemote,
        ConflictResolutionGuc::KeepLocal => ConflictPolicy::KeepLocal,
        ConflictResolutionGuc::Error => ConflictPolicy::Error,
    }
}
