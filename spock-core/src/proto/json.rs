//! `proto_format = 'json'`: the text format of pglogical's and Spock's output plugin
//! for debugging and tests (`pg_logical_slot_get_changes(..., 'proto_format',
//! 'json')`), one JSON object per message: `S` (the parameters the client sent),
//! `B`, `C`, and `I`/`U`/`D` with the relation and the old and new tuples. Relation,
//! origin and other messages are not written. Values as PostgreSQL's `to_json`
//! writes them: numbers and booleans bare, `json`/`jsonb` as they are, everything
//! else a JSON string of the type's text output, NULL as `null`.

use super::format_lsn;

/// A column's value in a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonValue {
    /// SQL NULL.
    Null,
    /// Written as it is (a number, `true`/`false`, a json value).
    Literal(String),
    /// Written as a JSON string.
    Text(String),
}

impl JsonValue {
    /// The value of a column of type category `category` (pg_type.typcategory)
    /// and type `type_oid` whose text output is `text`, as `to_json` renders it.
    pub fn from_text(category: u8, type_oid: u32, text: String) -> JsonValue {
        const JSON: u32 = 114;
        const JSONB: u32 = 3802;
        match category {
            b'N' if is_json_number(&text) => JsonValue::Literal(text),
            b'B' => JsonValue::Literal(if text == "t" { "true" } else { "false" }.to_string()),
            _ if type_oid == JSON || type_oid == JSONB => JsonValue::Literal(text),
            _ => JsonValue::Text(text),
        }
    }
}

/// Whether `s` is a number JSON accepts (not NaN or Infinity, no leading `+`).
fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    if !digits(&mut i) {
        return false;
    }
    if i < b.len() && b[i] == b'.' {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == b.len()
}

/// Appends `s` as a JSON string (as PostgreSQL's `escape_json` writes it,
/// [`crate::ddl::json_string`]).
pub fn escape_into(out: &mut String, s: &str) {
    out.push_str(&crate::ddl::json_string(s));
}

/// The startup message: the parameters the client sent.
pub fn startup(params: &[(String, String)]) -> String {
    let mut out = String::from("{\"action\":\"S\", \"params\": {");
    for (i, (k, v)) in params.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        escape_into(&mut out, k);
        out.push(':');
        escape_into(&mut out, v);
    }
    out.push_str("}}");
    out
}

/// BEGIN of transaction `xid` (the LSN of its commit record, its commit time as
/// text).
pub fn begin(xid: u32, final_lsn: u64, commit_time: Option<&str>) -> String {
    let mut out = format!(
        "{{\"action\":\"B\", \"has_catalog_changes\":\"f\", \"xid\":\"{xid}\", \"final_lsn\":\"{}\"",
        format_lsn(final_lsn)
    );
    if let Some(t) = commit_time {
        out.push_str(", \"commit_time\":");
        escape_into(&mut out, t);
    }
    out.push('}');
    out
}

/// COMMIT.
pub fn commit(final_lsn: u64, end_lsn: u64) -> String {
    format!(
        "{{\"action\":\"C\", \"final_lsn\":\"{}\", \"end_lsn\":\"{}\"}}",
        format_lsn(final_lsn),
        format_lsn(end_lsn)
    )
}

fn tuple_into(out: &mut String, tuple: &[(String, JsonValue)]) {
    out.push('{');
    for (i, (name, value)) in tuple.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        escape_into(out, name);
        out.push(':');
        match value {
            JsonValue::Null => out.push_str("null"),
            JsonValue::Literal(s) => out.push_str(s),
            JsonValue::Text(s) => escape_into(out, s),
        }
    }
    out.push('}');
}

/// A row change: `action` `I`, `U` or `D` on `nspname.relname`.
pub fn row(
    action: char,
    nspname: &str,
    relname: &str,
    old: Option<&[(String, JsonValue)]>,
    new: Option<&[(String, JsonValue)]>,
) -> String {
    let mut out = format!("{{\"action\":\"{action}\",\"relation\":[");
    escape_into(&mut out, nspname);
    out.push(',');
    escape_into(&mut out, relname);
    out.push(']');
    if let Some(old) = old {
        out.push_str(",\"oldtuple\":");
        tuple_into(&mut out, old);
    }
    if let Some(new) = new {
        out.push_str(",\"newtuple\":");
        tuple_into(&mut out, new);
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_as_spock_writes_them() {
        let new = vec![
            ("id".to_string(), JsonValue::from_text(b'N', 23, "1".into())),
            ("id1".to_string(), JsonValue::from_text(b'N', 23, "1".into())),
            ("name".to_string(), JsonValue::from_text(b'S', 25, "name1".into())),
        ];
        assert_eq!(
            row('I', "public", "not_nullcheck_tbl", None, Some(&new)),
            r#"{"action":"I","relation":["public","not_nullcheck_tbl"],"newtuple":{"id":1,"id1":1,"name":"name1"}}"#
        );
        let old = vec![("id".to_string(), JsonValue::Null)];
        assert_eq!(
            row('D', "s", "t\"q", Some(&old), None),
            r#"{"action":"D","relation":["s","t\"q"],"oldtuple":{"id":null}}"#
        );
    }

    #[test]
    fn values_as_to_json_writes_them() {
        assert_eq!(JsonValue::from_text(b'N', 701, "NaN".into()), JsonValue::Text("NaN".into()));
        assert_eq!(JsonValue::from_text(b'N', 1700, "-1.5e+10".into()), JsonValue::Literal("-1.5e+10".into()));
        assert_eq!(JsonValue::from_text(b'B', 16, "t".into()), JsonValue::Literal("true".into()));
        assert_eq!(JsonValue::from_text(b'U', 3802, "{\"a\": 1}".into()), JsonValue::Literal("{\"a\": 1}".into()));
        let mut s = String::new();
        escape_into(&mut s, "a\nb\u{1}");
        assert_eq!(s, "\"a\\nb\\u0001\"");
        assert!(!is_json_number("1.") && !is_json_number("+1") && is_json_number("0.5"));
    }

    #[test]
    fn begin_commit_startup() {
        assert_eq!(
            begin(7, 0x1_0000_0010, Some("2026-12-04 10:00:00+00")),
            r#"{"action":"B", "has_catalog_changes":"f", "xid":"7", "final_lsn":"1/10", "commit_time":"2026-12-04 10:00:00+00"}"#
        );
        assert_eq!(commit(0x10, 0x20), r#"{"action":"C", "final_lsn":"0/10", "end_lsn":"0/20"}"#);
        assert_eq!(startup(&[("a".into(), "b".into())]), r#"{"action":"S", "params": {"a":"b"}}"#);
    }
}
