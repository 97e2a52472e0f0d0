//! Exception handling rules: what the apply worker does with a remote transaction
//! that failed to apply, which errors are worth a plain retry, and how failed
//! changes are described in `spock.exception_log`.
//!
//! The worker applies every transaction normally first. When one fails with an
//! error that is not transient, the worker remembers where (the transaction's commit
//! LSN and the number of the change that failed) and restarts; the provider sends the
//! transaction again and the worker replays it in the mode `spock.exception_behaviour`
//! asks for ([`ReplayMode`]). If the replay fails as well, the next replay uses a
//! stricter mode ([`ReplayMode::escalate`]), so a transaction can never keep the
//! subscription in a restart loop: the last mode applies nothing and disables the
//! subscription.

use crate::proto::json::JsonValue;
use crate::proto::{Datum, Tuple};

/// `spock.exception_behaviour`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExceptionBehaviour {
    /// Apply each change on its own; log and skip the ones that fail.
    Discard,
    /// Apply nothing of the failed transaction; log all its changes; move on.
    TransDiscard,
    /// Apply nothing, log all changes, disable the subscription; the origin stays
    /// before the transaction so re-enabling retries it.
    SubDisable,
}

impl ExceptionBehaviour {
    /// Spock's name of the behaviour.
    pub fn as_str(self) -> &'static str {
        match self {
            ExceptionBehaviour::Discard => "discard",
            ExceptionBehaviour::TransDiscard => "transdiscard",
            ExceptionBehaviour::SubDisable => "sub_disable",
        }
    }
}

/// `spock.exception_logging`: which changes of a failed transaction get a row in
/// `spock.exception_log`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExceptionLogging {
    /// None (the server log still has the error).
    None,
    /// Only the changes that failed.
    Discard,
    /// Every change of the failed transaction.
    All,
}

/// How a transaction that failed before is applied the next time it arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayMode {
    /// Each change in its own subtransaction; failures are logged and skipped.
    Discard,
    /// Nothing is applied; changes are logged; the origin moves past the transaction.
    LogOnly,
    /// Nothing is applied; changes are logged; the subscription is disabled.
    Disable,
}

impl ReplayMode {
    /// The replay mode for the configured behaviour.
    pub fn for_behaviour(b: ExceptionBehaviour) -> ReplayMode {
        match b {
            ExceptionBehaviour::Discard => ReplayMode::Discard,
            ExceptionBehaviour::TransDiscard => ReplayMode::LogOnly,
            ExceptionBehaviour::SubDisable => ReplayMode::Disable,
        }
    }

    /// The mode after a replay in `self` failed too (an error outside the per-change
    /// protection, e.g. at commit). `None`: nothing stricter exists.
    pub fn escalate(self) -> Option<ReplayMode> {
        match self {
            ReplayMode::Discard => Some(ReplayMode::LogOnly),
            ReplayMode::LogOnly => Some(ReplayMode::Disable),
            ReplayMode::Disable => None,
        }
    }

    /// Whether changes are applied at all.
    pub fn applies(self) -> bool {
        self == ReplayMode::Discard
    }

    /// Whether a change gets an exception_log row: `failed` says whether that change
    /// is the one (or one of those) that failed.
    pub fn logs(self, logging: ExceptionLogging, failed: bool) -> bool {
        match logging {
            ExceptionLogging::None => false,
            ExceptionLogging::Discard => failed,
            // Under discard, changes that applied are not exceptions.
            ExceptionLogging::All => failed || !self.applies(),
        }
    }

    /// Stable small number for shared memory.
    pub fn code(self) -> u8 {
        match self {
            ReplayMode::Discard => 1,
            ReplayMode::LogOnly => 2,
            ReplayMode::Disable => 3,
        }
    }

    /// Inverse of [`ReplayMode::code`].
    pub fn from_code(c: u8) -> Option<ReplayMode> {
        match c {
            1 => Some(ReplayMode::Discard),
            2 => Some(ReplayMode::LogOnly),
            3 => Some(ReplayMode::Disable),
            _ => None,
        }
    }
}

/// Whether an error with SQLSTATE `code` is transient: the transaction is simply
/// retried after a reconnect instead of being treated as an exception (deadlock,
/// lock not available, insufficient resources, admin shutdown/crash shutdown,
/// connection problems, and local I/O failures or corruption: a damaged spill file
/// of a streamed transaction is streamed again; a damaged table needs its DBA, not
/// the loss of the transaction).
pub fn is_transient(code: &str) -> bool {
    matches!(code, "40P01" | "55P03" | "57P01" | "57P02" | "57P03" | "57014" | "58030" | "XX001" | "XX002")
        || code.starts_with("53")
        || code.starts_with("08")
}

/// Whether a table sync that failed with SQLSTATE `code` would fail again the same
/// way until someone changes this node: the copied data or the table's definition
/// here refuse it (data exceptions, integrity constraints, a column or privilege
/// missing). Those mark the table failed (Spock's FAILED); anything else (the
/// provider's connection, resources) is retried.
pub fn table_sync_failure_is_permanent(code: &str) -> bool {
    !is_transient(code) && (code.starts_with("22") || code.starts_with("23") || code.starts_with("42"))
}

/// The error_message of a change discarded only because another change of its
/// transaction failed.
pub fn collateral_message(mode: ReplayMode, failed_change: u32, error: &str) -> String {
    let what = match mode {
        ReplayMode::Discard => "discard",
        ReplayMode::LogOnly => "transdiscard",
        ReplayMode::Disable => "sub_disable",
    };
    if failed_change == 0 {
        format!("{what}: not applied because its transaction failed: {error}")
    } else {
        format!("{what}: not applied because change {failed_change} of its transaction failed")
    }
}

/// The error_message of the row that records a disabled subscription; the LSN is
/// what `spock.sub_alter_skiplsn` needs to skip the transaction.
pub fn disable_message(subscription: &str, commit_lsn: &str) -> String {
    format!("disabling subscription {subscription} due to exception(s) - skip_lsn = {commit_lsn}")
}

/// A column as exception_log describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnLabel {
    /// Column name.
    pub name: String,
    /// Local type name (pg_type.typname), when the table exists here.
    pub type_name: Option<String>,
    /// Local type's oid and pg_type.typcategory, when known: values are then
    /// written as `to_json` writes them (numbers and booleans bare).
    pub json_type: Option<(u32, u8)>,
}

/// `spock.exception_log` tuple columns (`remote_old_tup`, `remote_new_tup`): a JSON
/// array of `{"attname", "atttype", "value"}`, like Spock's: values as `to_json`
/// writes them when the local type is known (a string of the text output
/// otherwise); binary values the subscriber could not read as `\x` hex;
/// unchanged TOAST values as null with `"unchanged": true`.
pub fn tuple_json(columns: &[ColumnLabel], tuple: &Tuple) -> String {
    let mut s = String::from("[");
    for (i, d) in tuple.columns.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let (name, ty) = match columns.get(i) {
            Some(c) => (c.name.as_str(), c.type_name.as_deref()),
            None => ("?column?", None),
        };
        s.push_str("{\"attname\": ");
        push_json_string(&mut s, name);
        s.push_str(", \"atttype\": ");
        match ty {
            Some(t) => push_json_string(&mut s, t),
            None => s.push_str("null"),
        }
        s.push_str(", \"value\": ");
        match d {
            Datum::Null => s.push_str("null"),
            Datum::UnchangedToast => s.push_str("null, \"unchanged\": true"),
            Datum::Text(b) => {
                let text = String::from_utf8_lossy(b).into_owned();
                match columns.get(i).and_then(|c| c.json_type) {
                    Some((oid, category)) => match JsonValue::from_text(category, oid, text) {
                        JsonValue::Literal(l) => s.push_str(&l),
                        JsonValue::Text(t) => push_json_string(&mut s, &t),
                        JsonValue::Null => s.push_str("null"),
                    },
                    None => push_json_string(&mut s, &text),
                }
            }
            Datum::Binary(b) | Datum::Internal(b) => {
                let mut hex = String::with_capacity(2 + b.len() * 2);
                hex.push_str("\\x");
                for byte in b.iter() {
                    hex.push_str(&format!("{byte:02x}"));
                }
                push_json_string(&mut s, &hex);
            }
        }
        s.push('}');
    }
    s.push(']');
    s
}

/// Appends `v` as a JSON string literal (escaped as [`crate::ddl::json_string`] does).
pub fn push_json_string(out: &mut String, v: &str) {
    out.push_str(&crate::ddl::json_string(v));
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn escalation_ends_in_disable() {
        let mut m = ReplayMode::for_behaviour(ExceptionBehaviour::Discard);
        let mut seen = vec![m];
        while let Some(n) = m.escalate() {
            m = n;
            seen.push(m);
        }
        assert_eq!(seen, vec![ReplayMode::Discard, ReplayMode::LogOnly, ReplayMode::Disable]);
        for mode in seen {
            assert_eq!(ReplayMode::from_code(mode.code()), Some(mode));
        }
        assert_eq!(ReplayMode::from_code(0), None);
    }

    #[test]
    fn logging_rules() {
        // Discard logs only failures, even with logging = all.
        assert!(ReplayMode::Discard.logs(ExceptionLogging::All, true));
        assert!(!ReplayMode::Discard.logs(ExceptionLogging::All, false));
        // Transaction-level modes log every change with logging = all.
        assert!(ReplayMode::LogOnly.logs(ExceptionLogging::All, false));
        assert!(ReplayMode::Disable.logs(ExceptionLogging::All, false));
        assert!(!ReplayMode::LogOnly.logs(ExceptionLogging::Discard, false));
        assert!(ReplayMode::LogOnly.logs(ExceptionLogging::Discard, true));
        assert!(!ReplayMode::LogOnly.logs(ExceptionLogging::None, true));
    }

    #[test]
    fn transient_codes() {
        for c in ["40P01", "55P03", "53100", "53200", "57P02", "57P03", "08006", "08000", "XX001", "58030"] {
            assert!(is_transient(c), "{c}");
        }
        for c in ["23505", "42P01", "40001", "XX000", "22P02"] {
            assert!(!is_transient(c), "{c}");
        }
    }

    #[test]
    fn tuple_json_escapes_and_labels() {
        let cols = vec![
            ColumnLabel { name: "id".into(), type_name: Some("int4".into()), json_type: Some((23, b'N')) },
            ColumnLabel { name: "na\"me".into(), type_name: None, json_type: None },
            ColumnLabel { name: "b".into(), type_name: Some("bytea".into()), json_type: Some((17, b'U')) },
            ColumnLabel { name: "t".into(), type_name: Some("text".into()), json_type: Some((25, b'S')) },
            ColumnLabel { name: "n".into(), type_name: Some("text".into()), json_type: Some((25, b'S')) },
            ColumnLabel { name: "ok".into(), type_name: Some("bool".into()), json_type: Some((16, b'B')) },
            ColumnLabel { name: "s".into(), type_name: None, json_type: None },
        ];
        let t = Tuple::new(vec![
            Datum::Text(Bytes::from_static(b"42")),
            Datum::Text(Bytes::from_static(b"a\"b\\c\nd\x01")),
            Datum::Binary(Bytes::from_static(&[0, 255])),
            Datum::UnchangedToast,
            Datum::Null,
            Datum::Text(Bytes::from_static(b"t")),
            Datum::Text(Bytes::from_static(b"7")),
        ]);
        let j = tuple_json(&cols, &t);
        assert_eq!(
            j,
            "[{\"attname\": \"id\", \"atttype\": \"int4\", \"value\": 42}, \
             {\"attname\": \"na\\\"me\", \"atttype\": null, \"value\": \"a\\\"b\\\\c\\nd\\u0001\"}, \
             {\"attname\": \"b\", \"atttype\": \"bytea\", \"value\": \"\\\\x00ff\"}, \
             {\"attname\": \"t\", \"atttype\": \"text\", \"value\": null, \"unchanged\": true}, \
             {\"attname\": \"n\", \"atttype\": \"text\", \"value\": null}, \
             {\"attname\": \"ok\", \"atttype\": \"bool\", \"value\": true}, \
             {\"attname\": \"s\", \"atttype\": null, \"value\": \"7\"}]"
        );
    }

    #[test]
    fn only_data_and_definition_errors_fail_a_table_sync() {
        for c in ["23514", "23505", "22P02", "42703", "42501"] {
            assert!(table_sync_failure_is_permanent(c), "{c}");
        }
        for c in ["08006", "55000", "53100", "40P01", "XX000"] {
            assert!(!table_sync_failure_is_permanent(c), "{c}");
        }
    }

    #[test]
    fn messages_name_what_to_do() {
        assert!(disable_message("s1", "0/16B3748").contains("skip_lsn = 0/16B3748"));
        assert!(collateral_message(ReplayMode::LogOnly, 2, "boom").contains("change 2"));
        assert!(collateral_message(ReplayMode::LogOnly, 0, "boom").ends_with("boom"));
    }
}
