//! The payloads of the logical decoding messages with prefix `Spock` that the
//! provider writes into its WAL (`pg_logical_emit_message`) and that travel to
//! subscribers inside an `M` message.
//!
//! Spock writes a C struct as it lies in memory, so in the writer's native byte
//! order: a 4-byte message type, then for a sync event the origin node id (4 bytes)
//! and a 64-byte name that Spock leaves zeroed (72 bytes in all). Types 1 and 2
//! (repair mode on/off) are 4 bytes and stay on the provider: its output plugin
//! acts on them and forwards only sync events, which subscribers apply by
//! advancing their origin to the message's LSN (they read only the type).
//!
//! spock-rs 0.1.0 wrote sync events big-endian with the node name filled in; those
//! can still be in a provider's WAL after an upgrade, so [`WalMessage::parse`] reads
//! both layouts (they cannot be confused: type 3 reads as 0x03000000 in the other
//! order, which is no type) and [`SyncEvent::encode`] always writes Spock's.

/// The prefix of Spock's logical decoding messages.
pub const PREFIX: &str = "Spock";

/// Size of a sync event's payload.
pub const SYNC_EVENT_SIZE: usize = 72;

/// Message types of Spock's WAL messages.
const REPAIR_MODE_ON: u32 = 1;
const REPAIR_MODE_OFF: u32 = 2;
const SYNC_EVENT: u32 = 3;

/// A sync event (`spock.sync_event()`): a marker subscribers pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncEvent {
    /// The node that wrote it.
    pub origin: u32,
}

impl SyncEvent {
    /// The payload as Spock writes it on this machine: native byte order, the name
    /// zeroed.
    pub fn encode(&self) -> [u8; SYNC_EVENT_SIZE] {
        let mut out = [0u8; SYNC_EVENT_SIZE];
        out[..4].copy_from_slice(&SYNC_EVENT.to_ne_bytes());
        out[4..8].copy_from_slice(&self.origin.to_ne_bytes());
        out
    }
}

/// The payload of `spock.repair_mode(on)`: the message type alone, in native byte
/// order as Spock writes it.
pub fn repair_mode_payload(on: bool) -> [u8; 4] {
    (if on { REPAIR_MODE_ON } else { REPAIR_MODE_OFF }).to_ne_bytes()
}

/// What a `Spock` WAL message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalMessage {
    /// A sync event, in either layout.
    SyncEvent(SyncEvent),
    /// `spock.repair_mode(true/false)`.
    RepairMode(bool),
    /// Too short, or a type this version does not know (the type as read in
    /// native order, if there were 4 bytes).
    Unknown(Option<u32>),
}

impl WalMessage {
    /// Reads a payload: Spock's native-order layout first, then spock-rs 0.1.0's
    /// big-endian sync event.
    pub fn parse(payload: &[u8]) -> WalMessage {
        let Some(head) = payload.get(..4) else { return WalMessage::Unknown(None) };
        let head: [u8; 4] = head.try_into().expect("4 bytes");
        let word = |at: usize, big: bool| -> Option<u32> {
            let b: [u8; 4] = payload.get(at..at + 4)?.try_into().ok()?;
            Some(if big { u32::from_be_bytes(b) } else { u32::from_ne_bytes(b) })
        };
        match u32::from_ne_bytes(head) {
            SYNC_EVENT => match word(4, false) {
                Some(origin) => WalMessage::SyncEvent(SyncEvent { origin }),
                None => WalMessage::Unknown(Some(SYNC_EVENT)),
            },
            REPAIR_MODE_ON if payload.len() == 4 => WalMessage::RepairMode(true),
            REPAIR_MODE_OFF if payload.len() == 4 => WalMessage::RepairMode(false),
            native => match (u32::from_be_bytes(head), word(4, true)) {
                (SYNC_EVENT, Some(origin)) => WalMessage::SyncEvent(SyncEvent { origin }),
                _ => WalMessage::Unknown(Some(native)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// Spock 6.0.0 on x86-64, node id 27901 (0x6cfd): what `spock.sync_event()`
    /// writes (type 3 and the id little-endian, then 64 zero bytes).
    #[cfg(target_endian = "little")]
    const SPOCK_GOLDEN: &str = "03000000fd6c0000";

    #[test]
    fn repair_mode_payloads_read_back() {
        assert_eq!(WalMessage::parse(&repair_mode_payload(true)), WalMessage::RepairMode(true));
        assert_eq!(WalMessage::parse(&repair_mode_payload(false)), WalMessage::RepairMode(false));
        #[cfg(target_endian = "little")]
        assert_eq!(repair_mode_payload(true), [1, 0, 0, 0]);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn encodes_spocks_bytes() {
        let mut want = hex(SPOCK_GOLDEN);
        want.resize(SYNC_EVENT_SIZE, 0);
        assert_eq!(SyncEvent { origin: 27901 }.encode().to_vec(), want);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn reads_spocks_layout_and_the_old_one() {
        let mut spock = hex(SPOCK_GOLDEN);
        spock.resize(SYNC_EVENT_SIZE, 0);
        // spock-rs 0.1.0: big-endian, node name "n1" then zeroes.
        let mut old = hex("0000000300006cfd6e31");
        old.resize(SYNC_EVENT_SIZE, 0);
        for payload in [spock, old] {
            assert_eq!(WalMessage::parse(&payload), WalMessage::SyncEvent(SyncEvent { origin: 27901 }));
        }
    }

    #[test]
    fn round_trips_on_any_machine() {
        for origin in [0, 1, 27901, u32::MAX] {
            let e = SyncEvent { origin };
            assert_eq!(WalMessage::parse(&e.encode()), WalMessage::SyncEvent(e));
        }
    }

    #[test]
    fn repair_mode_and_unknown_payloads() {
        assert_eq!(WalMessage::parse(&1u32.to_ne_bytes()), WalMessage::RepairMode(true));
        assert_eq!(WalMessage::parse(&2u32.to_ne_bytes()), WalMessage::RepairMode(false));
        assert_eq!(WalMessage::parse(&[]), WalMessage::Unknown(None));
        assert_eq!(WalMessage::parse(&[3, 0]), WalMessage::Unknown(None));
        assert_eq!(WalMessage::parse(&3u32.to_ne_bytes()), WalMessage::Unknown(Some(3)));
        assert_eq!(WalMessage::parse(&9u32.to_ne_bytes()), WalMessage::Unknown(Some(9)));
        // Repair mode carries nothing else.
        let mut long = 1u32.to_ne_bytes().to_vec();
        long.push(0);
        assert_eq!(WalMessage::parse(&long), WalMessage::Unknown(Some(1)));
    }
}
