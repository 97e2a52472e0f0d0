//! Streaming of large in-progress transactions (spock-rs `spock_rs.streaming`): the
//! messages `spock_output` sends, and provider → subscriber apply on real servers.

use std::time::Duration;

use spock_core::proto::{Decoded, Message, StreamCommit};
use spock_tests::decoding::{slot_messages, spock_params, with_param};
use spock_tests::{wait_for, Cluster, NodeOptions, TestNode};

const STREAMING: &str = "spock_rs.streaming";

fn provider(name: &str) -> TestNode {
    let node = TestNode::start(NodeOptions::new(name).setting("logical_decoding_work_mem", "64kB")).unwrap();
    node.execute(&format!("CREATE EXTENSION spock; SELECT spock.node_create('{name}', '{}');", node.dsn("postgres")))
        .unwrap();
    node.execute("CREATE TABLE public.t(id int PRIMARY KEY, v text)").unwrap();
    node.execute("CREATE TABLE public.unpublished(id int PRIMARY KEY, v text)").unwrap();
    node.execute("SELECT spock.repset_add_table('default', 'public.t')").unwrap();
    node.execute("SELECT pg_create_logical_replication_slot('s', 'spock_output')").unwrap();
    node
}

fn text_params(streaming: Option<&str>) -> Vec<(String, String)> {
    let p = with_param(spock_params("default"), "binary.want_internal_basetypes", "0");
    let p = with_param(p, "binary.want_binary_basetypes", "0");
    match streaming {
        Some(v) => with_param(p, STREAMING, v),
        None => p,
    }
}

/// The stream as a compact string: plain letters for ordinary messages, `x<L>` for a
/// streamed change with inner letter L, runs of the same token collapsed as `L*`.
fn shape(msgs: &[Decoded]) -> String {
    let mut tokens: Vec<String> = Vec::new();
    for d in msgs {
        let t = match &d.message {
            Message::Startup(_) => continue,
            Message::StreamChange(c) => format!("x{}", c.message.letter() as char),
            m => (m.letter() as char).to_string(),
        };
        match tokens.last_mut() {
            Some(last) if last.trim_end_matches('*') == t => {
                if !last.ends_with('*') {
                    last.push('*');
                }
            }
            _ => tokens.push(t),
        }
    }
    tokens.join(" ")
}

/// Checks the stream grammar for one streamed transaction and returns its messages
/// in order: s (first) { x... } e, then more blocks; a for subtransactions; c or a.
fn streamed_rows(msgs: &[Decoded], xid: u32) -> (Vec<Message>, Vec<u32>, Option<StreamCommit>) {
    let mut in_block = false;
    let mut seen_start = false;
    let mut kept: Vec<(u32, Message)> = Vec::new();
    let mut sub_aborts = Vec::new();
    let mut commit = None;
    for d in msgs {
        match &d.message {
            Message::StreamStart(s) if s.xid == xid => {
                assert!(!in_block, "nested stream start");
                assert_eq!(s.first_segment, !seen_start, "first_segment only on the first block");
                seen_start = true;
                in_block = true;
            }
            Message::StreamStop(_) if in_block => in_block = false,
            Message::StreamChange(c) if in_block => kept.push((c.xid, (*c.message).clone())),
            Message::StreamAbort(a) if a.xid == xid => {
                assert!(!in_block);
                if a.subxid == xid {
                    kept.clear();
                } else {
                    sub_aborts.push(a.subxid);
                    // What the subscriber does: drop from the subtransaction's first
                    // change on.
                    if let Some(pos) = kept.iter().position(|(x, _)| *x == a.subxid) {
                        kept.truncate(pos);
                    }
                }
            }
            Message::StreamCommit(c) if c.xid == xid => {
                assert!(!in_block);
                commit = Some(c.clone());
            }
            m => assert!(!in_block, "{} inside a stream block of {xid}", m.letter() as char),
        }
    }
    assert!(!in_block, "stream block never stopped");
    (kept.into_iter().map(|(_, m)| m).collect(), sub_aborts, commit)
}

fn inserted_ids(msgs: &[Message]) -> Vec<i64> {
    msgs.iter()
        .filter_map(|m| match m {
            Message::Insert(i) => match &i.new.columns[0] {
                spock_core::proto::Datum::Text(b) => Some(std::str::from_utf8(b).unwrap().parse().unwrap()),
                d => panic!("{d:?}"),
            },
            _ => None,
        })
        .collect()
}

fn stream_stats(node: &TestNode, slot: &str) -> (i64, i64) {
    node.query_one::<String>(&format!(
        "SELECT stream_txns || ',' || spill_txns FROM pg_stat_replication_slots WHERE slot_name = '{slot}'"
    ))
    .map(|s| {
        let (a, b) = s.split_once(',').unwrap();
        (a.parse().unwrap(), b.parse().unwrap())
    })
    .unwrap_or((0, 0))
}

#[test]
fn decoding_streams_large_transactions_with_subtransaction_abort() {
    let node = provider("p1");
    let mut big = node.connect().unwrap();
    let mut small = node.connect().unwrap();
    big.batch_execute("BEGIN; INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 2000) g").unwrap();
    let xid: i64 = big.query_one("SELECT pg_current_xact_id()::text::int8", &[]).unwrap().get(0);
    let xid = xid as u32;
    // A small transaction commits while the big one is open.
    small.batch_execute("INSERT INTO t VALUES (100001, 'small')").unwrap();
    big.batch_execute(
        "SAVEPOINT sp;
         INSERT INTO t SELECT g, 'rolled back' FROM generate_series(2001, 4000) g;
         ROLLBACK TO SAVEPOINT sp;
         INSERT INTO unpublished SELECT g, repeat('y', 100) FROM generate_series(1, 2000) g;
         INSERT INTO t SELECT g, 'after' FROM generate_series(4001, 4500) g;
         COMMIT",
    )
    .unwrap();
    // A big transaction that rolls back, and one touching only an unpublished table.
    small.batch_execute("BEGIN; INSERT INTO t SELECT g, repeat('z', 100) FROM generate_series(5001, 8000) g").unwrap();
    let rolled_back: i64 = small.query_one("SELECT pg_current_xact_id()::text::int8", &[]).unwrap().get(0);
    small.batch_execute("ROLLBACK").unwrap();
    node.execute("INSERT INTO unpublished SELECT g, repeat('y', 100) FROM generate_series(3001, 6000) g").unwrap();
    node.execute("INSERT INTO t VALUES (100002, 'last')").unwrap();

    let decoded = slot_messages(&node, "postgres", "s", &text_params(Some("1")), true).unwrap();
    let Message::Startup(st) = &decoded[0].message else { panic!("startup first") };
    assert_eq!(st.get(STREAMING), Some("t"));
    let shape = shape(&decoded);
    eprintln!("stream shape: {shape}");
    // The exact sequence: the big transaction's first block opens with its relation
    // message; the small transaction commits in between and gets its own R (an R
    // sent inside a stream never counts for the connection); the subtransaction's
    // streamed changes are dropped by an abort 'a'; the rolled-back big transaction
    // ends with 'a'; the unpublished-only transaction sends nothing.
    let mut collapsed = shape.clone();
    while collapsed.contains("s xI* e s xI* e") {
        collapsed = collapsed.replace("s xI* e s xI* e", "s xI* e");
    }
    assert_eq!(collapsed, "s xR xI* e s xI* e B O R I C s xI* e a s xR xI* e s xI* e c B O I C");
    let ours: Vec<Decoded> = decoded.iter().filter(|d| !matches!(d.message, Message::Startup(_))).cloned().collect();
    assert!(matches!(&ours[0].message, Message::StreamStart(s) if s.xid == xid && s.first_segment), "{shape}");
    assert!(
        matches!(&ours[1].message, Message::StreamChange(c) if c.xid == xid && c.message.letter() == b'R'),
        "{shape}"
    );
    let (kept, sub_aborts, commit) = streamed_rows(&ours, xid);
    assert_eq!(sub_aborts.len(), 1, "one subtransaction abort: {shape}");
    assert_ne!(sub_aborts[0], xid);
    let commit = commit.expect("stream commit");
    assert_eq!(commit.origin_name.as_deref(), Some("p1"));
    assert!(commit.end_lsn > commit.commit_lsn && commit.commit_time > 0);
    let ids = inserted_ids(&kept);
    let want: Vec<i64> = (1..=2000).chain(4001..=4500).collect();
    assert_eq!(ids, want, "what a subscriber keeps of the big transaction");
    // Every change a subscriber keeps has a relation message before it.
    assert!(matches!(kept[0], Message::Relation(_)));

    // Non-streamed transactions: the small one (with R), the last one.
    let plain: String = ours
        .iter()
        .filter(|d| {
            matches!(
                d.message,
                Message::Begin(_) | Message::Origin(_) | Message::Relation(_) | Message::Insert(_) | Message::Commit(_)
            )
        })
        .map(|d| d.message.letter() as char)
        .collect();
    assert_eq!(plain, "BORICBOIC", "{shape}");
    // The small transaction's commit comes before the big one's stream commit.
    let pos = |f: &dyn Fn(&Message) -> bool| ours.iter().position(|d| f(&d.message)).unwrap();
    assert!(pos(&|m| matches!(m, Message::Commit(_))) < pos(&|m| matches!(m, Message::StreamCommit(_))));
    // The rolled-back transaction is not streamed at all: it had aborted before it
    // was decoded (PostgreSQL checks before streaming). Streamed transactions that
    // roll back are covered end to end below.
    assert!(
        !ours.iter().any(|d| matches!(&d.message, Message::StreamStart(s) if s.xid == rolled_back as u32)),
        "{shape}"
    );
    // Every stream letter is one of ours, and every 's' has its 'e'.
    let starts = ours.iter().filter(|d| matches!(d.message, Message::StreamStart(_))).count();
    let stops = ours.iter().filter(|d| matches!(d.message, Message::StreamStop(_))).count();
    assert_eq!(starts, stops);
    assert!(starts >= 3, "{shape}");
    let (stream_txns, spill_txns) = stream_stats(&node, "s");
    assert!(stream_txns > 0, "pg_stat_replication_slots.stream_txns = {stream_txns}");
    assert_eq!(spill_txns, 0);
}

#[test]
fn a_client_that_does_not_ask_gets_no_stream_messages() {
    let node = provider("p2");
    node.execute("INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 3000) g").unwrap();
    for streaming in [None, Some("0")] {
        let decoded = slot_messages(&node, "postgres", "s", &text_params(streaming), true).unwrap();
        let Message::Startup(st) = &decoded[0].message else { panic!("startup first") };
        // A Spock client (which never sends the parameter) gets Spock's reply.
        assert_eq!(st.get(STREAMING), streaming.map(|_| "f"));
        assert_eq!(shape(&decoded), "B O R I* C");
        let inserts = decoded.iter().filter(|d| matches!(d.message, Message::Insert(_))).count();
        assert_eq!(inserts, 3000);
    }
    let (stream_txns, spill_txns) = stream_stats(&node, "s");
    assert_eq!(stream_txns, 0);
    assert!(spill_txns > 0, "PostgreSQL spilled the large transaction instead");
}

// ---- provider → subscriber ------------------------------------------------------

fn setup_node(n: &TestNode) {
    n.execute("CREATE EXTENSION spock").unwrap();
    n.execute(&format!("SELECT spock.node_create('{}', '{}')", n.name, n.dsn("postgres"))).unwrap();
    n.execute("CREATE TABLE t(id int PRIMARY KEY, v text)").unwrap();
    n.execute("SELECT spock.repset_add_table('default', 't')").unwrap();
}

fn pair() -> Cluster {
    pair_with(true)
}

/// A provider streaming beyond 64kB and a subscriber subscribed to it; `eager`:
/// `spock.stream_eager_apply` on the subscriber.
fn pair_with(eager: bool) -> Cluster {
    let cluster = Cluster::start(vec![
        NodeOptions::new("n1").setting("logical_decoding_work_mem", "64kB"),
        NodeOptions::new("n2")
            .setting("log_error_verbosity", "verbose")
            .setting("spock.stream_eager_apply", if eager { "on" } else { "off" }),
    ])
    .unwrap();
    let (a, b) = (cluster.node(0), cluster.node(1));
    setup_node(a);
    setup_node(b);
    b.execute(&format!("SELECT spock.sub_create('sub_n2_n1', '{}')", a.dsn("postgres"))).unwrap();
    wait_for(
        "replicating",
        Duration::from_secs(60),
        || b.query_one::<String>("SELECT status FROM spock.sub_show_status()").unwrap(),
        "replicating".to_string(),
    );
    cluster
}

fn summary(n: &TestNode) -> (i64, String) {
    (
        n.query_one::<i64>("SELECT count(*) FROM t").unwrap(),
        n.query_one::<String>("SELECT coalesce(md5(string_agg(id || ':' || v, ',' ORDER BY id)), '') FROM t").unwrap(),
    )
}

fn provider_slot_stats(a: &TestNode) -> (i64, i64) {
    let slot = a
        .query_one::<String>("SELECT slot_name::text FROM pg_replication_slots WHERE plugin = 'spock_output'")
        .unwrap();
    stream_stats(a, &slot)
}

fn spill_files(b: &TestNode) -> usize {
    let dir = b.data_dir().join("pg_spock").join("stream");
    walk(&dir)
}

fn walk(dir: &std::path::Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.filter_map(|e| e.ok()).map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 }).sum()
}

#[test]
fn streamed_transactions_reach_the_subscriber_exactly() {
    let cluster = pair();
    let (a, b) = (cluster.node(0), cluster.node(1));
    let mut big = a.connect().unwrap();
    big.batch_execute("BEGIN; INSERT INTO t SELECT g, 'big ' || g FROM generate_series(1, 10000) g").unwrap();
    // Small transactions commit (and are applied) while the big one is open.
    for i in 0..20 {
        a.execute(&format!("INSERT INTO t VALUES ({}, 'small')", 1_000_000 + i)).unwrap();
    }
    wait_for(
        "small transactions applied while the big one is open",
        Duration::from_secs(60),
        || b.query_one::<i64>("SELECT count(*) FROM t").unwrap(),
        20,
    );
    assert!(spill_files(b) >= 1, "the open transaction is spilled on the subscriber");
    big.batch_execute(
        "INSERT INTO t SELECT g, 'big ' || g FROM generate_series(10001, 20000) g;
         UPDATE t SET v = 'updated' WHERE id % 100 = 0 AND id <= 20000;
         DELETE FROM t WHERE id % 100 = 1 AND id <= 20000;
         COMMIT",
    )
    .unwrap();
    wait_for("the big transaction applied", Duration::from_secs(120), || summary(b).0, 20_000 - 200 + 20);
    // A big transaction that rolls back after part of it was streamed.
    let mut rb = a.connect().unwrap();
    rb.batch_execute("BEGIN; INSERT INTO t SELECT g, 'never' FROM generate_series(30001, 35000) g").unwrap();
    wait_for("the rolled-back transaction spilled", Duration::from_secs(60), || spill_files(b), 1);
    rb.batch_execute("ROLLBACK").unwrap();
    wait_for("its spill file removed at the stream abort", Duration::from_secs(60), || spill_files(b), 0);
    // A big transaction with ROLLBACK TO SAVEPOINT (nested savepoints).
    a.execute(
        "BEGIN;
         INSERT INTO t SELECT g, 'sp top' FROM generate_series(40001, 42000) g;
         SAVEPOINT a;
         INSERT INTO t SELECT g, 'sp a' FROM generate_series(42001, 44000) g;
         SAVEPOINT b;
         INSERT INTO t SELECT g, 'sp b' FROM generate_series(44001, 46000) g;
         ROLLBACK TO SAVEPOINT a;
         INSERT INTO t SELECT g, 'sp after' FROM generate_series(46001, 47000) g;
         SAVEPOINT c;
         UPDATE t SET v = 'sp c' WHERE id BETWEEN 40001 AND 40100;
         RELEASE SAVEPOINT c;
         COMMIT",
    )
    .unwrap();
    a.execute("INSERT INTO t VALUES (2000000, 'end')").unwrap();
    let want = summary(a);
    assert_eq!(want.0, 20_000 - 200 + 20 + 3_000 + 1);
    wait_for("the subscriber has exactly the provider's rows", Duration::from_secs(120), || summary(b), want.clone());
    let (stream_txns, spill_txns) = provider_slot_stats(a);
    assert!(stream_txns > 0, "the provider streamed (stream_txns = {stream_txns})");
    assert_eq!(spill_txns, 0, "the provider did not spill");
    wait_for("spill files removed", Duration::from_secs(30), || spill_files(b), 0);
    // Rows keep the remote commit timestamp: one commit for the whole big transaction.
    let commits =
        b.query_one::<i64>("SELECT count(DISTINCT pg_xact_commit_timestamp(xmin)) FROM t WHERE id <= 20000").unwrap();
    assert_eq!(commits, 1, "the streamed transaction was applied as one transaction");
}

#[test]
fn a_subscriber_killed_during_a_stream_applies_it_once() {
    let cluster = pair();
    let (a, b) = (cluster.node(0), cluster.node(1));
    let mut big = a.connect().unwrap();
    big.batch_execute("BEGIN; INSERT INTO t SELECT g, 'big' FROM generate_series(1, 10000) g").unwrap();
    a.execute("INSERT INTO t VALUES (1000001, 'small before kill')").unwrap();
    wait_for(
        "the small transaction applied",
        Duration::from_secs(60),
        || b.query_one::<i64>("SELECT count(*) FROM t").unwrap(),
        1,
    );
    wait_for("the stream spilled on the subscriber", Duration::from_secs(60), || spill_files(b) >= 1, true);
    b.kill9().unwrap();
    restart_after_kill(b);
    big.batch_execute("INSERT INTO t SELECT g, 'big' FROM generate_series(10001, 20000) g").unwrap();
    a.execute("INSERT INTO t VALUES (1000002, 'small after kill')").unwrap();
    // Kill again while the provider streams the rest.
    wait_for("streaming again after the restart", Duration::from_secs(60), || spill_files(b) >= 1, true);
    b.kill9().unwrap();
    restart_after_kill(b);
    big.batch_execute("COMMIT").unwrap();
    let want = summary(a);
    assert_eq!(want.0, 20_002);
    wait_for("exactly the provider's rows after the kills", Duration::from_secs(120), || summary(b), want.clone());
    // Kill right after the commit was applied: nothing is applied twice.
    b.kill9().unwrap();
    restart_after_kill(b);
    a.execute("INSERT INTO t VALUES (1000003, 'final')").unwrap();
    let want = summary(a);
    wait_for("still exactly once", Duration::from_secs(120), || summary(b), want);
}

/// Writes garbage over the end of the only spill file of the subscriber.
fn corrupt_spill_file(b: &TestNode) {
    let dir = b.data_dir().join("pg_spock").join("stream");
    let sub = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
    let file = std::fs::read_dir(&sub).unwrap().next().unwrap().unwrap().path();
    let len = std::fs::metadata(&file).unwrap().len();
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.seek(SeekFrom::Start(len / 2)).unwrap();
    f.write_all(&[0xAB; 64]).unwrap();
}

#[test]
fn a_corrupt_spill_file_is_a_clear_error_and_the_provider_streams_again() {
    // Without eager apply: the file is replayed at commit.
    let cluster = pair_with(false);
    let (a, b) = (cluster.node(0), cluster.node(1));
    let offset = b.log_offset();
    let mut big = a.connect().unwrap();
    big.batch_execute("BEGIN; INSERT INTO t SELECT g, 'big' FROM generate_series(1, 5000) g").unwrap();
    wait_for("the stream spilled on the subscriber", Duration::from_secs(60), || spill_files(b), 1);
    // Once the subscriber reports having received everything the provider has
    // written so far, it has also written it to the file (it reports after
    // processing): the file is complete for now. Then damage it.
    let written: String = a.query_one("SELECT pg_current_wal_lsn()::text").unwrap();
    wait_for(
        "the subscriber received the stream so far",
        Duration::from_secs(60),
        || {
            a.query_one::<bool>(&format!(
                "SELECT coalesce(bool_and(write_lsn >= '{written}'), false) FROM pg_stat_replication"
            ))
            .unwrap()
        },
        true,
    );
    corrupt_spill_file(b);
    big.batch_execute("COMMIT").unwrap();
    let want = summary(a);
    wait_for("the transaction applied after the worker restarted", Duration::from_secs(120), || summary(b), want);
    let log = b.log_since(offset);
    assert!(
        log.contains("ERROR:  XX001: spock subscription sub_n2_n1: streamed transaction file"),
        "a clear error with SQLSTATE data_corrupted"
    );
    assert!(
        log.contains("CRC") || log.contains("truncated") || log.contains("record at byte"),
        "{}",
        &log[log.len().saturating_sub(3000)..]
    );
}

/// Whether the subscriber's apply worker has a local transaction open (an xid).
fn apply_txn_open(b: &TestNode) -> bool {
    b.query_one::<bool>(
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'spock apply' AND backend_xid IS NOT NULL",
    )
    .unwrap()
}

#[test]
fn eager_apply_commits_or_falls_back_to_the_spill_file() {
    let cluster = pair();
    let (a, b) = (cluster.node(0), cluster.node(1));
    // 1. Nothing interleaves: the stream is applied while it arrives, in a local
    //    transaction that commits with the remote commit.
    let mut big = a.connect().unwrap();
    big.batch_execute("BEGIN; INSERT INTO t SELECT g, 'eager' FROM generate_series(1, 10000) g").unwrap();
    wait_for("the apply worker applies the open stream", Duration::from_secs(60), || apply_txn_open(b), true);
    assert_eq!(summary(b).0, 0, "nothing visible before the commit");
    big.batch_execute("UPDATE t SET v = 'eager updated' WHERE id % 100 = 0; COMMIT").unwrap();
    let want = summary(a);
    wait_for("the eagerly applied transaction committed", Duration::from_secs(120), || summary(b), want);
    wait_for("spill file removed", Duration::from_secs(30), || spill_files(b), 0);
    let same_ts = b
        .query_one::<bool>("SELECT bool_and(pg_xact_commit_timestamp(xmin) = (SELECT pg_xact_commit_timestamp(xmin) FROM t WHERE id = 1)) FROM t")
        .unwrap();
    assert!(same_ts, "one local transaction");
    // The origin timestamp is the provider's commit time.
    let provider_ts = a.query_one::<String>("SELECT pg_xact_commit_timestamp(xmin)::text FROM t WHERE id = 1").unwrap();
    let subscriber_ts =
        b.query_one::<String>("SELECT pg_xact_commit_timestamp(xmin)::text FROM t WHERE id = 1").unwrap();
    assert_eq!(provider_ts, subscriber_ts);

    // 2. A small transaction commits while a big one is being applied eagerly: the
    //    eager transaction rolls back, the small one is applied, the big one is
    //    replayed from its file at commit.
    big.batch_execute("BEGIN; INSERT INTO t SELECT g, 'second' FROM generate_series(20001, 26000) g").unwrap();
    wait_for("eager apply of the second stream", Duration::from_secs(60), || apply_txn_open(b), true);
    a.execute("INSERT INTO t VALUES (900001, 'small')").unwrap();
    wait_for(
        "the small transaction applied",
        Duration::from_secs(60),
        || b.query_one::<i64>("SELECT count(*) FROM t WHERE id = 900001").unwrap(),
        1,
    );
    assert!(!apply_txn_open(b), "the eager transaction was rolled back");
    big.batch_execute("INSERT INTO t SELECT g, 'second' FROM generate_series(26001, 30000) g; COMMIT").unwrap();
    let want = summary(a);
    wait_for("the replayed transaction", Duration::from_secs(120), || summary(b), want);

    // 3. A conflict needs the commit timestamp: the row exists on the subscriber
    //    (written there earlier); the stream is replayed at commit and the newer
    //    remote row wins (last_update_wins).
    b.execute("INSERT INTO t VALUES (50000, 'local, older')").unwrap();
    big.batch_execute("BEGIN; INSERT INTO t SELECT g, 'third' FROM generate_series(40001, 50000) g; COMMIT").unwrap();
    let want = summary(a);
    wait_for("the conflicting transaction replayed", Duration::from_secs(120), || summary(b), want);
    assert_eq!(b.query_one::<String>("SELECT v FROM t WHERE id = 50000").unwrap(), "third");
}

/// Row changes of the whole slot as a subscriber would apply them: streamed ones
/// (minus aborted subtransactions) and non-streamed ones, in commit order, without
/// relation messages.
fn applied_changes(msgs: &[Decoded]) -> Vec<Message> {
    let mut out = Vec::new();
    let mut streams: std::collections::HashMap<u32, Vec<(u32, Message)>> = Default::default();
    let mut current = None;
    for d in msgs {
        match &d.message {
            Message::StreamStart(s) => current = Some(s.xid),
            Message::StreamStop(_) => current = None,
            Message::StreamChange(c) => {
                streams.entry(current.unwrap()).or_default().push((c.xid, (*c.message).clone()))
            }
            Message::StreamAbort(a) if a.xid == a.subxid => {
                streams.remove(&a.xid);
            }
            Message::StreamAbort(a) => {
                let kept = streams.entry(a.xid).or_default();
                if let Some(pos) = kept.iter().position(|(x, _)| *x == a.subxid) {
                    kept.truncate(pos);
                }
            }
            Message::StreamCommit(c) => {
                out.extend(streams.remove(&c.xid).unwrap_or_default().into_iter().map(|(_, m)| m))
            }
            Message::Insert(_) | Message::Update(_) | Message::Delete(_) | Message::Truncate(_) => {
                out.push(d.message.clone())
            }
            _ => {}
        }
    }
    out.retain(|m| !matches!(m, Message::Relation(_)));
    out
}

#[test]
fn streamed_and_non_streamed_transactions_are_filtered_alike() {
    let node = provider("p3");
    node.execute("CREATE TABLE f(id int PRIMARY KEY, region text, secret text, amount int)").unwrap();
    node.execute(
        "SELECT spock.repset_add_table('default', 'f', columns := ARRAY['id','region','amount'], row_filter := 'region = ''eu'' AND amount > 10')",
    )
    .unwrap();
    node.execute("SELECT spock.repset_add_table('default_insert_only', 'unpublished')").unwrap();
    // Let the rows of table t come from another origin: they must be filtered out.
    node.execute("SELECT pg_replication_origin_create('elsewhere')").unwrap();
    node.execute(
        "BEGIN;
         INSERT INTO f SELECT g, CASE WHEN g % 3 = 0 THEN 'us' ELSE 'eu' END, 'secret ' || g, g % 50 FROM generate_series(1, 5000) g;
         UPDATE f SET amount = amount + 7 WHERE id % 4 = 0;
         DELETE FROM f WHERE id % 10 = 0;
         INSERT INTO unpublished SELECT g, 'x' FROM generate_series(1, 2000) g;
         UPDATE unpublished SET v = 'y' WHERE id < 100;
         DELETE FROM unpublished WHERE id < 50;
         SAVEPOINT s;
         INSERT INTO f SELECT g, 'eu', 'gone', 99 FROM generate_series(10001, 12000) g;
         ROLLBACK TO SAVEPOINT s;
         INSERT INTO t SELECT g, repeat('x', 50) FROM generate_series(1, 1000) g;
         COMMIT",
    )
    .unwrap();
    let mut c = node.connect().unwrap();
    c.batch_execute(
        "SELECT pg_replication_origin_session_setup('elsewhere');
         INSERT INTO t SELECT g, repeat('o', 50) FROM generate_series(5001, 8000) g;",
    )
    .unwrap();
    drop(c);
    let streamed = slot_messages(&node, "postgres", "s", &text_params(Some("1")), true).unwrap();
    let plain = slot_messages(&node, "postgres", "s", &text_params(None), true).unwrap();
    assert!(streamed.iter().any(|d| matches!(d.message, Message::StreamCommit(_))), "streamed: {}", shape(&streamed));
    assert!(!plain.iter().any(|d| matches!(d.message, Message::StreamStart(_))));
    let (a, b) = (applied_changes(&streamed), applied_changes(&plain));
    assert_eq!(a.len(), b.len(), "streamed {} vs plain {}", shape(&streamed), shape(&plain));
    assert!(a == b, "the same changes, streamed or not");
    // Only f's published columns and rows, and t's local rows (not the other origin's).
    assert!(a.iter().all(|m| match m {
        Message::Insert(i) => i.new.columns.len() == 3 || i.new.columns.len() == 2,
        _ => true,
    }));
    let t_inserts = a.iter().filter(|m| matches!(m, Message::Insert(i) if i.new.columns.len() == 2)).count();
    assert_eq!(t_inserts, 1000);
    // Relation messages: every streamed change has its R earlier in its transaction.
    let rels = streamed
        .iter()
        .filter(|d| matches!(&d.message, Message::StreamChange(c) if c.message.letter() == b'R'))
        .count();
    assert!(rels >= 2, "{}", shape(&streamed));
}

/// Starts a node whose postmaster was killed: its children may need a moment to
/// notice and detach from shared memory.
fn restart_after_kill(n: &TestNode) {
    let started = || match n.restart() {
        Ok(()) => true,
        Err(e) if e.0.contains("pre-existing shared memory block") => false,
        Err(e) => panic!("{e}"),
    };
    wait_for("the restart after the kill", Duration::from_secs(30), started, true);
}

#[test]
fn a_provider_killed_during_a_stream_leaves_nothing_behind() {
    let cluster = pair();
    let (a, b) = (cluster.node(0), cluster.node(1));
    let mut big = a.connect().unwrap();
    big.batch_execute("BEGIN; INSERT INTO t SELECT g, 'lost' FROM generate_series(1, 5000) g").unwrap();
    wait_for(
        "the stream spilled and applied eagerly",
        Duration::from_secs(60),
        || (spill_files(b), apply_txn_open(b)),
        (1, true),
    );
    a.kill9().unwrap();
    drop(big);
    restart_after_kill(a);
    // The transaction never committed: nothing of it arrives, its file goes away.
    a.execute("INSERT INTO t VALUES (100001, 'after the crash')").unwrap();
    wait_for("the next transaction applied", Duration::from_secs(120), || summary(b), summary(a));
    wait_for("no spill file left", Duration::from_secs(60), || spill_files(b), 0);
    assert_eq!(summary(b).0, 1);
    a.execute("BEGIN; INSERT INTO t SELECT g, 'kept' FROM generate_series(1, 5000) g; COMMIT").unwrap();
    wait_for("a later streamed transaction", Duration::from_secs(120), || summary(b), summary(a));
}

#[test]
fn interleaved_streamed_transactions_commit_in_their_order() {
    let cluster = pair();
    let (a, b) = (cluster.node(0), cluster.node(1));
    let mut x = a.connect().unwrap();
    let mut y = a.connect().unwrap();
    x.batch_execute("BEGIN").unwrap();
    y.batch_execute("BEGIN").unwrap();
    for i in 0..4 {
        let base = i * 2_000;
        x.batch_execute(&format!("INSERT INTO t SELECT g, 'x' FROM generate_series({}, {}) g", base + 1, base + 1_000))
            .unwrap();
        y.batch_execute(&format!(
            "INSERT INTO t SELECT g, 'y' FROM generate_series({}, {}) g",
            base + 1_001,
            base + 2_000
        ))
        .unwrap();
    }
    wait_for("both transactions spilled", Duration::from_secs(60), || spill_files(b), 2);
    // y commits first, then x updates rows y wrote (it waits for y's locks: none,
    // the rows are different) and commits.
    y.batch_execute("COMMIT").unwrap();
    x.batch_execute("UPDATE t SET v = 'x after y' WHERE v = 'y' AND id % 7 = 0; COMMIT").unwrap();
    let want = summary(a);
    assert_eq!(want.0, 8_000);
    wait_for("both applied in commit order", Duration::from_secs(120), || summary(b), want);
    wait_for("no spill file left", Duration::from_secs(30), || spill_files(b), 0);
}

#[test]
fn an_insert_meeting_an_existing_key_is_applied_again_searching() {
    // Inserts go in without a search for their key first; one that meets an
    // existing key rolls its transaction back, which is applied again searching:
    // in a transaction from the provider (reconnect), a streamed one applied
    // eagerly (replayed from its spill file) and a spilled one (replayed again).
    for eager in [true, false] {
        let cluster = pair_with(eager);
        let (a, b) = (cluster.node(0), cluster.node(1));
        b.execute("ALTER SYSTEM SET spock.save_resolutions = on").unwrap();
        b.execute("SELECT pg_reload_conf()").unwrap();
        b.execute("CREATE EXTENSION amcheck").unwrap();
        // Rows written only on the subscriber, before the provider writes the same keys.
        b.execute("INSERT INTO t VALUES (5, 'local'), (15000, 'local')").unwrap();
        a.execute("INSERT INTO t VALUES (4, 'remote'), (5, 'remote'), (6, 'remote')").unwrap();
        a.execute("INSERT INTO t VALUES (7, 'after')").unwrap();
        let small = |n: &TestNode| {
            n.query_one::<String>("SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM t WHERE id < 100").unwrap()
        };
        wait_for(
            "the small transactions",
            Duration::from_secs(60),
            || small(b),
            "4:remote,5:remote,6:remote,7:after".to_string(),
        );
        a.execute("INSERT INTO t SELECT g, 'big' FROM generate_series(10000, 20000) g").unwrap();
        a.execute("INSERT INTO t VALUES (8, 'after big')").unwrap();
        wait_for("the big transaction and the one after it", Duration::from_secs(120), || summary(b), summary(a));
        assert_eq!(b.query_one::<String>("SELECT v FROM t WHERE id = 15000").unwrap(), "big");
        // Each conflict decided once (the rolled-back attempts left nothing).
        assert_eq!(
            b.query_one::<String>(
                "SELECT string_agg(conflict_type || ':' || conflict_resolution, ',') FROM spock.resolutions"
            )
            .unwrap(),
            "insert_exists:apply_remote,insert_exists:apply_remote",
            "eager = {eager}"
        );
        // The primary key index matches the table (no entry of a kept duplicate).
        b.execute("SELECT bt_index_check('t_pkey', true)").unwrap();
        assert_eq!(b.query_one::<i64>("SELECT count(*) - count(DISTINCT id) FROM t").unwrap(), 0);
    }
}
