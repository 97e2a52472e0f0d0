use super::*;
use proptest::prelude::*;

const A: OriginId = 101;
const B: OriginId = 202;

fn v(ts: i64, origin: OriginId) -> RowVersion {
    RowVersion { commit_ts: ts, origin }
}

const TB: Tiebreakers = Tiebreakers { local_node: 10, remote_node: 20 };

#[test]
fn names_round_trip() {
    for k in ConflictKind::ALL {
        assert_eq!(k.as_str().parse::<ConflictKind>().unwrap(), k);
    }
    for p in ConflictPolicy::ALL {
        assert_eq!(p.as_str().parse::<ConflictPolicy>().unwrap(), p);
    }
    assert!("update_update".parse::<ConflictKind>().is_err());
    assert!("newest".parse::<ConflictPolicy>().is_err());
    assert_eq!(ConflictPolicy::default(), ConflictPolicy::LastUpdateWins);
    assert_eq!(ConflictKind::DeleteExists.spock_code(), 101);
    assert_eq!(ConflictKind::DeleteExists.stat_index(), 6);
}

#[test]
fn last_update_wins_by_timestamp() {
    let p = ConflictPolicy::LastUpdateWins;
    assert_eq!(resolve(v(1, A), v(2, B), p, TB), Ok((Resolution::ApplyRemote, Reason::RemoteTimestamp)));
    assert_eq!(resolve(v(2, A), v(1, B), p, TB), Ok((Resolution::KeepLocal, Reason::LocalTimestamp)));
}

#[test]
fn first_update_wins_inverts_timestamps_only() {
    let p = ConflictPolicy::FirstUpdateWins;
    assert_eq!(resolve(v(1, A), v(2, B), p, TB), Ok((Resolution::KeepLocal, Reason::LocalTimestamp)));
    assert_eq!(resolve(v(2, A), v(1, B), p, TB), Ok((Resolution::ApplyRemote, Reason::RemoteTimestamp)));
    // ties are broken exactly as under last_update_wins
    assert_eq!(resolve(v(5, A), v(5, B), p, TB), Ok((Resolution::KeepLocal, Reason::Tiebreaker)));
}

#[test]
fn equal_timestamps_same_origin_applies_remote() {
    let p = ConflictPolicy::LastUpdateWins;
    assert_eq!(resolve(v(5, B), v(5, B), p, TB), Ok((Resolution::ApplyRemote, Reason::SameOrigin)));
}

#[test]
fn equal_timestamps_local_origin_is_never_same_origin() {
    // A local row (origin 0) against a remote change claiming origin 0 still goes
    // to the tiebreaker: origin 0 is "no origin", not a node.
    let p = ConflictPolicy::LastUpdateWins;
    assert_eq!(resolve(v(5, LOCAL_ORIGIN), v(5, LOCAL_ORIGIN), p, TB), Ok((Resolution::KeepLocal, Reason::Tiebreaker)));
}

#[test]
fn equal_timestamps_lower_tiebreaker_wins() {
    let p = ConflictPolicy::LastUpdateWins;
    let local_lower = Tiebreakers { local_node: 1, remote_node: 2 };
    let remote_lower = Tiebreakers { local_node: 2, remote_node: 1 };
    let equal = Tiebreakers { local_node: 3, remote_node: 3 };
    assert_eq!(resolve(v(5, A), v(5, B), p, local_lower), Ok((Resolution::KeepLocal, Reason::Tiebreaker)));
    assert_eq!(resolve(v(5, A), v(5, B), p, remote_lower), Ok((Resolution::ApplyRemote, Reason::Tiebreaker)));
    let eq = resolve(v(5, A), v(5, B), p, equal).unwrap();
    assert_eq!(eq, (Resolution::ApplyRemote, Reason::EqualTiebreakers));
}

#[test]
fn fixed_policies_ignore_timestamps() {
    for (l, r) in [(1, 2), (2, 1), (3, 3)] {
        assert_eq!(
            resolve(v(l, A), v(r, B), ConflictPolicy::ApplyRemote, TB),
            Ok((Resolution::ApplyRemote, Reason::Policy))
        );
        assert_eq!(
            resolve(v(l, A), v(r, B), ConflictPolicy::KeepLocal, TB),
            Ok((Resolution::KeepLocal, Reason::Policy))
        );
        assert_eq!(resolve(v(l, A), v(r, B), ConflictPolicy::Error, TB), Err(ConflictPolicy::Error));
    }
}

#[test]
fn frozen_local_rows_lose_to_any_remote_change() {
    assert_eq!(
        resolve(v(0, LOCAL_ORIGIN), v(1, B), ConflictPolicy::LastUpdateWins, TB).unwrap().0,
        Resolution::ApplyRemote
    );
}

#[test]
fn decide_every_kind_under_every_policy() {
    let local = Some(v(1, A));
    let remote = v(2, B);
    for policy in ConflictPolicy::ALL {
        for kind in ConflictKind::ALL {
            let got = decide(kind, local, remote, policy, TB);
            match (kind, policy) {
                (ConflictKind::UpdateExists, _) => assert_eq!(got, Err(Unresolvable { kind, policy })),
                (_, ConflictPolicy::Error) => assert_eq!(got, Err(Unresolvable { kind, policy })),
                (ConflictKind::UpdateMissing | ConflictKind::DeleteMissing, _) => {
                    let d = got.unwrap();
                    assert_eq!((d.kind, d.resolution, d.reason), (kind, Resolution::Skip, Reason::NoLocalRow));
                }
                (_, _) => {
                    let d = got.unwrap();
                    let expected = match policy {
                        ConflictPolicy::LastUpdateWins | ConflictPolicy::ApplyRemote => Resolution::ApplyRemote,
                        ConflictPolicy::FirstUpdateWins | ConflictPolicy::KeepLocal => Resolution::KeepLocal,
                        ConflictPolicy::Error => unreachable!(),
                    };
                    assert_eq!(d.resolution, expected, "{kind} under {policy:?}");
                    let is_delete = matches!(kind, ConflictKind::DeleteOriginDiffers | ConflictKind::DeleteExists);
                    let expected_kind = match (is_delete, expected) {
                        (true, Resolution::KeepLocal) => ConflictKind::DeleteExists,
                        (true, _) => ConflictKind::DeleteOriginDiffers,
                        _ => kind,
                    };
                    assert_eq!(d.kind, expected_kind);
                }
            }
        }
    }
}

#[test]
fn a_delete_is_a_version_updates_and_inserts_meet() {
    let p = ConflictPolicy::LastUpdateWins;
    for kind in [ConflictKind::UpdateDeleted, ConflictKind::InsertDeleted] {
        // The DELETE (local, ts 5) is newer than the remote change: the row stays deleted.
        let d = decide(kind, Some(v(5, LOCAL_ORIGIN)), v(3, B), p, TB).unwrap();
        assert_eq!((d.kind, d.resolution, d.reason), (kind, Resolution::KeepLocal, Reason::LocalTimestamp));
        // The remote change is newer: the row comes back.
        let d = decide(kind, Some(v(5, A)), v(7, B), p, TB).unwrap();
        assert_eq!((d.kind, d.resolution), (kind, Resolution::ApplyRemote));
    }
}

#[test]
fn an_update_without_row_or_delete_applies_when_it_carries_the_row() {
    use ConflictPolicy::*;
    let d = decide_update_missing(true, LastUpdateWins).unwrap();
    assert_eq!((d.kind, d.resolution), (ConflictKind::UpdateMissing, Resolution::ApplyRemote));
    assert_eq!(decide_update_missing(false, LastUpdateWins).unwrap().resolution, Resolution::Skip);
    assert_eq!(decide_update_missing(true, FirstUpdateWins).unwrap().resolution, Resolution::ApplyRemote);
    assert_eq!(decide_update_missing(true, ApplyRemote).unwrap().resolution, Resolution::ApplyRemote);
    assert_eq!(decide_update_missing(true, KeepLocal).unwrap().resolution, Resolution::Skip);
    assert!(decide_update_missing(true, Error).is_err());
}

#[test]
fn a_lost_delete_is_reported_as_delete_exists() {
    let d =
        decide(ConflictKind::DeleteOriginDiffers, Some(v(9, A)), v(3, B), ConflictPolicy::LastUpdateWins, TB).unwrap();
    assert_eq!((d.kind, d.resolution), (ConflictKind::DeleteExists, Resolution::KeepLocal));
}

#[test]
fn origin_difference() {
    assert!(origin_differs(v(1, A), v(1, B)));
    assert!(origin_differs(v(1, LOCAL_ORIGIN), v(1, B)));
    assert!(!origin_differs(v(1, B), v(2, B)));
}

#[test]
fn equal_tiebreaker_decision_warns() {
    let d = decide(
        ConflictKind::UpdateOriginDiffers,
        Some(v(5, A)),
        v(5, B),
        ConflictPolicy::LastUpdateWins,
        Tiebreakers { local_node: 4, remote_node: 4 },
    )
    .unwrap();
    assert!(d.needs_warning() && d.applies_remote());
}

#[test]
fn a_later_write_by_another_node_is_normal_flow_a_lost_one_is_not() {
    let p = ConflictPolicy::LastUpdateWins;
    let t = Tiebreakers { local_node: 1, remote_node: 2 };
    let later = decide(ConflictKind::UpdateOriginDiffers, Some(v(5, A)), v(6, B), p, t).unwrap();
    assert!(later.is_normal_flow());
    let delete = decide(ConflictKind::DeleteOriginDiffers, Some(v(5, A)), v(6, B), p, t).unwrap();
    assert!(delete.is_normal_flow());
    let lost = decide(ConflictKind::UpdateOriginDiffers, Some(v(7, A)), v(6, B), p, t).unwrap();
    assert!(!lost.is_normal_flow() && lost.resolution == Resolution::KeepLocal);
    let insert = decide(ConflictKind::InsertExists, Some(v(5, A)), v(6, B), p, t).unwrap();
    assert!(!insert.is_normal_flow(), "an INSERT meeting a row is a conflict");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    /// Two nodes change the same row concurrently and apply each other's change: under
    /// last_update_wins and first_update_wins both must keep the same version.
    #[test]
    fn both_nodes_converge(
        ts_a in 0i64..4, ts_b in 0i64..4,
        tb_a in 0i64..3, tb_delta in 1i64..3,
        fuw in any::<bool>(),
    ) {
        let tb_b = (tb_a + tb_delta) % 3;
        let policy = if fuw { ConflictPolicy::FirstUpdateWins } else { ConflictPolicy::LastUpdateWins };
        // Node A holds its own version (local origin) and receives B's.
        let (res_on_a, _) = resolve(v(ts_a, LOCAL_ORIGIN), v(ts_b, B), policy,
            Tiebreakers { local_node: tb_a, remote_node: tb_b }).unwrap();
        let (res_on_b, _) = resolve(v(ts_b, LOCAL_ORIGIN), v(ts_a, A), policy,
            Tiebreakers { local_node: tb_b, remote_node: tb_a }).unwrap();
        let final_a = if res_on_a == Resolution::ApplyRemote { "B" } else { "A" };
        let final_b = if res_on_b == Resolution::ApplyRemote { "A" } else { "B" };
        prop_assert_eq!(final_a, final_b);
    }

    /// A DELETE on one node races an UPDATE (or an INSERT of the same key) on the
    /// other: each node applies the other's change against its own version (the
    /// deleted one, or the updated row) and both end the same, row or no row.
    #[test]
    fn a_delete_and_an_update_converge(
        ts_del in 0i64..4, ts_upd in 0i64..4, tb_a in 0i64..3, tb_delta in 1i64..3, insert in any::<bool>(),
    ) {
        let tb_b = (tb_a + tb_delta) % 3;
        let p = ConflictPolicy::LastUpdateWins;
        // A deleted the row; B's UPDATE (or INSERT) arrives and meets the deleted version.
        let kind = if insert { ConflictKind::InsertDeleted } else { ConflictKind::UpdateDeleted };
        let on_a = decide(kind, Some(v(ts_del, LOCAL_ORIGIN)), v(ts_upd, B), p,
            Tiebreakers { local_node: tb_a, remote_node: tb_b }).unwrap();
        let row_on_a = on_a.applies_remote();
        // B changed the row; A's DELETE arrives and meets it.
        let on_b = decide(ConflictKind::DeleteOriginDiffers, Some(v(ts_upd, LOCAL_ORIGIN)), v(ts_del, A), p,
            Tiebreakers { local_node: tb_b, remote_node: tb_a }).unwrap();
        let row_on_b = !on_b.applies_remote();
        prop_assert_eq!(row_on_a, row_on_b);
    }

    /// A third node that receives both versions, in either order, keeps the same
    /// winner as the two writers, ties included.
    #[test]
    fn a_third_node_agrees(ts_a in 0i64..4, ts_b in 0i64..4, tb_a in 0i64..3, tb_delta in 1i64..3, a_first in any::<bool>()) {
        let tb_b = (tb_a + tb_delta) % 3;
        let p = ConflictPolicy::LastUpdateWins;
        let (res_on_a, _) = resolve(v(ts_a, LOCAL_ORIGIN), v(ts_b, B), p,
            Tiebreakers { local_node: tb_a, remote_node: tb_b }).unwrap();
        let writers = if res_on_a == Resolution::ApplyRemote { "B" } else { "A" };
        // On C the local row was written by the first arriving node.
        let on_c = if a_first {
            let (r, _) = resolve(v(ts_a, A), v(ts_b, B), p, Tiebreakers { local_node: tb_a, remote_node: tb_b }).unwrap();
            if r == Resolution::ApplyRemote { "B" } else { "A" }
        } else {
            let (r, _) = resolve(v(ts_b, B), v(ts_a, A), p, Tiebreakers { local_node: tb_b, remote_node: tb_a }).unwrap();
            if r == Resolution::ApplyRemote { "A" } else { "B" }
        };
        prop_assert_eq!(writers, on_c);
    }
}

#[test]
fn a_unique_violation_of_an_update_counts_as_update_exists() {
    assert_eq!(failure_counts_as("23505", true), Some(ConflictKind::UpdateExists));
    assert_eq!(failure_counts_as("23505", false), None);
    assert_eq!(failure_counts_as("23514", true), None);
}
