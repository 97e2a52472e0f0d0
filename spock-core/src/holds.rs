//! Subscription holds: which slot of the fixed table in shared memory a backend's
//! transaction uses to keep a subscription's apply worker stopped until it ends.
//!
//! The table is small and shared by every backend of the server. One transaction
//! may change any number of subscriptions (a script that disables them all), so a
//! backend that already uses [`HOLDS_PER_BACKEND`] slots of a database, or finds no
//! free slot while it has one there, widens one of its holds to the whole database
//! instead of taking more: it keeps at most a few slots and never fails, and other
//! backends still find free slots.

/// `Hold::sub_id` of a hold that covers every subscription of its database.
pub const ALL_SUBSCRIPTIONS: u32 = 0;

/// Slots one backend takes in one database before it widens a hold instead.
pub const HOLDS_PER_BACKEND: usize = 4;

/// One slot of the table: `dbid` 0 means free.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Hold {
    /// Database (0: free).
    pub dbid: u32,
    /// The subscription, or [`ALL_SUBSCRIPTIONS`].
    pub sub_id: u32,
    /// The backend holding it.
    pub pid: i32,
}

impl Hold {
    /// Whether this hold keeps subscription `sub_id` of `dbid` stopped.
    pub fn covers(&self, dbid: u32, sub_id: u32) -> bool {
        self.dbid == dbid && (self.sub_id == sub_id || self.sub_id == ALL_SUBSCRIPTIONS)
    }
}

/// What to do with the table for a new hold.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum HoldPlan {
    /// The backend already holds the subscription: nothing to change.
    Held,
    /// Write the new hold into slot `i` (free, or left by a backend that is gone).
    Take(usize),
    /// Turn the backend's hold in slot `i` into one for every subscription.
    Widen(usize),
    /// Every slot belongs to other live backends.
    Full,
}

/// Plans holding subscription `sub_id` of `dbid` for backend `pid`; `alive` tells
/// whether the backend of a used slot still exists.
pub fn plan_hold(holds: &[Hold], dbid: u32, sub_id: u32, pid: i32, alive: impl Fn(i32) -> bool) -> HoldPlan {
    let mine = |h: &Hold| h.dbid == dbid && h.pid == pid;
    if holds.iter().any(|h| mine(h) && h.covers(dbid, sub_id)) {
        return HoldPlan::Held;
    }
    let own = holds.iter().position(mine);
    let used = holds.iter().filter(|h| mine(h)).count();
    let free = holds.iter().position(|h| h.dbid == 0 || !alive(h.pid));
    match (own, free) {
        (Some(i), _) if used >= HOLDS_PER_BACKEND => HoldPlan::Widen(i),
        (_, Some(i)) => HoldPlan::Take(i),
        (Some(i), None) => HoldPlan::Widen(i),
        (None, None) => HoldPlan::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(holds: &mut [Hold], dbid: u32, sub_id: u32, pid: i32) -> HoldPlan {
        let plan = plan_hold(holds, dbid, sub_id, pid, |p| p > 0);
        match plan {
            HoldPlan::Take(i) => holds[i] = Hold { dbid, sub_id, pid },
            HoldPlan::Widen(i) => holds[i].sub_id = ALL_SUBSCRIPTIONS,
            HoldPlan::Held | HoldPlan::Full => {}
        }
        plan
    }

    #[test]
    fn one_backend_holding_many_subscriptions_keeps_a_few_slots() {
        let mut holds = [Hold::default(); 32];
        for sub in 1..=1000 {
            assert_ne!(apply(&mut holds, 5, sub, 100), HoldPlan::Full);
        }
        assert_eq!(holds.iter().filter(|h| h.pid == 100).count(), HOLDS_PER_BACKEND);
        for sub in 1..=1000 {
            assert!(holds.iter().any(|h| h.covers(5, sub)), "subscription {sub} not held");
        }
        // Another database is not covered by the widened hold.
        assert!(!holds.iter().any(|h| h.covers(6, 1)));
        // Another backend still finds a slot.
        assert_eq!(apply(&mut holds, 5, 7, 200), HoldPlan::Take(HOLDS_PER_BACKEND));
    }

    #[test]
    fn a_full_table_widens_an_own_hold_or_refuses() {
        let mut holds: Vec<Hold> = (0..8).map(|i| Hold { dbid: 1, sub_id: 10 + i, pid: 10 + i as i32 }).collect();
        assert_eq!(apply(&mut holds, 1, 99, 500), HoldPlan::Full);
        assert_eq!(apply(&mut holds, 1, 99, 10), HoldPlan::Widen(0));
        assert!(holds[0].covers(1, 99) && holds[0].covers(1, 12345));
        assert_eq!(apply(&mut holds, 1, 4242, 10), HoldPlan::Held);
    }

    #[test]
    fn slots_of_backends_that_are_gone_are_reused() {
        let mut holds = [Hold { dbid: 1, sub_id: 3, pid: -1 }; 4];
        assert_eq!(apply(&mut holds, 1, 3, 7), HoldPlan::Take(0));
        assert_eq!(apply(&mut holds, 1, 3, 7), HoldPlan::Held);
    }
}
