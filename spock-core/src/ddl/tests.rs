use super::*;

#[test]
fn sql_messages_are_json_strings_as_spock_writes_them() {
    let m = QueuedMessage::Sql("SET search_path TO public; CREATE TABLE \"T\" (a text DEFAULT E'\\n')\n".into());
    assert_eq!(m.message_type(), b'Q');
    assert_eq!(m.to_json(), r#""SET search_path TO public; CREATE TABLE \"T\" (a text DEFAULT E'\\n')\n""#);
    assert_eq!(QueuedMessage::decode(b'Q', &m.to_json()).unwrap(), m);
    let d = QueuedMessage::Ddl("DROP TABLE x\u{1}".into());
    assert_eq!(d.to_json(), "\"DROP TABLE x\\u0001\"");
    assert_eq!(QueuedMessage::decode(b'D', &d.to_json()).unwrap(), d);
}

#[test]
fn object_messages_have_spocks_layout() {
    let s = QueuedMessage::Sequence { schema: "public".into(), name: "s\"q".into(), last_value: -7 };
    assert_eq!(s.to_json(), r#"{"schema_name": "public","sequence_name": "s\"q","last_value": "-7"}"#);
    assert_eq!(QueuedMessage::decode(b'S', &s.to_json()).unwrap(), s);
    let a = QueuedMessage::TableSync { schema: "app".into(), table: "t".into() };
    assert_eq!(a.to_json(), r#"{"schema_name": "app","table_name": "t"}"#);
    assert_eq!(QueuedMessage::decode(b'A', &a.to_json()).unwrap(), a);
}

#[test]
fn decoding_rejects_what_spock_rejects() {
    assert!(matches!(QueuedMessage::decode(b'Q', r#"{"a": 1}"#), Err(QueueMessageError::Malformed(_))));
    assert!(matches!(QueuedMessage::decode(b'S', r#""x""#), Err(QueueMessageError::Malformed(_))));
    assert_eq!(
        QueuedMessage::decode(b'S', r#"{"schema_name": "p","sequence_name": "s"}"#),
        Err(QueueMessageError::Missing { key: "last_value", what: "sequence" })
    );
    assert_eq!(
        QueuedMessage::decode(b'A', r#"{"table_name": "t"}"#),
        Err(QueueMessageError::Missing { key: "schema_name", what: "relation" })
    );
    assert!(matches!(
        QueuedMessage::decode(b'S', r#"{"schema_name": "p","sequence_name": "s","last_value": "1x"}"#),
        Err(QueueMessageError::Malformed(_))
    ));
    assert_eq!(QueuedMessage::decode(b'Z', "1"), Err(QueueMessageError::UnknownType('Z')));
    assert!(matches!(QueuedMessage::decode(b'Q', "not json"), Err(QueueMessageError::Malformed(_))));
    // A number for last_value is accepted too.
    assert_eq!(
        QueuedMessage::decode(b'S', r#"{"schema_name": "p","sequence_name": "s","last_value": 12}"#).unwrap(),
        QueuedMessage::Sequence { schema: "p".into(), name: "s".into(), last_value: 12 }
    );
}

#[test]
fn queue_rows_go_to_subscribers_of_a_named_set_or_to_everyone() {
    let subscribed = ["default", "ddl_sql"];
    assert!(queue_row_wanted(None, &subscribed));
    assert!(queue_row_wanted(Some(&[Some("x".into()), Some("ddl_sql".into())]), &subscribed));
    assert!(!queue_row_wanted(Some(&[Some("other".into())]), &subscribed));
    assert!(!queue_row_wanted(Some(&[]), &subscribed));
    assert!(!queue_row_wanted(Some(&[None]), &subscribed));
    assert!(!queue_row_wanted(Some(&[Some("ddl_sql".into())]), &[]));
}

#[test]
fn search_path_prefix_quotes_each_schema() {
    assert_eq!(search_path_command("\"$user\", public").unwrap(), "SET search_path TO \"$user\", public; ");
    assert_eq!(search_path_command("App,\"My Schema\"").unwrap(), "SET search_path TO app, \"My Schema\"; ");
    assert_eq!(search_path_command(" ").unwrap(), "SET search_path TO ''; ");
    assert_eq!(search_path_command("").unwrap(), "SET search_path TO ''; ");
    assert!(search_path_command("a,,b").is_err());
    assert!(search_path_command("\"open").is_err());
}

#[test]
fn identity_change_follows_spock() {
    assert_eq!(classify_identity_change(true, true, false), IdentityChange::Added);
    assert_eq!(classify_identity_change(false, false, true), IdentityChange::Dropped);
    assert_eq!(classify_identity_change(true, false, true), IdentityChange::Unchanged);
    assert_eq!(classify_identity_change(false, true, false), IdentityChange::Unchanged);
    // REPLICA IDENTITY DEFAULT sets both flags: the state after decides.
    assert_eq!(classify_identity_change(true, true, true), IdentityChange::Added);
    assert_eq!(classify_identity_change(false, true, true), IdentityChange::Dropped);
}

fn member(name: &str, upd_del: bool) -> SetMembership {
    SetMembership { name: name.into(), replicates_update_or_delete: upd_del }
}

fn facts(logged: bool, has_identity: bool, memberships: Vec<SetMembership>) -> TableFacts {
    TableFacts { logged, has_identity, memberships }
}

#[test]
fn created_tables_go_to_default_or_insert_only() {
    let p = place_table(TableStatement::Create, &facts(true, true, vec![]));
    assert_eq!(p, Placement { remove_from: vec![], add_to: Some("default".into()), note: None });
    let p = place_table(TableStatement::Create, &facts(true, false, vec![]));
    assert_eq!(p, Placement { remove_from: vec![], add_to: Some("default_insert_only".into()), note: None });
    // Unlogged: out of every set, into none.
    let p = place_table(TableStatement::Create, &facts(false, true, vec![member("default", true)]));
    assert_eq!(p, Placement { remove_from: vec!["default".into()], add_to: None, note: None });
}

#[test]
fn alter_without_identity_change_leaves_memberships_alone() {
    let f = facts(true, true, vec![member("default_insert_only", false)]);
    assert_eq!(place_table(TableStatement::Alter(IdentityChange::Unchanged), &f), Placement::default());
}

#[test]
fn adding_a_primary_key_moves_a_default_managed_table_to_default() {
    let f = facts(true, true, vec![member("default_insert_only", false)]);
    let p = place_table(TableStatement::Alter(IdentityChange::Added), &f);
    assert_eq!(
        p,
        Placement { remove_from: vec!["default_insert_only".into()], add_to: Some("default".into()), note: None }
    );
    // In a custom set: sticky, with a notice.
    let f = facts(true, true, vec![member("mine", false)]);
    let p = place_table(TableStatement::Alter(IdentityChange::Added), &f);
    assert_eq!(
        p,
        Placement { remove_from: vec![], add_to: None, note: Some(PlacementNote::IdentityGainedInCustomSet) }
    );
}

#[test]
fn dropping_the_primary_key_leaves_sets_that_need_it() {
    let f = facts(true, false, vec![member("default", true)]);
    let p = place_table(TableStatement::Alter(IdentityChange::Dropped), &f);
    assert_eq!(
        p,
        Placement { remove_from: vec!["default".into()], add_to: Some("default_insert_only".into()), note: None }
    );
    // A custom set replicating UPDATE/DELETE: warned and moved.
    let f = facts(true, false, vec![member("mine", true)]);
    let p = place_table(TableStatement::Alter(IdentityChange::Dropped), &f);
    assert_eq!(
        p,
        Placement {
            remove_from: vec!["mine".into()],
            add_to: Some("default_insert_only".into()),
            note: Some(PlacementNote::IdentityLostInCustomSet)
        }
    );
    // Only insert-only custom membership: nothing breaks, sticky.
    let f = facts(true, false, vec![member("mine", false)]);
    assert_eq!(place_table(TableStatement::Alter(IdentityChange::Dropped), &f), Placement::default());
}

#[test]
fn sequences_only_move_forward_and_stay_in_bounds() {
    let asc = LocalSequence { last_value: 10, increment: 1, min_value: 1, max_value: 100 };
    assert_eq!(sequence_catch_up(asc, 50), Some(50));
    assert_eq!(sequence_catch_up(asc, 10), None);
    assert_eq!(sequence_catch_up(asc, 5), None);
    assert_eq!(sequence_catch_up(asc, 1000), Some(100));
    let at_max = LocalSequence { last_value: 100, ..asc };
    assert_eq!(sequence_catch_up(at_max, 1000), None);
    let desc = LocalSequence { last_value: -10, increment: -1, min_value: -100, max_value: -1 };
    assert_eq!(sequence_catch_up(desc, -50), Some(-50));
    assert_eq!(sequence_catch_up(desc, -5), None);
    assert_eq!(sequence_catch_up(desc, -1000), Some(-100));
}

#[test]
fn node_default_sets_are_spocks() {
    let names: Vec<&str> = NODE_DEFAULT_SETS.iter().map(|s| s.name).collect();
    assert_eq!(names, ["default", "default_insert_only", "ddl_sql"]);
    let flags = |s: &NodeDefaultSet| [s.replicate_insert, s.replicate_update, s.replicate_delete, s.replicate_truncate];
    assert_eq!(flags(&NODE_DEFAULT_SETS[0]), [true; 4]);
    assert_eq!(flags(&NODE_DEFAULT_SETS[1]), [true, false, false, true]);
    assert_eq!(flags(&NODE_DEFAULT_SETS[2]), [true, false, false, false]);
    // AutoDDL's statements go to a set every node has.
    assert!(names.contains(&AUTODDL_REPLICATION_SET));
}

#[test]
fn sync_seq_announces_the_margin_ahead_within_bounds() {
    let asc = LocalSequence { last_value: 40, increment: 5, min_value: 1, max_value: i64::MAX };
    assert_eq!(sequence_sync_target(asc, 1000), 1040);
    assert_eq!(sequence_sync_target(LocalSequence { max_value: 500, ..asc }, 1000), 500);
    assert_eq!(sequence_sync_target(LocalSequence { last_value: i64::MAX - 3, ..asc }, 1000), i64::MAX);
    let desc = LocalSequence { last_value: -50, increment: -1, min_value: -100, max_value: -1 };
    assert_eq!(sequence_sync_target(desc, 1000), -100);
    assert_eq!(sequence_sync_target(LocalSequence { min_value: i64::MIN, ..desc }, 1000), -1050);
    assert_eq!(
        sequence_sync_target(LocalSequence { last_value: i64::MIN + 3, min_value: i64::MIN, ..desc }, 1000),
        i64::MIN
    );
}

#[test]
fn the_queue_table() {
    assert!(is_queue_table("spock", "queue"));
    assert!(!is_queue_table("public", "queue"));
    assert!(!is_queue_table("spock", "Queue"));
    assert!(!is_queue_table("spock", "queue2"));
}
