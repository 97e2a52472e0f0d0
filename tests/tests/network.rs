//! No backend or worker hangs on a provider that does not answer: every libpq wait
//! (connect, query, COPY, stream) sleeps on the socket and the latch and processes
//! interrupts, connecting gives up after `connect_timeout`, and connections are
//! closed when an error unwinds.
//!
//! The silent provider is a TCP listener in the test process that accepts and never
//! answers; a stopped (SIGSTOP) postmaster plays the same part for a worker.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spock_tests::fixtures::{subscribed_pair, wait_replicating};
use spock_tests::{wait_for, Cluster, NodeOptions, TestNode};

/// How long the silent provider keeps a connection open.
const GIVE_UP: Duration = Duration::from_secs(30);

/// A "provider" on 127.0.0.1 that accepts connections and never sends a byte.
struct SilentProvider {
    port: u16,
    accepted: Arc<Mutex<Vec<TcpStream>>>,
}

impl SilentProvider {
    fn start() -> SilentProvider {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let keep = accepted.clone();
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                // Give up on a client after 30 s, so that a client that cannot be
                // interrupted makes the test fail instead of hanging it: read (and
                // drop) what it sends until it closes or the 30 s are over.
                if let Ok(mut clone) = s.try_clone() {
                    std::thread::spawn(move || {
                        let deadline = Instant::now() + GIVE_UP;
                        let mut buf = [0u8; 1024];
                        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                            if clone.set_read_timeout(Some(left.max(Duration::from_millis(1)))).is_err() {
                                break;
                            }
                            match clone.read(&mut buf) {
                                Ok(n) if n > 0 => continue,
                                _ => break, // closed by the client, timed out, or failed
                            }
                        }
                        let _ = clone.shutdown(std::net::Shutdown::Both);
                    });
                }
                keep.lock().unwrap().push(s);
            }
        });
        SilentProvider { port, accepted }
    }

    fn dsn(&self, extra: &str) -> String {
        format!("host=127.0.0.1 port={} dbname=postgres user=postgres{extra}", self.port)
    }

    /// (connections accepted, how many of them the client has closed).
    fn connections(&self) -> (usize, usize) {
        let streams = self.accepted.lock().unwrap();
        let closed = streams
            .iter()
            .filter(|s| {
                s.set_nonblocking(true).unwrap();
                let mut buf = [0u8; 1024];
                // The startup packet first, then EOF once the client closed.
                loop {
                    match (&**s).read(&mut buf) {
                        Ok(0) => return true,
                        Ok(_) => continue,
                        Err(_) => return false,
                    }
                }
            })
            .count();
        (streams.len(), closed)
    }
}

fn node_with_spock(c: &Cluster) -> &TestNode {
    let n = c.node(0);
    n.execute("CREATE EXTENSION spock").unwrap();
    n.execute(&format!("SELECT spock.node_create('{}', '{}')", n.name, n.dsn("postgres"))).unwrap();
    n
}

fn sqlstate(e: &spock_tests::postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

#[test]
fn statement_timeout_stops_sub_create_on_a_silent_provider() {
    let c = Cluster::start(vec![NodeOptions::new("n1")]).unwrap();
    let n = node_with_spock(&c);
    let silent = SilentProvider::start();
    let mut client = n.connect().unwrap();
    client.batch_execute("SET statement_timeout = '1s'").unwrap();
    let started = Instant::now();
    let e = client.batch_execute(&format!("SELECT spock.sub_create('s1', '{}')", silent.dsn(""))).unwrap_err();
    let took = started.elapsed();
    assert_eq!(sqlstate(&e), "57014", "{e:?}");
    eprintln!("sub_create ended {took:?} after it started, with statement_timeout = 1s");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(10), "sub_create took {took:?}");
    // The backend is usable and closed its connection to the provider as the error
    // unwound.
    client.batch_execute("RESET statement_timeout; SELECT 1").unwrap();
    wait_for("the provider connection closed", Duration::from_secs(10), || silent.connections(), (1, 1));
    assert_eq!(n.query_one::<i64>("SELECT count(*) FROM spock.subscription").unwrap(), 0);
}

#[test]
fn cancel_and_terminate_stop_sub_create_on_a_silent_provider() {
    let c = Cluster::start(vec![NodeOptions::new("n1")]).unwrap();
    let n = node_with_spock(&c);
    let silent = SilentProvider::start();
    for terminate in [false, true] {
        let mut client = n.connect().unwrap();
        let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        let sql = format!("SELECT spock.sub_create('s1', '{}')", silent.dsn(""));
        let call = std::thread::spawn(move || {
            let r = client.batch_execute(&sql);
            (r, Instant::now())
        });
        wait_for(
            "sub_create waiting for the provider",
            Duration::from_secs(30),
            || {
                n.query_one::<i64>(&format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND wait_event = 'SpockProvider'"
                ))
                .unwrap()
            },
            1,
        );
        let asked = Instant::now();
        let f = if terminate { "pg_terminate_backend" } else { "pg_cancel_backend" };
        assert!(n.query_one::<bool>(&format!("SELECT {f}({pid})")).unwrap());
        let (r, ended) = call.join().unwrap();
        let e = r.unwrap_err();
        eprintln!("sub_create ended {:?} after {f}", ended - asked);
        assert!(ended - asked < Duration::from_secs(5), "{f} took {:?}", ended - asked);
        if terminate {
            // FATAL 57P01, or the connection closed before the client read it.
            assert!(e.as_db_error().is_none() || sqlstate(&e) == "57P01", "{e:?}");
            wait_for(
                "the terminated backend gone",
                Duration::from_secs(10),
                || n.query_one::<i64>(&format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}")).unwrap(),
                0,
            );
        } else {
            assert_eq!(sqlstate(&e), "57014", "{e:?}");
            wait_for("the provider connection closed", Duration::from_secs(10), || silent.connections(), (1, 1));
        }
    }
}

#[test]
fn connect_timeout_of_the_dsn_ends_the_wait() {
    let c = Cluster::start(vec![NodeOptions::new("n1")]).unwrap();
    let n = node_with_spock(&c);
    let silent = SilentProvider::start();
    let mut client = n.connect().unwrap();
    let started = Instant::now();
    let e = client
        .batch_execute(&format!("SELECT spock.sub_create('s1', '{}')", silent.dsn(" connect_timeout=2")))
        .unwrap_err();
    let took = started.elapsed();
    eprintln!("sub_create ended {took:?} after it started, with connect_timeout=2");
    let db = e.as_db_error().unwrap_or_else(|| panic!("{e:?}"));
    assert_eq!(db.code().code(), "08006", "{db:?}");
    assert!(db.message().contains("timed out"), "{}", db.message());
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(10), "sub_create took {took:?}");
    wait_for("the provider connection closed", Duration::from_secs(10), || silent.connections(), (1, 1));
}

/// Sends SIGCONT to a stopped postmaster when dropped (also while a failing test
/// unwinds), so the node can be shut down.
struct Stopped(u32);

impl Stopped {
    fn signal(pid: u32, sig: &str) {
        let ok = std::process::Command::new("kill").arg(sig).arg(pid.to_string()).status().map(|s| s.success());
        assert!(matches!(ok, Ok(true)), "kill {sig} {pid}");
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").arg("-CONT").arg(self.0.to_string()).status();
    }
}

fn apply_worker_waiting(n: &TestNode) -> Option<i32> {
    n.query_one::<Option<i32>>(
        "SELECT max(pid) FROM pg_stat_activity WHERE backend_type = 'spock apply' AND wait_event = 'SpockProvider'",
    )
    .unwrap()
}

#[test]
fn a_worker_connecting_to_a_silent_provider_stops_at_once() {
    let c = Cluster::start_n(2).unwrap();
    let (sub, provider) = (c.node(0), c.node(1));
    subscribed_pair(provider, sub);
    sub.execute("SELECT spock.sub_disable('sub_n1_n2', immediate := true)").unwrap();
    let workers =
        || sub.query_one::<i64>("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'spock apply'").unwrap();
    wait_for("the worker stopped", Duration::from_secs(30), workers, 0);

    // The provider's postmaster stops answering: connections are queued by the
    // kernel and never served.
    let pm = provider.postmaster_pid().unwrap();
    Stopped::signal(pm, "-STOP");
    let _cont = Stopped(pm);
    sub.execute("ALTER SYSTEM SET spock.restart_delay_default = 0").unwrap();
    sub.execute("SELECT pg_reload_conf()").unwrap();
    sub.execute("SELECT spock.sub_enable('sub_n1_n2')").unwrap();

    // SIGTERM (pg_terminate_backend) while it connects.
    wait_for(
        "the worker waiting for the provider",
        Duration::from_secs(60),
        || apply_worker_waiting(sub).is_some(),
        true,
    );
    let pid = apply_worker_waiting(sub).unwrap();
    let asked = Instant::now();
    assert!(sub.query_one::<bool>(&format!("SELECT pg_terminate_backend({pid})")).unwrap());
    let gone = || sub.query_one::<i64>(&format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}")).unwrap();
    wait_for("the terminated worker gone", Duration::from_secs(10), gone, 0);
    let terminate_took = asked.elapsed();

    // The manager starts it again; sub_disable stops the new one.
    wait_for(
        "a new worker waiting for the provider",
        Duration::from_secs(60),
        || apply_worker_waiting(sub).is_some_and(|p| p != pid),
        true,
    );
    let asked = Instant::now();
    sub.execute("SELECT spock.sub_disable('sub_n1_n2', immediate := true)").unwrap();
    wait_for("the worker stopped by sub_disable", Duration::from_secs(10), workers, 0);
    let disable_took = asked.elapsed();
    eprintln!("worker stopped {terminate_took:?} after SIGTERM, {disable_took:?} after sub_disable");
    assert!(terminate_took < Duration::from_secs(5) && disable_took < Duration::from_secs(5));

    // The provider answers again: the subscription works as before.
    drop(_cont);
    sub.execute("SELECT spock.sub_enable('sub_n1_n2')").unwrap();
    wait_replicating(sub, 1);
    provider.execute("INSERT INTO t VALUES (1, 'after')").unwrap();
    wait_for(
        "the row replicated",
        Duration::from_secs(60),
        || sub.query_one::<i64>("SELECT count(*) FROM t").unwrap(),
        1,
    );
}

#[test]
fn an_interrupted_query_is_cancelled_on_the_provider_too() {
    let c = Cluster::start_n(2).unwrap();
    let (n1, n2) = (c.node(0), c.node(1));
    node_with_spock(&c);
    n2.execute("CREATE EXTENSION spock").unwrap();
    n2.execute(&format!("SELECT spock.node_create('n2', '{}')", n2.dsn("postgres"))).unwrap();
    // sub_create's query of the provider's replication sets waits for this lock.
    let mut holder = n2.connect().unwrap();
    holder.batch_execute("BEGIN; LOCK TABLE spock.replication_set IN ACCESS EXCLUSIVE MODE").unwrap();
    let mut client = n1.connect().unwrap();
    let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let sql = format!("SELECT spock.sub_create('s1', '{}')", n2.dsn("postgres"));
    let call = std::thread::spawn(move || client.batch_execute(&sql));
    let blocked_on_provider = || {
        n2.query_one::<i64>("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'spock sub_create' AND wait_event_type = 'Lock'")
            .unwrap()
    };
    wait_for("sub_create's query waiting on the provider", Duration::from_secs(30), blocked_on_provider, 1);
    assert!(n1.query_one::<bool>(&format!("SELECT pg_cancel_backend({pid})")).unwrap());
    let e = call.join().unwrap().unwrap_err();
    assert_eq!(sqlstate(&e), "57014", "{e:?}");
    // The provider's backend is gone while the lock is still held: its query was
    // cancelled, not just abandoned.
    wait_for(
        "the provider's backend gone",
        Duration::from_secs(10),
        || {
            n2.query_one::<i64>("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'spock sub_create'")
                .unwrap()
        },
        0,
    );
    holder.batch_execute("ROLLBACK").unwrap();
}
