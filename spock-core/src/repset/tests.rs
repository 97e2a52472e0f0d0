use super::*;

fn set(id: u32, name: &str, i: bool, u: bool, d: bool, t: bool) -> RepSet {
    RepSet {
        id,
        name: name.to_string(),
        replicate_insert: i,
        replicate_update: u,
        replicate_delete: d,
        replicate_truncate: t,
    }
}

fn default_sets() -> Vec<RepSet> {
    vec![
        set(1, "default", true, true, true, true),
        set(2, "default_insert_only", true, false, false, true),
        set(3, "ddl_sql", true, false, false, false),
    ]
}

fn member(set_id: u32, cols: Option<&[&str]>, filter: Option<&'static str>) -> Membership<&'static str> {
    Membership { set_id, columns: cols.map(|c| c.iter().map(|s| s.to_string()).collect()), row_filter: filter }
}

fn no_filter(_: &&str) -> Result<Option<bool>, ()> {
    unreachable!("no filter to evaluate")
}

#[test]
fn table_in_no_subscribed_set_publishes_nothing() {
    let subscribed = &default_sets()[..1];
    let p = TablePublication::new(subscribed, &[member(2, None, None)]);
    assert!(!p.is_member());
    for a in [Action::Insert, Action::Update, Action::Delete, Action::Truncate] {
        assert!(!p.change_passes(a, no_filter).unwrap());
    }
}

#[test]
fn insert_only_set_drops_updates_and_deletes() {
    let p = TablePublication::new(&default_sets(), &[member(2, None, None)]);
    assert!(p.change_passes(Action::Insert, no_filter).unwrap());
    assert!(!p.change_passes(Action::Update, no_filter).unwrap());
    assert!(!p.change_passes(Action::Delete, no_filter).unwrap());
    assert!(p.change_passes(Action::Truncate, no_filter).unwrap());
}

#[test]
fn actions_are_the_union_of_the_sets() {
    let sets = vec![set(7, "ins", true, false, false, false), set(8, "del", false, false, true, false)];
    let p = TablePublication::new(&sets, &[member(7, None, None), member(8, None, None)]);
    assert!(p.publishes(Action::Insert) && p.publishes(Action::Delete));
    assert!(!p.publishes(Action::Update) && !p.publishes(Action::Truncate));
}

#[test]
fn column_lists_are_merged_and_a_set_without_list_means_all() {
    let sets = default_sets();
    let p = TablePublication::new(&sets, &[member(1, Some(&["id", "a"]), None), member(2, Some(&["b"]), None)]);
    assert_eq!(p.columns, ColumnSelection::Only(["a", "b", "id"].iter().map(|s| s.to_string()).collect()));
    assert!(p.columns.includes("id") && !p.columns.includes("secret"));
    let p = TablePublication::new(&sets, &[member(1, Some(&["id"]), None), member(2, None, None)]);
    assert_eq!(p.columns, ColumnSelection::All);
}

#[test]
fn every_row_filter_must_accept_and_null_rejects() {
    let p = TablePublication::new(&default_sets(), &[member(1, None, Some("f1")), member(2, None, Some("f2"))]);
    let eval = |answers: [(&'static str, Option<bool>); 2]| {
        move |f: &&str| -> Result<Option<bool>, ()> { Ok(answers.iter().find(|(n, _)| n == f).unwrap().1) }
    };
    assert!(p.change_passes(Action::Insert, eval([("f1", Some(true)), ("f2", Some(true))])).unwrap());
    assert!(!p.change_passes(Action::Insert, eval([("f1", Some(true)), ("f2", Some(false))])).unwrap());
    assert!(!p.change_passes(Action::Insert, eval([("f1", None), ("f2", Some(true))])).unwrap());
    // truncate has no row: filters are not consulted
    assert!(p.change_passes(Action::Truncate, eval([("f1", Some(false)), ("f2", Some(false))])).unwrap());
}

#[test]
fn row_filter_errors_propagate() {
    let p = TablePublication::new(&default_sets(), &[member(1, None, Some("boom"))]);
    assert_eq!(p.change_passes(Action::Insert, |_| Err("division by zero")), Err("division by zero"));
}

#[test]
fn filters_of_unsubscribed_sets_do_not_apply() {
    let subscribed = &default_sets()[..1];
    let p = TablePublication::new(subscribed, &[member(1, None, None), member(2, None, Some("never"))]);
    assert!(p.row_filters.is_empty());
    assert!(p.change_passes(Action::Update, no_filter).unwrap());
}

#[test]
fn one_table_catch_up_sends_that_table_whole_and_nothing_else() {
    let sets = default_sets();
    let asked = std::cell::Cell::new(false);
    let read = || {
        asked.set(true);
        vec![member(2, Some(&["id"]), Some("f"))]
    };
    let p = table_publication("public", "t", Some(("public", "t")), &sets, read);
    for a in [Action::Insert, Action::Update, Action::Delete, Action::Truncate] {
        assert!(p.change_passes(a, no_filter).unwrap());
    }
    assert_eq!(p.columns, ColumnSelection::All);
    let other = table_publication("public", "u", Some(("public", "t")), &sets, read);
    assert!(!other.is_member());
    let queue = table_publication("spock", "queue", Some(("public", "t")), &sets, read);
    assert!(!queue.is_member());
    assert!(!asked.get(), "memberships are not read for a one-table catch-up");
}

#[test]
fn the_queue_sends_whole_inserts_only() {
    let p = table_publication::<&str>("spock", "queue", None, &[], || unreachable!("the queue is in no set"));
    assert!(p.change_passes(Action::Insert, no_filter).unwrap());
    for a in [Action::Update, Action::Delete, Action::Truncate] {
        assert!(!p.change_passes(a, no_filter).unwrap());
    }
    assert_eq!(p.columns, ColumnSelection::All);
}

#[test]
fn other_tables_follow_their_memberships() {
    let sets = default_sets();
    let p = table_publication("public", "t", None, &sets, || vec![member(2, Some(&["id"]), None)]);
    assert!(p.publishes(Action::Insert) && !p.publishes(Action::Update));
    assert_eq!(p.columns, ColumnSelection::Only(["id".to_string()].into_iter().collect()));
}

#[test]
fn filters_can_be_prepared_in_place() {
    let p = TablePublication::new(&default_sets(), &[member(1, None, Some("a > 1"))]).map_filters(str::len);
    assert_eq!(p.row_filters, vec![5]);
    assert!(p.publishes(Action::Insert));
    assert!(!p.change_passes(Action::Insert, |n: &usize| Ok::<_, ()>(Some(*n < 5))).unwrap());
}

#[test]
fn set_names_resolve_in_order() {
    let sets = default_sets();
    let got = resolve_set_names(&["ddl_sql", "default"], &sets).unwrap();
    assert_eq!(got.iter().map(|s| s.id).collect::<Vec<_>>(), vec![3, 1]);
    assert_eq!(resolve_set_names(&["nope"], &sets), Err(UnknownRepSet("nope".to_string())));
}

#[test]
fn replica_identity_requirement() {
    let sets = default_sets();
    assert!(sets[0].needs_replica_identity());
    assert!(!sets[1].needs_replica_identity());
}
