//! spock-rs itself: provider and subscriber nodes on PostgreSQL 18 with the spock
//! extension of `SPOCK_PG_CONFIG` (`spock.node_create`, `spock.repset_add_table`,
//! `spock.sub_create` without initial sync; the apply worker is the background
//! worker "spock apply <subscription>").
//!
//! Runs only when the installed extension has `spock.sub_create` (the subscriber
//! side); otherwise it is reported as not available and skipped: no number is ever
//! produced for it. What is installed matters: a debug build is flagged in the
//! description. `scripts/bench.sh` builds a release spock into a private copy of
//! PostgreSQL 18 and points `SPOCK_PG_CONFIG` at it.
//!
//! Catch-up (replication origin), lag (commit timestamps + subscriber column
//! default) and the large transaction are measured generically. spock-rs does not
//! stream in-progress transactions yet (docs/apply.md), so there is no streaming
//! variant of the large transaction.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{literal, provider_sql, Env, JoinVariant, Pair, System};
use crate::replication::Result;
use spock_tests::PgInstall;

/// Why the system is skipped when the subscriber side is missing.
pub const NOT_AVAILABLE: &str = "not available yet: the installed spock has no subscriber side (spock.sub_create)";

/// spock provider -> spock subscriber.
pub struct Spock {
    install: Option<PgInstall>,
    name: &'static str,
    /// Settings on top of the defaults (a variant).
    extra: &'static [(&'static str, &'static str)],
}

impl Default for Spock {
    fn default() -> Spock {
        Spock { install: None, name: "spock", extra: &[] }
    }
}

impl Spock {
    /// spock-rs keeping no deleted row versions (`spock.deleted_version_retention =
    /// 0`): what deciding races against deletes costs, side by side with the
    /// default (docs/apply.md). Runs only when named in `--systems`.
    pub fn without_retention() -> Spock {
        Spock { install: None, name: "spock-noretain", extra: &[("spock.deleted_version_retention", "0")] }
    }

    /// spock-rs applying with `n` (2 or 4) writers per subscription, always
    /// (`spock.parallel_apply_workers`, `spock.parallel_apply_adaptive = off`; `spock`
    /// itself applies with one process). Runs only when named in `--systems`.
    pub fn parallel(n: u32) -> Spock {
        match n {
            2 => Spock {
                install: None,
                name: "spock-p2",
                extra: &[("spock.parallel_apply_workers", "2"), ("spock.parallel_apply_adaptive", "off")],
            },
            _ => Spock {
                install: None,
                name: "spock-p4",
                extra: &[("spock.parallel_apply_workers", "4"), ("spock.parallel_apply_adaptive", "off")],
            },
        }
    }

    /// spock-rs with 4 writers per subscription that the subscription's worker uses
    /// only where they apply faster than itself (`spock.parallel_apply_adaptive`,
    /// the default). Runs only when named in `--systems`.
    pub fn adaptive() -> Spock {
        Spock { install: None, name: "spock-p4a", extra: &[("spock.parallel_apply_workers", "4")] }
    }
}

fn pg_config(install: &PgInstall, flag: &str) -> std::result::Result<PathBuf, String> {
    let out =
        Command::new(install.program("pg_config")).arg(flag).output().map_err(|e| format!("pg_config {flag}: {e}"))?;
    if !out.status.success() {
        return Err(format!("pg_config {flag} failed"));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Whether `installed` is byte for byte the library cargo built in `profile` of this
/// workspace.
fn same_file(installed: &Path, profile: &str) -> bool {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target").join(profile).join("libspock.so");
    match (std::fs::metadata(installed), std::fs::metadata(&built)) {
        (Ok(a), Ok(b)) if a.len() == b.len() => std::fs::read(installed).ok() == std::fs::read(&built).ok(),
        _ => false,
    }
}

impl System for Spock {
    fn name(&self) -> &'static str {
        self.name
    }

    fn by_default(&self) -> bool {
        self.extra.is_empty()
    }

    fn prepare(&mut self, env: &Env) -> std::result::Result<String, String> {
        let share = pg_config(&env.pg18, "--sharedir")?.join("extension");
        let lib = pg_config(&env.pg18, "--pkglibdir")?;
        let scripts: Vec<PathBuf> = std::fs::read_dir(&share)
            .map_err(|e| format!("{}: {e}", share.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().is_some_and(|n| {
                    n.to_string_lossy().starts_with("spock--") && n.to_string_lossy().ends_with(".sql")
                })
            })
            .collect();
        if scripts.is_empty() || !lib.join("spock.so").exists() {
            return Err(format!(
                "spock is not installed in {} (scripts/bench.sh installs a release build)",
                env.pg18.bindir.display()
            ));
        }
        if !scripts.iter().any(|p| std::fs::read_to_string(p).is_ok_and(|s| s.contains("spock.sub_create"))) {
            return Err(NOT_AVAILABLE.to_string());
        }
        if !lib.join("spock_output.so").exists() {
            return Err(format!("{} has spock.so but no spock_output.so", lib.display()));
        }
        let so = lib.join("spock.so");
        let build = if same_file(&so, "release") {
            "release build of this checkout"
        } else if same_file(&so, "debug") {
            "DEBUG build of this checkout: not representative, install a release build (scripts/bench.sh)"
        } else {
            "build of unknown profile (not the current target/release or target/debug)"
        };
        let version = std::fs::read_to_string(share.join("spock.control"))
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("default_version"))
                    .map(|l| l.split('\'').nth(1).unwrap_or("?").to_string())
            })
            .unwrap_or_else(|| "?".into());
        self.install = Some(env.pg18.clone());
        Ok(format!("spock-rs {version} on {} ({}: {build})", env.pg18.version, so.display()))
    }

    fn install(&self) -> &PgInstall {
        self.install.as_ref().expect("prepare() succeeded")
    }

    fn settings(&self) -> Vec<(String, String)> {
        let mut s = vec![
            ("shared_preload_libraries".to_string(), "'spock'".to_string()),
            // The baseline ("off") is Spock's behaviour: no streaming of in-progress
            // transactions; the large transaction is measured again with it on.
            ("spock.stream_large_transactions".to_string(), "off".to_string()),
        ];
        s.extend(self.extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        if self.install.as_ref().is_some_and(|i| i.has_setting("output_plugin_libraries")) {
            s.push(("output_plugin_libraries".into(), "'pgoutput, spock_output'".into()));
        }
        // Experiments: SPOCK_BENCH_SPOCK_SETTINGS="spock.batch_transfer=off,..."
        // (docs/benchmarks.md).
        if let Ok(extra) = std::env::var("SPOCK_BENCH_SPOCK_SETTINGS") {
            for kv in extra.split(',').filter(|kv| !kv.trim().is_empty()) {
                if let Some((k, v)) = kv.split_once('=') {
                    s.push((k.trim().to_string(), v.trim().to_string()));
                }
            }
        }
        s
    }

    fn apply_process_patterns(&self) -> &'static [&'static str] {
        // background worker "spock apply <subscription>"
        &["spock apply"]
    }

    fn setup(&self, pair: &Pair) -> Result<()> {
        pair.provider.execute(&provider_sql(
            "spock",
            format!("SELECT spock.node_create('provider', {})", literal(&pair.provider.dsn("postgres"))),
            "spock.repset_add_table",
        ))?;
        pair.subscriber.execute(&format!(
            "CREATE EXTENSION spock;
             SELECT spock.node_create('subscriber', {});
             SELECT spock.sub_create('bench_sub', {}, ARRAY['default', 'default_insert_only'],
                 synchronize_structure := false, synchronize_data := false)",
            literal(&pair.subscriber.dsn("postgres")),
            literal(&pair.provider.dsn("postgres"))
        ))
    }

    fn disable(&self, pair: &Pair) -> Result<()> {
        pair.subscriber.execute("SELECT spock.sub_disable('bench_sub', immediate := true)")
    }

    fn enable(&self, pair: &Pair) -> Result<()> {
        pair.subscriber.execute("SELECT spock.sub_enable('bench_sub', immediate := true)")
    }

    fn join_variants(&self) -> &'static [JoinVariant] {
        &[
            JoinVariant {
                name: "data",
                schema_beforehand: true,
                how: "`sub_create(synchronize_structure := false, synchronize_data := true)`, schema created beforehand (as for native)",
            },
            JoinVariant {
                name: "structure+data",
                schema_beforehand: false,
                how: "`sub_create(synchronize_structure := true, synchronize_data := true)` on an empty database: pg_dump/pg_restore pre-data, COPY, post-data",
            },
        ]
    }

    fn join_provider(&self, pair: &Pair) -> Result<()> {
        // repset_add_all_tables skips tables without a replica identity (with a
        // warning): pgbench_history goes to the insert-only set
        pair.provider.execute(&format!(
            "CREATE EXTENSION spock;
             SELECT spock.node_create('provider', {});
             SELECT spock.repset_add_all_tables('default', '{{public}}');
             SELECT spock.repset_add_table('default_insert_only', 'pgbench_history');",
            literal(&pair.provider.dsn("postgres"))
        ))
    }

    fn join_subscriber(&self, pair: &Pair) -> Result<()> {
        pair.subscriber.execute(&format!(
            "CREATE EXTENSION spock; SELECT spock.node_create('subscriber', {})",
            literal(&pair.subscriber.dsn("postgres"))
        ))
    }

    fn join_start_sql(&self, pair: &Pair, variant: &JoinVariant) -> String {
        format!(
            "SELECT spock.sub_create('join_sub', {}, ARRAY['default', 'default_insert_only'],
                 synchronize_structure := {}, synchronize_data := true)",
            literal(&pair.provider.dsn("postgres")),
            !variant.schema_beforehand
        )
    }

    fn join_state_sql(&self) -> &'static str {
        // the subscription's sync row: i -> [s(tructure) ->] d(ata) -> c(opied) -> r(eady)
        "SELECT coalesce((SELECT CASE sync_status WHEN 'r' THEN 'ready' WHEN 'i' THEN 'start' WHEN 's' THEN 'structure'
                                                  WHEN 'd' THEN 'copy' WHEN 'c' THEN 'post-data' ELSE sync_status::text END
                            FROM spock.local_sync_status WHERE sync_nspname IS NULL), 'no subscription')"
    }

    fn join_ready_sql(&self) -> Option<&'static str> {
        Some("SELECT spock.sub_wait_for_sync('join_sub')")
    }

    fn streaming_modes(&self) -> &'static [&'static str] {
        &["on"]
    }

    fn set_streaming(&self, pair: &Pair, mode: &str) -> Result<()> {
        // Read when the apply worker connects: reconnect it.
        pair.subscriber.execute(&format!("ALTER SYSTEM SET spock.stream_large_transactions = {mode}"))?;
        pair.subscriber.reload_conf()?;
        self.disable(pair)?;
        self.enable(pair)
    }
}
