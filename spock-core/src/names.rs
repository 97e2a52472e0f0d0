//! Names and ids that Spock derives from hashes: PostgreSQL's `hash_any`, node,
//! interface and replication-set ids, and the slot / replication-origin names.
//!
//! Everything here must give the same value as pgEdge Spock running on the same
//! (little-endian) hardware, because peers compare these ids and names.

/// Maximum length of a PostgreSQL identifier in bytes (`NAMEDATALEN - 1`).
pub const MAX_IDENTIFIER_LEN: usize = 63;

#[inline]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

#[inline]
fn final_mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

/// Little-endian word made of up to four bytes (missing high bytes are zero).
#[inline]
fn le_word(bytes: &[u8]) -> u32 {
    bytes.iter().enumerate().fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (8 * i)))
}

/// PostgreSQL's `hash_any()` / `hash_bytes()` (Bob Jenkins' lookup3 hash) as computed
/// on a little-endian server, the hash Spock uses for node ids and name shortening.
///
/// Matches `SELECT hashtext('...')` for text in a deterministic collation.
pub fn hash_any(key: &[u8]) -> u32 {
    // PostgreSQL passes the length as a C int; keys here are names, far below 2^31.
    let len = key.len() as u32;
    let init = 0x9e37_79b9u32.wrapping_add(len).wrapping_add(3_923_095);
    let (mut a, mut b, mut c) = (init, init, init);

    let mut chunks = key.chunks_exact(12);
    for chunk in &mut chunks {
        a = a.wrapping_add(le_word(&chunk[0..4]));
        b = b.wrapping_add(le_word(&chunk[4..8]));
        c = c.wrapping_add(le_word(&chunk[8..12]));
        mix(&mut a, &mut b, &mut c);
    }
    let tail = chunks.remainder();
    // The last 0..=11 bytes: the first eight fill a and b as little-endian words; the
    // lowest byte of c is reserved for the length, so bytes 8..11 start at bit 8.
    a = a.wrapping_add(le_word(&tail[..tail.len().min(4)]));
    if tail.len() > 4 {
        b = b.wrapping_add(le_word(&tail[4..tail.len().min(8)]));
    }
    if tail.len() > 8 {
        c = c.wrapping_add(le_word(&tail[8..]) << 8);
    }
    final_mix(&mut a, &mut b, &mut c);
    c
}

/// Spock's node id for a node name: the low 16 bits of `hash_any(name)`.
///
/// The id doubles as the replication origin id of changes that came from that node,
/// so two nodes whose names hash to the same id cannot be in one cluster.
pub fn node_id_for_name(node_name: &str) -> u16 {
    (hash_any(node_name.as_bytes()) & 0xffff) as u16
}

/// Id of a row that belongs to a node and has a name (an interface or a replication
/// set): `hash_any` of the two 32-bit words `(node_id, hash_any(name))` in host order.
pub fn node_scoped_id(node_id: u32, name: &str) -> u32 {
    let mut input = [0u8; 8];
    input[..4].copy_from_slice(&node_id.to_le_bytes());
    input[4..].copy_from_slice(&hash_any(name.as_bytes()).to_le_bytes());
    hash_any(&input)
}

/// Spock's `shorten_hash(str, maxlen)`: a string longer than `maxlen` bytes becomes
/// its first `maxlen - 8` bytes followed by the first 7 hex digits of its hash (Spock
/// formats 8 digits into a buffer one byte too short, so the result has `maxlen - 1`
/// bytes). Shorter strings are returned unchanged.
///
/// # Panics
/// Never for `maxlen >= 8`; smaller values are clamped to 8 like Spock's assertion
/// requires.
pub fn shorten_hash(s: &[u8], maxlen: usize) -> Vec<u8> {
    let maxlen = maxlen.max(8);
    if s.len() <= maxlen {
        return s.to_vec();
    }
    let mut out = Vec::with_capacity(maxlen);
    out.extend_from_slice(&s[..maxlen - 8]);
    let hex = format!("{:08x}", hash_any(s));
    out.extend_from_slice(&hex.as_bytes()[..7]);
    out
}

/// Name of the replication slot on the provider, which is also the name of the
/// replication origin on the subscriber: `spk_<db>_<provider>_<sub>`, each part
/// shortened with [`shorten_hash`] to 16 bytes, every byte outside `[a-z0-9_]`
/// replaced by `_`.
pub fn slot_name(subscriber_db: &str, provider_node: &str, subscription: &str) -> String {
    let mut raw = Vec::with_capacity(MAX_IDENTIFIER_LEN);
    raw.extend_from_slice(b"spk_");
    raw.extend_from_slice(&shorten_hash(subscriber_db.as_bytes(), 16));
    raw.push(b'_');
    raw.extend_from_slice(&shorten_hash(provider_node.as_bytes(), 16));
    raw.push(b'_');
    raw.extend_from_slice(&shorten_hash(subscription.as_bytes(), 16));
    raw.truncate(MAX_IDENTIFIER_LEN);
    raw.iter()
        .map(|&b| if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' { b as char } else { '_' })
        .collect()
}

/// Name of the replication origin under which a subscriber applies the transactions
/// that the provider of `slot` forwards from node `origin_node` (cascading with
/// `forward_origins`): `<slot>_<node id as 4 hex digits>`. The provider's own
/// transactions use the origin named `slot` itself (Spock's name).
pub fn forwarded_origin_name(slot: &str, origin_node: u16) -> String {
    format!("{slot}_{origin_node:04x}")
}

/// The node an origin of subscription slot `slot` stands for: `Some(None)` for the
/// origin named `slot` (the provider itself), `Some(Some(id))` for a forwarded
/// origin, `None` when `origin` does not belong to `slot`.
pub fn origin_node_of(slot: &str, origin: &str) -> Option<Option<u16>> {
    if origin == slot {
        return Some(None);
    }
    let rest = origin.strip_prefix(slot)?.strip_prefix('_')?;
    if rest.len() != 4 {
        return None;
    }
    u16::from_str_radix(rest, 16).ok().map(Some)
}

/// Name of the temporary slot a table sync uses: `<slot>_<%08x of hash_any(table)>`,
/// where `qualified_table` is the quoted, schema-qualified table name.
/// The slot part is cut so that the name fits in 63 bytes.
pub fn table_sync_slot_name(slot: &str, qualified_table: &str) -> String {
    let mut base = slot.to_string();
    base.truncate(MAX_IDENTIFIER_LEN - 9);
    format!("{base}_{:08x}", hash_any(qualified_table.as_bytes()))
}

#[cfg(test)]
mod table_sync_slot_tests {
    use super::*;

    #[test]
    fn table_sync_slot_names_fit_and_differ() {
        let slot = slot_name("a_database_with_a_long_name", "provider_node_name", "subscription_name");
        let a = table_sync_slot_name(&slot, "public.t1");
        let b = table_sync_slot_name(&slot, "public.t2");
        assert_ne!(a, b);
        assert!(a.len() <= MAX_IDENTIFIER_LEN && a.starts_with(&slot[..20]));
        assert_eq!(origin_node_of(&slot, &a), None, "never taken for a forwarded origin");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values computed by PostgreSQL 18.6 on x86_64: `SELECT hashtext(s)`
    /// (`hash_any` over the bytes of `s`), shown as signed int4 by PostgreSQL.
    const PG_HASHTEXT: &[(&str, i32)] = &[
        ("", -1477818771),
        ("a", 1075015857),
        ("ab", 1718550461),
        ("abc", -785388649),
        ("abcd", -393934804),
        ("abcde", -445659580),
        ("abcdef", -1747460160),
        ("abcdefg", 501636814),
        ("abcdefgh", -1960928205),
        ("abcdefghi", -92131489),
        ("abcdefghij", 1948051852),
        ("abcdefghijk", -1483803693),
        ("abcdefghijkl", -1586087212),
        ("abcdefghijklm", 405849808),
        ("n1", 673694252),
        ("n2", 560818415),
        ("n3", 193995617),
        ("node1", 1148549230),
        ("provider", -1123068372),
        ("subscriber", -1353812061),
        ("postgres", -596764388),
        ("a_very_long_database_name", -1452663837),
        ("héllo wörld ünïcode", -815073686),
        ("0123456789012345678901234567890123456789", 1295095736),
    ];

    #[test]
    fn hash_any_matches_postgres_values() {
        for (s, expected) in PG_HASHTEXT {
            assert_eq!(hash_any(s.as_bytes()) as i32, *expected, "hash_any({s:?})");
        }
    }

    #[test]
    fn shorten_hash_keeps_short_strings() {
        assert_eq!(shorten_hash(b"postgres", 16), b"postgres".to_vec());
        assert_eq!(shorten_hash(b"exactly16bytes__", 16), b"exactly16bytes__".to_vec());
    }

    #[test]
    fn shorten_hash_long_strings_have_prefix_and_seven_hex_digits() {
        let s = b"a_very_long_database_name";
        let out = shorten_hash(s, 16);
        assert_eq!(out.len(), 15);
        assert_eq!(&out[..8], b"a_very_l");
        let hex = format!("{:08x}", hash_any(s));
        assert_eq!(&out[8..], &hex.as_bytes()[..7]);
    }

    #[test]
    fn slot_name_replaces_invalid_characters() {
        assert_eq!(slot_name("postgres", "n1", "sub_n1_n2"), "spk_postgres_n1_sub_n1_n2");
        assert_eq!(slot_name("My-DB", "Node.1", "s"), "spk__y_____ode_1_s");
    }

    #[test]
    fn slot_name_fits_in_an_identifier() {
        let long = "x".repeat(200);
        let name = slot_name(&long, &long, &long);
        assert!(name.len() <= MAX_IDENTIFIER_LEN);
        assert_eq!(name.len(), 4 + 15 + 1 + 15 + 1 + 15);
    }

    #[test]
    fn origin_names_round_trip() {
        let slot = slot_name("postgres", "n1", "sub_n1_n2");
        assert_eq!(origin_node_of(&slot, &slot), Some(None));
        let fwd = forwarded_origin_name(&slot, 0xbeef);
        assert_eq!(fwd, format!("{slot}_beef"));
        assert!(fwd.len() <= MAX_IDENTIFIER_LEN);
        assert_eq!(origin_node_of(&slot, &fwd), Some(Some(0xbeef)));
        assert_eq!(origin_node_of(&slot, "spk_other_n1_x"), None);
        assert_eq!(origin_node_of(&slot, &format!("{slot}_zz")), None);
        let long = slot_name(&"d".repeat(100), &"p".repeat(100), &"s".repeat(100));
        assert!(forwarded_origin_name(&long, 1).len() <= MAX_IDENTIFIER_LEN);
    }

    #[test]
    fn node_id_is_low_16_bits() {
        let h = hash_any(b"n1");
        assert_eq!(u32::from(node_id_for_name("n1")), h & 0xffff);
    }
}
