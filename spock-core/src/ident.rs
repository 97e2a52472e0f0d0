//! PostgreSQL identifier lists, parsed like the server's `SplitIdentifierString`:
//! Spock's startup parameters (`spock.replication_set_names`, `spock.forward_origins`,
//! `spock.replicate_only_table`) are such lists.

use crate::names::MAX_IDENTIFIER_LEN;

/// Why an identifier list did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentListError {
    /// A quoted identifier has no closing quote.
    #[error("unterminated quoted identifier at byte {0}")]
    UnterminatedQuote(usize),
    /// Two separators in a row, a leading separator, or `""`.
    #[error("zero-length identifier at byte {0}")]
    Empty(usize),
    /// Something other than a separator or the end follows an identifier.
    #[error("unexpected character at byte {0}")]
    Unexpected(usize),
}

fn truncate_identifier(mut s: String) -> String {
    if s.len() > MAX_IDENTIFIER_LEN {
        let mut cut = MAX_IDENTIFIER_LEN;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Splits `input` at `separator` into identifiers. Unquoted identifiers are folded to
/// lower case (ASCII only, as in a UTF-8 database); `"quoted"` ones keep their case
/// and may contain the separator, with `""` standing for one quote. Whitespace around
/// identifiers is ignored; an empty input gives an empty list. Identifiers longer than
/// 63 bytes are truncated, as PostgreSQL does.
pub fn split_identifier_list(input: &str, separator: char) -> Result<Vec<String>, IdentListError> {
    let bytes = input.as_bytes();
    let mut out = Vec::new();
    let mut pos = 0usize;
    let skip_ws = |mut p: usize| {
        while p < bytes.len() && bytes[p].is_ascii_whitespace() {
            p += 1;
        }
        p
    };
    pos = skip_ws(pos);
    if pos == bytes.len() {
        return Ok(out);
    }
    loop {
        let start = pos;
        let ident = if bytes.get(pos) == Some(&b'"') {
            let mut value = String::new();
            pos += 1;
            loop {
                match input[pos..].find('"') {
                    None => return Err(IdentListError::UnterminatedQuote(start)),
                    Some(rel) => {
                        value.push_str(&input[pos..pos + rel]);
                        pos += rel + 1;
                        if bytes.get(pos) == Some(&b'"') {
                            value.push('"');
                            pos += 1;
                        } else {
                            break;
                        }
                    }
                }
            }
            if value.is_empty() {
                return Err(IdentListError::Empty(start));
            }
            value
        } else {
            let sep_is_ws = separator.is_ascii_whitespace();
            let rest = &input[pos..];
            let end = rest
                .char_indices()
                .find(|&(_, c)| c == separator || (!sep_is_ws && c.is_ascii_whitespace()))
                .map_or(rest.len(), |(i, _)| i);
            if end == 0 {
                return Err(IdentListError::Empty(start));
            }
            pos += end;
            rest[..end].to_ascii_lowercase()
        };
        out.push(truncate_identifier(ident));
        pos = skip_ws(pos);
        if pos == bytes.len() {
            return Ok(out);
        }
        if input[pos..].starts_with(separator) {
            pos += separator.len_utf8();
            pos = skip_ws(pos);
        } else {
            return Err(IdentListError::Unexpected(pos));
        }
    }
}

/// The keywords PostgreSQL 18 does not accept as a bare identifier everywhere
/// (reserved, type/function-name and column-name keywords, that is every keyword
/// `pg_get_keywords()` lists with a category other than `U`), sorted.
#[rustfmt::skip]
const NON_UNRESERVED_KEYWORDS: &[&str] = &[
    "all", "analyse", "analyze", "and", "any", "array", "as", "asc", "asymmetric", "authorization", "between",
    "bigint", "binary", "bit", "boolean", "both", "case", "cast", "char", "character", "check", "coalesce",
    "collate", "collation", "column", "concurrently", "constraint", "create", "cross", "current_catalog",
    "current_date", "current_role", "current_schema", "current_time", "current_timestamp", "current_user", "dec",
    "decimal", "default", "deferrable", "desc", "distinct", "do", "else", "end", "except", "exists", "extract",
    "false", "fetch", "float", "for", "foreign", "freeze", "from", "full", "grant", "greatest", "group", "grouping",
    "having", "ilike", "in", "initially", "inner", "inout", "int", "integer", "intersect", "interval", "into", "is",
    "isnull", "join", "json", "json_array", "json_arrayagg", "json_exists", "json_object", "json_objectagg",
    "json_query", "json_scalar", "json_serialize", "json_table", "json_value", "lateral", "leading", "least",
    "left", "like", "limit", "localtime", "localtimestamp", "merge_action", "national", "natural", "nchar", "none",
    "normalize", "not", "notnull", "null", "nullif", "numeric", "offset", "on", "only", "or", "order", "out",
    "outer", "overlaps", "overlay", "placing", "position", "precision", "primary", "real", "references",
    "returning", "right", "row", "select", "session_user", "setof", "similar", "smallint", "some", "substring",
    "symmetric", "system_user", "table", "tablesample", "then", "time", "timestamp", "to", "trailing", "treat",
    "trim", "true", "union", "unique", "user", "using", "values", "varchar", "variadic", "verbose", "when", "where",
    "window", "with", "xmlattributes", "xmlconcat", "xmlelement", "xmlexists", "xmlforest", "xmlnamespaces",
    "xmlparse", "xmlpi", "xmlroot", "xmlserialize", "xmltable",
];

/// Whether `word` (lower case) is a keyword that must be quoted as an identifier.
fn is_non_unreserved_keyword(word: &str) -> bool {
    NON_UNRESERVED_KEYWORDS.binary_search(&word).is_ok()
}

/// Quotes `ident` for use in SQL or in an identifier list when needed, as
/// PostgreSQL's `quote_identifier` does: lower-case names of `[a-z0-9_]` that do not
/// start with a digit and are not a reserved, type/function-name or column-name
/// keyword stay bare; everything else is double-quoted with `"` doubled.
pub fn quote_identifier(ident: &str) -> String {
    let safe = !ident.is_empty()
        && ident.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !ident.as_bytes()[0].is_ascii_digit()
        && !is_non_unreserved_keyword(ident);
    if safe {
        ident.to_string()
    } else {
        format!("\"{}\"", ident.replace('"', "\"\""))
    }
}

/// `s` as an SQL string literal (quotes doubled; backslashes are plain characters
/// under `standard_conforming_strings`, PostgreSQL's default), for messages that
/// show a statement to run.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_downcases() {
        assert_eq!(
            split_identifier_list(" Default , default_insert_only,ddl_sql ", ',').unwrap(),
            vec!["default", "default_insert_only", "ddl_sql"]
        );
    }

    #[test]
    fn quoted_identifiers_keep_case_and_separators() {
        assert_eq!(split_identifier_list(r#""My,Set","a""b""#, ',').unwrap(), vec!["My,Set", "a\"b"]);
    }

    #[test]
    fn empty_input_is_an_empty_list() {
        assert!(split_identifier_list("", ',').unwrap().is_empty());
        assert!(split_identifier_list("   ", ',').unwrap().is_empty());
    }

    #[test]
    fn errors() {
        assert_eq!(split_identifier_list("a,,b", ','), Err(IdentListError::Empty(2)));
        assert_eq!(split_identifier_list(",a", ','), Err(IdentListError::Empty(0)));
        assert_eq!(split_identifier_list("\"abc", ','), Err(IdentListError::UnterminatedQuote(0)));
        assert_eq!(split_identifier_list("a b", ','), Err(IdentListError::Unexpected(2)));
        assert_eq!(split_identifier_list("\"\"", ','), Err(IdentListError::Empty(0)));
    }

    #[test]
    fn qualified_names() {
        assert_eq!(split_identifier_list("public.\"Tbl\"", '.').unwrap(), vec!["public", "Tbl"]);
    }

    #[test]
    fn long_identifiers_are_truncated() {
        let long = "x".repeat(100);
        assert_eq!(split_identifier_list(&long, ',').unwrap()[0].len(), 63);
    }

    #[test]
    fn keywords_are_sorted_lower_case() {
        assert!(NON_UNRESERVED_KEYWORDS.windows(2).all(|w| w[0] < w[1]));
        assert!(NON_UNRESERVED_KEYWORDS.iter().all(|k| quote_identifier(k) == format!("\"{k}\"")));
    }

    #[test]
    fn quotes_like_the_server() {
        // Reserved, column-name and type/function-name keywords are quoted;
        // unreserved ones (and plain names) stay bare.
        for (name, quoted) in [
            ("select", "\"select\""),
            ("user", "\"user\""),
            ("int", "\"int\""),
            ("left", "\"left\""),
            ("public", "public"),
            ("queue", "queue"),
            ("_x1", "_x1"),
            ("1abc", "\"1abc\""),
            ("Mixed", "\"Mixed\""),
            ("a\"q", "\"a\"\"q\""),
            ("", "\"\""),
        ] {
            assert_eq!(quote_identifier(name), quoted, "{name}");
        }
    }

    #[test]
    fn quoting_round_trips() {
        for name in ["plain", "Mixed", "with space", "a\"q", "1abc", "comma,inside", "select"] {
            let quoted = quote_identifier(name);
            assert_eq!(split_identifier_list(&quoted, ',').unwrap(), vec![name.to_string()]);
        }
    }
}
