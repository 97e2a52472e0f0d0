//! PostgreSQL servers for the benchmark, of any installed major version.
//!
//! The test harness (`spock_tests::TestNode`) only knows the PostgreSQL 18 of
//! `SPOCK_PG_CONFIG`; pglogical needs Debian's PostgreSQL 15, so the benchmark
//! starts its servers itself, the same way: `initdb` and `pg_ctl` run as the
//! unprivileged server user (`SPOCK_RUN_USER`, default `postgres`), one directory per
//! server under the data root (default `/dev/shm`), a unix socket in that directory
//! on a free port number, no TCP. A server is stopped, and its directory removed,
//! when its [`Node`] is dropped (also while an error or panic unwinds), when the
//! runner gets SIGINT/SIGTERM/SIGHUP ([`stop_all_registered`]), and, for servers of a
//! runner that was killed outright, by the next run ([`reap_orphans`]). Processes are
//! only ever signalled by process id.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use spock_tests::postgres::{Client, NoTls};
use spock_tests::{pid_alive, PgInstall};

use super::{err, Result};

/// Prefix of every server directory the benchmark creates.
pub const DIR_PREFIX: &str = "spock-rs-bench-";

/// A PostgreSQL installation and its version.
#[derive(Debug, Clone)]
pub struct Install {
    /// Programs, and the user servers run as.
    pub pg: PgInstall,
    /// Major version (15, 18, ...).
    pub major: u32,
    /// Full version string (`postgres --version`).
    pub version: String,
}

impl Install {
    /// The PostgreSQL 18 of `SPOCK_PG_CONFIG` (default: the one `scripts/setup.sh`
    /// installs under `/opt/pg18`).
    pub fn pg18() -> Result<Install> {
        let pg = PgInstall::get()?.clone();
        Install::with(pg)
    }

    /// The installation whose programs are in `bindir`, servers run by the same user
    /// as PostgreSQL 18's.
    pub fn at(bindir: &Path) -> Result<Install> {
        let mut pg = PgInstall::get()?.clone();
        pg.bindir = bindir.to_path_buf();
        Install::with(pg)
    }

    fn with(pg: PgInstall) -> Result<Install> {
        let out = Command::new(pg.bindir.join("postgres"))
            .arg("--version")
            .output()
            .map_err(|e| super::Error(format!("cannot run {}/postgres: {e}", pg.bindir.display())))?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        // "postgres (PostgreSQL) 18.6" or "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
        let major = version
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.split('.').next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| super::Error(format!("cannot parse the version of {}: {version:?}", pg.bindir.display())))?;
        Ok(Install { pg, major, version })
    }

    /// Path of program `prog` of this installation.
    pub fn program(&self, prog: &str) -> PathBuf {
        self.pg.bindir.join(prog)
    }

    /// Whether the server knows configuration parameter `name`.
    pub fn has_setting(&self, name: &str) -> bool {
        Command::new(self.program("postgres"))
            .arg("--describe-config")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.split('\t').next() == Some(name)))
            .unwrap_or(false)
    }
}

/// Servers that are running now, for the signal handler.
static LIVE: Mutex<Vec<(PathBuf, PgInstall)>> = Mutex::new(Vec::new());
/// Set once the signal handler cleans up: no new server may start.
static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

/// Creates the directory of a new server and registers it, unless the runner is
/// shutting down.
fn create_registered(root: &Path, pg: &PgInstall) -> Result<()> {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    if SHUTTING_DOWN.load(Ordering::SeqCst) {
        return err("interrupted");
    }
    fs::create_dir_all(root)?;
    live.push((root.to_path_buf(), pg.clone()));
    Ok(())
}

fn unregister(root: &Path) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).retain(|(r, _)| r != root);
}

/// Stops every server still running (immediate shutdown) and removes its directory;
/// called on SIGINT/SIGTERM/SIGHUP.
pub fn stop_all_registered() {
    let live = {
        let mut guard = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        SHUTTING_DOWN.store(true, Ordering::SeqCst);
        std::mem::take(&mut *guard)
    };
    for (root, pg) in live {
        stop_server(&pg, &root, "immediate");
        let _ = fs::remove_dir_all(&root);
    }
}

/// Process id of the postmaster of data directory `data`, while it runs.
fn postmaster_pid_of(data: &Path) -> Option<u32> {
    fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
        .filter(|pid| pid_alive(*pid))
}

fn kill(pid: u32, signal: &str) {
    let _ = Command::new("kill").arg(signal).arg(pid.to_string()).stderr(Stdio::null()).status();
}

/// Parent process id of `pid`.
fn ppid_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ..." where comm may contain spaces and parentheses
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The command line (process title) of `pid`, NULs turned into spaces.
pub fn cmdline_of(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " ").trim().to_string())
}

/// Child processes of `ppid` with their process titles.
pub fn children_of(ppid: u32) -> Vec<(u32, String)> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| ppid_of(*pid) == Some(ppid))
        .filter_map(|pid| cmdline_of(pid).map(|c| (pid, c)))
        .collect()
}

/// Memory of one process, from `/proc/<pid>/status` (KiB).
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    /// Resident set size (includes the shared memory the process touched).
    pub rss_kb: u64,
    /// Resident anonymous memory: what the process allocated privately.
    pub anon_kb: u64,
}

/// Memory of process `pid`, if it still exists.
pub fn mem_of(pid: u32) -> Option<Mem> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some(Mem { rss_kb: field("VmRSS:"), anon_kb: field("RssAnon:") })
}

/// Stops the server of directory `root` (`pg_ctl stop -m mode`); if that fails,
/// kills the postmaster and its children by process id.
fn stop_server(pg: &PgInstall, root: &Path, mode: &str) {
    let data = root.join("data");
    let Some(pid) = postmaster_pid_of(&data) else { return };
    let children: Vec<u32> = children_of(pid).into_iter().map(|(p, _)| p).collect();
    let mut cmd = pg.command("pg_ctl");
    cmd.arg("-D").arg(&data).args(["-m", mode, "-w", "-t", "60", "stop"]).stdout(Stdio::null()).stderr(Stdio::null());
    if !cmd.status().map(|s| s.success()).unwrap_or(false) {
        kill(pid, "-KILL");
        for child in &children {
            kill(*child, "-KILL");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while children.iter().any(|c| pid_alive(*c)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops servers of earlier benchmark runs that were killed before they could clean
/// up (their directory names a runner process that is gone), and removes their
/// directories. Only postmasters whose command line names that data directory are
/// signalled.
pub fn reap_orphans(data_root: &Path) {
    let Ok(entries) = fs::read_dir(data_root) else { return };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let dir = entry.path();
        let owner = fs::read_to_string(dir.join("owner.pid")).ok().and_then(|s| s.trim().parse::<u32>().ok());
        if owner.is_some_and(|o| pid_alive(o) && cmdline_of(o).is_some_and(|c| c.contains("replication-bench"))) {
            continue;
        }
        let data = dir.join("data");
        if let Some(pid) = postmaster_pid_of(&data) {
            if cmdline_of(pid).is_some_and(|c| c.contains(&data.display().to_string())) {
                eprintln!("[bench] stopping server {pid} left behind in {}", dir.display());
                let children: Vec<u32> = children_of(pid).into_iter().map(|(p, _)| p).collect();
                kill(pid, "-KILL");
                for c in children {
                    kill(c, "-KILL");
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

fn run(mut cmd: Command, what: &str) -> Result<Output> {
    let out = cmd.output().map_err(|e| super::Error(format!("{what}: {e}")))?;
    if !out.status.success() {
        return err(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out)
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// One running server, stopped and deleted on drop.
pub struct Node {
    /// Name in messages ("provider", "subscriber").
    pub name: String,
    /// Port number (names the unix socket).
    pub port: u16,
    /// Its installation.
    pub install: Install,
    root: PathBuf,
    keep: bool,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Node({} on port {} in {})", self.name, self.port, self.root.display())
    }
}

/// Settings every server gets, whatever the system: the same for all systems.
pub fn common_settings() -> Vec<(String, String)> {
    [
        ("wal_level", "logical"),
        // off while the initial data is loaded; switched on before measuring
        ("track_commit_timestamp", "off"),
        ("max_replication_slots", "10"),
        ("max_wal_senders", "10"),
        ("max_worker_processes", "16"),
        ("shared_buffers", "'512MB'"),
        ("max_wal_size", "'8GB'"),
        ("checkpoint_timeout", "'30min'"),
        ("log_line_prefix", "'%m [%p] %q%a '"),
        ("log_min_messages", "info"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

impl Node {
    /// initdb's a server under `data_root` with the common settings plus `settings`
    /// (later ones win), and starts it. Data checksums are off on every major
    /// version (PostgreSQL 18 would enable them by default, 15 does not).
    pub fn start(
        install: &Install,
        name: &str,
        data_root: &Path,
        settings: &[(String, String)],
        keep: bool,
    ) -> Result<Node> {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = data_root.join(format!("{DIR_PREFIX}{}-{seq}-{name}", std::process::id()));
        create_registered(&root, &install.pg)?;
        let node = Node { name: name.to_string(), port: 0, install: install.clone(), root, keep };
        node.init(settings)?;
        let mut node = node;
        // A port can be taken between choosing and binding; try a few.
        let mut errors = Vec::new();
        for _ in 0..5 {
            node.port = free_port()?;
            match node.pg_ctl_start() {
                Ok(()) => {
                    node.wait_ready()?;
                    return Ok(node);
                }
                Err(e) => {
                    errors.push(e.0);
                    if node.postmaster_pid().is_some() {
                        break;
                    }
                }
            }
        }
        err(errors.join("\n---- next attempt ----\n"))
    }

    fn init(&self, settings: &[(String, String)]) -> Result<()> {
        fs::write(self.root.join("owner.pid"), std::process::id().to_string())?;
        if let Some(user) = &self.install.pg.run_as {
            std::os::unix::fs::chown(&self.root, Some(user.uid), Some(user.gid))?;
        }
        let mut initdb = self.install.pg.command("initdb");
        initdb.arg("-D").arg(self.data_dir()).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ]);
        if self.install.major >= 18 {
            initdb.arg("--no-data-checksums");
        }
        run(initdb, &format!("initdb for {}", self.name))?;
        let mut lines =
            vec!["listen_addresses = ''".to_string(), format!("unix_socket_directories = '{}'", self.root.display())];
        lines.extend(common_settings().into_iter().chain(settings.iter().cloned()).map(|(k, v)| format!("{k} = {v}")));
        let mut conf = fs::OpenOptions::new().append(true).open(self.data_dir().join("postgresql.conf"))?;
        writeln!(conf, "\n# spock-rs replication benchmark\n{}", lines.join("\n"))?;
        Ok(())
    }

    fn pg_ctl_start(&self) -> Result<()> {
        let mut cmd = self.install.pg.command("pg_ctl");
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.root.join("server.log"))
            .arg("-o")
            .arg(format!("-p {}", self.port))
            .args(["-w", "-t", "120", "start"]);
        run(cmd, &format!("starting {}", self.name))
            .map(|_| ())
            .map_err(|e| super::Error(format!("{e}\n--- server log ---\n{}", self.log_tail(40))))
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.connect() {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return err(format!("{} does not accept connections: {e}", self.name))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The last `n` lines of the server log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = fs::read_to_string(self.root.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Bytes in the server log so far (a position for [`Node::log_since`]).
    pub fn log_len(&self) -> u64 {
        fs::metadata(self.root.join("server.log")).map(|m| m.len()).unwrap_or(0)
    }

    /// The server log from byte `pos` on.
    pub fn log_since(&self, pos: u64) -> String {
        let log = fs::read(self.root.join("server.log")).unwrap_or_default();
        String::from_utf8_lossy(log.get(pos as usize..).unwrap_or_default()).into_owned()
    }

    /// Process id of the postmaster, while running.
    pub fn postmaster_pid(&self) -> Option<u32> {
        postmaster_pid_of(&self.data_dir())
    }

    /// libpq connection string (unix socket) for database `postgres`.
    pub fn dsn(&self) -> String {
        format!("host={} port={} dbname=postgres user=postgres", self.root.display(), self.port)
    }

    /// A new connection to database `postgres`.
    pub fn connect(&self) -> Result<Client> {
        postgres_config(&self.root, self.port)
            .connect(NoTls)
            .map_err(|e| super::Error(format!("connecting to {}: {}", self.name, spock_tests::describe_pg_error(&e))))
    }

    /// Runs statements (simple protocol, autocommit) on a new connection.
    pub fn execute(&self, sql: &str) -> Result<()> {
        self.connect()?
            .batch_execute(sql)
            .map_err(|e| super::Error(format!("on {}: {sql}: {}", self.name, spock_tests::describe_pg_error(&e))))
    }

    /// The only column of the only row of `sql`, as text.
    pub fn query_text(&self, sql: &str) -> Result<String> {
        query_text(&mut self.connect()?, sql).map_err(|e| super::Error(format!("on {}: {e}", self.name)))
    }

    /// `ALTER SYSTEM SET key = value` and a restart.
    pub fn set_and_restart(&self, key: &str, value: &str) -> Result<()> {
        self.execute(&format!("ALTER SYSTEM SET {key} = {value}"))?;
        self.restart()
    }

    /// Stops (fast) and starts the server again on the same port.
    pub fn restart(&self) -> Result<()> {
        let mut cmd = self.install.pg.command("pg_ctl");
        cmd.arg("-D").arg(self.data_dir()).args(["-m", "fast", "-w", "-t", "120", "stop"]);
        run(cmd, &format!("stopping {}", self.name))?;
        self.pg_ctl_start()?;
        self.wait_ready()
    }

    /// Runs `pgbench` (the client program at `pgbench`, the same for every server
    /// version) against this server's database `postgres`; returns its stdout.
    pub fn pgbench(&self, pgbench: &Path, args: &[String]) -> Result<String> {
        let mut cmd = Command::new(pgbench);
        cmd.args(["-h", &self.root.display().to_string(), "-p", &self.port.to_string(), "-U", "postgres"])
            .args(args)
            .arg("postgres")
            .env_remove("PGDATA")
            .env_remove("PGHOST")
            .env_remove("PGPORT")
            .stdin(Stdio::null());
        let out = run(cmd, &format!("pgbench {} on {}", args.join(" "), self.name))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Connection settings for the server with socket directory `root` and `port`.
pub fn postgres_config(root: &Path, port: u16) -> spock_tests::postgres::Config {
    let mut c = spock_tests::postgres::Config::new();
    c.host_path(root)
        .port(port)
        .user("postgres")
        .dbname("postgres")
        .application_name("replication-bench")
        .connect_timeout(Duration::from_secs(10));
    c
}

/// The only value of `sql` (simple protocol: one statement, its own snapshot, no
/// transaction left open), as text; `""` for NULL.
pub fn query_text(client: &mut Client, sql: &str) -> Result<String> {
    use spock_tests::postgres::SimpleQueryMessage;
    let msgs =
        client.simple_query(sql).map_err(|e| super::Error(format!("{sql}: {}", spock_tests::describe_pg_error(&e))))?;
    for m in msgs {
        if let SimpleQueryMessage::Row(row) = m {
            return Ok(row.get(0).unwrap_or("").to_string());
        }
    }
    err(format!("{sql}: no row"))
}

impl Drop for Node {
    fn drop(&mut self) {
        stop_server(&self.install.pg, &self.root, "fast");
        unregister(&self.root);
        if self.keep {
            eprintln!("[bench] kept {} in {} (--keep)", self.name, self.root.display());
        } else {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}
