//! Reading what `spock_output` produces through the SQL decoding functions, decoded
//! with spock-core exactly as a subscriber would.

use bytes::Bytes;
use spock_core::proto::{Decoded, Message, StreamDecoder};

use crate::{describe_pg_error, HarnessError, Result, TestNode};

/// Startup parameters a Spock 6 subscriber sends (as the SQL functions' variadic
/// key/value list), for the given replication sets.
pub fn spock_params(repsets: &str) -> Vec<(String, String)> {
    let mut p: Vec<(String, String)> = spock_core::proto::startup::ClientParams {
        expected_encoding: "UTF8".into(),
        force_text_transfer: false,
        pg_version_num: 180006,
        binary: spock_core::proto::startup::BinaryFormat::LP64_LITTLE_ENDIAN,
        forward_origins: None,
        replication_sets: Some(repsets.to_string()),
        replicate_only_table: None,
        spock_version: spock_core::SPOCK_COMPAT_VERSION.into(),
        spock_version_num: spock_core::SPOCK_COMPAT_VERSION_NUM,
    }
    .to_params();
    p.retain(|(k, _)| k != "hooks.setup_function");
    p
}

/// Replaces (or adds) one parameter.
pub fn with_param(mut params: Vec<(String, String)>, key: &str, value: &str) -> Vec<(String, String)> {
    params.retain(|(k, _)| k != key);
    params.push((key.to_string(), value.to_string()));
    params
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Consumes the slot's pending changes with `pg_logical_slot_get_binary_changes`
/// and returns every message, decoded. `peek` leaves them in the slot.
pub fn slot_messages(
    node: &TestNode,
    db: &str,
    slot: &str,
    params: &[(String, String)],
    peek: bool,
) -> Result<Vec<Decoded>> {
    let args: Vec<String> = params.iter().flat_map(|(k, v)| [sql_literal(k), sql_literal(v)]).collect();
    let func = if peek { "pg_logical_slot_peek_binary_changes" } else { "pg_logical_slot_get_binary_changes" };
    let sql = format!(
        "SELECT data FROM {func}({}, NULL, NULL{}{})",
        sql_literal(slot),
        if args.is_empty() { "" } else { ", " },
        args.join(", ")
    );
    let mut client = node.connect_db(db)?;
    let rows = client
        .query(&sql, &[])
        .map_err(|e| HarnessError(format!("decoding slot {slot}: {}", describe_pg_error(&e))))?;
    let mut decoder = StreamDecoder::new();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let data: Vec<u8> = row.get(0);
        let bytes = Bytes::from(data);
        out.push(decoder.decode(&bytes).map_err(|e| HarnessError(format!("decoding {bytes:?}: {e}")))?);
    }
    Ok(out)
}

/// Just the messages, without startup and without the insert LSNs.
pub fn messages(decoded: &[Decoded]) -> Vec<Message> {
    decoded.iter().filter(|d| !matches!(d.message, Message::Startup(_))).map(|d| d.message.clone()).collect()
}
