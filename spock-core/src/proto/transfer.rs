//! How a column's values travel in the tuple format: Spock's
//! `decide_datum_transfer`, as a pure function of the facts `pg_type` gives.
//!
//! * `i` (internal): the datum's own bytes, only for built-in base types that are
//!   not arrays or cstrings, and only between servers that agreed on it.
//! * `b` (binary): the type's send function, for types with send and receive
//!   functions (built-in ones, or user-defined non-composite, non-array ones).
//!   Built-in by-value types whose send function writes the datum's low bytes
//!   big-endian are marked so the caller can write them without the call.
//! * `t` (text): the type's output function, always possible.

/// The first OID of user-defined objects (`FirstNormalObjectId`).
pub const FIRST_NORMAL_OBJECT_ID: u32 = 16384;

/// What `pg_type` says about a column's type: the fields of its row that decide.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct TypeFacts {
    /// The type's OID.
    pub oid: u32,
    /// `typtype` (`b` base, `c` composite, `d` domain, `e` enum, `p` pseudo, `r`
    /// range, `m` multirange).
    pub typtype: u8,
    /// `typelem`, 0 for none (set for an array, or a fixed-length type with
    /// subscripts).
    pub typelem: u32,
    /// `typlen` (-1 varlena, -2 cstring).
    pub typlen: i16,
    /// `typbyval`.
    pub typbyval: bool,
    /// `typsend`, 0 for none.
    pub typsend: u32,
    /// `typreceive`, 0 for none.
    pub typreceive: u32,
    /// `typoutput`.
    pub typoutput: u32,
}

/// The wire format chosen for a column.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TransferKind {
    /// `i`: the datum's bytes.
    Internal {
        /// By value.
        byval: bool,
        /// `typlen`.
        len: i16,
    },
    /// `b`, written by the caller as the datum's low `len` bytes, big-endian (what
    /// the built-in send function would write).
    BinaryBigEndian(u8),
    /// `b` through the type's send function.
    Binary {
        /// The send function's OID.
        send: u32,
    },
    /// `t` through the type's output function.
    Text {
        /// The output function's OID.
        output: u32,
    },
}

/// Spock's `decide_datum_transfer`: chooses the transfer of a column of type `t`,
/// with the function a `b` or `t` column calls; `allow_internal` / `allow_binary`
/// are what the subscriber asked for and the servers have in common.
pub fn decide_transfer(t: &TypeFacts, allow_internal: bool, allow_binary: bool) -> TransferKind {
    let builtin = t.oid < FIRST_NORMAL_OBJECT_ID;
    let has_element = t.typelem != 0;
    if allow_internal && t.typtype == b'b' && builtin && !has_element && t.typlen != -2 {
        return TransferKind::Internal { byval: t.typbyval, len: t.typlen };
    }
    let has_send_receive = t.typsend != 0 && t.typreceive != 0;
    if allow_binary && has_send_receive && (builtin || t.typtype != b'c') && (builtin || !has_element) {
        return match big_endian_send_len(t.oid) {
            Some(len) => TransferKind::BinaryBigEndian(len),
            None => TransferKind::Binary { send: t.typsend },
        };
    }
    TransferKind::Text { output: t.typoutput }
}

/// For built-in types whose send function writes the by-value datum's low `len`
/// bytes in network order (bool, int2, int4, int8, oid, float4, float8, date, time,
/// timestamp, timestamptz), that length.
pub fn big_endian_send_len(oid: u32) -> Option<u8> {
    match oid {
        16 => Some(1),                            // bool
        21 => Some(2),                            // int2
        23 | 26 | 700 | 1082 => Some(4),          // int4, oid, float4, date
        20 | 701 | 1083 | 1114 | 1184 => Some(8), // int8, float8, time, timestamp, timestamptz
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND: u32 = 2407;
    const OUTPUT: u32 = 43;

    fn base(oid: u32, typlen: i16, typbyval: bool) -> TypeFacts {
        TypeFacts {
            oid,
            typtype: b'b',
            typelem: 0,
            typlen,
            typbyval,
            typsend: SEND,
            typreceive: 2406,
            typoutput: OUTPUT,
        }
    }

    const BINARY: TransferKind = TransferKind::Binary { send: SEND };
    const TEXT: TransferKind = TransferKind::Text { output: OUTPUT };

    #[test]
    fn built_in_base_types_go_internal_when_allowed() {
        assert_eq!(decide_transfer(&base(23, 4, true), true, true), TransferKind::Internal { byval: true, len: 4 });
        assert_eq!(decide_transfer(&base(25, -1, false), true, true), TransferKind::Internal { byval: false, len: -1 });
        // cstring never travels as internal bytes
        assert_eq!(decide_transfer(&base(2275, -2, false), true, false), TEXT);
        // arrays of built-ins: binary, not internal
        let int4_array = TypeFacts { typelem: 23, ..base(1007, -1, false) };
        assert_eq!(decide_transfer(&int4_array, true, true), BINARY);
    }

    #[test]
    fn binary_for_types_with_send_and_receive() {
        assert_eq!(decide_transfer(&base(23, 4, true), false, true), TransferKind::BinaryBigEndian(4));
        assert_eq!(decide_transfer(&base(1184, 8, true), false, true), TransferKind::BinaryBigEndian(8));
        assert_eq!(decide_transfer(&base(16, 1, true), false, true), TransferKind::BinaryBigEndian(1));
        assert_eq!(decide_transfer(&base(1700, -1, false), false, true), BINARY); // numeric
        let no_send = TypeFacts { typsend: 0, ..base(25, -1, false) };
        assert_eq!(decide_transfer(&no_send, false, true), TEXT);
        let no_receive = TypeFacts { typreceive: 0, ..base(25, -1, false) };
        assert_eq!(decide_transfer(&no_receive, false, true), TEXT);
    }

    #[test]
    fn user_types_binary_only_when_not_composite_or_array() {
        let user_enum = TypeFacts { oid: 20000, typtype: b'e', ..base(0, 4, true) };
        assert_eq!(decide_transfer(&user_enum, true, true), BINARY);
        let user_composite = TypeFacts { typtype: b'c', typlen: -1, typbyval: false, ..user_enum };
        assert_eq!(decide_transfer(&user_composite, true, true), TEXT);
        let user_array = TypeFacts { typtype: b'b', typelem: 20001, typlen: -1, typbyval: false, ..user_enum };
        assert_eq!(decide_transfer(&user_array, true, true), TEXT);
        // a user base type is never internal: its layout may differ between servers
        let user_base = TypeFacts { typtype: b'b', ..user_enum };
        assert_eq!(decide_transfer(&user_base, true, false), TEXT);
    }

    #[test]
    fn text_when_nothing_else_is_allowed() {
        assert_eq!(decide_transfer(&base(23, 4, true), false, false), TEXT);
    }
}
