//! The `spock_output` plugin on a real PostgreSQL 18: what a subscriber receives.

use spock_core::proto::{Datum, Message, OldTupleKind, Tuple};
use spock_tests::decoding::{messages, slot_messages, spock_params, with_param};
use spock_tests::{NodeOptions, TestNode};

fn provider(name: &str) -> TestNode {
    let node = TestNode::start(NodeOptions::new(name)).unwrap();
    node.execute(&format!("CREATE EXTENSION spock; SELECT spock.node_create('{name}', '{}');", node.dsn("postgres")))
        .unwrap();
    node
}

fn text(s: &str) -> Datum {
    Datum::Text(bytes::Bytes::copy_from_slice(s.as_bytes()))
}

#[test]
fn inserts_updates_deletes_in_a_set_reach_the_subscriber() {
    let node = provider("p1");
    for sql in [
        "CREATE TABLE public.t(id int PRIMARY KEY, v text, n numeric)",
        "SELECT spock.repset_add_table('default', 'public.t')",
        "SELECT pg_create_logical_replication_slot('s', 'spock_output')",
        "INSERT INTO t VALUES (1, 'one', 1.5), (2, NULL, NULL)",
        "UPDATE t SET v = 'uno' WHERE id = 1",
        "DELETE FROM t WHERE id = 2",
    ] {
        node.execute(sql).unwrap();
    }
    let params = with_param(spock_params("default"), "binary.want_internal_basetypes", "0");
    let params = with_param(params, "binary.want_binary_basetypes", "0");
    let decoded = slot_messages(&node, "postgres", "s", &params, false).unwrap();
    let Message::Startup(s) = &decoded[0].message else {
        panic!("first message must be the startup reply: {decoded:?}")
    };
    assert_eq!(s.get("proto_version"), Some("5"));
    let msgs = messages(&decoded);
    // Txn 1: CREATE TABLE etc. publish nothing. Then the inserts, the update, the delete.
    let kinds: String = msgs.iter().map(|m| m.letter() as char).collect();
    assert_eq!(kinds, "BORIICBOUCBODC", "{msgs:#?}");
    let Message::Relation(r) = &msgs[2] else { unreachable!() };
    assert_eq!((r.nspname.as_str(), r.relname.as_str()), ("public", "t"));
    let cols: Vec<_> = r.columns.iter().map(|c| (c.name.as_str(), c.type_oid, c.is_identity())).collect();
    assert_eq!(cols, vec![("id", 23, true), ("v", 25, false), ("n", 1700, false)]);
    let Message::Origin(o) = &msgs[1] else { unreachable!() };
    assert_eq!(o.origin_name.as_deref(), Some("p1"));
    assert_eq!(u32::from(o.origin_id), spock_core::names::node_id_for_name("p1") as u32);
    assert_eq!(
        msgs[3],
        Message::Insert(spock_core::proto::Insert {
            flags: 0,
            relid: r.relid,
            new: Tuple::new(vec![text("1"), text("one"), text("1.5")])
        })
    );
    let Message::Insert(i2) = &msgs[4] else { unreachable!() };
    assert_eq!(i2.new.columns, vec![text("2"), Datum::Null, Datum::Null]);
    let Message::Update(u) = &msgs[8] else { unreachable!() };
    assert!(u.old.is_none(), "key did not change: no old tuple");
    assert_eq!(u.new.columns, vec![text("1"), text("uno"), text("1.5")]);
    let Message::Delete(d) = &msgs[12] else { unreachable!() };
    assert_eq!(d.old.kind, OldTupleKind::Key);
    assert_eq!(d.old.tuple.columns, vec![text("2"), Datum::Null, Datum::Null]);
    // every message of protocol 5 carries the provider's insert position
    assert!(decoded[1..].iter().all(|d| d.remote_insert_lsn.is_some()));
}

/// A provider with table `t` (id int PK, v text, n int4) in set `default` and slot `s`.
fn provider_with_table(name: &str, ddl: &str) -> TestNode {
    let node = provider(name);
    node.execute(ddl).unwrap();
    node.execute("SELECT spock.repset_add_table('default', 'public.t')").unwrap();
    node.execute("SELECT pg_create_logical_replication_slot('s', 'spock_output')").unwrap();
    node
}

fn text_params(sets: &str) -> Vec<(String, String)> {
    let p = with_param(spock_params(sets), "binary.want_internal_basetypes", "0");
    with_param(p, "binary.want_binary_basetypes", "0")
}

fn letters(msgs: &[Message]) -> String {
    msgs.iter().map(|m| m.letter() as char).collect()
}

#[test]
fn tables_outside_the_subscribed_sets_are_not_sent() {
    let node = provider_with_table("p2", "CREATE TABLE t(id int PRIMARY KEY, v text)");
    node.execute("CREATE TABLE other(id int PRIMARY KEY); CREATE TABLE ins_only(id int PRIMARY KEY, v text)").unwrap();
    node.execute("SELECT spock.repset_add_table('default_insert_only', 'ins_only')").unwrap();
    node.execute(
        "BEGIN; INSERT INTO other VALUES (1); INSERT INTO t VALUES (1, 'a'); INSERT INTO other VALUES (2);
         INSERT INTO ins_only VALUES (1, 'x'); UPDATE ins_only SET v = 'y'; DELETE FROM ins_only; COMMIT;
         INSERT INTO other VALUES (3);",
    )
    .unwrap();
    // subscribed to default only: t's insert, nothing of ins_only or other
    let msgs = messages(&slot_messages(&node, "postgres", "s", &text_params("default"), true).unwrap());
    assert_eq!(letters(&msgs), "BORIC", "{msgs:#?}");
    // subscribed to both sets: ins_only's insert is sent, its update and delete are not
    let msgs =
        messages(&slot_messages(&node, "postgres", "s", &text_params("default,default_insert_only"), false).unwrap());
    assert_eq!(letters(&msgs), "BORIRIC", "{msgs:#?}");
    let Message::Relation(r) = &msgs[4] else { unreachable!() };
    assert_eq!(r.relname, "ins_only");
}

#[test]
fn binary_transfer_sends_internal_datums_between_equal_servers() {
    let node = provider_with_table("p3", "CREATE TABLE t(id int PRIMARY KEY, v text, big int8, ts timestamptz)");
    node.execute("INSERT INTO t VALUES (258, 'hé', -2, '2000-01-01 00:00:01+00')").unwrap();
    let decoded = slot_messages(&node, "postgres", "s", &spock_params("default"), false).unwrap();
    let Message::Startup(s) = &decoded[0].message else { unreachable!() };
    assert_eq!(s.get("binary.internal_basetypes"), Some("t"));
    let msgs = messages(&decoded);
    let Message::Insert(i) = &msgs[3] else { panic!("{msgs:#?}") };
    assert_eq!(i.new.columns[0], Datum::Internal(bytes::Bytes::from(258i32.to_ne_bytes().to_vec())));
    assert_eq!(i.new.columns[2], Datum::Internal(bytes::Bytes::from((-2i64).to_ne_bytes().to_vec())));
    assert_eq!(i.new.columns[3], Datum::Internal(bytes::Bytes::from(1_000_000i64.to_ne_bytes().to_vec())));
    // text travels as its varlena: a 1-byte header (length 1+3 bytes, shifted, low bit set) then the bytes
    let Datum::Internal(v) = &i.new.columns[1] else { panic!("{:?}", i.new.columns[1]) };
    assert_eq!(&v[..], &[(4 << 1) | 1, b'h', 0xc3, 0xa9]);
}

#[test]
fn protocol_4_carries_the_insert_lsn_only_on_commit() {
    let node = provider_with_table("p4", "CREATE TABLE t(id int PRIMARY KEY)");
    node.execute("INSERT INTO t VALUES (1)").unwrap();
    let params = with_param(text_params("default"), "max_proto_version", "4");
    let decoded = slot_messages(&node, "postgres", "s", &params, false).unwrap();
    let Message::Startup(s) = &decoded[0].message else { unreachable!() };
    assert_eq!(s.get("proto_version"), Some("4"));
    for d in &decoded[1..] {
        assert_eq!(d.remote_insert_lsn.is_some(), matches!(d.message, Message::Commit(_)), "{d:?}");
    }
    let Message::Origin(o) = &decoded[2].message else { unreachable!() };
    assert_eq!(o.origin_name, None, "origin names are a protocol 5 feature");
}

#[test]
fn column_lists_and_row_filters_are_applied() {
    let node = provider("p5");
    node.execute("CREATE TABLE t(id int PRIMARY KEY, region text, secret text, amount int)").unwrap();
    node.execute(
        "SELECT spock.repset_add_table('default', 't', columns := ARRAY['id','region','amount'], row_filter := 'region = ''eu'' AND amount > 10')",
    )
    .unwrap();
    node.execute("SELECT pg_create_logical_replication_slot('s', 'spock_output')").unwrap();
    node.execute(
        "INSERT INTO t VALUES (1, 'eu', 'x', 50), (2, 'us', 'y', 50), (3, 'eu', 'z', 5), (4, NULL, 'w', 99);
         UPDATE t SET amount = 60 WHERE id = 1; UPDATE t SET amount = 70 WHERE id = 2;",
    )
    .unwrap();
    let msgs = messages(&slot_messages(&node, "postgres", "s", &text_params("default"), false).unwrap());
    assert_eq!(letters(&msgs), "BORIUC", "{msgs:#?}");
    let Message::Relation(r) = &msgs[2] else { unreachable!() };
    assert_eq!(r.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), vec!["id", "region", "amount"]);
    let Message::Insert(i) = &msgs[3] else { unreachable!() };
    assert_eq!(i.new.columns, vec![text("1"), text("eu"), text("50")]);
    let Message::Update(u) = &msgs[4] else { unreachable!() };
    assert_eq!(u.new.columns, vec![text("1"), text("eu"), text("60")]);
    let show: String = node
        .query_one("SELECT row(att_list, has_row_filter)::text FROM spock.repset_show_table('t', ARRAY['default'])")
        .unwrap();
    assert_eq!(show, "(\"{id,region,amount}\",t)");
}

#[test]
fn changes_from_other_origins_are_only_forwarded_when_asked() {
    let node = provider_with_table("p6", "CREATE TABLE t(id int PRIMARY KEY)");
    node.execute("SELECT pg_replication_origin_create('elsewhere')").unwrap();
    // as an apply worker does: the session's origin is set when the transaction commits
    let mut session = node.connect().unwrap();
    for sql in [
        "SELECT pg_replication_origin_session_setup('elsewhere')",
        "INSERT INTO t VALUES (100)",
        "SELECT pg_replication_origin_session_reset()",
    ] {
        session.batch_execute(sql).unwrap();
    }
    node.execute("INSERT INTO t VALUES (1)").unwrap();
    let local_only = messages(&slot_messages(&node, "postgres", "s", &text_params("default"), true).unwrap());
    let inserted: Vec<_> = local_only
        .iter()
        .filter_map(|m| if let Message::Insert(i) = m { Some(i.new.columns[0].clone()) } else { None })
        .collect();
    assert_eq!(inserted, vec![text("1")], "the change from origin 'elsewhere' must not be sent");

    let params = with_param(text_params("default"), "spock.forward_origins", "all");
    let all = messages(&slot_messages(&node, "postgres", "s", &params, false).unwrap());
    let inserted: Vec<_> = all
        .iter()
        .filter_map(|m| if let Message::Insert(i) = m { Some(i.new.columns[0].clone()) } else { None })
        .collect();
    assert_eq!(inserted, vec![text("100"), text("1")]);
    let origins: Vec<_> =
        all.iter().filter_map(|m| if let Message::Origin(o) = m { Some(o.origin_id) } else { None }).collect();
    let roident: i32 =
        node.query_one("SELECT roident::int FROM pg_replication_origin WHERE roname = 'elsewhere'").unwrap();
    assert_eq!(origins, vec![roident as u16, spock_core::names::node_id_for_name("p6")]);
}

#[test]
fn alter_table_between_changes_resends_the_relation() {
    let node = provider_with_table("p7", "CREATE TABLE t(id int PRIMARY KEY, a text)");
    node.execute("INSERT INTO t VALUES (1, 'a')").unwrap();
    node.execute("ALTER TABLE t ADD COLUMN b int DEFAULT 7").unwrap();
    node.execute("INSERT INTO t VALUES (2, 'b', 8)").unwrap();
    node.execute("ALTER TABLE t DROP COLUMN a").unwrap();
    node.execute("UPDATE t SET b = 9 WHERE id = 1").unwrap();
    let msgs = messages(&slot_messages(&node, "postgres", "s", &text_params("default"), false).unwrap());
    assert_eq!(letters(&msgs), "BORICBORICBORUC", "{msgs:#?}");
    let rels: Vec<Vec<String>> = msgs
        .iter()
        .filter_map(|m| {
            if let Message::Relation(r) = m {
                Some(r.columns.iter().map(|c| c.name.clone()).collect())
            } else {
                None
            }
        })
        .collect();
    assert_eq!(
        rels,
        vec![
            vec!["id".to_string(), "a".into()],
            vec!["id".into(), "a".into(), "b".into()],
            vec!["id".into(), "b".into()]
        ]
    );
    let Message::Update(u) = &msgs[13] else { unreachable!() };
    assert_eq!(u.new.columns, vec![text("1"), text("9")]);
}

#[test]
fn truncate_toast_and_wide_rows() {
    let node = provider_with_table("p8", "CREATE TABLE t(id int PRIMARY KEY, small int, big text)");
    node.execute("CREATE TABLE wide AS SELECT 1 AS id").unwrap();
    let cols: Vec<String> = (1..=200).map(|i| format!("c{i} int DEFAULT {i}")).collect();
    node.execute(&format!("DROP TABLE wide; CREATE TABLE wide(id int PRIMARY KEY, {})", cols.join(", "))).unwrap();
    node.execute("SELECT spock.repset_add_table('default', 'wide')").unwrap();
    // a value too big to stay inline, and not compressible: stored out of line (TOAST)
    node.execute("INSERT INTO t SELECT 1, 0, string_agg(md5(g::text), '') FROM generate_series(1, 2000) g").unwrap();
    node.execute("UPDATE t SET small = 1").unwrap();
    node.execute("INSERT INTO wide(id) VALUES (1)").unwrap();
    node.execute("TRUNCATE t, wide RESTART IDENTITY").unwrap();
    let msgs = messages(&slot_messages(&node, "postgres", "s", &text_params("default"), false).unwrap());
    // TRUNCATE gives the tables new storage: their relcache entries are invalidated, so
    // their relation messages go out again before the truncate.
    assert_eq!(letters(&msgs), "BORICBOUCBORICBORRTC", "{msgs:#?}");
    let Message::Insert(i) = &msgs[3] else { unreachable!() };
    let Datum::Text(big) = &i.new.columns[2] else { panic!() };
    assert_eq!(big.len(), 64_000);
    let Message::Update(u) = &msgs[7] else { unreachable!() };
    assert_eq!(u.new.columns[1], text("1"));
    assert_eq!(u.new.columns[2], Datum::UnchangedToast, "an unchanged TOASTed value is not resent");
    let Message::Insert(w) = &msgs[12] else { unreachable!() };
    assert_eq!(w.new.columns.len(), 201);
    assert_eq!(w.new.columns[200], text("200"));
    let Message::Truncate(tr) = &msgs[18] else { unreachable!() };
    assert_eq!(tr.relids.len(), 2);
    assert!(tr.restart_seqs && !tr.cascade);
}

#[test]
fn common_types_and_nulls_round_trip_as_text() {
    let node = provider_with_table(
        "p9",
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE TABLE t(id int PRIMARY KEY, b bool, f8 float8, d date, ts timestamptz, j jsonb, arr int[], u uuid,
                        by bytea, m mood, iv interval, n numeric(10,2), c char(3), nul text)",
    );
    node.execute(
        "SET TimeZone = 'UTC'; INSERT INTO t VALUES (1, true, 1.5, '2026-11-25', '2026-11-25 10:00:00+00', '{\"a\": [1, 2]}',
         '{1,NULL,3}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\xdeadbeef', 'happy', '1 day 2 hours', 12.5, 'ab', NULL)",
    )
    .unwrap();
    let msgs = messages(&slot_messages(&node, "postgres", "s", &text_params("default"), false).unwrap());
    let Message::Insert(i) = &msgs[3] else { panic!("{msgs:#?}") };
    let got: Vec<Option<String>> = i
        .new
        .columns
        .iter()
        .map(|d| match d {
            Datum::Text(b) => Some(String::from_utf8(b.to_vec()).unwrap()),
            Datum::Null => None,
            other => panic!("text transfer expected, got {other:?}"),
        })
        .collect();
    let want = [
        Some("1"),
        Some("t"),
        Some("1.5"),
        Some("2026-11-25"),
        None,
        Some("{\"a\": [1, 2]}"),
        Some("{1,NULL,3}"),
        Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        Some("\\xdeadbeef"),
        Some("happy"),
        Some("1 day 02:00:00"),
        Some("12.50"),
        Some("ab "),
        None,
    ];
    for (idx, (g, w)) in got.iter().zip(want.iter()).enumerate() {
        if idx == 4 {
            assert!(g.as_deref().unwrap().starts_with("2026-11-25"), "{g:?}");
            continue;
        }
        assert_eq!(g.as_deref(), *w, "column {idx}");
    }
}

#[test]
fn a_server_without_preload_can_create_and_use_slots() {
    let node = TestNode::start(NodeOptions::new("plain").without_preload()).unwrap();
    node.execute(&format!("CREATE EXTENSION spock; SELECT spock.node_create('plain', '{}')", node.dsn("postgres")))
        .unwrap();
    node.execute("CREATE TABLE t(id int PRIMARY KEY)").unwrap();
    node.execute("SELECT spock.repset_add_table('default', 't')").unwrap();
    // the walsender command, on a replication connection
    node.psql("postgres", "CREATE_REPLICATION_SLOT \"s\" LOGICAL spock_output", true).unwrap();
    node.execute("INSERT INTO t VALUES (42)").unwrap();
    let msgs = messages(&slot_messages(&node, "postgres", "s", &text_params("default"), false).unwrap());
    assert_eq!(letters(&msgs), "BORIC");
}

/// Startup parameters, the SQLSTATE they must fail with, and a word of the message.
type BadStartup<'a> = (Vec<(String, String)>, &'a str, &'a str);

#[test]
fn bad_startup_parameters_give_clear_errors() {
    let node = provider_with_table("p10", "CREATE TABLE t(id int PRIMARY KEY)");
    node.execute("INSERT INTO t VALUES (1)").unwrap();
    let cases: Vec<BadStartup> = vec![
        (with_param(spock_params("default"), "max_proto_version", "five"), "22023", "max_proto_version"),
        (with_param(spock_params("default"), "min_proto_version", "6"), "0A000", "min_proto_version=6"),
        (with_param(spock_params("default"), "startup_params_format", "2"), "0A000", "startup_params_format"),
        (vec![("min_proto_version".into(), "4".into())], "22023", "startup_params_format"),
        (spock_params("default,nosuchset"), "42704", "nosuchset"),
        (with_param(spock_params("default"), "expected_encoding", "LATIN1"), "0A000", "encoding"),
        (with_param(spock_params("default"), "spock.forward_origins", "n1"), "22023", "forward"),
        (with_param(spock_params("default"), "proto_format", "xml"), "0A000", "xml"),
    ];
    for (params, code, needle) in cases {
        let err = slot_messages(&node, "postgres", "s", &params, true).unwrap_err().0;
        assert!(err.contains(code) && err.contains(needle), "expected {code} mentioning {needle}, got: {err}");
    }
    // the server and the slot are fine afterwards
    let msgs = messages(&slot_messages(&node, "postgres", "s", &text_params("default"), false).unwrap());
    assert_eq!(letters(&msgs), "BORIC");
}

#[test]
fn walsender_with_bad_parameters_fails_cleanly() {
    let node = provider_with_table("p11", "CREATE TABLE t(id int PRIMARY KEY)");
    let conninfo = format!("{} replication=database", node.dsn("postgres"));
    let (ok, _out, err) = node
        .run_tool(
            "pg_recvlogical",
            &[
                "-d",
                &conninfo,
                "--slot",
                "s",
                "--start",
                "--no-loop",
                "-f",
                "/dev/null",
                "-o",
                "min_proto_version=4",
                "-o",
                "max_proto_version=x",
                "-o",
                "startup_params_format=1",
            ],
        )
        .unwrap();
    assert!(!ok);
    assert!(err.contains("max_proto_version"), "{err}");
    // no walsender left behind, slot inactive, server healthy
    spock_tests::wait_for(
        "the walsender gone",
        std::time::Duration::from_secs(30),
        || node.query_one::<i64>("SELECT count(*) FROM pg_stat_replication").unwrap(),
        0,
    );
    let active: bool = node.query_one("SELECT active FROM pg_replication_slots WHERE slot_name = 's'").unwrap();
    assert!(!active);
}

#[test]
fn a_replication_role_that_is_not_superuser_can_stream() {
    let node = provider_with_table("p12", "CREATE TABLE t(id int PRIMARY KEY)");
    node.execute("CREATE ROLE repl LOGIN REPLICATION").unwrap();
    node.execute("INSERT INTO t VALUES (1)").unwrap();
    let mut c = postgres::Config::new();
    c.host_path(node.root()).port(node.port).user("repl").dbname("postgres");
    let mut client = c.connect(postgres::NoTls).unwrap();
    let is_super: bool =
        client.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = current_user", &[]).unwrap().get(0);
    assert!(!is_super);
    client.batch_execute("SELECT pg_create_logical_replication_slot('s_repl', 'spock_output')").unwrap();
    client.batch_execute("INSERT INTO t VALUES (2)").unwrap_err(); // no table privilege: proves we are not superuser
    node.execute("INSERT INTO t VALUES (2)").unwrap();
    let args: Vec<String> =
        text_params("default").iter().flat_map(|(k, v)| [format!("'{k}'"), format!("'{v}'")]).collect();
    let rows = client
        .query(
            &format!("SELECT data FROM pg_logical_slot_get_binary_changes('s_repl', NULL, NULL, {})", args.join(", ")),
            &[],
        )
        .unwrap();
    let mut decoder = spock_core::proto::StreamDecoder::new();
    let letters: String = rows
        .iter()
        .map(|r| decoder.decode(&bytes::Bytes::from(r.get::<_, Vec<u8>>(0))).unwrap().message.letter() as char)
        .collect();
    assert_eq!(letters, "SBORIC");
}

#[test]
fn output_plugin_libraries_must_list_spock_output() {
    let node = TestNode::start(NodeOptions::new("p13").setting("output_plugin_libraries", "'pgoutput'")).unwrap();
    let has_setting: i64 =
        node.query_one("SELECT count(*) FROM pg_settings WHERE name = 'output_plugin_libraries'").unwrap();
    if has_setting == 0 {
        return; // a server before 18.6 has no such restriction
    }
    node.execute(&format!("CREATE EXTENSION spock; SELECT spock.node_create('p13', '{}')", node.dsn("postgres")))
        .unwrap();
    let err = node.execute("SELECT pg_create_logical_replication_slot('s', 'spock_output')").unwrap_err().0;
    assert!(err.contains("spock_output") && err.contains("output plugin"), "{err}");
}

#[test]
fn a_walsender_streams_through_the_replication_protocol() {
    let node = provider_with_table("p14", "CREATE TABLE t(id int PRIMARY KEY, v text)");
    node.execute("INSERT INTO t VALUES (1, 'streamed-through-walsender')").unwrap();
    let endpos: String = node.query_one("SELECT pg_current_wal_lsn()::text").unwrap();
    let out = node.root().join("recv.bin");
    let conninfo = format!("{} replication=database", node.dsn("postgres"));
    let mut args: Vec<String> = vec![
        "-d".into(),
        conninfo,
        "--slot".into(),
        "s".into(),
        "--start".into(),
        "--no-loop".into(),
        "--endpos".into(),
        endpos,
        "-f".into(),
        out.display().to_string(),
    ];
    for (k, v) in text_params("default") {
        args.push("-o".into());
        args.push(format!("{k}={v}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _stdout, stderr) = node.run_tool("pg_recvlogical", &args).unwrap();
    assert!(ok, "pg_recvlogical failed: {stderr}");
    let data = std::fs::read(&out).unwrap();
    // pg_recvlogical writes each message followed by a newline; the startup reply, the
    // relation message and the row are in there.
    let hay = String::from_utf8_lossy(&data);
    assert!(hay.contains("proto_version"), "no startup reply in {hay:?}");
    assert!(hay.contains("streamed-through-walsender"), "row not streamed: {hay:?}");
    // the walsender confirmed progress and is gone
    let active: bool = node.query_one("SELECT active FROM pg_replication_slots WHERE slot_name = 's'").unwrap();
    assert!(!active);
}

/// While a slot is being created, PostgreSQL asks the plugin's origin filter about
/// commits it reads to build the snapshot, before the plugin has any state: a
/// commit made under a replication origin at that moment must not crash the server
/// (it did: the filter read the missing state).
#[test]
fn creating_a_slot_while_replicated_transactions_commit() {
    use std::time::Duration;
    let node = provider("p_slot");
    node.execute("CREATE TABLE t(id int PRIMARY KEY)").unwrap();
    node.execute("SELECT pg_replication_origin_create('elsewhere')").unwrap();
    // Whether the slot creation waits for transaction `xid` to end.
    let waiting_on = |n: &TestNode, xid: &str| {
        n.query_one::<bool>(&format!(
            "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                             WHERE a.query LIKE 'SELECT pg_create_logical%' AND l.locktype = 'transactionid'
                               AND NOT l.granted AND l.transactionid::text = '{xid}')"
        ))
        .unwrap()
    };
    let begin = |c: &mut spock_tests::postgres::Client| -> String {
        c.batch_execute("BEGIN").unwrap();
        c.query_one("SELECT pg_current_xact_id()::text", &[]).unwrap().get(0)
    };
    // T1 is running when the slot creation starts: it waits for it.
    let mut t1 = node.connect().unwrap();
    let xid1 = begin(&mut t1);
    let mut creator = node.connect().unwrap();
    let slot = std::thread::spawn(move || {
        creator.batch_execute("SELECT pg_create_logical_replication_slot('s', 'spock_output')")
    });
    spock_tests::wait_for("slot creation waits for T1", Duration::from_secs(30), || waiting_on(&node, &xid1), true);
    // T2 starts, T1 ends: the snapshot builder now waits for T2 with a full snapshot.
    let mut t2 = node.connect().unwrap();
    let xid2 = begin(&mut t2);
    t1.batch_execute("COMMIT").unwrap();
    spock_tests::wait_for("slot creation waits for T2", Duration::from_secs(30), || waiting_on(&node, &xid2), true);
    // A transaction replicated from another node commits, then T2.
    let mut applier = node.connect().unwrap();
    applier
        .batch_execute("SELECT pg_replication_origin_session_setup('elsewhere'); INSERT INTO t VALUES (1);")
        .unwrap();
    t2.batch_execute("COMMIT").unwrap();
    slot.join().unwrap().expect("the slot is created");
    assert_eq!(node.query_one::<i64>("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 's'").unwrap(), 1);
    // No crash at any time since the server started: the whole log.
    let log = node.log_since(0);
    assert!(!log.contains("terminated by signal"), "{log}");
}

#[test]
fn batches_carry_a_transactions_messages_in_few_packets() {
    use spock_core::proto::batch::{ends_batch, frames, BATCH_BYTES, BATCH_PARAM};
    use spock_core::proto::StreamDecoder;
    let node = provider("batch");
    for sql in [
        "CREATE TABLE public.t(id int PRIMARY KEY, v text)",
        "SELECT spock.repset_add_table('default', 'public.t')",
        "SELECT pg_create_logical_replication_slot('s', 'spock_output')",
        "INSERT INTO t SELECT g, repeat('x', 50) FROM generate_series(1, 5000) g",
        "UPDATE t SET v = 'small' WHERE id = 1",
        "DELETE FROM t WHERE id > 4000",
    ] {
        node.execute(sql).unwrap();
    }
    let unbatched = messages(&slot_messages(&node, "postgres", "s", &spock_params("default"), true).unwrap());
    // The same changes, batched: every packet after the startup reply holds framed
    // messages; a packet ends at a message that ends a batch or once it is full.
    let params = with_param(spock_params("default"), BATCH_PARAM, "1");
    let args: Vec<String> = params.iter().flat_map(|(k, v)| [format!("'{k}'"), format!("'{v}'")]).collect();
    let sql = format!("SELECT data FROM pg_logical_slot_peek_binary_changes('s', NULL, NULL, {})", args.join(", "));
    let packets: Vec<Vec<u8>> = node.connect().unwrap().query(&sql, &[]).unwrap().iter().map(|r| r.get(0)).collect();
    let mut decoder = StreamDecoder::new();
    let first = decoder.decode(&bytes::Bytes::from(packets[0].clone())).unwrap();
    let Message::Startup(s) = &first.message else { panic!("the startup reply is not framed") };
    assert_eq!(s.get(BATCH_PARAM), Some("t"));
    let mut batched = Vec::new();
    for p in &packets[1..] {
        let p = bytes::Bytes::from(p.clone());
        let inner: Vec<Message> = frames(&p).map(|f| decoder.decode(&f.unwrap()).unwrap().message).collect();
        let last = inner.last().expect("a packet holds at least one message");
        assert!(ends_batch(last) || p.len() >= BATCH_BYTES, "packet of {} bytes ends with {last:?}", p.len());
        assert!(p.len() < BATCH_BYTES + 1024, "packet of {} bytes", p.len());
        batched.extend(inner);
    }
    assert_eq!(batched, unbatched);
    assert!(unbatched.len() > 6000, "{} messages", unbatched.len());
    assert!(packets.len() < unbatched.len() / 50, "{} packets for {} messages", packets.len(), unbatched.len());
}

#[test]
fn binary_values_are_what_the_types_send_functions_write() {
    // spock_output writes the by-value built-in types itself (big-endian) instead of
    // calling their send functions: the bytes must be the same.
    let node = provider("sendfmt");
    let cols =
        "b bool, s int2, i int4, l int8, o oid, f float4, d float8, dt date, tm time, ts timestamp, tz timestamptz";
    let vals = "true, -2, -123456, 9876543210123, 4000000000, -1.5, 3.14159e300, '2026-11-25', '23:59:58.123456', '1999-12-31 23:59:59.5', '2038-01-19 03:14:08+00'";
    for sql in [
        format!("CREATE TABLE public.v(id int PRIMARY KEY, {cols})"),
        "SELECT spock.repset_add_table('default', 'public.v')".to_string(),
        "SELECT pg_create_logical_replication_slot('s', 'spock_output')".to_string(),
        format!("INSERT INTO v VALUES (1, {vals}), (2, false, 0, 0, 0, 0, 'NaN', '-Infinity', 'infinity', '00:00', '-infinity', 'infinity')"),
    ] {
        node.execute(&sql).unwrap();
    }
    let params = with_param(spock_params("default"), "binary.want_internal_basetypes", "0");
    let decoded = slot_messages(&node, "postgres", "s", &params, true).unwrap();
    let inserts: Vec<Tuple> = messages(&decoded)
        .into_iter()
        .filter_map(|m| match m {
            Message::Insert(i) => Some(i.new),
            _ => None,
        })
        .collect();
    assert_eq!(inserts.len(), 2);
    let sends = [
        "boolsend",
        "int2send",
        "int4send",
        "int8send",
        "oidsend",
        "float4send",
        "float8send",
        "date_send",
        "time_send",
        "timestamp_send",
        "timestamptz_send",
    ];
    let names = ["b", "s", "i", "l", "o", "f", "d", "dt", "tm", "ts", "tz"];
    for (row, tuple) in inserts.iter().enumerate() {
        for (k, (send, name)) in sends.iter().zip(names).enumerate() {
            let want: Vec<u8> = node
                .connect()
                .unwrap()
                .query_one(&format!("SELECT {send}({name}) FROM v WHERE id = {}", row + 1), &[])
                .unwrap()
                .get(0);
            match &tuple.columns[k + 1] {
                Datum::Binary(got) => assert_eq!(&got[..], &want[..], "column {name} of row {}", row + 1),
                other => panic!("column {name} sent as {other:?}, not in binary"),
            }
        }
    }
}

/// Sync events leave the provider in Spock's layout, whoever wrote them: the
/// type (3) and the writer's node id in native byte order, then a zeroed 64-byte
/// name (Spock 6.0.0 reads the type in its own byte order and errors on anything
/// else). One written by spock-rs 0.1.0 (big-endian, name filled in) and still in
/// the WAL after an upgrade goes out re-encoded; repair-mode messages and unknown
/// types stay on the provider. A non-transactional event is flushed when
/// sync_event() returns, as Spock's is, and the message's LSN is what it returned.
#[test]
#[cfg(target_endian = "little")]
fn sync_events_are_sent_in_spocks_layout() {
    let node = provider_with_table("p9", "CREATE TABLE t(id int PRIMARY KEY)");
    let id: i64 = node.query_one("SELECT node_id::int8 FROM spock.node_info()").unwrap();
    let name: String = node.query_one("SELECT node_name::text FROM spock.node_info()").unwrap();
    let lsn: String = node.query_one("SELECT spock.sync_event()::text").unwrap();
    let flushed: bool = node.query_one(&format!("SELECT pg_current_wal_flush_lsn() >= '{lsn}'::pg_lsn")).unwrap();
    assert!(flushed, "a non-transactional sync event is flushed when sync_event() returns");
    // What spock-rs 0.1.0 wrote, a repair-mode message, an unknown type, another prefix.
    let old = format!(
        "int4send(3) || int4send({id}) || convert_to('{name}', 'UTF8') || decode(repeat('00', 64 - {}), 'hex')",
        name.len()
    );
    node.execute(&format!(
        "SELECT pg_logical_emit_message(false, 'Spock', {old});
         SELECT pg_logical_emit_message(true, 'Spock', '\\x01000000'::bytea);
         SELECT pg_logical_emit_message(false, 'Spock', '\\x09000000'::bytea);
         SELECT pg_logical_emit_message(false, 'other', '\\x03000000'::bytea);"
    ))
    .unwrap();
    // (its own transaction: the repair-mode message above holds back the rest of
    // the transaction it is in)
    node.execute("BEGIN; INSERT INTO t VALUES (1); SELECT spock.sync_event(true); COMMIT;").unwrap();
    let msgs = messages(&slot_messages(&node, "postgres", "s", &text_params("default"), false).unwrap());
    let mut golden = vec![3u8, 0, 0, 0];
    golden.extend_from_slice(&(id as u32).to_le_bytes());
    golden.resize(72, 0);
    let events: Vec<_> = msgs
        .iter()
        .filter_map(|m| match m {
            Message::LogicalMessage(l) => Some(l),
            _ => None,
        })
        .collect();
    assert_eq!(events.len(), 3, "two non-transactional events and one transactional: {}", letters(&msgs));
    for e in &events {
        assert_eq!(e.prefix, "Spock");
        assert_eq!(e.content.to_vec(), golden);
    }
    assert_eq!(spock_core::proto::format_lsn(events[0].lsn), lsn);
    assert!(!events[0].transactional && !events[1].transactional && events[2].transactional);
    assert_eq!(letters(&msgs), "MMBORIMC", "the transactional event inside its transaction");
}

#[test]
fn sync_event_needs_a_local_node() {
    let node = TestNode::start(NodeOptions::new("p10")).unwrap();
    node.execute("CREATE EXTENSION spock").unwrap();
    let e = node.execute("SELECT spock.sync_event()").unwrap_err().to_string();
    assert!(e.contains("55000"), "{e}");
}

/// `proto_format = json` (pglogical's and Spock's text format, for
/// pg_logical_slot_get_changes): one JSON object per message, rows with their
/// relation and tuples typed as to_json types them, as Spock's tests read them.
#[test]
fn proto_format_json_for_sql_decoding() {
    let node = provider_with_table("p12", "CREATE TABLE t(id int PRIMARY KEY, v text, ok bool, j jsonb, f float8)");
    // Transactions that send nothing come first: the startup message waits for
    // the first one that does (upto_nchanges = 1 returns it with that one, S B I C).
    node.execute("CREATE TABLE unpublished(x int)").unwrap();
    node.execute("INSERT INTO unpublished VALUES (1)").unwrap();
    node.execute("SELECT spock.sync_event()").unwrap(); // (no json form)
    for sql in [
        "INSERT INTO t VALUES (1, 'a \"q\"', true, '{\"k\": [1]}', 'NaN')",
        "UPDATE t SET v = NULL WHERE id = 1",
        "DELETE FROM t WHERE id = 1",
    ] {
        node.execute(sql).unwrap();
    }
    // spock.output_delay (Spock's testing setting, in ms) only slows decoding.
    node.execute("ALTER SYSTEM SET spock.output_delay = 200").unwrap();
    node.reload_conf().unwrap();
    assert_eq!(node.query_one::<String>("SHOW spock.output_delay").unwrap(), "200ms");
    let first = node
        .query_one::<String>(
            "SELECT string_agg(coalesce(data::json->>'action', '?'), ' ' ORDER BY lsn)
               FROM pg_logical_slot_peek_changes('s', NULL, 1, 'min_proto_version', '4', 'max_proto_version', '5',
                                                 'startup_params_format', '1', 'proto_format', 'json',
                                                 'spock.replication_set_names', 'default')",
        )
        .unwrap();
    assert_eq!(first, "S B I C");
    let rows = node
        .query_one::<String>(
            "SELECT string_agg(coalesce(data::json->>'action', '?') || ' ' ||
                               CASE WHEN data::json->>'action' IN ('I', 'U', 'D') THEN data ELSE '' END, E'\\n' ORDER BY lsn)
               FROM pg_logical_slot_get_changes('s', NULL, NULL, 'min_proto_version', '4', 'max_proto_version', '5',
                                                'startup_params_format', '1', 'proto_format', 'json',
                                                'spock.replication_set_names', 'default')",
        )
        .unwrap();
    let lines: Vec<&str> = rows.lines().collect();
    assert_eq!(lines[0].trim(), "S");
    assert_eq!(
        &lines[1..],
        [
            "B ",
            r#"I {"action":"I","relation":["public","t"],"newtuple":{"id":1,"v":"a \"q\"","ok":true,"j":{"k": [1]},"f":"NaN"}}"#,
            "C ",
            "B ",
            r#"U {"action":"U","relation":["public","t"],"newtuple":{"id":1,"v":null,"ok":true,"j":{"k": [1]},"f":"NaN"}}"#,
            "C ",
            "B ",
            r#"D {"action":"D","relation":["public","t"],"oldtuple":{"id":1,"v":null,"ok":null,"j":null,"f":null}}"#,
            "C ",
        ]
    );
}
