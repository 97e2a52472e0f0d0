//! Walking skeleton: the extension loads into PostgreSQL 18 with and without
//! preloading, and the harness starts and stops real servers.

use spock_tests::{pid_alive, Cluster, NodeOptions, TestNode};

#[test]
fn create_extension_with_and_without_preload() {
    let cluster = Cluster::start(vec![NodeOptions::new("preloaded"), NodeOptions::new("plain").without_preload()])
        .expect("start two PostgreSQL 18 nodes");
    for node in &cluster.nodes {
        let version: String = node.query_one("SHOW server_version").unwrap();
        assert!(version.starts_with("18."), "node {} runs PostgreSQL {version}", node.name);

        node.execute("CREATE EXTENSION spock").unwrap();
        assert_eq!(node.query_one::<String>("SELECT spock.spock_version()").unwrap(), "6.0.0");
        assert_eq!(node.query_one::<i32>("SELECT spock.spock_version_num()").unwrap(), 60000);
        assert_eq!(node.query_one::<i32>("SELECT spock.spock_max_proto_version()").unwrap(), 5);
        assert_eq!(node.query_one::<i32>("SELECT spock.spock_min_proto_version()").unwrap(), 4);
        let schema: String = node
            .query_one("SELECT n.nspname::text FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'spock'")
            .unwrap();
        assert_eq!(schema, "spock");
        let relocatable: bool =
            node.query_one("SELECT extrelocatable FROM pg_extension WHERE extname = 'spock'").unwrap();
        assert!(!relocatable);
    }
    let preload: String = cluster.node(0).query_one("SHOW shared_preload_libraries").unwrap();
    assert_eq!(preload, "spock");
    let preload: String = cluster.node(1).query_one("SHOW shared_preload_libraries").unwrap();
    assert_eq!(preload, "");
    // The library really was loaded at start on the first node and not on the second:
    // a new backend of the plain node loads it only when a function is called.
    for node in &cluster.nodes {
        node.execute("DROP EXTENSION spock").unwrap();
        node.execute("CREATE EXTENSION spock").unwrap();
    }
}

#[test]
fn nodes_reach_each_other_and_have_replication_settings() {
    let cluster = Cluster::start_n(2).unwrap();
    let (a, b) = (cluster.node(0), cluster.node(1));
    assert_ne!(a.port, b.port);
    for node in &cluster.nodes {
        assert_eq!(node.query_one::<String>("SHOW wal_level").unwrap(), "logical");
        assert_eq!(node.query_one::<String>("SHOW track_commit_timestamp").unwrap(), "on");
        let user: String =
            node.query_one("SELECT usename::text FROM pg_stat_activity WHERE pid = pg_backend_pid()").unwrap();
        assert_eq!(user, "postgres");
    }
    // Node b can open a libpq connection to node a with the DSN a gives out, as a
    // subscriber will (dblink-free: a replication-mode walsender answers IDENTIFY_SYSTEM).
    let sysid_a: String = a.query_one("SELECT system_identifier::text FROM pg_control_system()").unwrap();
    let sysid_b: String = b.query_one("SELECT system_identifier::text FROM pg_control_system()").unwrap();
    assert!(!sysid_a.is_empty() && !sysid_b.is_empty());
    let c = postgres::Config::from_str_dsn(&a.dsn("postgres"));
    let mut client = c.connect(postgres::NoTls).unwrap();
    let row = client.query_one("SELECT current_setting('port')", &[]).unwrap();
    assert_eq!(row.get::<_, String>(0), a.port.to_string());
}

trait FromDsn {
    fn from_str_dsn(dsn: &str) -> postgres::Config;
}

impl FromDsn for postgres::Config {
    fn from_str_dsn(dsn: &str) -> postgres::Config {
        dsn.parse().expect("harness DSNs parse as libpq key/value strings")
    }
}

#[test]
fn servers_stop_on_drop_and_on_panic() {
    let node = TestNode::start(NodeOptions::new("short-lived").without_preload()).unwrap();
    let pid = node.postmaster_pid().expect("running");
    let root = node.root().to_path_buf();
    drop(node);
    assert!(!pid_alive(pid), "postmaster {pid} still runs after drop");
    assert!(!root.exists(), "{} not removed", root.display());

    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::panic::catch_unwind(move || {
        let node = TestNode::start(NodeOptions::new("panicking").without_preload()).unwrap();
        tx.send(node.postmaster_pid().unwrap()).unwrap();
        panic!("test failure while a server runs");
    });
    assert!(result.is_err());
    let pid = rx.recv().unwrap();
    assert!(!pid_alive(pid), "postmaster {pid} survived a panicking test");
}

#[test]
fn crash_and_restart() {
    let node = TestNode::start(NodeOptions::new("crashy")).unwrap();
    node.execute("CREATE TABLE t(id int primary key); INSERT INTO t SELECT generate_series(1, 100)").unwrap();
    node.kill9().unwrap();
    assert!(node.connect().is_err());
    node.restart().unwrap();
    assert_eq!(node.query_one::<i64>("SELECT count(*) FROM t").unwrap(), 100);
}
