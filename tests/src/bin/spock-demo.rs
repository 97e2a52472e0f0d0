//! The README's demo: starts a local PostgreSQL 18 with spock preloaded, creates the
//! extension and shows what it reports. Servers are stopped when the demo ends,
//! also on error or Ctrl-C (the harness reaps what an interrupted run left behind).

use spock_tests::{NodeOptions, TestNode};

fn main() {
    if let Err(e) = run() {
        eprintln!("demo failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    println!("== starting a PostgreSQL 18 node with shared_preload_libraries = 'spock'");
    let node = TestNode::start(NodeOptions::new("n1"))?;
    println!("   node n1: {}", node.dsn("postgres"));
    println!("   {}", node.query_one::<String>("SELECT version()")?);

    println!("== CREATE EXTENSION spock");
    node.execute("CREATE EXTENSION spock")?;
    let rows = node.connect()?.query(
        "SELECT spock.spock_version(), spock.spock_version_num(), spock.spock_min_proto_version(), \
                spock.spock_max_proto_version(), spock.spock_rs_version()",
        &[],
    )?;
    let r = &rows[0];
    println!("   spock.spock_version()           = {}", r.get::<_, String>(0));
    println!("   spock.spock_version_num()       = {}", r.get::<_, i32>(1));
    println!("   native protocol versions        = {}..{}", r.get::<_, i32>(2), r.get::<_, i32>(3));
    println!("   spock-rs                        = {}", r.get::<_, String>(4));
    println!("== stopping the node");
    drop(node);
    println!("done.");
    Ok(())
}
