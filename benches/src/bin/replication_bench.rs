//! End-to-end logical replication benchmark: replication systems side by side in
//! one run, rounds interleaved A/B/A/B, medians and ratios against PostgreSQL's
//! native logical replication (DESIGN.md section 6; method in docs/benchmarks.md).
//!
//! ```text
//! replication-bench [--quick] [--rounds N] [--systems native,pglogical,spock,spock-noretain,spock-p2,spock-p4,spock-p4a]
//!                   [--workloads replication,deletes,parallel,join,decode] [--data-root DIR]
//!                   [--out DIR] [--no-install] [--no-decode] [--keep]
//!                   [--scale N] [--backlog-secs N] [--steady-secs N] [--steady-rate N]
//!                   [--large-rows N]
//! replication-bench --report-from target/bench-results/replication.json [--out DIR]
//! ```
//!
//! Systems: `native` (PostgreSQL 18 publication/subscription; streaming=off, and
//! streaming=parallel for the large transaction), `pglogical` (2.4 on Debian's
//! PostgreSQL 15; its packages are installed when missing), `spock` (spock-rs on
//! PostgreSQL 18, when the installed extension has `spock.sub_create`; otherwise
//! reported as not available and skipped), `spock-noretain` (spock-rs keeping no
//! deleted row versions; only when named in `--systems`), `spock-p2` and
//! `spock-p4` (spock-rs applying with 2 and 4 writers per subscription, always;
//! only when named in `--systems`), `spock-p4a` (4 writers, used only where they
//! are faster: `spock.parallel_apply_adaptive`; only when named).
//!
//! Workloads (`--workloads`, default all of them; quick mode: replication,
//! deletes, parallel, join): `replication` (backlog catch-up, steady lag, one large
//! transaction: one pair per round and system), `deletes` (catch-up of a
//! delete-heavy mix on the same pair), `parallel` (catch-up of simple-update,
//! tpcb-like and an insert mix on the same pair, with the CPU seconds of the
//! walsender, the apply leader and the writers), `join` (a new node copies a pgbench database: one pair per
//! round, system and way of joining; native and spock), `decode` (`decode-bench`,
//! spock_output vs pgoutput decoding, when it is built next to this program).
//!
//! Writes `target/bench-results/replication.{json,md}` and
//! `replication-{join,lag,catchup,throughput,large}.svg` (`replication-quick*` in
//! quick mode). Quick mode (< 3 minutes) is a smoke test and asserts nothing about
//! speed. Exit status 1 when a round failed.
//! `--report-from` renders the Markdown and plots of an earlier run again from its
//! JSON (after a change to the report code).

#[path = "../replication/mod.rs"]
mod replication;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use replication::node;
use replication::report::{Report, SystemStatus};
use replication::systems::{self, Env};
use replication::{join, workload, Config, WORKLOADS};
use spock_tests::PgInstall;

const USAGE: &str = "usage: replication-bench [--quick] [--rounds N] [--systems native,pglogical,spock,spock-noretain,spock-p2,spock-p4,spock-p4a] \
[--workloads replication,deletes,parallel,join,decode] [--data-root DIR] [--out DIR] [--no-install] [--no-decode] [--keep] [--scale N] [--backlog-secs N] \
[--steady-secs N] [--steady-rate N] [--large-rows N] | --report-from FILE [--out DIR]";

struct Args {
    cfg: Config,
    systems: Option<Vec<String>>,
    data_root: PathBuf,
    out: PathBuf,
    allow_install: bool,
    keep: bool,
    report_from: Option<PathBuf>,
}

fn default_data_root() -> PathBuf {
    // tmpfs: on this machine's disk the same run varied by up to 70 %, on tmpfs by 2-14 %
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn parse_args() -> Result<Args, String> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let quick = argv.iter().any(|a| a == "--quick");
    let mut a = Args {
        cfg: if quick { Config::quick() } else { Config::full() },
        systems: None,
        data_root: default_data_root(),
        out: Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results"),
        allow_install: true,
        keep: false,
        report_from: None,
    };
    let mut no_decode = false;
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value\n{USAGE}"));
        let number = |v: String, name: &str| v.parse::<u64>().map_err(|_| format!("{name}: not a number: {v}"));
        match arg.as_str() {
            "--quick" => {}
            "--rounds" => a.cfg.rounds = number(value("--rounds")?, "--rounds")?.max(1) as usize,
            "--systems" => a.systems = Some(value("--systems")?.split(',').map(|s| s.trim().to_string()).collect()),
            "--data-root" => a.data_root = PathBuf::from(value("--data-root")?),
            "--out" => a.out = PathBuf::from(value("--out")?),
            "--no-install" => a.allow_install = false,
            "--no-decode" => no_decode = true,
            "--workloads" => {
                let list: Vec<String> =
                    value("--workloads")?.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
                if let Some(bad) = list.iter().find(|w| !WORKLOADS.contains(&w.as_str())) {
                    return Err(format!("--workloads: unknown workload {bad}; known: {}", WORKLOADS.join(", ")));
                }
                if list.is_empty() {
                    return Err(format!("--workloads needs at least one of {}", WORKLOADS.join(", ")));
                }
                a.cfg.workloads = list;
            }
            "--keep" => a.keep = true,
            "--report-from" => a.report_from = Some(PathBuf::from(value("--report-from")?)),
            "--scale" => a.cfg.scale = number(value("--scale")?, "--scale")? as u32,
            "--backlog-secs" => a.cfg.backlog_secs = number(value("--backlog-secs")?, "--backlog-secs")? as u32,
            "--steady-secs" => a.cfg.steady_secs = number(value("--steady-secs")?, "--steady-secs")? as u32,
            "--steady-rate" => a.cfg.steady_rate = number(value("--steady-rate")?, "--steady-rate")? as u32,
            "--large-rows" => a.cfg.large_rows = number(value("--large-rows")?, "--large-rows")?,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if no_decode {
        a.cfg.workloads.retain(|w| w != "decode");
    }
    if a.cfg.runs("deletes") && !a.cfg.runs("replication") {
        return Err("--workloads: deletes runs on the pair of replication; select both".into());
    }
    Ok(a)
}

/// SIGINT/SIGTERM/SIGHUP stop every server this process started, then exit. The
/// signals are blocked in all threads (spawned programs get a clean mask from
/// std) and taken by one thread with sigwait.
fn stop_servers_on_signals() {
    // SAFETY: plain libc calls on a local signal set, before any other thread exists.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        std::thread::spawn(move || {
            let mut sig: libc::c_int = 0;
            // SAFETY: waits on the set built above.
            if libc::sigwait(&set, &mut sig) == 0 {
                eprintln!("[bench] signal {sig}: stopping the servers and exiting");
                spock_tests::stop_all_registered();
                std::process::exit(128 + sig);
            }
        });
    }
}

fn first_line_with(path: &str, prefix: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find(|l| l.starts_with(prefix))
        .map(|l| l[prefix.len()..].trim().trim_matches('"').to_string())
}

fn filesystem_of(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && path.starts_with(f[1])).then(|| (f[1].len(), f[2].to_string()))
        })
        .max()
        .map(|(_, fs)| fs)
        .unwrap_or_else(|| "?".into())
}

fn machine(args: &Args, pg18: &PgInstall) -> Vec<(String, String)> {
    let cpu = first_line_with("/proc/cpuinfo", "model name")
        .map(|s| s.trim_start_matches(':').trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem_kb: f64 = first_line_with("/proc/meminfo", "MemTotal:")
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0);
    vec![
        ("cpu".into(), format!("{cpu}, {cores} cores")),
        ("memory".into(), format!("{:.0} GiB", mem_kb / 1024.0 / 1024.0)),
        ("os".into(), first_line_with("/etc/os-release", "PRETTY_NAME=").unwrap_or_default()),
        ("kernel".into(), std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string()),
        ("data directories".into(), format!("{} ({})", args.data_root.display(), filesystem_of(&args.data_root))),
        ("pgbench".into(), format!("{} ({})", pg18.program("pgbench").display(), pg18.version)),
    ]
}

fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Runs `decode-bench` (built next to this program) with the data directories on
/// the same root; returns its JSON.
fn run_decode(args: &Args) -> Result<serde_json::Value, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = exe.with_file_name("decode-bench");
    if !bin.exists() {
        return Err(format!("{} is not built (cargo build --release -p spock-benches --bins)", bin.display()));
    }
    eprintln!("[bench] decode throughput: {}", bin.display());
    let mut cmd = Command::new(&bin);
    if args.cfg.quick {
        cmd.arg("--quick");
    }
    let out = cmd.env("TMPDIR", &args.data_root).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("decode-bench failed: {}", err.lines().last().unwrap_or("")));
    }
    // decode-bench writes its JSON into the crate's target/bench-results
    let json_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results/decode.json");
    std::fs::read_to_string(&json_path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .ok_or_else(|| format!("decode-bench ran but {} is unreadable", json_path.display()))
}

/// Writes the Markdown and plots of the run recorded in `path` into `out`.
fn rerender(path: &Path, out: &Path) -> replication::Result<()> {
    let report = replication::report::load(path)?;
    println!("{}", report.write(out)?);
    Ok(())
}

fn main() {
    stop_servers_on_signals();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Some(path) = &args.report_from {
        std::process::exit(match rerender(path, &args.out) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("replication-bench: {}: {e}", path.display());
                1
            }
        });
    }
    let started = Instant::now();
    let pg18 = match PgInstall::get().cloned() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("replication-bench: PostgreSQL 18: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = std::fs::create_dir_all(&args.data_root) {
        eprintln!("replication-bench: data root {}: {e}", args.data_root.display());
        std::process::exit(1);
    }
    node::reap_orphans(&args.data_root);
    let env = Env {
        pg18: pg18.clone(),
        data_root: args.data_root.clone(),
        keep: args.keep,
        allow_install: args.allow_install,
    };
    let cfg = &args.cfg;

    let mut all = systems::all();
    if let Some(wanted) = &args.systems {
        for w in wanted {
            if !all.iter().any(|s| s.name() == w) {
                let known: Vec<&str> = all.iter().map(|s| s.name()).collect();
                eprintln!("replication-bench: unknown system {w}; known: {}", known.join(", "));
                std::process::exit(2);
            }
        }
        all.retain(|s| wanted.iter().any(|w| w == s.name()));
    } else {
        all.retain(|s| s.by_default());
    }
    let mut statuses = Vec::new();
    let mut runnable = Vec::new();
    for mut sys in all {
        let status = sys.prepare(&env);
        match &status {
            Ok(d) => eprintln!("[bench] {}: {d}", sys.name()),
            Err(r) => eprintln!("[bench] {}: SKIPPED: {r}", sys.name()),
        }
        statuses.push(SystemStatus { name: sys.name().to_string(), status: status.clone() });
        if status.is_ok() {
            runnable.push(sys);
        }
    }
    eprintln!(
        "[bench] {} mode: {} round(s) of {}; data directories under {}",
        if cfg.quick { "quick" } else { "full" },
        cfg.rounds,
        runnable.iter().map(|s| s.name()).collect::<Vec<_>>().join(", "),
        args.data_root.display()
    );

    let mut results = Vec::new();
    let mut joins = Vec::new();
    let mut failures = Vec::new();
    if cfg.runs("join") {
        for sys in &runnable {
            if sys.join_variants().is_empty() {
                eprintln!("[bench] {}: the join workload is not implemented for it; skipped", sys.name());
            }
        }
    }
    for round in 1..=cfg.rounds {
        if cfg.runs("replication") {
            for sys in &runnable {
                match workload::run_round(sys.as_ref(), &env, cfg, round) {
                    Ok(r) => results.push(r),
                    Err(e) => {
                        eprintln!("[bench] round {round} {}: FAILED: {e}", sys.name());
                        failures.push((sys.name().to_string(), round, e.0));
                    }
                }
            }
        }
        if cfg.runs("join") {
            for sys in &runnable {
                for variant in sys.join_variants() {
                    match join::run_join(sys.as_ref(), variant, &env, cfg, round) {
                        Ok(r) => joins.push(r),
                        Err(e) => {
                            let who = format!("{} join ({})", sys.name(), variant.name);
                            eprintln!("[bench] round {round} {who}: FAILED: {e}");
                            failures.push((who, round, e.0));
                        }
                    }
                }
            }
        }
    }

    let decode = if cfg.runs("decode") {
        run_decode(&args)
    } else {
        Err("not selected (quick mode, --no-decode or --workloads)".into())
    };
    let report = Report {
        cfg: cfg.clone(),
        machine: machine(&args, &pg18),
        systems: statuses,
        results,
        joins,
        failures,
        decode,
        elapsed_s: started.elapsed().as_secs_f64(),
        date: utc_now(),
    };
    match report.write(&args.out) {
        Ok(md) => {
            println!("{md}");
            eprintln!("[bench] results in {}", args.out.canonicalize().unwrap_or(args.out.clone()).display());
        }
        Err(e) => {
            eprintln!("replication-bench: writing results: {e}");
            std::process::exit(1);
        }
    }
    if !report.failures.is_empty() || (report.results.is_empty() && report.joins.is_empty() && report.decode.is_err()) {
        std::process::exit(1);
    }
}
