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

/// Quotes `ident` for use in SQL or in an identifier list when needed (like
/// PostgreSQL's `quote_identifier`, without the keyword check: lower-case names of
/// `[a-z0-9_]` that do not start with a digit stay bare).
pub fn quote_identifier(ident: &str) -> String {
    let safe = !ident.is_empty()
        && ident.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !ident.as_bytes()[0].is_ascii_digit();
    if safe {
        ident.to_string()
    } else {
        format!("\"{}\"", ident.replace('"', "\"\""))
    }
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
    fn quoting_round_trips() {
        for name in ["plain", "Mixed", "with space", "a\"q", "1abc", "comma,inside"] {
            let quoted = quote_identifier(name);
            assert_eq!(split_identifier_list(&quoted, ',').unwrap(), vec![name.to_string()]);
        }
    }
}
