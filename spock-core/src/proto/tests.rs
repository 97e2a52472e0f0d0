use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

use super::message::*;
use super::startup::*;
use super::*;
use crate::origin::ForwardOrigins;

fn enc(m: &Message, v: ProtoVersion, insert_lsn: Lsn) -> Bytes {
    let mut out = BytesMut::new();
    encode(m, v, insert_lsn, &mut out).unwrap();
    out.freeze()
}

fn text(s: &str) -> Datum {
    Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
}

/// Hand-built expected bytes, written from Spock's layouts (spock_proto_native.c),
/// independent of the encoder.
struct Golden(BytesMut);
impl Golden {
    fn new() -> Golden {
        Golden(BytesMut::new())
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.put_u8(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.put_u16(v);
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.put_u32(v);
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.put_u64(v);
        self
    }
    fn raw(mut self, v: &[u8]) -> Self {
        self.0.put_slice(v);
        self
    }
    fn done(self) -> Bytes {
        self.0.freeze()
    }
}

const INS_LSN: Lsn = 0x0000_0001_0000_2000;

#[test]
fn begin_golden_v4_and_v5() {
    let m = Message::Begin(Begin { flags: 0, final_lsn: 0x1_0000_1000, commit_time: 0x0102_0304_0506_0708, xid: 777 });
    let body = |g: Golden| g.u8(b'B').u8(0).u64(0x1_0000_1000).u64(0x0102_0304_0506_0708).u32(777);
    assert_eq!(enc(&m, ProtoVersion::V4, INS_LSN), body(Golden::new()).done());
    assert_eq!(enc(&m, ProtoVersion::V5, INS_LSN), body(Golden::new().u64(INS_LSN)).done());
}

#[test]
fn commit_carries_insert_lsn_at_the_end_in_v4_and_in_front_in_v5() {
    let m = Message::Commit(Commit { flags: 0, commit_lsn: 10, end_lsn: 20, commit_time: 30 });
    let v4 = enc(&m, ProtoVersion::V4, INS_LSN);
    assert_eq!(v4, Golden::new().u8(b'C').u8(0).u64(10).u64(20).u64(30).u64(INS_LSN).done());
    let v5 = enc(&m, ProtoVersion::V5, INS_LSN);
    assert_eq!(v5, Golden::new().u64(INS_LSN).u8(b'C').u8(0).u64(10).u64(20).u64(30).done());
    for (bytes, v) in [(v4, ProtoVersion::V4), (v5, ProtoVersion::V5)] {
        let d = decode(&bytes, v).unwrap();
        assert_eq!(d.remote_insert_lsn, Some(INS_LSN));
        assert_eq!(d.message, m);
    }
}

#[test]
fn v4_messages_other_than_commit_carry_no_insert_lsn() {
    let m = Message::CommitOrder(CommitOrder { flags: 0, last_commit_ts: 5 });
    let d = decode(&enc(&m, ProtoVersion::V4, INS_LSN), ProtoVersion::V4).unwrap();
    assert_eq!(d.remote_insert_lsn, None);
}

#[test]
fn origin_name_only_in_v5() {
    let m = Message::Origin(Origin { origin_lsn: 99, origin_id: 0xbeef, origin_name: Some("n1".into()) });
    assert_eq!(
        enc(&m, ProtoVersion::V5, INS_LSN),
        Golden::new().u64(INS_LSN).u8(b'O').u8(ORIGIN_FLAG_HAS_NAME).u64(99).u16(0xbeef).raw(b"n1\0").done()
    );
    let v4 = enc(&m, ProtoVersion::V4, INS_LSN);
    assert_eq!(v4, Golden::new().u8(b'O').u8(0).u64(99).u16(0xbeef).done());
    let back = decode(&v4, ProtoVersion::V4).unwrap().message;
    assert_eq!(back, Message::Origin(Origin { origin_lsn: 99, origin_id: 0xbeef, origin_name: None }));
}

fn sample_relation() -> Relation {
    Relation {
        flags: 0,
        relid: 16384,
        nspname: "public".into(),
        relname: "pgbench_accounts".into(),
        columns: vec![
            RelColumn { flags: COLUMN_FLAG_REPLICA_IDENTITY, name: "aid".into(), type_oid: 23, typmod: -1 },
            RelColumn { flags: 0, name: "filler".into(), type_oid: 1042, typmod: 88 },
        ],
    }
}

#[test]
fn relation_golden() {
    let m = Message::Relation(sample_relation());
    let expected = Golden::new()
        .u8(b'R')
        .u8(0)
        .u32(16384)
        .u8(7)
        .raw(b"public\0")
        .u8(17)
        .raw(b"pgbench_accounts\0")
        .u8(b'A')
        .u16(2)
        .u8(b'C')
        .u8(1)
        .u8(b'N')
        .u16(4)
        .raw(b"aid\0")
        .u32(23)
        .u32(u32::MAX)
        .u8(b'C')
        .u8(0)
        .u8(b'N')
        .u16(7)
        .raw(b"filler\0")
        .u32(1042)
        .u32(88)
        .done();
    assert_eq!(enc(&m, ProtoVersion::V4, 0), expected);
    let back = decode(&expected, ProtoVersion::V4).unwrap().message;
    assert_eq!(back, m);
    let Message::Relation(r) = back else { unreachable!() };
    assert!(r.columns[0].is_identity() && !r.columns[1].is_identity());
}

#[test]
fn tuple_golden_with_every_column_kind() {
    let m = Message::Insert(Insert {
        flags: 0,
        relid: 5,
        new: Tuple::new(vec![
            Datum::Null,
            Datum::UnchangedToast,
            Datum::Internal(Bytes::from_static(&[1, 0, 0, 0])),
            Datum::Binary(Bytes::from_static(&[0, 0, 0, 9])),
            text("héllo"),
        ]),
    });
    let expected = Golden::new()
        .u64(INS_LSN)
        .u8(b'I')
        .u8(0)
        .u32(5)
        .u8(b'N')
        .u8(b'T')
        .u16(5)
        .u8(b'n')
        .u8(b'u')
        .u8(b'i')
        .u32(4)
        .raw(&[1, 0, 0, 0])
        .u8(b'b')
        .u32(4)
        .raw(&[0, 0, 0, 9])
        .u8(b't')
        .u32(7)
        .raw("héllo\0".as_bytes())
        .done();
    assert_eq!(enc(&m, ProtoVersion::V5, INS_LSN), expected);
    assert_eq!(decode(&expected, ProtoVersion::V5).unwrap().message, m);
}

#[test]
fn update_with_and_without_old_key_and_delete() {
    let new = Tuple::new(vec![text("1"), text("b")]);
    let key = Tuple::new(vec![text("1"), Datum::Null]);
    for old in [
        None,
        Some(OldTuple { kind: OldTupleKind::Key, tuple: key.clone() }),
        Some(OldTuple { kind: OldTupleKind::Full, tuple: new.clone() }),
    ] {
        let m = Message::Update(Update { flags: 0, relid: 9, old: old.clone(), new: new.clone() });
        for v in [ProtoVersion::V4, ProtoVersion::V5] {
            assert_eq!(decode(&enc(&m, v, 1), v).unwrap().message, m);
        }
    }
    let d = Message::Delete(Delete { flags: 0, relid: 9, old: OldTuple { kind: OldTupleKind::Key, tuple: key } });
    let bytes = enc(&d, ProtoVersion::V4, 0);
    assert_eq!(&bytes[..7], &[b'D', 0, 0, 0, 0, 9, b'K']);
    assert_eq!(decode(&bytes, ProtoVersion::V4).unwrap().message, d);
}

#[test]
fn truncate_golden() {
    let m = Message::Truncate(Truncate { cascade: true, restart_seqs: true, relids: vec![1, 2] });
    let expected = Golden::new().u8(b'T').u32(2).u8(3).u32(1).u32(2).done();
    assert_eq!(enc(&m, ProtoVersion::V4, 0), expected);
    assert_eq!(decode(&expected, ProtoVersion::V4).unwrap().message, m);
}

#[test]
fn logical_message_golden() {
    let m = Message::LogicalMessage(LogicalMessage {
        xid: 0,
        lsn: 77,
        transactional: false,
        prefix: "Spock".into(),
        content: Bytes::from_static(b"\x00\x00\x00\x03abc"),
    });
    let expected =
        Golden::new().u8(b'M').u32(0).u64(77).u8(0).raw(b"Spock\0").u32(7).raw(b"\x00\x00\x00\x03abc").done();
    assert_eq!(enc(&m, ProtoVersion::V4, 0), expected);
    assert_eq!(decode(&expected, ProtoVersion::V4).unwrap().message, m);
}

#[test]
fn startup_is_never_prefixed_and_sets_the_stream_version() {
    let s = Startup { params: vec![("proto_version".into(), "5".into()), ("encoding".into(), "UTF8".into())] };
    let bytes = enc(&Message::Startup(s.clone()), ProtoVersion::V5, INS_LSN);
    assert_eq!(bytes, Golden::new().u8(b'S').u8(1).raw(b"proto_version\x005\x00encoding\x00UTF8\x00").done());
    let mut stream = StreamDecoder::new();
    assert_eq!(stream.decode(&bytes).unwrap().message, Message::Startup(s));
    assert_eq!(stream.version(), Some(ProtoVersion::V5));
    let begin = Message::Begin(Begin { flags: 0, final_lsn: 1, commit_time: 2, xid: 3 });
    let d = stream.decode(&enc(&begin, ProtoVersion::V5, 42)).unwrap();
    assert_eq!((d.remote_insert_lsn, d.message), (Some(42), begin));
}

#[test]
fn startup_without_proto_version_means_v4() {
    let bytes =
        enc(&Message::Startup(Startup { params: vec![("encoding".into(), "UTF8".into())] }), ProtoVersion::V4, 0);
    let mut stream = StreamDecoder::new();
    stream.decode(&bytes).unwrap();
    assert_eq!(stream.version(), Some(ProtoVersion::V4));
}

#[test]
fn startup_with_unknown_version_is_an_error() {
    let bytes =
        enc(&Message::Startup(Startup { params: vec![("proto_version".into(), "9".into())] }), ProtoVersion::V4, 0);
    let err = StreamDecoder::new().decode(&bytes).unwrap_err();
    assert_eq!(err.kind, DecodeErrorKind::UnsupportedVersion("9".into()));
}

#[test]
fn decode_errors_report_offsets() {
    let b = |v: &[u8]| Bytes::copy_from_slice(v);
    let e = decode(&b(b"X"), ProtoVersion::V4).unwrap_err();
    assert_eq!((e.offset, e.kind), (0, DecodeErrorKind::UnknownMessageType('X')));
    let e = decode(&b(&[0, 0, 0, 0, 0, 0, 0, 1, b'X']), ProtoVersion::V5).unwrap_err();
    assert_eq!(e.offset, 8);
    let e = decode(&b(&[b'B', 0, 1, 2]), ProtoVersion::V4).unwrap_err();
    assert_eq!((e.offset, e.kind), (2, DecodeErrorKind::Truncated { needed: 6 }));
    let e = decode(&b(&[b'I', 0, 0, 0, 0, 1, b'X']), ProtoVersion::V4).unwrap_err();
    assert_eq!(e.offset, 6);
    assert!(matches!(e.kind, DecodeErrorKind::UnexpectedMarker { found: 'X', .. }));
    // text column without its NUL
    let e = decode(&b(&[b'I', 0, 0, 0, 0, 1, b'N', b'T', 0, 1, b't', 0, 0, 0, 1, b'a']), ProtoVersion::V4).unwrap_err();
    assert_eq!((e.offset, e.kind), (15, DecodeErrorKind::MissingNul));
    // negative length
    let e = decode(&b(&[b'I', 0, 0, 0, 0, 1, b'N', b'T', 0, 1, b'b', 0xff, 0xff, 0xff, 0xff]), ProtoVersion::V4)
        .unwrap_err();
    assert_eq!((e.offset, e.kind), (11, DecodeErrorKind::InvalidLength(-1)));
    // unknown column kind
    let e = decode(&b(&[b'I', 0, 0, 0, 0, 1, b'N', b'T', 0, 1, b'z']), ProtoVersion::V4).unwrap_err();
    assert_eq!((e.offset, e.kind), (10, DecodeErrorKind::UnknownColumnKind('z')));
    // trailing garbage
    let mut good =
        enc(&Message::CommitOrder(CommitOrder { flags: 0, last_commit_ts: 1 }), ProtoVersion::V4, 0).to_vec();
    good.push(0);
    let e = decode(&Bytes::from(good), ProtoVersion::V4).unwrap_err();
    assert_eq!((e.offset, e.kind), (10, DecodeErrorKind::TrailingBytes(1)));
    // huge truncate count does not allocate or panic
    let e = decode(&b(&[b'T', 0x7f, 0xff, 0xff, 0xff, 0]), ProtoVersion::V4).unwrap_err();
    assert!(matches!(e.kind, DecodeErrorKind::Truncated { .. }));
    assert!(e.to_string().contains("byte"));
}

#[test]
fn encode_rejects_what_the_wire_cannot_carry() {
    let mut r = sample_relation();
    r.nspname = "x".repeat(300);
    let mut out = BytesMut::new();
    assert!(matches!(Message::Relation(r).encode(ProtoVersion::V5, 0, &mut out), Err(EncodeError::TooLong { .. })));
    let m = Message::Insert(Insert { flags: 0, relid: 1, new: Tuple::new(vec![text("a\0b")]) });
    assert!(matches!(m.encode(ProtoVersion::V5, 0, &mut out), Err(EncodeError::EmbeddedNul(_))));
}

// ---- streaming (spock-rs) ------------------------------------------------------

#[test]
fn stream_messages_golden() {
    let v5 = |g: Golden| g.u64(INS_LSN);
    let m = Message::StreamStart(StreamStart { xid: 0x0102_0304, first_segment: true });
    assert_eq!(enc(&m, ProtoVersion::V5, INS_LSN), v5(Golden::new()).u8(b's').u8(1).u32(0x0102_0304).done());
    assert_eq!(enc(&m, ProtoVersion::V4, INS_LSN), Golden::new().u8(b's').u8(1).u32(0x0102_0304).done());
    let m = Message::StreamStart(StreamStart { xid: 9, first_segment: false });
    assert_eq!(enc(&m, ProtoVersion::V4, 0), Golden::new().u8(b's').u8(0).u32(9).done());
    let m = Message::StreamStop(StreamStop { flags: 0 });
    assert_eq!(enc(&m, ProtoVersion::V5, INS_LSN), v5(Golden::new()).u8(b'e').u8(0).done());
    let m = Message::StreamAbort(StreamAbort { xid: 700, subxid: 701 });
    assert_eq!(enc(&m, ProtoVersion::V5, INS_LSN), v5(Golden::new()).u8(b'a').u8(0).u32(700).u32(701).done());
    assert!(!StreamAbort { xid: 700, subxid: 701 }.is_toplevel());
    assert!(StreamAbort { xid: 700, subxid: 700 }.is_toplevel());
    let m = Message::StreamCommit(StreamCommit {
        xid: 700,
        commit_lsn: 0x1_0000_1000,
        end_lsn: 0x1_0000_1040,
        commit_time: 0x0102_0304_0506_0708,
        origin_lsn: 0,
        origin_id: 0xbeef,
        origin_name: Some("n1".into()),
    });
    assert_eq!(
        enc(&m, ProtoVersion::V5, INS_LSN),
        v5(Golden::new())
            .u8(b'c')
            .u8(1)
            .u32(700)
            .u64(0x1_0000_1000)
            .u64(0x1_0000_1040)
            .u64(0x0102_0304_0506_0708)
            .u64(0)
            .u16(0xbeef)
            .raw(b"n1\0")
            .done()
    );
    // A change in a stream: 'x', the subtransaction's xid, then the change itself.
    let ins = Message::Insert(Insert { flags: 0, relid: 16384, new: Tuple::new(vec![Datum::Null]) });
    let m = Message::StreamChange(StreamChange { xid: 701, message: Box::new(ins.clone()) });
    let inner = enc(&ins, ProtoVersion::V4, 0);
    assert_eq!(enc(&m, ProtoVersion::V5, INS_LSN), v5(Golden::new()).u8(b'x').u32(701).raw(&inner).done());
    let d = decode(&enc(&m, ProtoVersion::V5, INS_LSN), ProtoVersion::V5).unwrap();
    assert_eq!((d.remote_insert_lsn, d.message), (Some(INS_LSN), m));
}

#[test]
fn stream_letters_are_not_spocks() {
    for letter in [b's', b'e', b'x', b'c', b'a'] {
        assert!(!b"SBOLRIUDTCMnuibtKONAC".contains(&letter));
    }
}

#[test]
fn stream_decode_errors() {
    let b = |v: &[u8]| Bytes::copy_from_slice(v);
    // Only R, I, U, D, T and M travel inside 'x'; a nested 'x' or a 'B' is refused.
    let e = decode(&b(&[b'x', 0, 0, 0, 1, b'B']), ProtoVersion::V4).unwrap_err();
    assert_eq!(e.offset, 5);
    assert!(matches!(e.kind, DecodeErrorKind::UnexpectedMarker { found: 'B', .. }));
    let e = decode(&b(&[b'x', 0, 0, 0, 1, b'x', 0, 0, 0, 1]), ProtoVersion::V4).unwrap_err();
    assert_eq!(e.offset, 5);
    let e = decode(&b(&[b'x', 0, 0]), ProtoVersion::V4).unwrap_err();
    assert_eq!((e.offset, e.kind), (1, DecodeErrorKind::Truncated { needed: 2 }));
    let e = decode(&b(&[0, 0, 0, 0, 0, 0, 0, 1, b'c', 0, 0, 0, 0, 1, 2]), ProtoVersion::V5).unwrap_err();
    assert_eq!((e.offset, e.kind), (14, DecodeErrorKind::Truncated { needed: 7 }));
    let mut out = BytesMut::new();
    let bad = Message::StreamChange(StreamChange {
        xid: 1,
        message: Box::new(Message::Commit(Commit { flags: 0, commit_lsn: 0, end_lsn: 0, commit_time: 0 })),
    });
    assert!(matches!(bad.encode(ProtoVersion::V5, 0, &mut out), Err(EncodeError::Unsupported(_))));
}

#[test]
fn streaming_is_negotiated_only_when_asked() {
    // A Spock client never asks: no streaming, and the reply is Spock's.
    let n = negotiate(&spock_client(), &server()).unwrap();
    assert!(!n.streaming());
    assert_eq!(startup_reply(&n, &server()).get(STREAMING_PARAM), None);
    // A spock-rs client asks.
    let n = negotiate(&with(spock_client(), STREAMING_PARAM, "1"), &server()).unwrap();
    assert!(n.streaming());
    assert!(n.notices.is_empty(), "{:?}", n.notices);
    assert_eq!(startup_reply(&n, &server()).get(STREAMING_PARAM), Some("t"));
    let n = negotiate(&with(spock_client(), STREAMING_PARAM, "off"), &server()).unwrap();
    assert!(!n.streaming());
    assert_eq!(startup_reply(&n, &server()).get(STREAMING_PARAM), Some("f"));
    assert!(matches!(
        negotiate(&with(spock_client(), STREAMING_PARAM, "maybe"), &server()),
        Err(NegotiationError::InvalidValue { .. })
    ));
}

#[test]
fn batches_are_negotiated_only_when_asked() {
    use super::batch::BATCH_PARAM;
    let n = negotiate(&spock_client(), &server()).unwrap();
    assert!(!n.batch());
    assert_eq!(startup_reply(&n, &server()).get(BATCH_PARAM), None);
    let n = negotiate(&with(spock_client(), BATCH_PARAM, "1"), &server()).unwrap();
    assert!(n.batch());
    assert!(n.notices.is_empty(), "{:?}", n.notices);
    assert_eq!(startup_reply(&n, &server()).get(BATCH_PARAM), Some("t"));
    // not in the JSON protocol
    let n = negotiate(&with(with(spock_client(), BATCH_PARAM, "1"), "proto_format", "json"), &server()).unwrap();
    assert!(!n.batch());
    assert_eq!(startup_reply(&n, &server()).get(BATCH_PARAM), Some("f"));
}

// ---- negotiation ------------------------------------------------------------

fn server() -> ServerInfo {
    ServerInfo {
        pg_version_num: 180006,
        pg_version: "18.6".into(),
        pg_catversion: 202506291,
        database_encoding: "UTF8".into(),
        binary: BinaryFormat::LP64_LITTLE_ENDIAN,
        walsender_pid: 4242,
        spock_version: "6.0.0".into(),
        spock_version_num: 60000,
    }
}

fn spock_client() -> Vec<(String, String)> {
    ClientParams {
        expected_encoding: "UTF8".into(),
        force_text_transfer: false,
        pg_version_num: 180006,
        binary: BinaryFormat::LP64_LITTLE_ENDIAN,
        forward_origins: Some(String::new()),
        replication_sets: Some("default,default_insert_only,ddl_sql".into()),
        replicate_only_table: None,
        spock_version: "6.0.0".into(),
        spock_version_num: 60000,
    }
    .to_params()
}

fn with(mut p: Vec<(String, String)>, k: &str, v: &str) -> Vec<(String, String)> {
    p.retain(|(key, _)| key != k);
    p.push((k.into(), v.into()));
    p
}

fn without(mut p: Vec<(String, String)>, k: &str) -> Vec<(String, String)> {
    p.retain(|(key, _)| key != k);
    p
}

#[test]
fn a_spock_client_gets_v5_with_binary() {
    let n = negotiate(&spock_client(), &server()).unwrap();
    assert_eq!(n.version, ProtoVersion::V5);
    assert_eq!(n.format, ProtoFormat::Native);
    assert!(n.allow_internal_basetypes && n.allow_binary_basetypes);
    assert_eq!(n.forward_origins, ForwardOrigins::None);
    assert_eq!(
        n.replication_sets.as_deref(),
        Some(&["default".to_string(), "default_insert_only".into(), "ddl_sql".into()][..])
    );
    assert!(n.notices.is_empty(), "{:?}", n.notices);
    let reply = startup_reply(&n, &server());
    assert_eq!(reply.get("proto_version"), Some("5"));
    assert_eq!(reply.get("binary.internal_basetypes"), Some("t"));
    assert_eq!(reply.get("encoding"), Some("UTF8"));
    assert_eq!(reply.get("walsender_pid"), Some("4242"));
}

#[test]
fn version_negotiation() {
    let n = negotiate(&with(spock_client(), "max_proto_version", "4"), &server()).unwrap();
    assert_eq!(n.version, ProtoVersion::V4);
    let n = negotiate(&with(spock_client(), "max_proto_version", "9"), &server()).unwrap();
    assert_eq!(n.version, ProtoVersion::V5);
    let e = negotiate(&with(spock_client(), "min_proto_version", "6"), &server()).unwrap_err();
    assert_eq!(e, NegotiationError::MinVersionTooHigh(6));
    assert_eq!(e.sqlstate(), "0A000");
    let e = negotiate(&with(spock_client(), "max_proto_version", "3"), &server()).unwrap_err();
    assert_eq!(e, NegotiationError::MaxVersionTooLow(3));
    let p = with(with(spock_client(), "max_proto_version", "4"), "spock_version_num", "40000");
    assert_eq!(negotiate(&p, &server()).unwrap_err(), NegotiationError::V4NeedsSpock5(40000));
}

#[test]
fn required_parameters() {
    for k in ["startup_params_format", "min_proto_version", "max_proto_version"] {
        let e = negotiate(&without(spock_client(), k), &server()).unwrap_err();
        assert!(matches!(e, NegotiationError::Missing(_)), "{k}: {e}");
        assert_eq!(e.sqlstate(), "22023");
    }
    let e = negotiate(&with(spock_client(), "startup_params_format", "2"), &server()).unwrap_err();
    assert_eq!(e, NegotiationError::UnsupportedParamsFormat(2));
}

#[test]
fn bad_values_are_clear_errors() {
    for (k, v) in [
        ("max_proto_version", "five"),
        ("binary.bigendian", "maybe"),
        ("binary.sizeof_datum", "-1"),
        ("spock.forward_origins", "n1"),
        ("spock.replication_set_names", "a,,b"),
        ("spock.replicate_only_table", "just_a_table"),
    ] {
        let e = negotiate(&with(spock_client(), k, v), &server()).unwrap_err();
        assert!(matches!(e, NegotiationError::InvalidValue { .. }), "{k}={v}: {e:?}");
        assert!(e.to_string().contains(k), "{e}");
    }
    let e = negotiate(&with(spock_client(), "proto_format", "xml"), &server()).unwrap_err();
    assert_eq!(e, NegotiationError::UnsupportedFormat("xml".into()));
    let e = negotiate(&with(spock_client(), "expected_encoding", "KLINGON"), &server()).unwrap_err();
    assert_eq!(e, NegotiationError::UnknownEncoding("KLINGON".into()));
    let e = negotiate(&with(spock_client(), "expected_encoding", "LATIN1"), &server()).unwrap_err();
    assert!(matches!(e, NegotiationError::EncodingMismatch { .. }));
}

#[test]
fn encoding_names_compare_like_postgres() {
    assert!(negotiate(&with(spock_client(), "expected_encoding", "utf-8"), &server()).is_ok());
    assert!(negotiate(&with(spock_client(), "expected_encoding", ""), &server()).is_ok());
}

#[test]
fn binary_transfer_needs_matching_servers() {
    let n = negotiate(&with(spock_client(), "binary.sizeof_datum", "4"), &server()).unwrap();
    assert!(!n.allow_internal_basetypes && n.allow_binary_basetypes);
    let n = negotiate(&with(spock_client(), "binary.basetypes_major_version", "1700"), &server()).unwrap();
    assert!(!n.allow_internal_basetypes && !n.allow_binary_basetypes);
    let n = negotiate(
        &with(with(spock_client(), "binary.want_internal_basetypes", "0"), "binary.want_binary_basetypes", "0"),
        &server(),
    )
    .unwrap();
    assert!(!n.allow_internal_basetypes && !n.allow_binary_basetypes);
    let n = negotiate(&with(spock_client(), "proto_format", "json"), &server()).unwrap();
    assert_eq!(n.format, ProtoFormat::Json);
    assert!(!n.allow_internal_basetypes && !n.allow_binary_basetypes);
}

#[test]
fn unknown_parameters_are_ignored_with_a_notice() {
    let n = negotiate(&with(spock_client(), "future.knob", "1"), &server()).unwrap();
    assert_eq!(n.notices, vec!["unrecognised spock parameter future.knob ignored".to_string()]);
}

#[test]
fn forwarding_and_single_table() {
    let p = with(with(spock_client(), "spock.forward_origins", "all"), "spock.replicate_only_table", "public.\"T1\"");
    let n = negotiate(&p, &server()).unwrap();
    assert_eq!(n.forward_origins, ForwardOrigins::All);
    assert_eq!(n.replicate_only_table, Some(("public".into(), "T1".into())));
}

#[test]
fn pg_bool_parsing() {
    for t in ["t", "true", "TRUE", "y", "yes", "on", "1", "tr"] {
        assert_eq!(parse_pg_bool(t), Some(true), "{t}");
    }
    for f in ["f", "false", "n", "no", "off", "0", "of"] {
        assert_eq!(parse_pg_bool(f), Some(false), "{f}");
    }
    for bad in ["", "o", "2", "yess"] {
        assert_eq!(parse_pg_bool(bad), None, "{bad}");
    }
}

// ---- properties ---------------------------------------------------------------

fn arb_name() -> impl Strategy<Value = String> {
    "[a-zA-Z_][a-zA-Z0-9_ é]{0,20}"
}

fn arb_datum() -> impl Strategy<Value = Datum> {
    prop_oneof![
        Just(Datum::Null),
        Just(Datum::UnchangedToast),
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(|v| Datum::Internal(Bytes::from(v))),
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(|v| Datum::Binary(Bytes::from(v))),
        "[^\u{0}]{0,16}".prop_map(|s| Datum::Text(Bytes::from(s.into_bytes()))),
    ]
}

fn arb_tuple() -> impl Strategy<Value = Tuple> {
    proptest::collection::vec(arb_datum(), 0..6).prop_map(Tuple::new)
}

fn arb_old() -> impl Strategy<Value = OldTuple> {
    (any::<bool>(), arb_tuple())
        .prop_map(|(k, tuple)| OldTuple { kind: if k { OldTupleKind::Key } else { OldTupleKind::Full }, tuple })
}

fn arb_plain_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u64>(), any::<i64>(), any::<u32>()).prop_map(|(l, t, x)| Message::Begin(Begin {
            flags: 0,
            final_lsn: l,
            commit_time: t,
            xid: x
        })),
        (any::<u64>(), any::<u16>(), proptest::option::of(arb_name())).prop_map(|(l, id, n)| Message::Origin(Origin {
            origin_lsn: l,
            origin_id: id,
            origin_name: n
        })),
        any::<i64>().prop_map(|t| Message::CommitOrder(CommitOrder { flags: 0, last_commit_ts: t })),
        (
            any::<u32>(),
            arb_name(),
            arb_name(),
            proptest::collection::vec((any::<bool>(), arb_name(), any::<u32>(), any::<i32>()), 0..5)
        )
            .prop_map(|(relid, nsp, rel, cols)| Message::Relation(Relation {
                flags: 0,
                relid,
                nspname: nsp,
                relname: rel,
                columns: cols
                    .into_iter()
                    .map(|(k, name, t, m)| RelColumn { flags: u8::from(k), name, type_oid: t, typmod: m })
                    .collect(),
            })),
        (any::<u32>(), arb_tuple()).prop_map(|(r, t)| Message::Insert(Insert { flags: 0, relid: r, new: t })),
        (any::<u32>(), proptest::option::of(arb_old()), arb_tuple()).prop_map(|(r, o, t)| Message::Update(Update {
            flags: 0,
            relid: r,
            old: o,
            new: t
        })),
        (any::<u32>(), arb_old()).prop_map(|(r, o)| Message::Delete(Delete { flags: 0, relid: r, old: o })),
        (any::<bool>(), any::<bool>(), proptest::collection::vec(any::<u32>(), 0..5))
            .prop_map(|(c, r, ids)| Message::Truncate(Truncate { cascade: c, restart_seqs: r, relids: ids })),
        (any::<u64>(), any::<u64>(), any::<i64>()).prop_map(|(a, b, t)| Message::Commit(Commit {
            flags: 0,
            commit_lsn: a,
            end_lsn: b,
            commit_time: t
        })),
        (any::<u32>(), any::<u64>(), any::<bool>(), arb_name(), proptest::collection::vec(any::<u8>(), 0..32))
            .prop_map(|(x, l, tr, p, c)| {
                Message::LogicalMessage(LogicalMessage {
                    xid: x,
                    lsn: l,
                    transactional: tr,
                    prefix: p,
                    content: Bytes::from(c),
                })
            }),
    ]
}

fn arb_message() -> impl Strategy<Value = Message> {
    let streamable = arb_plain_message().prop_filter("streamable", Message::is_streamable);
    prop_oneof![
        4 => arb_plain_message(),
        1 => (any::<u32>(), any::<bool>()).prop_map(|(xid, first_segment)| Message::StreamStart(StreamStart { xid, first_segment })),
        1 => Just(Message::StreamStop(StreamStop { flags: 0 })),
        2 => (any::<u32>(), streamable).prop_map(|(xid, m)| Message::StreamChange(StreamChange { xid, message: Box::new(m) })),
        1 => (any::<u32>(), any::<u64>(), any::<u64>(), any::<i64>(), any::<u64>(), any::<u16>(), proptest::option::of(arb_name())).prop_map(
            |(xid, commit_lsn, end_lsn, commit_time, origin_lsn, origin_id, origin_name)| Message::StreamCommit(StreamCommit {
                xid, commit_lsn, end_lsn, commit_time, origin_lsn, origin_id, origin_name,
            })
        ),
        1 => (any::<u32>(), any::<u32>()).prop_map(|(xid, subxid)| Message::StreamAbort(StreamAbort { xid, subxid })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn every_message_round_trips(m in arb_message(), v5 in any::<bool>(), lsn in any::<u64>()) {
        let v = if v5 { ProtoVersion::V5 } else { ProtoVersion::V4 };
        let bytes = enc(&m, v, lsn);
        let d = decode(&bytes, v).unwrap();
        let mut expected = m.clone();
        if let (Message::Origin(o), ProtoVersion::V4) = (&mut expected, v) {
            o.origin_name = None;
        }
        prop_assert_eq!(d.message, expected);
        let carries = v == ProtoVersion::V5 || matches!(m, Message::Commit(_));
        prop_assert_eq!(d.remote_insert_lsn, if carries { Some(lsn) } else { None });
    }

    #[test]
    fn decode_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..64), v5 in any::<bool>()) {
        let b = Bytes::from(bytes);
        let v = if v5 { ProtoVersion::V5 } else { ProtoVersion::V4 };
        if let Err(e) = decode(&b, v) {
            prop_assert!(e.offset <= b.len());
        }
        let _ = decode_startup(&b);
        let _ = StreamDecoder::new().decode(&b);
    }

    #[test]
    fn every_truncation_of_a_valid_message_is_an_error(m in arb_message(), v5 in any::<bool>()) {
        let v = if v5 { ProtoVersion::V5 } else { ProtoVersion::V4 };
        let bytes = enc(&m, v, 7);
        for cut in 0..bytes.len() {
            let e = decode(&bytes.slice(..cut), v);
            prop_assert!(e.is_err(), "cut at {} decoded", cut);
            prop_assert!(e.unwrap_err().offset <= cut);
        }
    }

    #[test]
    fn negotiation_never_panics(params in proptest::collection::vec(
        (prop_oneof![
            Just("startup_params_format".to_string()), Just("min_proto_version".to_string()),
            Just("max_proto_version".to_string()), Just("binary.bigendian".to_string()),
            Just("spock.replication_set_names".to_string()), Just("spock.forward_origins".to_string()),
            Just("expected_encoding".to_string()), Just("proto_format".to_string()), "[a-z.]{1,12}"
        ], "[ -~]{0,12}"), 0..10)) {
        let _ = negotiate(&params, &server());
    }
}

#[test]
fn lsn_text_round_trips_and_rejects_what_pg_lsn_rejects() {
    use super::{format_lsn, parse_lsn};
    for lsn in [0u64, 1, 0x1_6B37_4D48, u64::MAX, 0xFFFF_FFFF, 0x1_0000_0000] {
        assert_eq!(parse_lsn(&format_lsn(lsn)), Some(lsn), "{lsn:#x}");
    }
    assert_eq!(format_lsn(0x1_6B37_4D48), "1/6B374D48");
    assert_eq!(parse_lsn("0/0"), Some(0));
    assert_eq!(parse_lsn("16/b374d848"), Some(0x16_B374_D848));
    for bad in ["", "0", "/0", "0/", "x/0", "0/+1", "123456789/0", "0/0/0", " 0/0", "-1/0"] {
        assert_eq!(parse_lsn(bad), None, "{bad:?}");
    }
}
