//! spock's configuration parameters (`spock.*`), with Spock's names and defaults.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use spock_core::conflict::ConflictPolicy;

/// `spock.restart_delay_default`: milliseconds before a failed apply worker is
/// started again.
pub static RESTART_DELAY_DEFAULT: GucSetting<i32> = GucSetting::<i32>::new(5000);

/// `spock.restart_delay_max` (spock-rs): milliseconds the delay before a failed
/// apply worker starts again grows to, doubling with each failure in a row.
pub static RESTART_DELAY_MAX: GucSetting<i32> = GucSetting::<i32>::new(60000);

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

/// `spock.check_all_uc_indexes`: an INSERT whose key is not here is also checked
/// against the table's other unique indexes, and a local row one of them finds is
/// the row the INSERT conflicts with (Spock's setting, off by default as there).
pub static CHECK_ALL_UC_INDEXES: GucSetting<bool> = GucSetting::<bool>::new(false);

/// Values of `spock.readonly`. `user` is Spock's older name of `local`: the same
/// value (SHOW says `local`), hence the entries written out below rather than
/// derived (a derived enum gives every name its own value).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReadonlyGuc {
    /// Writable.
    Off,
    /// Sessions of non-superusers are read-only; replicated changes apply.
    Local,
    /// Also no replicated change applies: the apply workers stop.
    All,
}

/// `config_enum_entry` rows of `spock.readonly`, ending with PostgreSQL's NULL row.
struct ReadonlyEntries([pgrx::pg_sys::config_enum_entry; 5]);

// SAFETY: immutable data pointing only at static C strings.
unsafe impl Sync for ReadonlyEntries {}

static READONLY_ENTRIES: ReadonlyEntries = ReadonlyEntries([
    pgrx::pg_sys::config_enum_entry { name: c"off".as_ptr(), val: 0, hidden: false },
    pgrx::pg_sys::config_enum_entry { name: c"local".as_ptr(), val: 1, hidden: false },
    pgrx::pg_sys::config_enum_entry { name: c"user".as_ptr(), val: 1, hidden: true },
    pgrx::pg_sys::config_enum_entry { name: c"all".as_ptr(), val: 2, hidden: false },
    pgrx::pg_sys::config_enum_entry { name: std::ptr::null(), val: 0, hidden: false },
]);

// SAFETY: the entries end with the NULL row, and their values are exactly the
// ordinals from_ordinal and to_ordinal map.
unsafe impl pgrx::guc::GucEnum for ReadonlyGuc {
    fn from_ordinal(ordinal: i32) -> Self {
        match ordinal {
            1 => ReadonlyGuc::Local,
            2 => ReadonlyGuc::All,
            _ => ReadonlyGuc::Off,
        }
    }

    fn to_ordinal(&self) -> i32 {
        match self {
            ReadonlyGuc::Off => 0,
            ReadonlyGuc::Local => 1,
            ReadonlyGuc::All => 2,
        }
    }

    const CONFIG_ENUM_ENTRY: *const pgrx::pg_sys::config_enum_entry = READONLY_ENTRIES.0.as_ptr();
}

/// `spock.readonly` (Spock's read-only modes).
pub static READONLY: GucSetting<ReadonlyGuc> = GucSetting::<ReadonlyGuc>::new(ReadonlyGuc::Off);

/// `spock.resolutions_retention_days`: `spock.resolutions` rows older than this
/// are deleted once a day (0: never).
pub static RESOLUTIONS_RETENTION_DAYS: GucSetting<i32> = GucSetting::<i32>::new(100);

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

/// Values of `spock.exception_behaviour`.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum ExceptionBehaviourGuc {
    /// Apply each change on its own; skip (and log) the ones that fail.
    #[name = c"discard"]
    Discard,
    /// Skip (and log) the whole failed transaction.
    #[name = c"transdiscard"]
    TransDiscard,
    /// Log the failed transaction and disable the subscription.
    #[name = c"sub_disable"]
    SubDisable,
}

/// `spock.exception_behaviour`.
pub static EXCEPTION_BEHAVIOUR: GucSetting<ExceptionBehaviourGuc> =
    GucSetting::<ExceptionBehaviourGuc>::new(ExceptionBehaviourGuc::TransDiscard);

/// Values of `spock.exception_logging`.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum ExceptionLoggingGuc {
    /// No exception_log rows.
    #[name = c"none"]
    None,
    /// Rows for the changes that failed.
    #[name = c"discard"]
    Discard,
    /// Rows for every change of a failed transaction.
    #[name = c"all"]
    All,
}

/// `spock.exception_logging`.
pub static EXCEPTION_LOGGING: GucSetting<ExceptionLoggingGuc> =
    GucSetting::<ExceptionLoggingGuc>::new(ExceptionLoggingGuc::All);

/// `spock.restart_delay_on_exception`: milliseconds before an apply worker that
/// stopped on an exception is started again to replay the failed transaction.
pub static RESTART_DELAY_ON_EXCEPTION: GucSetting<i32> = GucSetting::<i32>::new(0);

/// `spock.output_delay` (ms, Spock's testing setting): the output plugin waits this
/// long before each transaction it decodes, so that tests can make changes cross.
pub static OUTPUT_DELAY: GucSetting<i32> = GucSetting::<i32>::new(0);

/// `spock.exception_replay_queue_size` (MB, Spock's name): most memory the messages
/// of the transaction being applied may take to be replayed from memory if it
/// fails; a larger one is replayed after the worker's restart instead (the
/// provider sends it again). 0: no limit.
pub static EXCEPTION_REPLAY_QUEUE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(64);

/// [`EXCEPTION_REPLAY_QUEUE_SIZE`] in bytes (`usize::MAX`: no limit).
pub fn exception_replay_queue_bytes() -> usize {
    match EXCEPTION_REPLAY_QUEUE_SIZE.get() {
        n if n <= 0 => usize::MAX,
        n => (n as usize) << 20,
    }
}

/// `spock.pause_timeout`: longest pause of apply workers (`spock.pause_apply_workers()`),
/// in milliseconds; a pause that is not resumed ends by itself.
pub static PAUSE_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(10_000);
/// `spock.stream_large_transactions` (spock-rs): apply workers ask the provider to
/// stream large in-progress transactions (`spock_rs.streaming`). Read when a worker
/// connects.
pub static STREAM_LARGE_TRANSACTIONS: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `spock.stream_eager_apply` (spock-rs): apply a streamed transaction while it
/// arrives when nothing else is in flight (rolled back and replayed from the spill
/// file at commit if anything interleaves or conflicts).
pub static STREAM_EAGER_APPLY: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `spock.batch_transfer` (spock-rs): apply workers ask the provider to put several
/// messages of a transaction into one packet (`spock_rs.batch`). Read when a
/// worker connects.
pub static BATCH_TRANSFER: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `spock.run_as_owner` (spock-rs, as PostgreSQL's subscription option): on, applied
/// changes run as the apply worker's user (superuser) instead of the owner of each
/// table (docs/apply.md).
pub static RUN_AS_OWNER: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `spock.deleted_version_retention`: longest time (seconds) deleted row versions
/// are kept for late changes of peers (0: not kept).
pub static DELETED_VERSION_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(600);

/// `spock.parallel_apply_workers` (spock-rs): writers per subscription (1: the
/// subscription's worker applies everything itself). Read when a worker connects;
/// `sub_alter_options` overrides it per subscription.
pub static PARALLEL_APPLY_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(1);

/// `spock.parallel_apply_adaptive` (spock-rs): with several writers, the leader
/// measures while a backlog is applied whether the writers or itself alone apply
/// faster, and keeps the faster (spock_core::parallel::Chooser).
pub static PARALLEL_APPLY_ADAPTIVE: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `spock.parallel_apply_window` (spock-rs): how long each of those measurements
/// lasts (milliseconds).
pub static PARALLEL_APPLY_WINDOW: GucSetting<i32> = GucSetting::<i32>::new(500);

/// Whether parallel apply chooses between its writers and the leader alone.
pub fn parallel_apply_adaptive() -> bool {
    PARALLEL_APPLY_ADAPTIVE.get()
}

/// The length of a parallel apply measurement.
pub fn parallel_apply_window() -> std::time::Duration {
    std::time::Duration::from_millis(PARALLEL_APPLY_WINDOW.get().max(1) as u64)
}

/// Registers the parameters; called from `_PG_init`.
pub fn init() {
    GucRegistry::define_int_guc(
        c"spock.pause_timeout",
        c"Longest pause of the apply workers by spock.pause_apply_workers().",
        c"A pause that is not resumed ends by itself after this time (milliseconds).",
        &PAUSE_TIMEOUT,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_enum_guc(
        c"spock.exception_behaviour",
        c"What the apply worker does with a remote transaction that fails to apply.",
        c"discard (skip the failing changes), transdiscard (skip the transaction) or sub_disable (disable the subscription). Skipped changes are logged in spock.exception_log.",
        &EXCEPTION_BEHAVIOUR,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"spock.exception_logging",
        c"Which changes of a failed remote transaction are recorded in spock.exception_log.",
        c"none, discard (the failing changes) or all.",
        &EXCEPTION_LOGGING,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"spock.parallel_apply_workers",
        c"Writers that apply each subscription's transactions in parallel.",
        c"Transactions that touch the same key are applied in commit order, everything else side by side, and every transaction commits in the provider's commit order. 1 applies in the subscription's worker alone. Each writer takes a background worker slot (max_worker_processes).",
        &PARALLEL_APPLY_WORKERS,
        1,
        crate::apply::MAX_WRITERS as i32,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"spock.parallel_apply_adaptive",
        c"Parallel apply uses its writers only where they apply faster than the subscription's worker alone.",
        c"While a backlog is applied, the subscription's worker measures both ways in turn and keeps the faster (writers by at least 10 %), and measures again a minute later. Off: the writers always apply.",
        &PARALLEL_APPLY_ADAPTIVE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"spock.parallel_apply_window",
        c"How long each throughput measurement of spock.parallel_apply_adaptive lasts.",
        c"A measurement counts only if a backlog was applied throughout it.",
        &PARALLEL_APPLY_WINDOW,
        100,
        600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"spock.deleted_version_retention",
        c"Longest time deleted row versions are kept for late changes of peers.",
        c"A deleted row's version (its commit time and origin) decides against an older change of the same key that a peer sends later. It is kept until every subscription has applied what its provider committed before the delete, but no longer than this; 0 keeps nothing.",
        &DELETED_VERSION_RETENTION,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"spock.output_delay",
        c"For testing conflicts, delay in output plugin in ms",
        c"The output plugin waits this long before each transaction it decodes.",
        &OUTPUT_DELAY,
        0,
        60_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"spock.exception_replay_queue_size",
        c"Most memory a transaction's messages may take to be replayed from memory if it fails.",
        c"A larger failed transaction is replayed after the apply worker restarts. 0: no limit.",
        &EXCEPTION_REPLAY_QUEUE_SIZE,
        0,
        i32::MAX / 1024,
        GucContext::Sighup,
        GucFlags::UNIT_MB,
    );
    GucRegistry::define_int_guc(
        c"spock.restart_delay_on_exception",
        c"Delay before an apply worker stopped by an exception is started again.",
        c"In milliseconds.",
        &RESTART_DELAY_ON_EXCEPTION,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
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
    GucRegistry::define_int_guc(
        c"spock.restart_delay_max",
        c"Longest delay before a spock apply worker that keeps failing is restarted.",
        c"In milliseconds. The delay starts at spock.restart_delay_default and doubles with each failure in a row.",
        &RESTART_DELAY_MAX,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_enum_guc(
        c"spock.readonly",
        c"Controls cluster read-only mode.",
        c"off; local: sessions of non-superusers cannot write (their transactions are read-only); all: neither do the apply workers, which stop.",
        &READONLY,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"spock.resolutions_retention_days",
        c"Number of days to retain rows in spock.resolutions.",
        c"Older rows are deleted once a day by each database's spock manager; 0 disables the cleanup.",
        &RESOLUTIONS_RETENTION_DAYS,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"spock.check_all_uc_indexes",
        c"Check all valid unique indexes for conflict resolution on INSERT when primary or replica identity index fails.",
        c"A remote INSERT that meets a local row through another unique index is resolved as a conflict with that row instead of failing.",
        &CHECK_ALL_UC_INDEXES,
        GucContext::Sighup,
        GucFlags::default(),
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
        c"spock.batch_transfer",
        c"Ask providers to send several messages of a transaction per packet.",
        c"Only spock-rs providers batch; a Spock provider sends one message per packet as always. Takes effect when an apply worker (re)connects.",
        &BATCH_TRANSFER,
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
    GucRegistry::define_bool_guc(
        c"spock.run_as_owner",
        c"Apply replicated changes as the apply worker's user instead of each table's owner.",
        c"Off (the default): triggers, defaults and constraints of a table run as its owner, in a security-restricted operation, when a change is applied or copied.",
        &RUN_AS_OWNER,
        GucContext::Sighup,
        GucFlags::default(),
    );
}

/// The cap on keeping deleted row versions, in microseconds; `None` when they are
/// not kept.
pub fn deleted_version_retention_us() -> Option<i64> {
    let s = DELETED_VERSION_RETENTION.get();
    (s > 0).then(|| i64::from(s) * 1_000_000)
}

/// The restart delay in milliseconds.
pub fn restart_delay_ms() -> u64 {
    RESTART_DELAY_DEFAULT.get().max(0) as u64
}

/// `spock.restart_delay_max` in milliseconds.
pub fn restart_delay_max_ms() -> u64 {
    RESTART_DELAY_MAX.get().max(0) as u64
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

/// The exception behaviour in force.
pub fn exception_behaviour() -> spock_core::exception::ExceptionBehaviour {
    use spock_core::exception::ExceptionBehaviour as B;
    match EXCEPTION_BEHAVIOUR.get() {
        ExceptionBehaviourGuc::Discard => B::Discard,
        ExceptionBehaviourGuc::TransDiscard => B::TransDiscard,
        ExceptionBehaviourGuc::SubDisable => B::SubDisable,
    }
}

/// The exception logging in force.
pub fn exception_logging() -> spock_core::exception::ExceptionLogging {
    use spock_core::exception::ExceptionLogging as L;
    match EXCEPTION_LOGGING.get() {
        ExceptionLoggingGuc::None => L::None,
        ExceptionLoggingGuc::Discard => L::Discard,
        ExceptionLoggingGuc::All => L::All,
    }
}

// ---------------------------------------------------------------------------
// DDL replication (spock.queue, AutoDDL): Spock's names and defaults. The AutoDDL
// switches are superuser-only here (Spock lets every user set them, so a plain role
// could put her tables into a replication set that repset_add_table refuses her).

/// `spock.enable_ddl_replication`: queue DDL statements automatically (AutoDDL).
pub static ENABLE_DDL_REPLICATION: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `spock.include_ddl_repset`: AutoDDL puts created tables into `default` /
/// `default_insert_only`.
pub static INCLUDE_DDL_REPSET: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `spock.allow_ddl_from_functions`: AutoDDL also queues DDL run inside functions.
pub static ALLOW_DDL_FROM_FUNCTIONS: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `spock.deny_all_ddl`: every DDL statement is refused.
pub static DENY_ALL_DDL: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `spock.replication_repair_mode`: set by `spock.repair_mode()` for the rest of
/// the transaction; AutoDDL leaves DDL alone meanwhile.
pub static REPLICATION_REPAIR_MODE: GucSetting<bool> = GucSetting::<bool>::new(false);

/// Registers the DDL replication parameters; called from `_PG_init`.
pub fn init_ddl() {
    GucRegistry::define_bool_guc(
        c"spock.replication_repair_mode",
        c"Set by spock.repair_mode(): this transaction's changes stay on this node.",
        c"",
        &REPLICATION_REPAIR_MODE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"spock.deny_all_ddl",
        c"Deny All DDL statements",
        c"",
        &DENY_ALL_DDL,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"spock.enable_ddl_replication",
        c"Replicate All DDL statements automatically",
        c"DDL statements are queued in spock.queue for the replication set default_insert_only.",
        &ENABLE_DDL_REPLICATION,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"spock.include_ddl_repset",
        c"Add tables to the replication set while doing ddl replication",
        c"Tables with a replica identity go to default, others to default_insert_only.",
        &INCLUDE_DDL_REPSET,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"spock.allow_ddl_from_functions",
        c"Allow replication of DDL statements from within functions",
        c"",
        &ALLOW_DDL_FROM_FUNCTIONS,
        GucContext::Suset,
        GucFlags::default(),
    );
}
