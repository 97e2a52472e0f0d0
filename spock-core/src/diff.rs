//! Finding the rows in which two nodes' copies of a table differ without shipping
//! the table (spock.table_diff): the rules that need no server.
//!
//! Each side hashes its rows into buckets by the hash of their key (the same
//! bucket on both sides for the same key, whatever the physical order) and sends
//! one summary per bucket: how many rows and the XOR of their row hashes. Only
//! buckets whose summaries differ are looked into, row by row (key and row hash),
//! and only the rows that differ there are fetched whole. With about
//! [`ROWS_PER_BUCKET`] rows in a bucket, a table of `n` rows with `d` differing
//! rows costs one pass over the table on each side for the summaries, one cheaper
//! pass that reads only the keys of the `d` buckets' rows, and moves `n /
//! ROWS_PER_BUCKET` summaries plus `d * ROWS_PER_BUCKET` row hashes plus the `d`
//! rows.
//!
//! XOR is order-free, so no side sorts anything; a row counted twice cannot
//! happen (keys are unique), and two differences cancelling out in one bucket
//! needs two 64-bit row hashes to collide.

use std::collections::{BTreeSet, HashMap};

/// Rows per bucket aimed at.
pub const ROWS_PER_BUCKET: f64 = 256.0;
/// Fewest buckets.
pub const MIN_BUCKETS: u64 = 16;
/// Most buckets (the summaries of one side then take about 1 MB).
pub const MAX_BUCKETS: u64 = 1 << 16;

/// How many buckets for a table of about `rows` rows (a power of two, so that a
/// bucket is the hash's low bits): about [`ROWS_PER_BUCKET`] rows each, within
/// [`MIN_BUCKETS`]..=[`MAX_BUCKETS`]. A negative estimate (never analysed) gets
/// 1024.
pub fn bucket_count(rows: f64) -> u64 {
    if rows.is_nan() || rows < 0.0 {
        return 1024;
    }
    let wanted = (rows / ROWS_PER_BUCKET).ceil().max(1.0);
    let wanted = if wanted >= MAX_BUCKETS as f64 { MAX_BUCKETS } else { wanted as u64 };
    wanted.next_power_of_two().clamp(MIN_BUCKETS, MAX_BUCKETS)
}

/// One side's summary of a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Rows in it.
    pub rows: i64,
    /// XOR of their row hashes.
    pub hash: i64,
}

/// The buckets whose summaries differ (present on one side only, or unequal), in
/// ascending order.
pub fn differing_buckets(local: &HashMap<i64, Bucket>, peer: &HashMap<i64, Bucket>) -> Vec<i64> {
    let mut out: BTreeSet<i64> = BTreeSet::new();
    for (b, s) in local {
        if peer.get(b) != Some(s) {
            out.insert(*b);
        }
    }
    for b in peer.keys() {
        if !local.contains_key(b) {
            out.insert(*b);
        }
    }
    out.into_iter().collect()
}

/// How a row differs between the two sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Only this node has the key.
    OnlyLocal,
    /// Only the peer has it.
    OnlyPeer,
    /// Both have it, with different contents.
    Differs,
}

impl Status {
    /// The name spock.table_diff() shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::OnlyLocal => "only_local",
            Status::OnlyPeer => "only_peer",
            Status::Differs => "differs",
        }
    }

    /// How `key` compares, from each side's row hash (`None`: no such row); `None`
    /// when the two agree.
    pub fn of(local: Option<i64>, peer: Option<i64>) -> Option<Status> {
        match (local, peer) {
            (Some(l), Some(p)) if l == p => None,
            (Some(_), Some(_)) => Some(Status::Differs),
            (Some(_), None) => Some(Status::OnlyLocal),
            (None, Some(_)) => Some(Status::OnlyPeer),
            (None, None) => None,
        }
    }
}

/// The keys whose rows differ, from each side's row hashes by key (the rows of
/// the differing buckets), in key order.
pub fn differing_keys(local: &HashMap<String, i64>, peer: &HashMap<String, i64>) -> Vec<(String, Status)> {
    let keys: BTreeSet<&String> = local.keys().chain(peer.keys()).collect();
    keys.into_iter()
        .filter_map(|k| Status::of(local.get(k).copied(), peer.get(k).copied()).map(|s| (k.clone(), s)))
        .collect()
}

/// Whether `peer` (spock.table_diff's argument) is a connection string rather than
/// a node name: it has a `key=value` pair or is a URI.
pub fn is_connection_string(peer: &str) -> bool {
    peer.contains('=') || peer.starts_with("postgres://") || peer.starts_with("postgresql://")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_about_256_rows_as_a_power_of_two_within_bounds() {
        assert_eq!(bucket_count(-1.0), 1024, "never analysed");
        assert_eq!(bucket_count(0.0), MIN_BUCKETS);
        assert_eq!(bucket_count(1_000.0), MIN_BUCKETS);
        assert_eq!(bucket_count(1_000_000.0), 4096);
        assert_eq!(bucket_count(1e12), MAX_BUCKETS);
        assert_eq!(bucket_count(f64::NAN), 1024);
        for rows in [17.0 * 256.0, 100_000.0, 3_000_000.0] {
            let b = bucket_count(rows);
            assert!(b.is_power_of_two());
            let per = rows / b as f64;
            assert!((128.0..=256.0).contains(&per), "{rows} rows in {b} buckets: {per} each");
        }
    }

    #[test]
    fn a_bucket_differs_when_missing_on_either_side_or_unequal() {
        let b = |rows, hash| Bucket { rows, hash };
        let local = HashMap::from([(1, b(3, 7)), (2, b(1, 5)), (4, b(2, 9))]);
        let peer = HashMap::from([(1, b(3, 7)), (2, b(1, 6)), (3, b(1, 1)), (4, b(3, 9))]);
        assert_eq!(differing_buckets(&local, &peer), vec![2, 3, 4]);
        assert_eq!(differing_buckets(&local, &local), Vec::<i64>::new());
    }

    #[test]
    fn keys_are_only_local_only_peer_or_differ_in_key_order() {
        let local = HashMap::from([("(1)".to_string(), 10), ("(2)".to_string(), 20), ("(4)".to_string(), 40)]);
        let peer = HashMap::from([("(1)".to_string(), 10), ("(2)".to_string(), 21), ("(3)".to_string(), 30)]);
        assert_eq!(
            differing_keys(&local, &peer),
            vec![
                ("(2)".to_string(), Status::Differs),
                ("(3)".to_string(), Status::OnlyPeer),
                ("(4)".to_string(), Status::OnlyLocal)
            ]
        );
        assert_eq!(Status::of(None, None), None);
        assert_eq!(Status::OnlyPeer.as_str(), "only_peer");
    }

    #[test]
    fn a_peer_is_a_node_name_unless_it_looks_like_a_connection_string() {
        assert!(!is_connection_string("n2"));
        assert!(!is_connection_string("node with spaces"));
        assert!(is_connection_string("host=10.0.0.2 dbname=app"));
        assert!(is_connection_string("postgresql://u@h/app"));
    }
}
