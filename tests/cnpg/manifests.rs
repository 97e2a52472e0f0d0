//! Offline check of Kubernetes manifests: the CloudNativePG kinds against the CRDs
//! vendored in `tests/cnpg/crds/`, plus the rules a spock node needs.
//!
//! YAML is read the way `kubectl` reads it (sigs.k8s.io/yaml, YAML 1.1 resolution of
//! plain scalars: a bare `on`, `yes`, `off` is a boolean, `0x1f` an integer), from the
//! parser's events, so that duplicate keys are errors (the API server rejects duplicate
//! fields) and every node knows its line.
//!
//! The schema walker implements the parts of a Kubernetes structural schema the API
//! server checks with strict field validation: `type`, `properties` (unknown fields are
//! errors), `additionalProperties`, `required` (a property with a `default` counts as
//! present), `items`, `enum`, `nullable`, `format` int32/int64 ranges, `pattern`,
//! `minLength`/`maxLength`, `minimum`/`maximum` (and their exclusive forms),
//! `minItems`/`maxItems`, `minProperties`/`maxProperties`, `x-kubernetes-int-or-string`,
//! `x-kubernetes-preserve-unknown-fields`, `x-kubernetes-list-type` set/map uniqueness
//! with `x-kubernetes-list-map-keys`; `metadata` is checked as ObjectMeta (known fields,
//! string labels and annotations, a name). Not evaluated: the CEL rules
//! (`x-kubernetes-validations`, counted in [`Report::cel_rules_not_evaluated`]) and string
//! formats other than the integer ranges (`date-time`, ...); defaults are not applied
//! beyond `required`. A schema keyword the walker does not know makes loading the CRD
//! fail, so a newer CRD cannot be checked half-way without anyone noticing.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use regex::Regex;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A YAML value after YAML 1.1 resolution, as the API server receives it (as JSON).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(String, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    /// 1-based line of the node in its file.
    pub line: usize,
    /// The source text of a plain scalar that YAML 1.1 turned into a boolean although
    /// YAML 1.2 reads it as a string (`on`, `off`, `yes`, `no`, `y`, `n`).
    pub yaml11_bool: Option<String>,
}

impl Node {
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The node at `path` (map keys), if every step exists.
    pub fn at(&self, path: &[&str]) -> Option<&Node> {
        path.iter().try_fold(self, |n, k| n.get(k))
    }

    pub fn str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn int(&self) -> Option<i64> {
        match self.value {
            Value::Int(i) => Some(i),
            _ => None,
        }
    }

    pub fn seq(&self) -> &[Node] {
        match &self.value {
            Value::Seq(items) => items,
            _ => &[],
        }
    }

    fn type_name(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) => "integer",
            Value::Float(_) => "number",
            Value::Str(_) => "string",
            Value::Seq(_) => "array",
            Value::Map(_) => "object",
        }
    }

    /// A short JSON-like rendering, for messages and uniqueness keys.
    fn render(&self) -> String {
        match &self.value {
            Value::Null => "null".into(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Str(s) => format!("{s:?}"),
            Value::Seq(items) => format!("[{}]", items.iter().map(Node::render).collect::<Vec<_>>().join(",")),
            Value::Map(entries) => {
                format!(
                    "{{{}}}",
                    entries.iter().map(|(k, v)| format!("{k:?}:{}", v.render())).collect::<Vec<_>>().join(",")
                )
            }
        }
    }
}

// --- YAML ------------------------------------------------------------------------

enum Frame {
    Seq { items: Vec<Node>, line: usize, anchor: usize },
    Map { entries: Vec<(String, Node)>, key: Option<(String, usize)>, line: usize, anchor: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    docs: Vec<Node>,
    error: Option<String>,
}

fn float_re() -> &'static Regex {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$").expect("valid regex"))
}

/// An integer the way YAML 1.1 (Go's `strconv.ParseInt(s, 0, 64)` after removing `_`)
/// reads it: decimal, `0x` hex, `0o`/leading-`0` octal, `0b` binary, with a sign.
fn yaml11_int(text: &str) -> Option<i64> {
    let s = text.replace('_', "");
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(&s)),
    };
    if digits.is_empty() || digits.starts_with(['+', '-']) {
        return None;
    }
    let lower = digits.to_ascii_lowercase();
    let (radix, body) = if let Some(h) = lower.strip_prefix("0x") {
        (16, h)
    } else if let Some(b) = lower.strip_prefix("0b") {
        (2, b)
    } else if let Some(o) = lower.strip_prefix("0o") {
        (8, o)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    let magnitude = i128::from_str_radix(body, radix).ok()?;
    i64::try_from(if neg { -magnitude } else { magnitude }).ok()
}

/// Resolves a scalar: quoted and block scalars are strings; plain ones follow YAML 1.1
/// like sigs.k8s.io/yaml (go-yaml v2).
fn resolve(text: String, style: TScalarStyle, tag: Option<Tag>, line: usize) -> Result<Node, String> {
    let node = |value| Node { value, line, yaml11_bool: None };
    if let Some(tag) = tag {
        let suffix = if tag.handle == "tag:yaml.org,2002:" { tag.suffix.as_str() } else { "" };
        return match suffix {
            "str" => Ok(node(Value::Str(text))),
            "int" => {
                yaml11_int(&text).map(|i| node(Value::Int(i))).ok_or_else(|| format!("line {line}: !!int {text:?}"))
            }
            "float" => {
                text.parse().map(|f| node(Value::Float(f))).map_err(|_| format!("line {line}: !!float {text:?}"))
            }
            "bool" => match text.as_str() {
                "true" => Ok(node(Value::Bool(true))),
                "false" => Ok(node(Value::Bool(false))),
                _ => Err(format!("line {line}: !!bool {text:?}")),
            },
            "null" => Ok(node(Value::Null)),
            _ => Err(format!("line {line}: unsupported tag {}{}", tag.handle, tag.suffix)),
        };
    }
    if style != TScalarStyle::Plain {
        return Ok(node(Value::Str(text)));
    }
    let value = match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => Value::Null,
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => {
            return Ok(Node { value: Value::Bool(true), line, yaml11_bool: Some(text) })
        }
        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => {
            return Ok(Node { value: Value::Bool(false), line, yaml11_bool: Some(text) })
        }
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => Value::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => Value::Float(f64::NAN),
        t if t.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+' || c == '.') => {
            if let Some(i) = yaml11_int(t) {
                Value::Int(i)
            } else if float_re().is_match(&t.replace('_', "")) {
                t.replace('_', "").parse().map(Value::Float).unwrap_or(Value::Str(text))
            } else {
                Value::Str(text)
            }
        }
        _ => Value::Str(text),
    };
    Ok(node(value))
}

impl Builder {
    fn fail(&mut self, msg: String) {
        self.error.get_or_insert(msg);
    }

    fn push(&mut self, node: Node) {
        if let Err(e) = self.try_push(node) {
            self.fail(e);
        }
    }

    fn try_push(&mut self, node: Node) -> Result<(), String> {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                Some((k, _)) => entries.push((k, node)),
                None => {
                    let k = match &node.value {
                        Value::Str(s) => s.clone(),
                        Value::Null => "null".into(),
                        Value::Bool(_) | Value::Int(_) | Value::Float(_) => node.render(),
                        Value::Seq(_) | Value::Map(_) => {
                            return Err(format!("line {}: a key must be a scalar", node.line))
                        }
                    };
                    if k == "<<" {
                        return Err(format!("line {}: merge keys (<<) are not supported", node.line));
                    }
                    if let Some((_, first)) = entries.iter().find(|(e, _)| *e == k) {
                        return Err(format!(
                            "line {}: duplicate key {k:?} (first near line {}): the API server rejects duplicate fields",
                            node.line, first.line
                        ));
                    }
                    *key = Some((k, node.line));
                }
            },
        }
        Ok(())
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let line = mark.line();
        match ev {
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentStart => {}
            Event::DocumentEnd => {
                if let Some(root) = self.root.take() {
                    self.docs.push(root);
                }
                self.anchors.clear();
            }
            Event::Alias(id) => match self.anchors.get(&id) {
                Some(n) => {
                    let n = Node { line, ..n.clone() };
                    self.push(n)
                }
                None => self.fail(format!("line {line}: unknown alias")),
            },
            Event::Scalar(text, style, anchor, tag) => match resolve(text, style, tag, line) {
                Ok(node) => {
                    if anchor > 0 {
                        self.anchors.insert(anchor, node.clone());
                    }
                    self.push(node);
                }
                Err(e) => self.fail(e),
            },
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq { items: Vec::new(), line, anchor }),
            Event::MappingStart(anchor, _) => {
                self.stack.push(Frame::Map { entries: Vec::new(), key: None, line, anchor })
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq { items, line, anchor }) => {
                        (Node { value: Value::Seq(items), line, yaml11_bool: None }, anchor)
                    }
                    Some(Frame::Map { entries, line, anchor, .. }) => {
                        (Node { value: Value::Map(entries), line, yaml11_bool: None }, anchor)
                    }
                    None => return self.fail(format!("line {line}: unbalanced collection")),
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                self.push(node);
            }
        }
    }
}

/// The documents of a YAML stream; empty documents (only comments) are left out.
pub fn parse_yaml(text: &str) -> Result<Vec<Node>, String> {
    let mut builder = Builder::default();
    Parser::new_from_str(text).load(&mut builder, true).map_err(|e| e.to_string())?;
    if let Some(e) = builder.error {
        return Err(e);
    }
    Ok(builder.docs.into_iter().filter(|d| d.value != Value::Null).collect())
}

// --- CRDs ------------------------------------------------------------------------

pub struct Crd {
    pub kind: String,
    /// openAPIV3Schema per served version.
    pub schemas: BTreeMap<String, Node>,
}

/// CRDs by (group, kind).
pub struct Crds {
    pub by_kind: BTreeMap<(String, String), Crd>,
}

const SCHEMA_KEYWORDS: &[&str] = &[
    "type",
    "description",
    "properties",
    "required",
    "items",
    "additionalProperties",
    "enum",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "nullable",
    "default",
    "anyOf",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-validations",
    "title",
    "example",
];

/// Fails on a schema keyword the walker does not implement (see the module comment).
fn check_schema_supported(schema: &Node, path: &str) -> Result<(), String> {
    let Value::Map(entries) = &schema.value else {
        return Err(format!("{path}: a schema must be an object"));
    };
    for (k, v) in entries {
        if !SCHEMA_KEYWORDS.contains(&k.as_str()) {
            return Err(format!("{path}: schema keyword {k:?} is not implemented by the walker"));
        }
        match k.as_str() {
            "properties" => {
                if let Value::Map(props) = &v.value {
                    for (name, s) in props {
                        check_schema_supported(s, &format!("{path}.{name}"))?;
                    }
                }
            }
            "items" => check_schema_supported(v, &format!("{path}[]"))?,
            "additionalProperties" if !matches!(v.value, Value::Bool(_)) => {
                check_schema_supported(v, &format!("{path}.*"))?
            }
            "anyOf" if schema.get("x-kubernetes-int-or-string").is_none_or(|b| b.value != Value::Bool(true)) => {
                return Err(format!("{path}: anyOf without x-kubernetes-int-or-string is not implemented"));
            }
            _ => {}
        }
    }
    Ok(())
}

impl Crds {
    /// Loads every `*.yaml` CRD in `dir`.
    pub fn load(dir: &Path) -> Result<Crds, String> {
        let mut by_kind = BTreeMap::new();
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let what = file.display().to_string();
            for doc in parse_yaml(&text).map_err(|e| format!("{what}: {e}"))? {
                let spec = doc.get("spec").ok_or_else(|| format!("{what}: no spec"))?;
                let group = spec.get("group").and_then(Node::str).ok_or_else(|| format!("{what}: no spec.group"))?;
                let kind = spec.at(&["names", "kind"]).and_then(Node::str).ok_or_else(|| format!("{what}: no kind"))?;
                let mut schemas = BTreeMap::new();
                for v in spec.get("versions").map(Node::seq).unwrap_or_default() {
                    let served = v.get("served").is_some_and(|s| s.value == Value::Bool(true));
                    let name = v.get("name").and_then(Node::str).unwrap_or_default();
                    if let (true, Some(schema)) = (served, v.at(&["schema", "openAPIV3Schema"])) {
                        check_schema_supported(schema, &format!("{what}: {kind} {name}"))?;
                        schemas.insert(name.to_string(), schema.clone());
                    }
                }
                let crd = Crd { kind: kind.to_string(), schemas };
                by_kind.insert((group.to_string(), kind.to_string()), crd);
            }
        }
        Ok(Crds { by_kind })
    }
}

// --- the schema walker -------------------------------------------------------------

struct Walker<'a> {
    issues: &'a mut Vec<(usize, String)>,
    cel_rules: usize,
    patterns: HashMap<String, Regex>,
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn number(n: &Node) -> Option<f64> {
    match n.value {
        Value::Int(i) => Some(i as f64),
        Value::Float(f) => Some(f),
        _ => None,
    }
}

fn is_true(n: Option<&Node>) -> bool {
    n.is_some_and(|n| n.value == Value::Bool(true))
}

fn same(a: &Node, b: &Node) -> bool {
    match (&a.value, &b.value) {
        (Value::Int(x), Value::Float(y)) | (Value::Float(y), Value::Int(x)) => *x as f64 == *y,
        _ => a.render() == b.render(),
    }
}

impl Walker<'_> {
    fn issue(&mut self, at: &Node, path: &str, msg: String) {
        let path = if path.is_empty() { "(root)" } else { path };
        self.issues.push((at.line, format!("{path}: {msg}")));
    }

    fn check(&mut self, schema: &Node, v: &Node, path: &str) {
        if let Some(rules) = schema.get("x-kubernetes-validations") {
            self.cel_rules += rules.seq().len();
        }
        if v.value == Value::Null {
            if !is_true(schema.get("nullable")) {
                let ty = schema.get("type").and_then(Node::str).unwrap_or("a value");
                self.issue(v, path, format!("null is not allowed (must be {ty})"));
            }
            return;
        }
        let int_or_string = is_true(schema.get("x-kubernetes-int-or-string"));
        let preserve = is_true(schema.get("x-kubernetes-preserve-unknown-fields"));
        let ty = schema.get("type").and_then(Node::str);
        let type_ok = match (int_or_string, ty) {
            (true, _) => matches!(v.value, Value::Int(_) | Value::Str(_)),
            (false, Some("object")) => matches!(v.value, Value::Map(_)),
            (false, Some("array")) => matches!(v.value, Value::Seq(_)),
            (false, Some("string")) => matches!(v.value, Value::Str(_)),
            (false, Some("integer")) => matches!(v.value, Value::Int(_)),
            (false, Some("number")) => matches!(v.value, Value::Int(_) | Value::Float(_)),
            (false, Some("boolean")) => matches!(v.value, Value::Bool(_)),
            (false, None) => preserve,
            (false, Some(other)) => {
                self.issue(v, path, format!("schema type {other:?} is not implemented"));
                return;
            }
        };
        if !type_ok {
            let want = if int_or_string { "integer or string" } else { ty.unwrap_or("described by a type") };
            let mut msg = format!("must be {want}, got {} {}", v.type_name(), v.render());
            if let Some(word) = &v.yaml11_bool {
                let _ = write!(msg, " (a bare {word} is a YAML 1.1 boolean for kubectl: quote it, \"{word}\")");
            }
            self.issue(v, path, msg);
            return;
        }
        if let Some(values) = schema.get("enum") {
            if !values.seq().iter().any(|e| same(e, v)) {
                let allowed: Vec<String> = values.seq().iter().map(Node::render).collect();
                self.issue(v, path, format!("{} is not one of {}", v.render(), allowed.join(", ")));
            }
        }
        match &v.value {
            Value::Str(s) => self.check_string(schema, v, s, path),
            Value::Int(_) | Value::Float(_) => self.check_number(schema, v, path),
            Value::Seq(items) => self.check_array(schema, v, items, path),
            Value::Map(entries) => self.check_object(schema, v, entries, path, preserve),
            Value::Null | Value::Bool(_) => {}
        }
    }

    fn check_string(&mut self, schema: &Node, v: &Node, s: &str, path: &str) {
        let len = s.chars().count() as i64;
        if let Some(min) = schema.get("minLength").and_then(Node::int).filter(|m| len < *m) {
            self.issue(v, path, format!("{} is shorter than {min} characters", v.render()));
        }
        if let Some(max) = schema.get("maxLength").and_then(Node::int).filter(|m| len > *m) {
            self.issue(v, path, format!("{} is longer than {max} characters", v.render()));
        }
        if let Some(pattern) = schema.get("pattern").and_then(Node::str) {
            if !self.patterns.contains_key(pattern) {
                match Regex::new(pattern) {
                    Ok(re) => {
                        self.patterns.insert(pattern.to_string(), re);
                    }
                    Err(e) => return self.issue(v, path, format!("schema pattern {pattern:?} does not compile: {e}")),
                }
            }
            if !self.patterns[pattern].is_match(s) {
                self.issue(v, path, format!("{} does not match {pattern:?}", v.render()));
            }
        }
    }

    fn check_number(&mut self, schema: &Node, v: &Node, path: &str) {
        let Some(x) = number(v) else { return };
        let range = match schema.get("format").and_then(Node::str) {
            Some("int32") => Some((i32::MIN as f64, i32::MAX as f64)),
            _ => None,
        };
        if let Some((lo, hi)) = range.filter(|(lo, hi)| x < *lo || x > *hi) {
            self.issue(v, path, format!("{x} is out of the int32 range {lo}..{hi}"));
        }
        if let Some(min) = schema.get("minimum").and_then(number) {
            let exclusive = is_true(schema.get("exclusiveMinimum"));
            if x < min || (exclusive && x == min) {
                self.issue(
                    v,
                    path,
                    format!("{x} is below the minimum {min}{}", if exclusive { " (exclusive)" } else { "" }),
                );
            }
        }
        if let Some(max) = schema.get("maximum").and_then(number) {
            let exclusive = is_true(schema.get("exclusiveMaximum"));
            if x > max || (exclusive && x == max) {
                self.issue(
                    v,
                    path,
                    format!("{x} is above the maximum {max}{}", if exclusive { " (exclusive)" } else { "" }),
                );
            }
        }
    }

    fn check_array(&mut self, schema: &Node, v: &Node, items: &[Node], path: &str) {
        let n = items.len() as i64;
        if let Some(min) = schema.get("minItems").and_then(Node::int).filter(|m| n < *m) {
            self.issue(v, path, format!("{n} item(s), at least {min} needed"));
        }
        if let Some(max) = schema.get("maxItems").and_then(Node::int).filter(|m| n > *m) {
            self.issue(v, path, format!("{n} item(s), at most {max} allowed"));
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                self.check(item_schema, item, &format!("{path}[{i}]"));
            }
        }
        let keys: Vec<&str> = schema
            .get("x-kubernetes-list-map-keys")
            .map(Node::seq)
            .unwrap_or_default()
            .iter()
            .filter_map(Node::str)
            .collect();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let key = match schema.get("x-kubernetes-list-type").and_then(Node::str) {
                Some("set") => item.render(),
                Some("map") => {
                    let missing: Vec<&str> = keys.iter().copied().filter(|k| item.get(k).is_none()).collect();
                    if !missing.is_empty() {
                        self.issue(
                            item,
                            &format!("{path}[{i}]"),
                            format!("list-map key(s) {} missing", missing.join(", ")),
                        );
                        continue;
                    }
                    keys.iter().map(|k| item.get(k).map(Node::render).unwrap_or_default()).collect::<Vec<_>>().join(",")
                }
                _ => break,
            };
            if let Some(first) = seen.insert(key.clone(), i) {
                self.issue(item, &format!("{path}[{i}]"), format!("duplicate entry {key} (also at index {first})"));
            }
        }
    }

    fn check_object(&mut self, schema: &Node, v: &Node, entries: &[(String, Node)], path: &str, preserve: bool) {
        let n = entries.len() as i64;
        if let Some(min) = schema.get("minProperties").and_then(Node::int).filter(|m| n < *m) {
            self.issue(v, path, format!("{n} field(s), at least {min} needed"));
        }
        if let Some(max) = schema.get("maxProperties").and_then(Node::int).filter(|m| n > *m) {
            self.issue(v, path, format!("{n} field(s), at most {max} allowed"));
        }
        let properties = schema.get("properties");
        let additional = schema.get("additionalProperties");
        for (k, child) in entries {
            let child_path = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
            if path.is_empty() && k == "metadata" {
                // ObjectMeta, which the API server checks itself: see check_metadata.
            } else if let Some(s) = properties.and_then(|p| p.get(k)) {
                self.check(s, child, &child_path);
            } else if let Some(s) = additional.filter(|a| matches!(a.value, Value::Map(_))) {
                self.check(s, child, &child_path);
            } else if preserve || is_true(additional) {
                // kept as it is
            } else {
                let mut msg = "unknown field".to_string();
                if let Some(Value::Map(props)) = properties.map(|p| &p.value) {
                    let near =
                        props.iter().map(|(p, _)| p).find(|p| p.eq_ignore_ascii_case(k) || levenshtein(p, k) <= 2);
                    if let Some(near) = near {
                        let _ = write!(msg, " (did you mean {near:?}?)");
                    }
                }
                self.issue(child, &child_path, msg);
            }
        }
        for r in schema.get("required").map(Node::seq).unwrap_or_default().iter().filter_map(Node::str) {
            let has_default = properties.and_then(|p| p.get(r)).and_then(|s| s.get("default")).is_some();
            if !entries.iter().any(|(k, _)| k == r) && !has_default {
                self.issue(v, path, format!("missing required field {r:?}"));
            }
        }
    }
}

/// ObjectMeta of a manifest: the fields one writes, string maps for labels and annotations.
fn check_metadata(meta: &Node, issues: &mut Vec<(usize, String)>) {
    let Value::Map(entries) = &meta.value else {
        issues.push((meta.line, format!("metadata: must be an object, got {}", meta.type_name())));
        return;
    };
    let dns_subdomain =
        Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$").expect("valid regex");
    for (k, v) in entries {
        match k.as_str() {
            "name" | "namespace" | "generateName" => match v.str() {
                Some(s) if k == "generateName" || (dns_subdomain.is_match(s) && s.len() <= 253) => {}
                _ => issues.push((v.line, format!("metadata.{k}: {} is not a DNS-1123 subdomain", v.render()))),
            },
            "labels" | "annotations" => match &v.value {
                Value::Map(pairs) => {
                    for (lk, lv) in pairs.iter().filter(|(_, lv)| lv.str().is_none()) {
                        let hint =
                            lv.yaml11_bool.as_ref().map(|w| format!(" (a bare {w} is a YAML 1.1 boolean: quote it)"));
                        issues.push((
                            lv.line,
                            format!(
                                "metadata.{k}.{lk}: must be string, got {}{}",
                                lv.render(),
                                hint.unwrap_or_default()
                            ),
                        ));
                    }
                }
                _ => issues.push((v.line, format!("metadata.{k}: must be an object of strings"))),
            },
            "finalizers" | "ownerReferences" => {}
            _ => issues.push((v.line, format!("metadata.{k}: unknown field"))),
        }
    }
    if meta.get("name").is_none() && meta.get("generateName").is_none() {
        issues.push((meta.line, "metadata.name is required".into()));
    }
}

// --- manifests -----------------------------------------------------------------------

/// One YAML document of the input.
pub struct Doc {
    pub file: String,
    pub root: Node,
}

impl Doc {
    fn api_version(&self) -> &str {
        self.root.get("apiVersion").and_then(Node::str).unwrap_or_default()
    }
    fn kind(&self) -> &str {
        self.root.get("kind").and_then(Node::str).unwrap_or_default()
    }
    fn name(&self) -> &str {
        self.root.at(&["metadata", "name"]).and_then(Node::str).unwrap_or_default()
    }
    fn namespace(&self) -> Option<&str> {
        self.root.at(&["metadata", "namespace"]).and_then(Node::str)
    }
    fn is_cnpg(&self, kind: &str) -> bool {
        self.api_version() == "postgresql.cnpg.io/v1" && self.kind() == kind
    }
}

#[derive(Debug, Default)]
pub struct Report {
    /// `file:line: Kind/name: path: message`, one per problem.
    pub issues: Vec<String>,
    /// Documents checked against a CRD schema.
    pub schema_checked: usize,
    /// Clusters checked against the spock rules.
    pub spock_clusters: usize,
    /// CEL rules met in the schemas on the way (not evaluated).
    pub cel_rules_not_evaluated: usize,
}

impl Report {
    /// Issues that contain `needle`.
    pub fn matching(&self, needle: &str) -> Vec<&String> {
        self.issues.iter().filter(|i| i.contains(needle)).collect()
    }
}

/// `*.yaml` and `*.yml` files under `dir`, recursively, sorted, as (path, text).
pub fn yaml_files(dir: &Path) -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                out.push((path.display().to_string(), text));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out
}

/// Checks the YAML texts `files` (name, text): every document parses (no duplicate
/// keys); every `postgresql.cnpg.io` document matches its CRD; ConfigMap data are
/// strings; every Cluster satisfies [`spock_rules`].
pub fn check(crds: &Crds, files: &[(String, String)]) -> Report {
    let mut report = Report::default();
    let mut docs = Vec::new();
    for (file, text) in files {
        match parse_yaml(text) {
            Ok(roots) => docs.extend(roots.into_iter().map(|root| Doc { file: file.clone(), root })),
            Err(e) => report.issues.push(format!("{file}: YAML: {e}")),
        }
    }
    for doc in &docs {
        let mut issues: Vec<(usize, String)> = Vec::new();
        let api_version = doc.api_version();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        if !matches!(doc.root.value, Value::Map(_)) || api_version.is_empty() || doc.kind().is_empty() {
            issues.push((doc.root.line, "not a Kubernetes object (apiVersion and kind are required)".into()));
        } else if let Some(crd) = crds.by_kind.get(&(group.to_string(), doc.kind().to_string())) {
            match crd.schemas.get(version) {
                None => issues.push((doc.root.line, format!("{} has no served version {version:?}", crd.kind))),
                Some(schema) => {
                    report.schema_checked += 1;
                    let mut walker = Walker { issues: &mut issues, cel_rules: 0, patterns: HashMap::new() };
                    walker.check(schema, &doc.root, "");
                    report.cel_rules_not_evaluated += walker.cel_rules;
                    match doc.root.get("metadata") {
                        Some(meta) => check_metadata(meta, &mut issues),
                        None => issues.push((doc.root.line, "metadata is required".into())),
                    }
                }
            }
        } else if group == "postgresql.cnpg.io" {
            issues.push((doc.root.line, format!("no CRD for {} in tests/cnpg/crds/", doc.kind())));
        } else if api_version == "v1" && doc.kind() == "ConfigMap" {
            if let Some(Value::Map(data)) = doc.root.get("data").map(|d| &d.value) {
                for (k, v) in data.iter().filter(|(_, v)| v.str().is_none()) {
                    let hint = v.yaml11_bool.as_ref().map(|w| format!(" (a bare {w} is a YAML 1.1 boolean: quote it)"));
                    issues.push((
                        v.line,
                        format!("data.{k}: must be string, got {}{}", v.render(), hint.unwrap_or_default()),
                    ));
                }
            }
        }
        if doc.is_cnpg("Cluster") {
            report.spock_clusters += 1;
            let spec = doc.root.get("spec").cloned().unwrap_or(Node {
                value: Value::Null,
                line: doc.root.line,
                yaml11_bool: None,
            });
            spock_rules(doc, &spec, &docs, &mut issues);
        }
        for (line, msg) in issues {
            report.issues.push(format!("{}:{line}: {}/{}: {msg}", doc.file, doc.kind(), doc.name()));
        }
    }
    report
}

/// The PostgreSQL major of a Cluster: `imageCatalogRef.major`, or the leading number of
/// the `imageName` tag.
fn pg_major(spec: &Node) -> Option<i64> {
    if let Some(r) = spec.get("imageCatalogRef") {
        return r.get("major").and_then(Node::int);
    }
    let image = spec.get("imageName").and_then(Node::str)?;
    let image = image.split('@').next().unwrap_or(image);
    let tag = image.rsplit_once(':').map(|(_, t)| t).filter(|t| !t.contains('/'))?;
    let digits: String = tag.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// What a spock node needs in its Cluster (docs/cnpg.md):
/// * a `.spec.postgresql.extensions` entry `spock` with `image.reference`, or an
///   `imageCatalogRef` whose catalog (among the manifests) lists spock for that major;
/// * `spock` in `.spec.postgresql.shared_preload_libraries`, and
///   `shared_preload_libraries` not in `parameters` (CNPG fixes it; its webhook rejects it);
/// * `wal_level: logical`, `track_commit_timestamp: "on"` (a string, set explicitly);
/// * `output_plugin_libraries` listing `spock_output` (PostgreSQL >= 18.6);
/// * PostgreSQL major >= 18 (`extension_control_path`).
pub fn spock_rules(doc: &Doc, spec: &Node, docs: &[Doc], issues: &mut Vec<(usize, String)>) {
    let mut issue = |at: &Node, msg: String| issues.push((at.line, msg));
    let major = pg_major(spec);
    match major {
        None => issue(
            spec,
            "the PostgreSQL major is unknown: set imageCatalogRef.major or an imageName tagged <major>...".into(),
        ),
        Some(m) if m < 18 => {
            issue(spec, format!("PostgreSQL {m}: spock's image needs PostgreSQL >= 18 (extension_control_path)"))
        }
        Some(_) => {}
    }
    let pg = spec.get("postgresql");
    let extension = pg
        .and_then(|p| p.get("extensions"))
        .map(Node::seq)
        .unwrap_or_default()
        .iter()
        .find(|e| e.get("name").and_then(Node::str) == Some("spock"));
    match extension {
        None => issue(spec, "spec.postgresql.extensions has no entry named spock".into()),
        Some(e) if e.at(&["image", "reference"]).and_then(Node::str).is_some_and(|r| !r.is_empty()) => {}
        Some(e) => match spec.get("imageCatalogRef") {
            None => issue(e, "extension spock has no image.reference and the Cluster has no imageCatalogRef".into()),
            Some(r) => {
                let kind = r.get("kind").and_then(Node::str).unwrap_or_default();
                let name = r.get("name").and_then(Node::str).unwrap_or_default();
                let catalog = docs.iter().find(|d| {
                    d.is_cnpg(kind)
                        && d.name() == name
                        && (kind != "ImageCatalog" || d.namespace().is_none() || d.namespace() == doc.namespace())
                });
                match catalog {
                    None => issue(r, format!("catalog {kind} {name} is not among the manifests")),
                    Some(c) => {
                        let lists_spock =
                            c.root.at(&["spec", "images"]).map(Node::seq).unwrap_or_default().iter().any(|img| {
                                img.get("major").and_then(Node::int) == major
                                    && img.get("extensions").map(Node::seq).unwrap_or_default().iter().any(|x| {
                                        x.get("name").and_then(Node::str) == Some("spock")
                                            && x.at(&["image", "reference"])
                                                .and_then(Node::str)
                                                .is_some_and(|s| !s.is_empty())
                                    })
                            });
                        if !lists_spock {
                            let m = major.map(|m| m.to_string()).unwrap_or_else(|| "?".into());
                            issue(
                                r,
                                format!(
                                    "catalog {kind} {name} ({}) lists no spock extension image for PostgreSQL {m}",
                                    c.file
                                ),
                            );
                        }
                    }
                }
            }
        },
    }
    let preload = pg.and_then(|p| p.get("shared_preload_libraries"));
    if !preload.map(Node::seq).unwrap_or_default().iter().any(|l| l.str() == Some("spock")) {
        issue(preload.or(pg).unwrap_or(spec), "spock is not in spec.postgresql.shared_preload_libraries".into());
    }
    let params = pg.and_then(|p| p.get("parameters"));
    let param = |name: &str| params.and_then(|p| p.get(name));
    let at = params.or(pg).unwrap_or(spec);
    if let Some(p) = param("shared_preload_libraries") {
        issue(p, "shared_preload_libraries in parameters: CloudNativePG fixes it (its webhook rejects it); use spec.postgresql.shared_preload_libraries".into());
    }
    match param("wal_level") {
        Some(v) if v.str() == Some("logical") => {}
        Some(v) => issue(v, format!("wal_level is {}: spock needs logical", v.render())),
        None => issue(at, "parameters.wal_level must be set to logical".into()),
    }
    match param("track_commit_timestamp") {
        Some(v) if v.str() == Some("on") => {}
        Some(v) if v.yaml11_bool.is_some() => issue(
            v,
            format!(
                "track_commit_timestamp is the boolean {}: write \"on\" (a bare {} is a YAML 1.1 boolean)",
                v.render(),
                v.yaml11_bool.as_deref().unwrap_or_default()
            ),
        ),
        Some(v) => {
            issue(v, format!("track_commit_timestamp is {}: spock needs \"on\" (conflict resolution)", v.render()))
        }
        None => issue(at, "parameters.track_commit_timestamp must be \"on\" (conflict resolution)".into()),
    }
    match param("output_plugin_libraries") {
        Some(v) if v.str().is_some_and(|s| s.split(',').any(|p| p.trim() == "spock_output")) => {}
        Some(v) => issue(v, format!("output_plugin_libraries {} does not list spock_output", v.render())),
        None => issue(
            at,
            "parameters.output_plugin_libraries must list spock_output (PostgreSQL >= 18.6 refuses other plugins)"
                .into(),
        ),
    }
}
