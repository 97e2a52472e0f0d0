//! libpq connection settings handed to programs we run (`pg_dump`): the secret
//! (`password`) goes to the child's environment, everything else to its command
//! line, which every local user can read (`ps`, `/proc/<pid>/cmdline`).
//!
//! The extension splits a provider DSN into keyword/value pairs with libpq's own
//! parser (`PQconninfoParse`, both `key=value` and URI forms); this module decides
//! what goes where and writes the keyword/value string.

/// The keyword whose value never appears on a command line.
pub const PASSWORD: &str = "password";

/// `connect_timeout` (seconds) a program gets when the DSN sets none, so that a
/// silent provider fails the step instead of hanging it.
pub const DEFAULT_CONNECT_TIMEOUT: &str = "30";

/// How a program connects: its `--dbname` argument and its extra environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolConnection {
    /// A `key='value'` connection string without the password.
    pub conninfo: String,
    /// Environment variables for the child only (`PGPASSWORD`).
    pub env: Vec<(String, String)>,
}

/// `value` quoted for a keyword/value connection string: in single quotes, with
/// backslashes and quotes escaped by a backslash (libpq's rules).
pub fn quote_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\\' || c == '\'' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// A keyword/value connection string of `pairs`, in their order.
pub fn format_conninfo<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> String {
    pairs.iter().map(|(k, v)| format!("{}={}", k.as_ref(), quote_value(v.as_ref()))).collect::<Vec<_>>().join(" ")
}

/// Splits parsed connection settings for a child program: the password (if any)
/// into `PGPASSWORD`, the rest into the connection string, with
/// [`DEFAULT_CONNECT_TIMEOUT`] when none is set.
pub fn tool_connection(pairs: &[(String, String)]) -> ToolConnection {
    let mut rest: Vec<(&str, &str)> = Vec::with_capacity(pairs.len() + 1);
    let mut env = Vec::new();
    for (k, v) in pairs {
        if k == PASSWORD {
            env.push(("PGPASSWORD".to_string(), v.clone()));
        } else {
            rest.push((k, v));
        }
    }
    if !rest.iter().any(|(k, _)| *k == "connect_timeout") {
        rest.push(("connect_timeout", DEFAULT_CONNECT_TIMEOUT));
    }
    ToolConnection { conninfo: format_conninfo(&rest), env }
}

/// The arguments of `pg_dump` for the structure of a provider at `snapshot` into
/// `file`, leaving out spock, `exclude_schemas` and `exclude_extensions`;
/// `conninfo` has no password ([`tool_connection`]).
pub fn pg_dump_structure_args(
    snapshot: &str,
    file: &str,
    exclude_schemas: &[String],
    exclude_extensions: &[String],
    conninfo: &str,
) -> Vec<String> {
    let mut args = vec![
        "--schema-only".to_string(),
        "--format=custom".to_string(),
        format!("--snapshot={snapshot}"),
        "--exclude-schema=spock".to_string(),
        "--exclude-extension=spock".to_string(),
        "--no-publications".to_string(),
        "--no-subscriptions".to_string(),
        format!("--file={file}"),
    ];
    args.extend(exclude_schemas.iter().map(|s| format!("--exclude-schema={s}")));
    args.extend(exclude_extensions.iter().map(|e| format!("--exclude-extension={e}")));
    args.push(format!("--dbname={conninfo}"));
    args
}

/// `text` with every occurrence of `secret` replaced by `********` (a message that
/// might quote part of a connection string).
pub fn redact(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(s) if !s.is_empty() => text.replace(s, "********"),
        _ => text.to_string(),
    }
}

/// Whether a connection string libpq could not parse may hold a secret that libpq's
/// error message would quote (it quotes the token it stumbled on): it names a
/// password, or it is a URI with user information (`user:secret@host`).
pub fn unparsable_may_hold_secret(dsn: &str) -> bool {
    let lower = dsn.to_ascii_lowercase();
    let uri = lower.starts_with("postgresql://") || lower.starts_with("postgres://");
    lower.contains(PASSWORD) || (uri && dsn.contains('@'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn password_goes_to_the_environment_only() {
        let secret = "s3cr'et \\ pw";
        let t =
            tool_connection(&pairs(&[("host", "10.0.0.1"), ("password", secret), ("dbname", "app"), ("user", "rep")]));
        assert!(!t.conninfo.contains("s3cr"), "{}", t.conninfo);
        assert!(!t.conninfo.contains("password"), "{}", t.conninfo);
        assert_eq!(t.conninfo, "host='10.0.0.1' dbname='app' user='rep' connect_timeout='30'");
        assert_eq!(t.env, vec![("PGPASSWORD".to_string(), secret.to_string())]);
        let args = pg_dump_structure_args(
            "00000003-1",
            "/tmp/d",
            &["skipme".to_string()],
            &["lolor".to_string()],
            &t.conninfo,
        );
        assert!(args.iter().all(|a| !a.contains("s3cr")), "{args:?}");
        assert_eq!(
            args.last().map(String::as_str),
            Some("--dbname=host='10.0.0.1' dbname='app' user='rep' connect_timeout='30'")
        );
        assert!(args.contains(&"--exclude-schema=skipme".to_string()));
        assert!(args.contains(&"--exclude-extension=lolor".to_string()));
        assert!(
            args.contains(&"--exclude-schema=spock".to_string())
                && args.contains(&"--exclude-extension=spock".to_string())
        );
    }

    #[test]
    fn without_password_no_environment_and_own_timeout_kept() {
        let t = tool_connection(&pairs(&[("host", "h"), ("connect_timeout", "5")]));
        assert!(t.env.is_empty());
        assert_eq!(t.conninfo, "host='h' connect_timeout='5'");
    }

    #[test]
    fn values_are_quoted_for_libpq() {
        assert_eq!(quote_value(""), "''");
        assert_eq!(quote_value("a b"), "'a b'");
        assert_eq!(quote_value("it's"), "'it\\'s'");
        assert_eq!(quote_value("c:\\x"), "'c:\\\\x'");
    }

    #[test]
    fn unparsable_secrets_are_recognised() {
        assert!(unparsable_may_hold_secret("host=x password=a b"));
        assert!(unparsable_may_hold_secret("postgresql://u:p w@h/db"));
        assert!(!unparsable_may_hold_secret("host=x bogus"));
        assert!(!unparsable_may_hold_secret("postgresql://h:5432/db?x"));
    }

    #[test]
    fn redact_masks_every_occurrence() {
        assert_eq!(
            redact("missing \"=\" after \"pw\" near pw", Some("pw")),
            "missing \"=\" after \"********\" near ********"
        );
        assert_eq!(redact("no secret", None), "no secret");
        assert_eq!(redact("empty", Some("")), "empty");
    }
}
