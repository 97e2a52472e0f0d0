//! Globally unique ids from ordinary sequences (docs/multimaster.md): on every node
//! a global sequence hands out the numbers whose low 16 bits are that node's id
//! (`names::node_id_for_name`, distinct within a mesh), by stepping 65,536 at a
//! time. Two nodes can never hand out the same number, without coordination, and
//! `nextval` stays PostgreSQL's own: as fast, crash-safe and never repeating as
//! any sequence, whatever the clock does.
//!
//! Layout of an id (a positive `bigint`): bits 16-62 count (per node, from the
//! sequence's value when it was converted), bits 0-15 are the node id.

/// How far a global sequence steps: one number per possible node id.
pub const STRIDE: i64 = 1 << 16;

/// The node id an id was handed out by.
pub fn node_of(id: i64) -> u16 {
    (id & (STRIDE - 1)) as u16
}

/// The first id node `node` hands out after `floor` (the sequence's value when it
/// is converted: later ids stay above every id it gave before): the smallest
/// number above `floor`, and at least 1, whose low 16 bits are `node`. None when
/// none is left below `i64::MAX`.
pub fn first_after(floor: i64, node: u16) -> Option<i64> {
    let floor = floor.max(0);
    let base = floor - floor.rem_euclid(STRIDE);
    let mut candidate = base.checked_add(i64::from(node))?;
    if candidate <= floor || candidate < 1 {
        candidate = candidate.checked_add(STRIDE)?;
    }
    Some(candidate)
}

/// How many ids a node can still hand out from `next`.
pub fn remaining(next: i64) -> i64 {
    (i64::MAX - next) / STRIDE + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_two_nodes_never_meet() {
        for floor in [0, 1, 1000, 65_535, 65_536, 1 << 40] {
            let (a, b) = (first_after(floor, 7).unwrap(), first_after(floor, 9).unwrap());
            for k in 0..1000 {
                assert_ne!(a + k * STRIDE, b + (k + 3) * STRIDE);
                assert_eq!(node_of(a + k * STRIDE), 7);
                assert_eq!(node_of(b + k * STRIDE), 9);
            }
        }
    }

    #[test]
    fn the_first_id_is_above_the_floor_and_as_low_as_it_can_be() {
        assert_eq!(first_after(0, 5), Some(5));
        assert_eq!(first_after(5, 5), Some(5 + STRIDE));
        assert_eq!(first_after(4, 5), Some(5));
        assert_eq!(first_after(1000, 5), Some(STRIDE + 5));
        assert_eq!(first_after(0, 0), Some(STRIDE), "never 0");
        assert_eq!(first_after(-50, 3), Some(3), "a negative floor counts as 0");
        for floor in [1, 77, 65_536, 123_456_789] {
            for node in [0u16, 1, 300, u16::MAX] {
                let first = first_after(floor, node).unwrap();
                assert!(first > floor && first - floor <= STRIDE, "{floor} {node} {first}");
                assert_eq!(node_of(first), node);
            }
        }
    }

    #[test]
    fn the_end_of_the_range_is_reported() {
        assert_eq!(first_after(i64::MAX - 10, 65_535), Some(i64::MAX));
        assert_eq!(first_after(i64::MAX - 10, 0), None);
        assert_eq!(remaining(i64::MAX), 1);
        assert_eq!(remaining(1), (i64::MAX - 1) / STRIDE + 1);
        assert!(remaining(1) > 140_000_000_000_000, "about 2^47 ids per node");
    }
}
