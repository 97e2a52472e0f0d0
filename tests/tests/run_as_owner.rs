//! Applied and copied changes run as the owner of the table they write, in a
//! security-restricted operation (docs/apply.md, "Whose rights a change runs
//! with"): code that a table's owner attached to the table (an ENABLE ALWAYS or
//! ENABLE REPLICA trigger, a column default) runs with the owner's rights when a
//! change arrives, never as the superuser the apply worker connects as. So it
//! cannot make its owner superuser; trying is an error of the change, handled by
//! `spock.exception_behaviour` like any other. `spock.run_as_owner = on` restores
//! the old behaviour.
//!
//! On the subscriber a plain role, alice, owns table `t` and a probe that records
//! `current_user` (and whether it is superuser) in alice's table `audit`, and tries
//! `ALTER ROLE alice SUPERUSER` when the row's `v` is 'escalate' (or alice's `ctl`
//! says so, for the default, which sees no row). The functions pin their
//! search_path: apply runs with `pg_catalog, pg_temp` (docs/security.md).

use std::time::Duration;

use spock_tests::{Cluster, TestNode};

fn wait_for<T: PartialEq + std::fmt::Debug>(what: &str, f: impl FnMut() -> T, want: T) {
    spock_tests::wait_for(what, Duration::from_secs(60), f, want)
}

/// Where alice's code hooks into `t` on the subscriber.
#[derive(Clone, Copy)]
enum Hook {
    /// A BEFORE INSERT OR UPDATE trigger, ENABLE ALWAYS.
    AlwaysTrigger,
    /// An AFTER INSERT OR UPDATE trigger, ENABLE REPLICA (fires in the apply worker
    /// only, which runs with session_replication_role = replica).
    ReplicaTrigger,
    /// A column the provider does not have, whose DEFAULT calls the probe.
    Default,
}

/// Two nodes; n1 publishes `t(id int PRIMARY KEY, v text)`; on n2 alice owns `t`
/// with `hook`. `settings`: extra settings of n2 (reloaded before anything
/// subscribes). Nothing subscribes yet.
fn setup(hook: Hook, settings: &[(&str, &str)]) -> Cluster {
    let c = Cluster::start_n(2).unwrap();
    for n in &c.nodes {
        n.execute("CREATE EXTENSION spock").unwrap();
        n.execute(&format!("SELECT spock.node_create('{}', '{}')", n.name, n.dsn("postgres"))).unwrap();
        n.execute("CREATE TABLE t(id int PRIMARY KEY, v text)").unwrap();
    }
    c.node(0).execute("SELECT spock.repset_add_table('default', 't')").unwrap();
    let s = c.node(1);
    for (k, v) in settings {
        s.execute(&format!("ALTER SYSTEM SET {k} = '{v}'")).unwrap();
    }
    s.execute("SELECT pg_reload_conf()").unwrap();
    s.execute(
        "CREATE ROLE alice NOSUPERUSER LOGIN;
         GRANT CREATE ON SCHEMA public TO alice;
         ALTER TABLE t OWNER TO alice;
         SET ROLE alice;
         CREATE TABLE audit(n serial, hook text, v text, who text, super bool);
         CREATE TABLE ctl(escalate bool);
         INSERT INTO ctl VALUES (false);
         CREATE FUNCTION probe(hook text, v text) RETURNS void LANGUAGE plpgsql SET search_path = public, pg_catalog AS $$
         BEGIN
             INSERT INTO audit(hook, v, who, super)
                  VALUES (hook, v, current_user, (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user));
             IF v = 'escalate' OR (SELECT escalate FROM ctl) THEN
                 EXECUTE 'ALTER ROLE alice SUPERUSER';
             END IF;
         END $$;
         CREATE FUNCTION probe_trigger() RETURNS trigger LANGUAGE plpgsql SET search_path = public, pg_catalog AS $$
         BEGIN PERFORM probe(TG_ARGV[0], NEW.v); RETURN NEW; END $$;
         CREATE FUNCTION probe_default() RETURNS text LANGUAGE plpgsql SET search_path = public, pg_catalog AS $$
         BEGIN PERFORM probe('default', NULL); RETURN 'x'; END $$;
         RESET ROLE;",
    )
    .unwrap();
    let hook_sql = match hook {
        Hook::AlwaysTrigger => {
            "CREATE TRIGGER probe_always BEFORE INSERT OR UPDATE ON t FOR EACH ROW EXECUTE FUNCTION probe_trigger('always');
             ALTER TABLE t ENABLE ALWAYS TRIGGER probe_always;"
        }
        Hook::ReplicaTrigger => {
            "CREATE TRIGGER probe_replica AFTER INSERT OR UPDATE ON t FOR EACH ROW EXECUTE FUNCTION probe_trigger('replica');
             ALTER TABLE t ENABLE REPLICA TRIGGER probe_replica;"
        }
        Hook::Default => "ALTER TABLE t ADD COLUMN w text DEFAULT probe_default();",
    };
    // Created by alice herself: all of it is hers.
    s.execute(&format!("SET ROLE alice; {hook_sql} RESET ROLE;")).unwrap();
    c
}

fn subscribe(c: &Cluster, sync_data: bool) {
    let (p, s) = (c.node(0), c.node(1));
    s.execute(&format!("SELECT spock.sub_create('sub1', '{}', synchronize_data := {sync_data})", p.dsn("postgres")))
        .unwrap();
    wait_for(
        "replicating",
        || s.query_one::<String>("SELECT status FROM spock.sub_show_status()").unwrap(),
        "replicating".into(),
    );
}

/// `t` as `id:v,...`.
fn rows(n: &TestNode) -> String {
    n.query_one::<String>("SELECT coalesce(string_agg(id || ':' || v, ',' ORDER BY id), '') FROM t").unwrap()
}

/// alice's audit as `hook/v/who/super,...` in the order recorded.
fn audit(n: &TestNode) -> String {
    n.query_one::<String>(
        "SELECT coalesce(string_agg(hook || '/' || coalesce(v, '-') || '/' || who || '/' || super, ',' ORDER BY n), '') FROM audit",
    )
    .unwrap()
}

fn alice_is_superuser(n: &TestNode) -> bool {
    n.query_one::<bool>("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = 'alice'").unwrap()
}

/// exception_log rows as `table/operation/error`, error shortened to `denied`
/// when it is the refused ALTER ROLE, `collateral` otherwise.
fn exception_log(n: &TestNode) -> String {
    spock_tests::fixtures::exception_log(n, "%permission denied to alter role%", "denied")
}

/// Waits until the server log after byte `offset` contains `text`.
fn wait_for_log(n: &TestNode, offset: usize, text: &str) {
    n.wait_for_log(offset, text, 1, Duration::from_secs(60));
}

#[test]
fn always_trigger_runs_as_owner_and_cannot_make_it_superuser() {
    let c = setup(Hook::AlwaysTrigger, &[]);
    subscribe(&c, false);
    let (p, s) = (c.node(0), c.node(1));
    p.execute("INSERT INTO t VALUES (1, 'one')").unwrap();
    wait_for("row 1", || rows(s), "1:one".into());
    p.execute("UPDATE t SET v = 'uno' WHERE id = 1").unwrap();
    wait_for("the update of row 1", || rows(s), "1:uno".into());
    assert_eq!(audit(s), "always/one/alice/false,always/uno/alice/false", "the trigger runs as the table's owner");

    // The attack: the trigger tries to make its owner superuser. As alice it cannot:
    // the change fails; with the default exception_behaviour (transdiscard) its
    // transaction is logged and skipped, and replication goes on.
    let offset = s.log_offset();
    p.execute("INSERT INTO t VALUES (2, 'escalate')").unwrap();
    wait_for_log(s, offset, "permission denied to alter role");
    wait_for("the failed transaction in exception_log", || exception_log(s), "t/INSERT/denied".into());
    p.execute("INSERT INTO t VALUES (3, 'three')").unwrap();
    wait_for("row 3 after the failed transaction", || rows(s), "1:uno,3:three".into());
    assert!(!alice_is_superuser(s), "the table owner's trigger must not make it superuser");
    assert_eq!(audit(s), "always/one/alice/false,always/uno/alice/false,always/three/alice/false");

    // A replicated TRUNCATE fires alice's TRUNCATE trigger as alice too.
    s.execute(
        "SET ROLE alice;
         CREATE FUNCTION probe_truncate() RETURNS trigger LANGUAGE plpgsql SET search_path = public, pg_catalog AS $$
         BEGIN PERFORM probe('truncate', NULL); RETURN NULL; END $$;
         CREATE TRIGGER probe_truncate BEFORE TRUNCATE ON t FOR EACH STATEMENT EXECUTE FUNCTION probe_truncate();
         ALTER TABLE t ENABLE ALWAYS TRIGGER probe_truncate;
         RESET ROLE;",
    )
    .unwrap();
    p.execute("TRUNCATE t").unwrap();
    wait_for("the truncate", || rows(s), String::new());
    assert!(audit(s).ends_with(",always/three/alice/false,truncate/-/alice/false"), "{}", audit(s));
}

#[test]
fn replica_trigger_runs_as_owner_in_apply_and_in_replay() {
    let c = setup(Hook::ReplicaTrigger, &[("spock.exception_behaviour", "discard")]);
    subscribe(&c, false);
    let (p, s) = (c.node(0), c.node(1));
    p.execute("INSERT INTO t VALUES (1, 'one')").unwrap();
    wait_for("row 1", || rows(s), "1:one".into());
    assert_eq!(audit(s), "replica/one/alice/false", "the ENABLE REPLICA trigger fires in apply, as the table's owner");

    // The escalating change fails (as alice); the transaction is replayed change by
    // change (discard): the failing change again as alice, the other one applies,
    // its trigger again as alice.
    let offset = s.log_offset();
    p.execute("BEGIN; INSERT INTO t VALUES (2, 'escalate'); INSERT INTO t VALUES (3, 'three'); COMMIT").unwrap();
    wait_for("row 3 of the replayed transaction", || rows(s), "1:one,3:three".into());
    wait_for_log(s, offset, "permission denied to alter role");
    assert_eq!(exception_log(s), "t/INSERT/denied");
    assert!(!alice_is_superuser(s), "the table owner's trigger must not make it superuser");
    assert_eq!(audit(s), "replica/one/alice/false,replica/three/alice/false");
    p.execute("INSERT INTO t VALUES (4, 'four')").unwrap();
    wait_for("row 4", || rows(s), "1:one,3:three,4:four".into());
}

#[test]
fn column_default_runs_as_owner() {
    let c = setup(Hook::Default, &[]);
    subscribe(&c, false);
    let (p, s) = (c.node(0), c.node(1));
    p.execute("INSERT INTO t VALUES (1, 'one')").unwrap();
    wait_for("row 1", || rows(s), "1:one".into());
    assert_eq!(s.query_one::<String>("SELECT w FROM t WHERE id = 1").unwrap(), "x");
    assert_eq!(
        audit(s),
        "default/-/alice/false",
        "the default of a column only the subscriber has runs as the table's owner"
    );

    s.execute("UPDATE ctl SET escalate = true").unwrap();
    let offset = s.log_offset();
    p.execute("INSERT INTO t VALUES (2, 'two')").unwrap();
    wait_for("the failed transaction in exception_log", || exception_log(s), "t/INSERT/denied".into());
    wait_for_log(s, offset, "permission denied to alter role");
    s.execute("UPDATE ctl SET escalate = false").unwrap();
    p.execute("INSERT INTO t VALUES (3, 'three')").unwrap();
    wait_for("row 3 after the failed transaction", || rows(s), "1:one,3:three".into());
    assert!(!alice_is_superuser(s), "the default must not make the table's owner superuser");
    assert_eq!(audit(s), "default/-/alice/false,default/-/alice/false");
}

#[test]
fn conflicts_are_resolved_and_recorded_while_applying_as_owner() {
    // Conflict bookkeeping (spock.node, spock.resolutions) is the worker's: it
    // works although the change runs as alice, who may not write those catalogs.
    let c = setup(Hook::AlwaysTrigger, &[("spock.save_resolutions", "on")]);
    subscribe(&c, false);
    let (p, s) = (c.node(0), c.node(1));
    s.execute("INSERT INTO t VALUES (5, 'local')").unwrap();
    p.execute("INSERT INTO t VALUES (5, 'remote')").unwrap();
    wait_for("the newer remote row wins", || rows(s), "5:remote".into());
    wait_for(
        "the resolution recorded",
        || s.query_one::<i64>("SELECT count(*) FROM spock.resolutions WHERE conflict_type = 'insert_exists'").unwrap(),
        1,
    );
    // The local insert, then the remote row applied over it (as an update), as alice.
    assert_eq!(audit(s), "always/local/postgres/true,always/remote/alice/false");
}

#[test]
fn run_as_owner_on_applies_as_the_workers_user() {
    let c = setup(Hook::AlwaysTrigger, &[("spock.run_as_owner", "on")]);
    subscribe(&c, false);
    let (p, s) = (c.node(0), c.node(1));
    p.execute("INSERT INTO t VALUES (1, 'one')").unwrap();
    wait_for("row 1", || rows(s), "1:one".into());
    assert_eq!(
        audit(s),
        "always/one/postgres/true",
        "with the opt-out the trigger runs as the apply worker's superuser"
    );

    // Off again; the worker started next reads it.
    s.execute("ALTER SYSTEM SET spock.run_as_owner = off").unwrap();
    s.execute("SELECT pg_reload_conf()").unwrap();
    s.execute("SELECT spock.sub_disable('sub1', immediate := true)").unwrap();
    wait_for(
        "disabled",
        || s.query_one::<String>("SELECT status FROM spock.sub_show_status()").unwrap(),
        "disabled".into(),
    );
    s.execute("SELECT spock.sub_enable('sub1', immediate := true)").unwrap();
    wait_for(
        "replicating",
        || s.query_one::<String>("SELECT status FROM spock.sub_show_status()").unwrap(),
        "replicating".into(),
    );
    p.execute("INSERT INTO t VALUES (2, 'two')").unwrap();
    wait_for("row 2", || rows(s), "1:one,2:two".into());
    assert_eq!(
        audit(s),
        "always/one/postgres/true,always/two/alice/false",
        "without the opt-out, as the table's owner"
    );
}

#[test]
fn initial_copy_runs_as_owner() {
    let c = setup(Hook::AlwaysTrigger, &[]);
    let (p, s) = (c.node(0), c.node(1));
    p.execute("INSERT INTO t SELECT g, 'copied' || g FROM generate_series(1, 3) g").unwrap();
    subscribe(&c, true);
    wait_for("the copied rows", || rows(s), "1:copied1,2:copied2,3:copied3".into());
    assert_eq!(
        audit(s),
        "always/copied1/alice/false,always/copied2/alice/false,always/copied3/alice/false",
        "COPY of the initial sync fires the trigger as the table's owner"
    );
    p.execute("INSERT INTO t VALUES (4, 'four')").unwrap();
    wait_for("row 4", || rows(s), "1:copied1,2:copied2,3:copied3,4:four".into());
    assert!(audit(s).ends_with(",always/four/alice/false"), "{}", audit(s));

    // A table sync into rows that exist merges them (INSERT ... ON CONFLICT DO
    // UPDATE: each row's BEFORE INSERT, then BEFORE UPDATE trigger), as alice.
    let audited = |s: &TestNode| s.query_one::<i64>("SELECT count(*) FROM audit").unwrap();
    s.execute("SELECT spock.sub_resync_table('sub1', 't', truncate := false)").unwrap();
    wait_for("the merge's triggers", || audited(s), 4 + 2 * 4);
    s.execute("SELECT spock.table_wait_for_sync('sub1', 't')").unwrap();
    // With truncate: TRUNCATE and COPY, as alice.
    s.execute("SELECT spock.sub_resync_table('sub1', 't')").unwrap();
    wait_for("the copy's triggers", || audited(s), 4 + 2 * 4 + 4);
    s.execute("SELECT spock.table_wait_for_sync('sub1', 't')").unwrap();
    assert_eq!(rows(s), "1:copied1,2:copied2,3:copied3,4:four");
    assert_eq!(
        s.query_one::<i64>("SELECT count(*) FROM audit WHERE who <> 'alice' OR super").unwrap(),
        0,
        "{}",
        audit(s)
    );
}
