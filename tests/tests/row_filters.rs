//! Row filters route UPDATEs as PostgreSQL's publications do: a row that an UPDATE
//! moves into the filter arrives as an INSERT of the whole row, one that it moves out
//! is deleted, and the subscriber ends with exactly the provider's rows that pass the
//! filter (spock_core::repset::UpdateRoute).

use std::time::Duration;

use spock_tests::fixtures::{replicating_pair, sync_through};
use spock_tests::TestNode;

/// `id=v:md5(doc)` of every row of `f` that `filter` accepts, in key order.
fn rows(n: &TestNode, filter: &str) -> String {
    n.query_text(&format!(
        "SELECT coalesce(string_agg(id || '=' || v || ':' || md5(coalesce(doc, '')), ',' ORDER BY id), '') \
         FROM f WHERE {filter}"
    ))
    .unwrap()
}

/// Table `f(id, v, doc)` on both nodes, with `identity` as its replica identity, in
/// set `default` of the provider with `filter`.
fn filtered_table(provider: &TestNode, subscriber: &TestNode, identity: &str, filter: &str) {
    for n in [provider, subscriber] {
        // doc is stored out of line uncompressed: a large value really is in TOAST.
        n.execute(&format!(
            "CREATE TABLE f(id int PRIMARY KEY, v int, doc text); ALTER TABLE f REPLICA IDENTITY {identity}; \
             ALTER TABLE f ALTER doc SET STORAGE EXTERNAL"
        ))
        .unwrap();
    }
    provider
        .execute(&format!(
            "SELECT spock.repset_add_table('default', 'f', row_filter := '{}')",
            filter.replace('\'', "''")
        ))
        .unwrap();
    // The subscriber learns of the new table through the stream: make sure it has
    // seen the set change before the test writes.
    sync_through(provider, subscriber);
}

/// Conflicts the subscriber logged for `f` (there should be none: every change
/// arrives as what the subscriber can apply).
fn conflicts(n: &TestNode) -> String {
    n.query_text(
        "SELECT coalesce(string_agg(conflict_type || '/' || conflict_resolution, ',' ORDER BY id), '') \
         FROM spock.resolutions WHERE relname LIKE '%f'",
    )
    .unwrap()
}

#[test]
fn updates_that_cross_the_filter_become_inserts_and_deletes() {
    let cluster = replicating_pair();
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    filtered_table(n1, n2, "FULL", "v > 10");
    // The sequence of the issue, then a row whose large value stays in TOAST while
    // its UPDATE moves it into the filter (the INSERT must carry that value), then
    // rows that stay in and out.
    n1.execute("INSERT INTO f VALUES (1, 5, 'one'), (2, 50, 'two')").unwrap();
    n1.execute("UPDATE f SET v = 11 WHERE id = 1").unwrap();
    n1.execute("UPDATE f SET v = 3 WHERE id = 2").unwrap();
    n1.execute(
        "INSERT INTO f SELECT 3, 5, string_agg(md5(i::text || random()::text), '') FROM generate_series(1, 400) i",
    )
    .unwrap();
    n1.execute("UPDATE f SET v = 20 WHERE id = 3").unwrap();
    n1.execute("INSERT INTO f VALUES (4, 40, 'stays'), (5, 1, 'never')").unwrap();
    n1.execute("UPDATE f SET v = 41 WHERE id = 4; UPDATE f SET v = 2 WHERE id = 5").unwrap();
    // A DELETE is filtered by its old row: 1 passes (deleted there), 5 never did.
    n1.execute("INSERT INTO f VALUES (6, 60, 'gone'), (7, 7, 'gone too')").unwrap();
    n1.execute("DELETE FROM f WHERE id IN (6, 7)").unwrap();
    sync_through(n1, n2);

    let want = rows(n1, "v > 10");
    assert_eq!(want.matches('=').count(), 3, "ids 1, 3 and 4 pass on the provider: {want}");
    assert_eq!(rows(n2, "true"), want, "the subscriber has exactly the provider's rows that pass");
    assert_eq!(conflicts(n2), "", "every change arrived as something the subscriber could apply");
}

#[test]
fn filters_on_identity_columns_route_key_changes() {
    let cluster = replicating_pair();
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    filtered_table(n1, n2, "DEFAULT", "id < 100");
    n1.execute("INSERT INTO f VALUES (1, 1, 'a'), (2, 2, 'b'), (200, 3, 'c')").unwrap();
    // Leaves by a key change, enters by a key change, stays in with a new key, and a
    // plain UPDATE inside.
    n1.execute("UPDATE f SET id = 150 WHERE id = 1").unwrap();
    n1.execute("UPDATE f SET id = 5 WHERE id = 200").unwrap();
    n1.execute("UPDATE f SET id = 6, v = 22 WHERE id = 2").unwrap();
    n1.execute("UPDATE f SET v = 55 WHERE id = 5").unwrap();
    sync_through(n1, n2);

    let want = rows(n1, "id < 100");
    assert_eq!(want.matches('=').count(), 2, "ids 5 and 6 pass on the provider: {want}");
    assert_eq!(rows(n2, "true"), want);
    assert_eq!(conflicts(n2), "");
}

#[test]
fn a_filter_on_columns_the_wal_does_not_log_warns_and_deletes_still_arrive() {
    let cluster = replicating_pair();
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    let offset = n1.log_offset();
    filtered_table(n1, n2, "DEFAULT", "v > 10");
    n1.wait_for_log(offset, "reads columns whose old values are not logged", 1, Duration::from_secs(30));
    // The same filter with REPLICA IDENTITY FULL does not warn.
    n1.execute("CREATE TABLE g(id int PRIMARY KEY, v int) ; ALTER TABLE g REPLICA IDENTITY FULL").unwrap();
    let offset = n1.log_offset();
    n1.execute("SELECT spock.repset_add_table('default', 'g', row_filter := 'v > 10')").unwrap();
    assert!(!n1.log_since(offset).contains("old values are not logged"), "{}", n1.log_since(offset));

    // The old row of a DELETE is only its key here: the filter cannot judge it, so the
    // DELETE is sent, and the subscriber's copy goes.
    n1.execute("INSERT INTO f VALUES (1, 50, 'x'), (2, 60, 'y')").unwrap();
    sync_through(n1, n2);
    assert_eq!(rows(n2, "true"), rows(n1, "v > 10"));
    n1.execute("DELETE FROM f WHERE id = 1").unwrap();
    sync_through(n1, n2);
    assert_eq!(rows(n2, "true"), rows(n1, "v > 10"), "the DELETE reached the subscriber");
    // An UPDATE into the filter still arrives (the new row passes): as an UPDATE of a
    // row the subscriber has here.
    n1.execute("UPDATE f SET v = 61 WHERE id = 2").unwrap();
    sync_through(n1, n2);
    assert_eq!(rows(n2, "true"), rows(n1, "v > 10"));
}
