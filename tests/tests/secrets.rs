//! Secrets and diagnostics: a provider DSN's password never reaches a command line
//! (pg_dump of the initial structure sync), the server logs or error messages, and
//! Rust backtraces never reach clients, whatever the server's environment says.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use spock_tests::fixtures::wait_replicating;
use spock_tests::postgres::{self, NoTls};
use spock_tests::{wait_for, Cluster, NodeOptions, TestNode};

const PASSWORD: &str = "Pw-9f3kQz-s3cret";

fn node_with_spock(n: &TestNode) {
    n.execute("CREATE EXTENSION spock").unwrap();
    n.execute(&format!("SELECT spock.node_create('{}', '{}')", n.name, n.dsn("postgres"))).unwrap();
}

/// Program name and arguments of every running `pg_dump`, with its environment.
fn pg_dumps() -> Vec<(u32, Vec<String>, Vec<String>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let split = |b: Vec<u8>| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else { continue };
        let args = split(cmdline);
        if args.first().is_some_and(|a| a.ends_with("/pg_dump") || a == "pg_dump") {
            let env = split(std::fs::read(e.path().join("environ")).unwrap_or_default());
            out.push((pid, args, env));
        }
    }
    out
}

fn tcp_client(n: &TestNode, user: &str, password: &str) -> Result<postgres::Client, postgres::Error> {
    postgres::Config::new()
        .host("127.0.0.1")
        .port(n.port)
        .user(user)
        .password(password)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(10))
        .connect(NoTls)
}

#[test]
fn sync_passes_the_password_to_pg_dump_outside_its_command_line() {
    let c = Cluster::start(vec![NodeOptions::new("p").with_tcp(), NodeOptions::new("s")]).unwrap();
    let (p, s) = (c.node(0), c.node(1));
    node_with_spock(p);
    node_with_spock(s);
    p.execute(&format!("CREATE ROLE spock_pw LOGIN SUPERUSER REPLICATION PASSWORD '{PASSWORD}'")).unwrap();
    // Password authentication for that role over TCP, ahead of initdb's trust lines.
    let hba = p.data_dir().join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!(
            "host all spock_pw 127.0.0.1/32 scram-sha-256\nhost replication spock_pw 127.0.0.1/32 scram-sha-256\n{old}"
        ),
    )
    .unwrap();
    p.execute("SELECT pg_reload_conf()").unwrap();
    wait_for(
        "password authentication in force",
        Duration::from_secs(30),
        || tcp_client(p, "spock_pw", "wrong").err().and_then(|e| e.code().map(|c| c.code().to_string())),
        Some("28P01".to_string()),
    );
    tcp_client(p, "spock_pw", PASSWORD).unwrap();

    p.execute(
        "CREATE TABLE accounts(id int PRIMARY KEY, owner text);
         INSERT INTO accounts SELECT g, 'o' || g FROM generate_series(1, 100) g;
         SELECT spock.repset_add_table('default', 'accounts');",
    )
    .unwrap();
    // pg_dump waits at login while the test holds an advisory lock, so that its
    // command line can be read while it runs.
    p.execute(
        "CREATE FUNCTION hold_pg_dump() RETURNS event_trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF current_setting('application_name') = 'pg_dump' THEN
                 PERFORM pg_advisory_lock_shared(4242);
                 PERFORM pg_advisory_unlock_shared(4242);
             END IF;
         END $$;
         CREATE EVENT TRIGGER hold_pg_dump ON login EXECUTE FUNCTION hold_pg_dump();",
    )
    .unwrap();
    let mut holder = p.connect().unwrap();
    holder.batch_execute("SELECT pg_advisory_lock(4242)").unwrap();

    let dsn = format!("host=127.0.0.1 port={} dbname=postgres user=spock_pw password={PASSWORD}", p.port);
    s.execute(&format!(
        "SELECT spock.sub_create('sub_s_p', '{dsn}', synchronize_structure := true, synchronize_data := true)"
    ))
    .unwrap();
    wait_for(
        "pg_dump waiting at login",
        Duration::from_secs(60),
        || p.query_one::<i64>("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").unwrap(),
        1,
    );
    let dumps = pg_dumps();
    let ours: Vec<_> =
        dumps.iter().filter(|(_, args, _)| args.iter().any(|a| a.contains(&format!("port='{}'", p.port)))).collect();
    assert_eq!(ours.len(), 1, "{dumps:?}");
    let (pid, args, env) = ours[0];
    assert!(args.iter().any(|a| a.starts_with("--dbname=") && a.contains("user='spock_pw'")), "{args:?}");
    for (_, args, _) in &dumps {
        assert!(args.iter().all(|a| !a.contains(PASSWORD)), "password on a command line: {args:?}");
    }
    assert!(env.iter().any(|v| *v == format!("PGPASSWORD={PASSWORD}")), "pg_dump {pid} has no PGPASSWORD");

    holder.batch_execute("SELECT pg_advisory_unlock(4242)").unwrap();
    wait_replicating(s, 1);
    assert_eq!(s.query_one::<i64>("SELECT count(*) FROM accounts").unwrap(), 100);
    p.execute("INSERT INTO accounts VALUES (101, 'after')").unwrap();
    wait_for(
        "a change replicated",
        Duration::from_secs(60),
        || s.query_one::<i64>("SELECT count(*) FROM accounts").unwrap(),
        101,
    );
    // The whole log, from the server's start on: the password may never be in it.
    for n in [p, s] {
        assert!(!n.log_since(0).contains(PASSWORD), "the password is in the log of {}", n.name);
    }
}

#[test]
fn connection_errors_do_not_quote_the_password() {
    let c = Cluster::start(vec![NodeOptions::new("n1")]).unwrap();
    let n = c.node(0);
    node_with_spock(n);
    // Unquoted, the space splits the password: libpq's parser stumbles on its second
    // half and would quote it.
    let e = n
        .connect()
        .unwrap()
        .batch_execute("SELECT spock.sub_create('s1', 'host=127.0.0.1 port=1 password=Xyzzy1 Plugh2')")
        .unwrap_err();
    let db = e.as_db_error().unwrap_or_else(|| panic!("{e:?}"));
    assert_eq!(db.code().code(), "08006", "{db:?}");
    let all = format!("{} {:?} {:?}", db.message(), db.detail(), db.hint());
    assert!(!all.contains("Plugh2") && !all.contains("Xyzzy1"), "{all}");
    // A well-formed DSN: libpq's message (refused) is shown, without the password.
    let e = n
        .connect()
        .unwrap()
        .batch_execute("SELECT spock.sub_create('s1', 'host=127.0.0.1 port=1 password=Xyzzy1')")
        .unwrap_err();
    let db = e.as_db_error().unwrap_or_else(|| panic!("{e:?}"));
    assert!(db.message().contains("127.0.0.1") && !db.message().contains("Xyzzy1"), "{}", db.message());
    // The server logs the failing statement itself (log_min_error_statement), as for
    // any SQL; nothing else may show the password.
    let log = n.log_since(0);
    let leaks: Vec<&str> =
        log.lines().filter(|l| (l.contains("Xyzzy1") || l.contains("Plugh2")) && !l.contains("STATEMENT:")).collect();
    assert!(leaks.is_empty(), "{leaks:?}");
}

/// Whether `text` looks like a Rust backtrace.
fn has_backtrace(text: &str) -> bool {
    text.contains("backtrace") || text.contains("  at ") || text.contains("pgrx") || text.contains(".rs:")
}

#[test]
fn errors_carry_no_rust_backtrace_even_with_rust_backtrace_set() {
    let c = Cluster::start(vec![NodeOptions::new("n1").env("RUST_BACKTRACE", "1")]).unwrap();
    let n = c.node(0);
    let pm = n.postmaster_pid().unwrap();
    let environ = std::fs::read(format!("/proc/{pm}/environ")).unwrap();
    assert!(
        environ.split(|b| *b == 0).any(|v| v == b"RUST_BACKTRACE=1"),
        "the server was started without RUST_BACKTRACE=1"
    );
    node_with_spock(n);
    // A provider that never answers: statement_timeout's error is raised inside
    // Rust code (the wait for the provider) and unwinds through it.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let mut client = n.connect().unwrap();
    client.batch_execute("SET statement_timeout = '500ms'").unwrap();
    let started = Instant::now();
    let e = client
        .batch_execute(&format!("SELECT spock.sub_create('s1', 'host=127.0.0.1 port={port} dbname=postgres')"))
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    let db = e.as_db_error().unwrap_or_else(|| panic!("{e:?}"));
    assert_eq!(db.code().code(), "57014", "{db:?}");
    let all = format!("{} {:?} {:?} {:?}", db.message(), db.detail(), db.hint(), db.where_());
    assert!(!has_backtrace(&all), "{all}");
    // An error spock raises itself.
    client.batch_execute("RESET statement_timeout").unwrap();
    let e = client.batch_execute("SELECT spock.sub_create('s1', 'host=127.0.0.1 port=1 dbname=postgres')").unwrap_err();
    let db = e.as_db_error().unwrap_or_else(|| panic!("{e:?}"));
    let all = format!("{} {:?} {:?} {:?}", db.message(), db.detail(), db.hint(), db.where_());
    assert!(!has_backtrace(&all), "{all}");
}
