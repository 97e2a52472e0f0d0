//! The manager's half of keeping deleted row versions (the rule:
//! spock_core::retention; the apply workers' half: apply::retention).
//!
//! A deleted row version stays in the table until the server's removal horizon
//! passes the transaction that deleted it. The manager of a database holds that
//! horizon with a replication slot of its own, `spock_retain_<database oid>`: a
//! physical slot that reserves no WAL and has only an `xmin`. Every second it notes
//! the oldest running transaction as a candidate and moves the slot's `xmin` to the
//! newest candidate that every subscription of the database has passed (each
//! subscription's safe time, published by its apply worker), or, when that would
//! keep versions longer than `spock.deleted_version_retention`, to what the cap
//! allows, with a warning naming the subscriptions that are behind.
//!
//! When every removal made so far is older than what every subscription has
//! applied, nothing needs keeping: the keeper lets the horizon go (clears the
//! slot's effective xmin) and the next removing transaction holds it again before
//! it commits (workers::removals). A node whose writes remove no keys keeps no old
//! versions, and hot rows updated thousands of times a second stay as short as
//! without spock.
//!
//! The slot exists while retention is on and the database has a subscription; it
//! is dropped when either stops, and when the extension is dropped. The supervisor
//! drops the slot of a database that no longer exists.
//!
//! The slot's first `xmin` is written to disk at once; later moves are marked
//! dirty and written by the next checkpoint, so after a crash the one on disk is
//! older, which keeps more, never less.

use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;
use pgrx::prelude::*;
use spock_core::retention::{nothing_to_keep, removal_bound, Applied, Candidate, Horizon};

use super::shmem;
use crate::error::spi_failed;
use crate::gucs;

/// Slot names: this prefix and the database oid.
const SLOT_PREFIX: &str = "spock_retain_";

/// The slot name of database `db`.
pub(crate) fn slot_name(db: pg_sys::Oid) -> String {
    format!("{SLOT_PREFIX}{}", u32::from(db))
}

/// The horizon keeper of one database's manager.
pub struct Keeper {
    db: pg_sys::Oid,
    horizon: Horizon,
    /// This process holds the slot.
    acquired: bool,
    /// A cap warning was logged and the horizon has not moved normally since.
    cap_warned: bool,
    /// Why the slot could not be had was logged.
    unavailable_warned: bool,
    /// When the horizon in force was taken (0: none is, the horizon is let go).
    kept_since: i64,
    /// When the horizon was last let go: a removing transaction holds it again
    /// from the horizon of that moment (workers::removals).
    released_at: i64,
    /// When the slot was taken: removals from before are bounded by this time
    /// only (nothing counted them for this keeper).
    floor: i64,
}

impl Keeper {
    /// A keeper for database `db` (nothing acquired yet).
    pub fn new(db: pg_sys::Oid) -> Keeper {
        Keeper {
            db,
            horizon: Horizon::new(),
            acquired: false,
            cap_warned: false,
            unavailable_warned: false,
            kept_since: 0,
            released_at: 0,
            floor: 0,
        }
    }

    /// One step of the manager's loop, outside a transaction; `subs`: every
    /// subscription of the database, enabled or not (id, name, enabled).
    pub fn step(&mut self, subs: &[(u32, String, bool)]) {
        let Some(cap) = gucs::deleted_version_retention_us().filter(|_| !subs.is_empty()) else {
            self.stop();
            return;
        };
        if !self.acquired && !self.acquire() {
            return;
        }
        let now = now();
        // Before the horizon: a removal that commits from here on moves it.
        let generation = super::removals::generation();
        // SAFETY: reads the proc array under its lock.
        let xid = unsafe { pg_sys::GetOldestActiveTransactionId() };
        // Read after the horizon: what every transaction older than it removed.
        let removed_before = removal_bound(super::removals::removers(self.floor), now);
        let fresh = Candidate { xid: u32::from(xid), taken_at: now, removed_before };
        let ids: Vec<u32> = subs.iter().map(|(id, _, _)| *id).collect();
        let safe = shmem::safe_times(u32::from(self.db), &ids);
        let applied = Applied::of(safe.iter().copied());
        let advance = if nothing_to_keep(applied, fresh) && release(xid, generation) {
            self.horizon.release();
            self.kept_since = 0;
            self.released_at = now;
            spock_core::retention::Advance { install: None, capped: false }
        } else {
            if self.kept_since == 0 {
                // Let go at the last step, and something keeps it now (a removal
                // held it again, or a subscription fell behind): from then on.
                self.kept_since = self.released_at;
            }
            self.horizon.note(fresh);
            let advance = self.horizon.advance(applied, now, cap);
            if let Some(c) = advance.install {
                set_xmin(pg_sys::TransactionId::from(c.xid));
                self.kept_since = c.taken_at;
            }
            advance
        };
        // The subscriptions behind the oldest candidate waiting hold the horizon.
        let oldest = self.horizon.oldest_waiting().map_or(removed_before, |c| c.removed_before);
        let mut state = shmem::RetentionState {
            dbid: u32::from(self.db),
            kept_since: self.kept_since,
            checked_at: now,
            removals_until: removed_before,
            ..Default::default()
        };
        for (id, t) in ids.iter().zip(&safe) {
            if t.is_none_or(|t| t < oldest) && usize::from(state.n_held) < shmem::MAX_HELD_BY {
                state.held_by[usize::from(state.n_held)] = *id;
                state.n_held += 1;
            }
        }
        shmem::set_retention(u32::from(self.db), Some(state));
        if advance.capped && !self.cap_warned {
            let behind: Vec<&str> = subs
                .iter()
                .zip(&safe)
                .filter(|(_, t)| t.is_none_or(|t| t < now - cap))
                .map(|((_, name, _), _)| name.as_str())
                .collect();
            pgrx::warning!(
                "spock: deleted row versions older than spock.deleted_version_retention ({} s) are no longer kept: subscription(s) {} have not applied what their provider committed before then; a late change from such a provider may bring back a row deleted here",
                cap / 1_000_000,
                behind.join(", ")
            );
            self.cap_warned = true;
        } else if advance.install.is_some() && !advance.capped {
            self.cap_warned = false;
        }
    }

    /// Creates the slot if needed and takes it; false (logged once) when it
    /// cannot be had.
    fn acquire(&mut self) -> bool {
        let name = slot_name(self.db);
        let ready = BackgroundWorker::transaction(|| prepare_slot(&name));
        match ready {
            Ok(()) => {}
            Err(why) => {
                if !self.unavailable_warned {
                    pgrx::warning!("spock: deleted row versions are not kept: {why}");
                    self.unavailable_warned = true;
                }
                return false;
            }
        }
        let cname = std::ffi::CString::new(name).expect("no NUL in a slot name");
        // SAFETY: the slot exists and no process holds it (checked above; only this
        // database's manager takes it). Outside a transaction, as a walsender does.
        unsafe { pg_sys::ReplicationSlotAcquire(cname.as_ptr(), true, true) };
        self.acquired = true;
        self.unavailable_warned = false;
        self.horizon = Horizon::new();
        self.floor = now();
        self.kept_since = self.floor;
        // A new slot has no xmin: hold from the oldest running transaction on, and
        // write that to disk at once. Later moves reach the disk with the next
        // checkpoint; after a crash the older xmin on disk keeps more, but a slot
        // without one there would keep nothing until the manager runs again, and
        // VACUUM could remove what lagging subscriptions still need.
        // SAFETY: reads the proc array under its lock.
        let xid = unsafe { pg_sys::GetOldestActiveTransactionId() };
        if current_xmin().is_none() {
            set_xmin(xid);
            // SAFETY: writes the slot this process holds (MyReplicationSlot).
            unsafe { pg_sys::ReplicationSlotSave() };
        }
        true
    }

    /// Drops the slot if this process holds it (retention off, no subscription,
    /// extension dropped, manager ending).
    pub fn stop(&mut self) {
        if !self.acquired {
            return;
        }
        // SAFETY: MyReplicationSlot is ours (acquired above); dropping it releases
        // it and recomputes the horizon.
        unsafe { pg_sys::ReplicationSlotDropAcquired() };
        self.acquired = false;
        self.horizon = Horizon::new();
        shmem::set_retention(u32::from(self.db), None);
    }
}

/// Makes sure the slot exists and is free to take; why not when it cannot be.
fn prepare_slot(name: &str) -> Result<(), String> {
    let row = Spi::get_two_with_args::<String, i32>(
        "SELECT slot_type::text, active_pid FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
        &[name.into()],
    );
    match row {
        Ok((Some(kind), pid)) => {
            if kind != "physical" {
                return Err(format!("replication slot \"{name}\" exists and is not a physical slot"));
            }
            if let Some(pid) = pid {
                return Err(format!("replication slot \"{name}\" is in use by process {pid}"));
            }
            Ok(())
        }
        Ok((None, _)) | Err(pgrx::spi::SpiError::InvalidPosition) => {
            let free = Spi::get_one::<bool>(
                "SELECT count(*) < current_setting('max_replication_slots')::int8 FROM pg_catalog.pg_replication_slots",
            )
            .unwrap_or_else(|e| spi_failed("counting replication slots", e))
            .unwrap_or(false);
            if !free {
                return Err(format!(
                    "no replication slot free for \"{name}\" (max_replication_slots); raise it and reload"
                ));
            }
            Spi::run_with_args(
                "SELECT pg_catalog.pg_create_physical_replication_slot($1, false, false)",
                &[name.into()],
            )
            .unwrap_or_else(|e| spi_failed("creating the slot that keeps deleted row versions", e));
            Ok(())
        }
        Err(e) => spi_failed("reading pg_replication_slots", e),
    }
}

/// The held slot's xmin, if it has one.
fn current_xmin() -> Option<pg_sys::TransactionId> {
    // SAFETY: MyReplicationSlot is the slot this process acquired; its mutex guards
    // the field against the processes that read it.
    unsafe {
        let slot = pg_sys::MyReplicationSlot;
        pg_sys::SpinLockAcquire(&raw mut (*slot).mutex);
        let x = (*slot).data.xmin;
        pg_sys::SpinLockRelease(&raw mut (*slot).mutex);
        (u32::from(x) != 0).then_some(x)
    }
}

/// PostgreSQL's individual LWLocks by their number in `storage/lwlocklist.h` (the
/// same in PostgreSQL 15 to 18): `ProcArrayLock` and `ReplicationSlotControlLock`.
const PROC_ARRAY_LOCK: usize = 4;
const REPLICATION_SLOT_CONTROL_LOCK: usize = 37;

/// Gives slot `slot` an xmin while it has none (the horizon let go or never set)
/// and makes the server's horizon include it before returning: `xid` (None: the
/// slot's stored xmin, which must be set). Moving a horizon back is done as
/// PostgreSQL does for a new slot: under ReplicationSlotControlLock and
/// ProcArrayLock held exclusively, so that no backend recomputing the horizon
/// from an older reading publishes it after us (a recomputation holds the first
/// lock, shared, until it has published). `check` says whether the slot is still
/// the one meant (read under its mutex). Returns whether it set one.
///
/// SAFETY: `slot` points into the slot array (it may have been dropped since it
/// was found: `check` tells); not holding either lock.
pub(crate) unsafe fn hold_xmin(
    slot: *mut pg_sys::ReplicationSlot,
    xid: Option<pg_sys::TransactionId>,
    check: impl Fn(&pg_sys::ReplicationSlot) -> bool,
) -> bool {
    // SAFETY: the lock array is the server's; the slot's fields are read and
    // written under its mutex, with both locks held for the change and the
    // recomputation (which expects them when told they are held).
    unsafe {
        let lock = |i: usize| &raw mut (*pg_sys::MainLWLockArray.add(i)).lock;
        let unset = |s: *mut pg_sys::ReplicationSlot| {
            pg_sys::SpinLockAcquire(&raw mut (*s).mutex);
            let want = check(&*s) && (*s).effective_xmin == pg_sys::InvalidTransactionId;
            let xmin = xid.unwrap_or((*s).data.xmin);
            pg_sys::SpinLockRelease(&raw mut (*s).mutex);
            (want && xmin != pg_sys::InvalidTransactionId).then_some(xmin)
        };
        if unset(slot).is_none() {
            return false;
        }
        pg_sys::LWLockAcquire(lock(REPLICATION_SLOT_CONTROL_LOCK), pg_sys::LWLockMode::LW_EXCLUSIVE);
        pg_sys::LWLockAcquire(lock(PROC_ARRAY_LOCK), pg_sys::LWLockMode::LW_EXCLUSIVE);
        let set = unset(slot);
        if let Some(xmin) = set {
            pg_sys::SpinLockAcquire(&raw mut (*slot).mutex);
            (*slot).effective_xmin = xmin;
            (*slot).data.xmin = xmin;
            pg_sys::SpinLockRelease(&raw mut (*slot).mutex);
            pg_sys::ReplicationSlotsComputeRequiredXmin(true);
        }
        pg_sys::LWLockRelease(lock(PROC_ARRAY_LOCK));
        pg_sys::LWLockRelease(lock(REPLICATION_SLOT_CONTROL_LOCK));
        set.is_some()
    }
}

/// Moves the held slot's xmin to `xid` and recomputes the server's horizon.
fn set_xmin(xid: pg_sys::TransactionId) {
    // SAFETY: MyReplicationSlot is the slot this process acquired. With no xmin the
    // horizon moves back, as PostgreSQL moves it for a new slot (hold_xmin); with
    // one it moves on, under the slot's mutex as the walsender moves it for a
    // standby's feedback. Marked dirty: the next checkpoint saves it.
    unsafe {
        let slot = pg_sys::MyReplicationSlot;
        if !hold_xmin(slot, Some(xid), |_| true) {
            pg_sys::SpinLockAcquire(&raw mut (*slot).mutex);
            (*slot).effective_xmin = xid;
            (*slot).data.xmin = xid;
            pg_sys::SpinLockRelease(&raw mut (*slot).mutex);
            pg_sys::ReplicationSlotsComputeRequiredXmin(false);
        }
        pg_sys::ReplicationSlotMarkDirty();
    }
}

/// Lets the horizon go (spock_core::retention::nothing_to_keep): clears the held
/// slot's effective xmin and keeps `xid`, the oldest transaction running now, as
/// its stored xmin, unless a removing transaction reached its pre-commit since
/// `generation` was read (workers::removals::quiet_since, read under the slot's
/// mutex, where such a transaction holds the horizon again). The stored xmin is
/// what a restart after a crash holds from: no newer than any removal since.
fn release(xid: pg_sys::TransactionId, generation: u64) -> bool {
    // SAFETY: MyReplicationSlot is the slot this process acquired; its fields are
    // written under its mutex (only atomics are read while it is held).
    unsafe {
        let slot = pg_sys::MyReplicationSlot;
        pg_sys::SpinLockAcquire(&raw mut (*slot).mutex);
        let quiet = super::removals::quiet_since(generation);
        if quiet {
            (*slot).effective_xmin = pg_sys::InvalidTransactionId;
            (*slot).data.xmin = xid;
        }
        pg_sys::SpinLockRelease(&raw mut (*slot).mutex);
        if quiet {
            pg_sys::ReplicationSlotMarkDirty();
            pg_sys::ReplicationSlotsComputeRequiredXmin(false);
        }
        quiet
    }
}

/// Drops the slots of databases that no longer exist (`existing`: the oids of the
/// databases there are). Called by the supervisor.
pub fn drop_orphans(existing: &[pg_sys::Oid]) {
    // SAFETY: reads the setting.
    let max = unsafe { pg_sys::max_replication_slots };
    for i in 0..max {
        let mut name = pg_sys::NameData { data: [0; 64] };
        // SAFETY: `i` is below max_replication_slots; the name is copied out under
        // the slots' lock.
        if !unsafe { pg_sys::ReplicationSlotName(i, &mut name) } {
            continue;
        }
        // SAFETY: NameData is NUL-terminated.
        let n = unsafe { std::ffi::CStr::from_ptr(name.data.as_ptr()) }.to_string_lossy().into_owned();
        let Some(oid) = n.strip_prefix(SLOT_PREFIX).and_then(|s| s.parse::<u32>().ok()) else { continue };
        if existing.iter().any(|d| u32::from(*d) == oid) {
            continue;
        }
        pgrx::log!("spock supervisor: dropping replication slot \"{n}\" of a database that no longer exists");
        // SAFETY: a slot of ours whose manager is gone with its database, so no
        // process holds it.
        unsafe { pg_sys::ReplicationSlotDrop(name.data.as_ptr(), true) };
    }
}

fn now() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}
