//! Startup parameters: what a subscriber sends in `START_REPLICATION ... (...)`, the
//! provider's pure negotiation over them, and the reply it sends as the `S` message.
//!
//! Follows Spock's rules: `startup_params_format` (must be 1), `min_proto_version`
//! and `max_proto_version` are required; the agreed version is
//! `min(5, max_proto_version)`; unknown parameters are ignored (reported back in
//! [`Negotiated::notices`] so the caller can log them); binary transfer is agreed only
//! between servers whose formats match.

use crate::ident::{split_identifier_list, IdentListError};
use crate::origin::ForwardOrigins;

use super::message::Startup;
use super::ProtoVersion;

/// Startup parameter format version (`SPOCK_STARTUP_PARAM_FORMAT_FLAT`).
pub const STARTUP_PARAMS_FORMAT_FLAT: u32 = 1;

/// The startup parameter with which a spock-rs subscriber asks for streaming of
/// large in-progress transactions (messages `s`, `e`, `x`, `c`, `a`). A pgEdge Spock
/// subscriber never sends it; the provider answers with the same key in its reply
/// only to a client that sent it.
pub const STREAMING_PARAM: &str = "spock_rs.streaming";

/// Spock versions from this one on speak both protocol 4 and 5.
pub const MIN_SPOCK_VERSION_NUM_FOR_MULTI_PROTO: u32 = 50000;

/// The output format the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtoFormat {
    /// The binary native protocol of [`super::message`].
    Native,
    /// Spock's JSON text protocol (used by SQL-level tests and tools).
    Json,
}

/// How the server lays out values in memory; binary transfer of internal datums is
/// only possible between servers that agree on all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BinaryFormat {
    /// Big-endian host.
    pub bigendian: bool,
    /// `sizeof(Datum)`.
    pub sizeof_datum: u32,
    /// `sizeof(int)`.
    pub sizeof_int: u32,
    /// `sizeof(long)`.
    pub sizeof_long: u32,
    /// `MAXIMUM_ALIGNOF`.
    pub maxalign: u32,
    /// `float4` passed by value.
    pub float4_byval: bool,
    /// `float8` passed by value.
    pub float8_byval: bool,
    /// Integer timestamps (always true since PostgreSQL 10).
    pub integer_datetimes: bool,
}

impl BinaryFormat {
    /// The format of a 64-bit little-endian PostgreSQL 10+ server (x86_64, arm64).
    pub const LP64_LITTLE_ENDIAN: BinaryFormat = BinaryFormat {
        bigendian: false,
        sizeof_datum: 8,
        sizeof_int: 4,
        sizeof_long: 8,
        maxalign: 8,
        float4_byval: true,
        float8_byval: true,
        integer_datetimes: true,
    };
}

/// Facts about the provider that negotiation and the reply need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// `PG_VERSION_NUM`, e.g. 180006.
    pub pg_version_num: u32,
    /// `PG_VERSION`, e.g. "18.6".
    pub pg_version: String,
    /// `CATALOG_VERSION_NO`.
    pub pg_catversion: u32,
    /// The database encoding name, e.g. "UTF8".
    pub database_encoding: String,
    /// Memory layout of values.
    pub binary: BinaryFormat,
    /// Process id of the walsender.
    pub walsender_pid: i32,
    /// Our Spock-compatible version string.
    pub spock_version: String,
    /// Our Spock-compatible version number.
    pub spock_version_num: u32,
}

impl ServerInfo {
    /// `PG_VERSION_NUM / 100`, what `binary.basetypes_major_version` must equal.
    pub fn basetypes_major_version(&self) -> u32 {
        self.pg_version_num / 100
    }
}

/// What the provider agreed to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The protocol version of every message after `S`.
    pub version: ProtoVersion,
    /// Native binary or JSON.
    pub format: ProtoFormat,
    /// Send built-in base types as internal datums (`i`).
    pub allow_internal_basetypes: bool,
    /// Send types with send/recv functions in binary (`b`).
    pub allow_binary_basetypes: bool,
    /// Which foreign-origin transactions to forward.
    pub forward_origins: ForwardOrigins,
    /// Replication sets to publish; `None` when the client named none.
    pub replication_sets: Option<Vec<String>>,
    /// `(schema, table)` when only one table is streamed (table sync catch-up).
    pub replicate_only_table: Option<(String, String)>,
    /// JSON protocol without transaction info.
    pub no_txinfo: bool,
    /// The client's Spock version number, when sent.
    pub client_spock_version_num: Option<u32>,
    /// `spock_rs.streaming` as the client sent it (`None`: not sent, as by Spock).
    pub streaming_requested: Option<bool>,
    /// `spock_rs.batch` as the client sent it (`None`: not sent, as by Spock).
    pub batch_requested: Option<bool>,
    /// Things worth a LOG line that are not errors (unknown parameters, versions).
    pub notices: Vec<String>,
}

/// Why the provider refuses the client's parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    /// A required parameter is absent.
    #[error("missing required parameter \"{0}\"")]
    Missing(&'static str),
    /// A parameter's value does not parse.
    #[error("invalid value \"{value}\" for parameter \"{param}\": {reason}")]
    InvalidValue {
        /// Parameter name.
        param: String,
        /// Value sent.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `startup_params_format` other than 1.
    #[error("startup_params_format {0} not supported, only version 1 supported")]
    UnsupportedParamsFormat(u32),
    /// The client needs a newer protocol than we speak.
    #[error("client sent min_proto_version={0} but we only support protocol 5 or lower")]
    MinVersionTooHigh(u32),
    /// The client only speaks older protocols than we accept.
    #[error("client sent max_proto_version={0} but we only support protocol 4 or higher")]
    MaxVersionTooLow(u32),
    /// min_proto_version is above max_proto_version.
    #[error("cannot negotiate acceptable protocol version: client supports versions {min}-{max}, server supports 4-5")]
    NoCommonVersion {
        /// Client minimum.
        min: u32,
        /// Client maximum.
        max: u32,
    },
    /// Protocol 4 with a pre-5.0 Spock client.
    #[error("protocol version 4 requires both nodes to be at least Spock 5.0.0 (client version {0})")]
    V4NeedsSpock5(u32),
    /// `proto_format` other than native or json.
    #[error("client requested protocol {0} but only \"json\" or \"native\" are supported")]
    UnsupportedFormat(String),
    /// `expected_encoding` names no encoding.
    #[error("unrecognised encoding name {0} passed to expected_encoding")]
    UnknownEncoding(String),
    /// `expected_encoding` differs from the database's.
    #[error("encoding conversion for binary datum not supported yet: expected_encoding {wanted} must be unset or match server_encoding {server}")]
    EncodingMismatch {
        /// What the client wants.
        wanted: String,
        /// The database encoding.
        server: String,
    },
}

impl NegotiationError {
    /// The SQLSTATE Spock raises for this error: `22023` (invalid_parameter_value)
    /// for bad values, `0A000` (feature_not_supported) for what we cannot do.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            NegotiationError::Missing(_)
            | NegotiationError::InvalidValue { .. }
            | NegotiationError::UnknownEncoding(_) => "22023",
            NegotiationError::UnsupportedParamsFormat(_)
            | NegotiationError::MinVersionTooHigh(_)
            | NegotiationError::MaxVersionTooLow(_)
            | NegotiationError::NoCommonVersion { .. }
            | NegotiationError::V4NeedsSpock5(_)
            | NegotiationError::UnsupportedFormat(_)
            | NegotiationError::EncodingMismatch { .. } => "0A000",
        }
    }
}

/// PostgreSQL's `parse_bool`: true/false/yes/no (any unique prefix), on/off, 1/0.
pub fn parse_pg_bool(s: &str) -> Option<bool> {
    let l = s.to_ascii_lowercase();
    let prefix_of = |word: &str| !l.is_empty() && word.starts_with(l.as_str());
    match l.as_str() {
        "1" | "on" => Some(true),
        "0" | "off" | "of" => Some(false),
        "o" => None,
        _ if prefix_of("true") || prefix_of("yes") => Some(true),
        _ if prefix_of("false") || prefix_of("no") => Some(false),
        _ => None,
    }
}

fn invalid(param: &str, value: &str, reason: impl Into<String>) -> NegotiationError {
    NegotiationError::InvalidValue { param: param.to_string(), value: value.to_string(), reason: reason.into() }
}

fn parse_u32(param: &str, value: &str) -> Result<u32, NegotiationError> {
    let n: i64 = value.trim_start().parse().map_err(|_| invalid(param, value, "not an integer"))?;
    u32::try_from(n).map_err(|_| invalid(param, value, "out of range"))
}

fn parse_bool(param: &str, value: &str) -> Result<bool, NegotiationError> {
    parse_pg_bool(value).ok_or_else(|| invalid(param, value, "not a boolean"))
}

/// Encoding names as PostgreSQL's `pg_char_to_encoding` compares them: case and
/// punctuation do not matter ("utf-8" is UTF8).
fn normalize_encoding(name: &str) -> String {
    let n: String = name.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).collect();
    match n.as_str() {
        "unicode" => "utf8".to_string(),
        "latin1" | "iso88591" => "latin1".to_string(),
        _ => n,
    }
}

const KNOWN_ENCODINGS: &[&str] = &[
    "sqlascii",
    "eucjp",
    "euccn",
    "euckr",
    "euctw",
    "eucjis2004",
    "utf8",
    "muleinternal",
    "latin1",
    "latin2",
    "latin3",
    "latin4",
    "latin5",
    "latin6",
    "latin7",
    "latin8",
    "latin9",
    "latin10",
    "win1256",
    "win1258",
    "win866",
    "win874",
    "koi8r",
    "win1251",
    "win1252",
    "iso88595",
    "iso88596",
    "iso88597",
    "iso88598",
    "win1250",
    "win1253",
    "win1254",
    "win1255",
    "win1257",
    "koi8u",
    "sjis",
    "big5",
    "gbk",
    "uhc",
    "gb18030",
    "johab",
    "shiftjis2004",
];

#[derive(Default)]
struct ClientBinary {
    want_internal: bool,
    want_binary: bool,
    basetypes_major_version: u32,
    bigendian: Option<bool>,
    sizeof_datum: u32,
    sizeof_int: u32,
    sizeof_long: u32,
    float4_byval: Option<bool>,
    float8_byval: Option<bool>,
    integer_datetimes: Option<bool>,
}

impl ClientBinary {
    /// Spock's `check_binary_compatibility`: every characteristic the client sent must
    /// equal ours (0 / unset means "not sent" and passes).
    fn internal_compatible(&self, server: &ServerInfo) -> bool {
        let b = &server.binary;
        self.basetypes_major_version == server.basetypes_major_version()
            && self.bigendian.is_none_or(|v| v == b.bigendian)
            && (self.sizeof_datum == 0 || self.sizeof_datum == b.sizeof_datum)
            && (self.sizeof_int == 0 || self.sizeof_int == b.sizeof_int)
            && (self.sizeof_long == 0 || self.sizeof_long == b.sizeof_long)
            && self.float4_byval.is_none_or(|v| v == b.float4_byval)
            && self.float8_byval.is_none_or(|v| v == b.float8_byval)
            && self.integer_datetimes.is_none_or(|v| v == b.integer_datetimes)
    }
}

fn find<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fn ident_error(param: &str, value: &str, e: IdentListError) -> NegotiationError {
    invalid(param, value, e.to_string())
}

/// Decides what to send a client that sent `params`, or why not.
pub fn negotiate(params: &[(String, String)], server: &ServerInfo) -> Result<Negotiated, NegotiationError> {
    let format_v = find(params, "startup_params_format").ok_or(NegotiationError::Missing("startup_params_format"))?;
    let params_format = parse_u32("startup_params_format", format_v)?;
    if params_format != STARTUP_PARAMS_FORMAT_FLAT {
        return Err(NegotiationError::UnsupportedParamsFormat(params_format));
    }
    let max_v = find(params, "max_proto_version").ok_or(NegotiationError::Missing("max_proto_version"))?;
    let client_max = parse_u32("max_proto_version", max_v)?;
    let min_v = find(params, "min_proto_version").ok_or(NegotiationError::Missing("min_proto_version"))?;
    let client_min = parse_u32("min_proto_version", min_v)?;

    let mut bin = ClientBinary::default();
    let mut format: Option<String> = None;
    let mut expected_encoding: Option<String> = None;
    let mut forward_origins = ForwardOrigins::None;
    let mut replication_sets = None;
    let mut replicate_only_table = None;
    let mut no_txinfo = false;
    let mut client_spock_version: Option<String> = None;
    let mut client_spock_version_num = None;
    let mut streaming_requested = None;
    let mut batch_requested = None;
    let mut notices = Vec::new();

    for (key, value) in params {
        let (k, v) = (key.as_str(), value.as_str());
        match k {
            "max_proto_version" | "min_proto_version" | "startup_params_format" => {}
            "binary.bigendian" => bin.bigendian = Some(parse_bool(k, v)?),
            "binary.sizeof_datum" => bin.sizeof_datum = parse_u32(k, v)?,
            "binary.sizeof_int" => bin.sizeof_int = parse_u32(k, v)?,
            "binary.sizeof_long" => bin.sizeof_long = parse_u32(k, v)?,
            "binary.float4_byval" => bin.float4_byval = Some(parse_bool(k, v)?),
            "binary.float8_byval" => bin.float8_byval = Some(parse_bool(k, v)?),
            "binary.integer_datetimes" => bin.integer_datetimes = Some(parse_bool(k, v)?),
            "binary.want_internal_basetypes" => bin.want_internal = parse_bool(k, v)?,
            "binary.want_binary_basetypes" => bin.want_binary = parse_bool(k, v)?,
            "binary.basetypes_major_version" => bin.basetypes_major_version = parse_u32(k, v)?,
            "proto_format" => format = Some(v.to_string()),
            "expected_encoding" => expected_encoding = Some(v.to_string()),
            "pg_version" => {
                parse_u32(k, v)?;
            }
            "spock.forward_origins" => {
                let names = split_identifier_list(v, ',').map_err(|e| ident_error(k, v, e))?;
                forward_origins = ForwardOrigins::from_names(&names).map_err(|bad| {
                    invalid(k, v, format!("only \"all\" is allowed in the forward origin list, found \"{bad}\""))
                })?;
            }
            "spock.replication_set_names" => {
                replication_sets = Some(split_identifier_list(v, ',').map_err(|e| ident_error(k, v, e))?);
            }
            "spock.replicate_only_table" => {
                let parts = split_identifier_list(v, '.').map_err(|e| ident_error(k, v, e))?;
                match <[String; 2]>::try_from(parts) {
                    Ok([schema, table]) => replicate_only_table = Some((schema, table)),
                    Err(_) => return Err(invalid(k, v, "expected schema.table")),
                }
            }
            "no_txinfo" => no_txinfo = parse_bool(k, v)?,
            "spock_version" => client_spock_version = Some(v.to_string()),
            "spock_version_num" => client_spock_version_num = Some(parse_u32(k, v)?),
            "hooks.setup_function" => {}
            STREAMING_PARAM => streaming_requested = Some(parse_bool(k, v)?),
            super::batch::BATCH_PARAM => batch_requested = Some(parse_bool(k, v)?),
            other => notices.push(format!("unrecognised spock parameter {other} ignored")),
        }
    }

    if client_min > ProtoVersion::MAX.as_u32() {
        return Err(NegotiationError::MinVersionTooHigh(client_min));
    }
    if client_max < ProtoVersion::MIN.as_u32() {
        return Err(NegotiationError::MaxVersionTooLow(client_max));
    }
    if client_min > client_max {
        return Err(NegotiationError::NoCommonVersion { min: client_min, max: client_max });
    }
    let version = ProtoVersion::from_u32(client_max.min(ProtoVersion::MAX.as_u32()))
        .ok_or(NegotiationError::NoCommonVersion { min: client_min, max: client_max })?;
    if version == ProtoVersion::V4 {
        let client = client_spock_version_num.unwrap_or(0);
        if client < MIN_SPOCK_VERSION_NUM_FOR_MULTI_PROTO {
            return Err(NegotiationError::V4NeedsSpock5(client));
        }
    }

    let format = match format.as_deref() {
        None | Some("native") => ProtoFormat::Native,
        Some("json") => ProtoFormat::Json,
        Some(other) => return Err(NegotiationError::UnsupportedFormat(other.to_string())),
    };
    if format == ProtoFormat::Native && no_txinfo {
        notices.push("no_txinfo option ignored for protocols other than json".to_string());
        no_txinfo = false;
    }

    if let Some(wanted) = expected_encoding.filter(|e| !e.is_empty()) {
        let norm = normalize_encoding(&wanted);
        if !KNOWN_ENCODINGS.contains(&norm.as_str()) {
            return Err(NegotiationError::UnknownEncoding(wanted));
        }
        if norm != normalize_encoding(&server.database_encoding) {
            return Err(NegotiationError::EncodingMismatch { wanted, server: server.database_encoding.clone() });
        }
    }

    match (&client_spock_version, client_spock_version_num) {
        (None, _) => notices.push("client doesn't set protocol parameter 'spock_version'".to_string()),
        (Some(v), _) if v != &server.spock_version => notices
            .push(format!("client's spock_version ({v}) differs from the server's one ({})", server.spock_version)),
        _ => {}
    }

    let native = format == ProtoFormat::Native;
    let allow_internal_basetypes = native && bin.want_internal && bin.internal_compatible(server);
    let allow_binary_basetypes =
        native && bin.want_binary && bin.basetypes_major_version == server.basetypes_major_version();

    Ok(Negotiated {
        version,
        format,
        allow_internal_basetypes,
        allow_binary_basetypes,
        forward_origins,
        replication_sets,
        replicate_only_table,
        no_txinfo,
        client_spock_version_num,
        streaming_requested,
        batch_requested,
        notices,
    })
}

impl Negotiated {
    /// Whether the provider streams large in-progress transactions: only to a client
    /// that asked, and only in the native protocol.
    pub fn streaming(&self) -> bool {
        self.streaming_requested == Some(true) && self.format == ProtoFormat::Native
    }

    /// Whether the provider batches messages ([`super::batch`]): only to a client
    /// that asked, and only in the native protocol.
    pub fn batch(&self) -> bool {
        self.batch_requested == Some(true) && self.format == ProtoFormat::Native
    }
}

fn b(v: bool) -> String {
    if v { "t" } else { "f" }.to_string()
}

/// The startup message the provider sends back: the agreed settings and the facts a
/// subscriber checks (encoding, versions, binary layout), in Spock's order.
pub fn startup_reply(neg: &Negotiated, server: &ServerInfo) -> Startup {
    let bf = &server.binary;
    let major = server.basetypes_major_version().to_string();
    let params: Vec<(&str, String)> = vec![
        ("max_proto_version", ProtoVersion::MAX.as_u32().to_string()),
        ("min_proto_version", ProtoVersion::MIN.as_u32().to_string()),
        ("proto_version", neg.version.as_u32().to_string()),
        ("coltypes", b(false)),
        ("pg_version_num", server.pg_version_num.to_string()),
        ("pg_version", server.pg_version.clone()),
        ("pg_catversion", server.pg_catversion.to_string()),
        ("database_encoding", server.database_encoding.clone()),
        ("encoding", server.database_encoding.clone()),
        ("forward_changeset_origins", b(true)),
        ("walsender_pid", server.walsender_pid.to_string()),
        ("spock_version", server.spock_version.clone()),
        ("spock_version_num", server.spock_version_num.to_string()),
        ("binary.internal_basetypes", b(neg.allow_internal_basetypes)),
        ("binary.binary_basetypes", b(neg.allow_binary_basetypes)),
        ("binary.basetypes_major_version", major.clone()),
        ("binary.sizeof_int", bf.sizeof_int.to_string()),
        ("binary.sizeof_long", bf.sizeof_long.to_string()),
        ("binary.sizeof_datum", bf.sizeof_datum.to_string()),
        ("binary.maxalign", bf.maxalign.to_string()),
        ("binary.bigendian", b(bf.bigendian)),
        ("binary.float4_byval", b(bf.float4_byval)),
        ("binary.float8_byval", b(bf.float8_byval)),
        ("binary.integer_datetimes", b(bf.integer_datetimes)),
        ("binary.binary_pg_version", major),
        ("no_txinfo", b(neg.no_txinfo)),
    ];
    let mut params: Vec<(String, String)> = params.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    if neg.streaming_requested.is_some() {
        // Only to a client that asked: a Spock peer's reply stays as Spock's.
        params.push((STREAMING_PARAM.to_string(), b(neg.streaming())));
    }
    if neg.batch_requested.is_some() {
        params.push((super::batch::BATCH_PARAM.to_string(), b(neg.batch())));
    }
    Startup { params }
}

/// What a subscriber asks for when it starts streaming (the options of
/// `START_REPLICATION SLOT ... LOGICAL ... (...)`), as Spock's apply worker sends them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientParams {
    /// The subscriber's database encoding.
    pub expected_encoding: String,
    /// Send everything as text (`force_text_transfer`).
    pub force_text_transfer: bool,
    /// The subscriber's `PG_VERSION_NUM`.
    pub pg_version_num: u32,
    /// The subscriber's memory layout.
    pub binary: BinaryFormat,
    /// `spock.forward_origins`: `None` to leave it out.
    pub forward_origins: Option<String>,
    /// `spock.replication_set_names` as a comma list.
    pub replication_sets: Option<String>,
    /// `spock.replicate_only_table`.
    pub replicate_only_table: Option<String>,
    /// Our Spock-compatible version string.
    pub spock_version: String,
    /// Our Spock-compatible version number.
    pub spock_version_num: u32,
}

impl ClientParams {
    /// The parameters in the order Spock's apply worker sends them.
    pub fn to_params(&self) -> Vec<(String, String)> {
        let want = if self.force_text_transfer { "0" } else { "1" };
        let bf = &self.binary;
        let bit = |v: bool| if v { "1" } else { "0" }.to_string();
        let mut p: Vec<(&str, String)> = vec![
            ("expected_encoding", self.expected_encoding.clone()),
            ("min_proto_version", ProtoVersion::MIN.as_u32().to_string()),
            ("max_proto_version", ProtoVersion::MAX.as_u32().to_string()),
            ("startup_params_format", STARTUP_PARAMS_FORMAT_FLAT.to_string()),
            ("binary.want_internal_basetypes", want.to_string()),
            ("binary.want_binary_basetypes", want.to_string()),
            ("binary.basetypes_major_version", (self.pg_version_num / 100).to_string()),
            ("binary.sizeof_datum", bf.sizeof_datum.to_string()),
            ("binary.sizeof_int", bf.sizeof_int.to_string()),
            ("binary.sizeof_long", bf.sizeof_long.to_string()),
            ("binary.bigendian", bit(bf.bigendian)),
            ("binary.float4_byval", bit(bf.float4_byval)),
            ("binary.float8_byval", bit(bf.float8_byval)),
            ("binary.integer_datetimes", bit(bf.integer_datetimes)),
            ("hooks.setup_function", "spock.spock_hooks_setup".to_string()),
        ];
        if let Some(f) = &self.forward_origins {
            p.push(("spock.forward_origins", f.clone()));
        }
        if let Some(t) = &self.replicate_only_table {
            p.push(("spock.replicate_only_table", t.clone()));
        }
        if let Some(s) = &self.replication_sets {
            p.push(("spock.replication_set_names", s.clone()));
        }
        p.push(("pg_version", self.pg_version_num.to_string()));
        p.push(("spock_version", self.spock_version.clone()));
        p.push(("spock_version_num", self.spock_version_num.to_string()));
        p.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}
