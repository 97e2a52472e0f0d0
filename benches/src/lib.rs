//! Workloads shared by the benchmarks: realistic message streams built with
//! spock-core, so that codec benchmarks measure what an apply worker decodes.

use bytes::{Bytes, BytesMut};
use spock_core::proto::{self, Begin, Commit, Datum, Insert, Message, ProtoVersion, Tuple, Update};

/// A pgbench-like transaction: BEGIN, three UPDATEs and an INSERT, COMMIT, each
/// message encoded on its own (as CopyData frames carry them).
pub fn pgbench_like_transaction(version: ProtoVersion, xid: u32) -> Vec<Bytes> {
    let row =
        |vals: &[&str]| Tuple::new(vals.iter().map(|v| Datum::Text(Bytes::copy_from_slice(v.as_bytes()))).collect());
    let lsn = 0x1_0000_0000u64 + u64::from(xid) * 512;
    let messages = [
        Message::Begin(Begin { flags: 0, final_lsn: lsn + 400, commit_time: 800_000_000_000_000, xid }),
        Message::Update(Update {
            flags: 0,
            relid: 16390,
            old: None,
            new: row(&[
                "42",
                "7",
                "-1234",
                "                                                                                    ",
            ]),
        }),
        Message::Update(Update {
            flags: 0,
            relid: 16393,
            old: None,
            new: row(&[
                "3",
                "99999",
                "                                                                                          ",
            ]),
        }),
        Message::Update(Update {
            flags: 0,
            relid: 16387,
            old: None,
            new: row(&[
                "1",
                "-77",
                "                                                                                          ",
            ]),
        }),
        Message::Insert(Insert {
            flags: 0,
            relid: 16384,
            new: row(&["3", "1", "42", "-1234", "2026-11-25 15:00:00.123456+00", ""]),
        }),
        Message::Commit(Commit {
            flags: 0,
            commit_lsn: lsn + 400,
            end_lsn: lsn + 448,
            commit_time: 800_000_000_000_000,
        }),
    ];
    messages
        .iter()
        .map(|m| {
            let mut out = BytesMut::with_capacity(256);
            proto::encode(m, version, lsn + 500, &mut out).expect("benchmark messages are valid");
            out.freeze()
        })
        .collect()
}

/// `--name value` pairs of a benchmark's command line, each name one of `names`;
/// prints `usage` and exits (status 2) on anything else.
pub fn named_options(usage: &str, names: &[&str]) -> std::collections::HashMap<String, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let fail = || -> ! {
        eprintln!("usage: {usage}");
        std::process::exit(2)
    };
    let mut found = std::collections::HashMap::new();
    for pair in args.chunks(2) {
        let [name, value] = pair else { fail() };
        let Some(name) = name.strip_prefix("--").filter(|n| names.contains(n)) else { fail() };
        found.insert(name.to_string(), value.clone());
    }
    found
}
