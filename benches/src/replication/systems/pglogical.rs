//! pglogical 2.4 on Debian's PostgreSQL 15: a provider node and a subscriber node.
//!
//! Needs the Debian packages `postgresql-15` and `postgresql-15-pglogical`; they are
//! installed with apt-get when missing (unless `--no-install`), and the system is
//! skipped with the reason when that is impossible. `SPOCK_BENCH_PG15_BINDIR`
//! overrides where PostgreSQL 15's programs are.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{literal, provider_sql, Env, Pair, System};
use crate::replication::Result;
use spock_tests::PgInstall;

const DEFAULT_BINDIR: &str = "/usr/lib/postgresql/15/bin";
const PACKAGES: &[&str] = &["postgresql-15-pglogical"];

/// pglogical provider -> subscriber.
#[derive(Default)]
pub struct Pglogical {
    install: Option<PgInstall>,
    plugin_list: bool,
}

fn bindir() -> PathBuf {
    std::env::var_os("SPOCK_BENCH_PG15_BINDIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_BINDIR))
}

fn present(bindir: &Path) -> bool {
    bindir.join("postgres").exists() && bindir.parent().is_some_and(|d| d.join("lib/pglogical.so").exists())
}

fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// `apt-get install` (after `apt-get update` if the first attempt fails), as root or
/// through `sudo -n`.
pub fn apt_install(packages: &[&str]) -> std::result::Result<(), String> {
    eprintln!("[bench] installing Debian packages: {}", packages.join(" "));
    let apt = |args: &[&str]| -> std::result::Result<(), String> {
        let mut cmd = if running_as_root() {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.args(["-n", "apt-get"]);
            c
        };
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        let out = cmd.output().map_err(|e| format!("cannot run apt-get: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            Err(format!(
                "apt-get {} failed: {}",
                args.join(" "),
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            ))
        }
    };
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend_from_slice(packages);
    if apt(&install).is_ok() {
        return Ok(());
    }
    apt(&["update", "-q"])?;
    apt(&install)
}

fn package_version(pkg: &str) -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", pkg])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

impl System for Pglogical {
    fn name(&self) -> &'static str {
        "pglogical"
    }

    fn prepare(&mut self, env: &Env) -> std::result::Result<String, String> {
        let dir = bindir();
        if !present(&dir) {
            if !env.allow_install {
                return Err(format!(
                    "pglogical for PostgreSQL 15 is not installed in {} (--no-install)",
                    dir.display()
                ));
            }
            apt_install(PACKAGES).map_err(|e| format!("cannot install pglogical: {e}"))?;
            if !present(&dir) {
                return Err(format!(
                    "installed {} but {} has no postgres or ../lib/pglogical.so",
                    PACKAGES.join(" "),
                    dir.display()
                ));
            }
        }
        let install = PgInstall::at(&dir).map_err(|e| e.0)?;
        // Debian's 15.19+ only lets slots use listed output plugins
        self.plugin_list = install.has_setting("output_plugin_libraries");
        let desc = format!("pglogical {} on {}", package_version("postgresql-15-pglogical"), install.version);
        self.install = Some(install);
        Ok(desc)
    }

    fn install(&self) -> &PgInstall {
        self.install.as_ref().expect("prepare() succeeded")
    }

    fn settings(&self) -> Vec<(String, String)> {
        let mut s = vec![("shared_preload_libraries".to_string(), "'pglogical'".to_string())];
        if self.plugin_list {
            s.push(("output_plugin_libraries".into(), "'pgoutput, pglogical_output'".into()));
        }
        s
    }

    fn apply_process_patterns(&self) -> &'static [&'static str] {
        // background worker "pglogical apply <dboid>:<subid>"
        &["pglogical apply"]
    }

    fn setup(&self, pair: &Pair) -> Result<()> {
        pair.provider.execute(&provider_sql(
            "pglogical",
            format!(
                "SELECT pglogical.create_node(node_name := 'provider', dsn := {})",
                literal(&pair.provider.dsn("postgres"))
            ),
            "pglogical.replication_set_add_table",
        ))?;
        pair.subscriber.execute(&format!(
            "CREATE EXTENSION pglogical;
             SELECT pglogical.create_node(node_name := 'subscriber', dsn := {});
             SELECT pglogical.create_subscription(subscription_name := 'bench_sub', provider_dsn := {},
                 replication_sets := ARRAY['default', 'default_insert_only'], synchronize_structure := false,
                 synchronize_data := false, forward_origins := '{{}}')",
            literal(&pair.subscriber.dsn("postgres")),
            literal(&pair.provider.dsn("postgres"))
        ))
    }

    fn disable(&self, pair: &Pair) -> Result<()> {
        pair.subscriber.execute("SELECT pglogical.alter_subscription_disable('bench_sub', true)")
    }

    fn enable(&self, pair: &Pair) -> Result<()> {
        pair.subscriber.execute("SELECT pglogical.alter_subscription_enable('bench_sub', true)")
    }
}
