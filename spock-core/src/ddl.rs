//! DDL and sequence replication through the `spock.queue` table, as pgEdge Spock does
//! it: what a queue row's `message_type` and `message` (json) hold, the `SET
//! search_path` prefix of queued SQL, where AutoDDL puts a table it created or altered
//! (`spock.include_ddl_repset`), and how far a subscriber moves a sequence.
//!
//! Layouts (Spock's `spock_functions.c`, `spock_sequences.c`, `spock_apply.c`):
//!
//! | type | written by | `message` |
//! |---|---|---|
//! | `Q` | `spock.replicate_ddl` | a JSON string: `"SET search_path TO a, b; <command>"` |
//! | `D` | AutoDDL | a JSON string, the same shape (some statements without the prefix) |
//! | `A` | `repset_add_table(..., synchronize_data := true)` | `{"schema_name": "s","table_name": "t"}` |
//! | `S` | `sync_seq`, `repset_add_seq(..., true)` | `{"schema_name": "s","sequence_name": "q","last_value": "42"}` |
//!
//! Queue rows travel as ordinary INSERTs of `spock.queue`; the output plugin sends a
//! row to a subscriber when its `replication_sets` share a name with the
//! subscription's sets, or when they are NULL (a message for everyone).

use crate::ident::{split_identifier_list, IdentListError};

/// `message_type` of SQL queued by `spock.replicate_ddl`.
pub const QUEUE_SQL: u8 = b'Q';
/// `message_type` of DDL queued by AutoDDL.
pub const QUEUE_DDL: u8 = b'D';
/// `message_type` of a table synchronization request.
pub const QUEUE_TABLE_SYNC: u8 = b'A';
/// `message_type` of a sequence position.
pub const QUEUE_SEQUENCE: u8 = b'S';

/// The replication set AutoDDL queues statements into (Spock's
/// `DEFAULT_INSONLY_REPSET_NAME`).
pub const AUTODDL_REPLICATION_SET: &str = "default_insert_only";
/// The set `spock.replicate_ddl` uses when none is given.
pub const REPLICATE_DDL_DEFAULT_SET: &str = "ddl_sql";
/// Set for tables with a replica identity (`include_ddl_repset`).
pub const DEFAULT_SET: &str = "default";
/// Set for tables without one.
pub const DEFAULT_INSERT_ONLY_SET: &str = "default_insert_only";

/// A replication set every node gets when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeDefaultSet {
    /// `set_name`.
    pub name: &'static str,
    /// `replicate_insert`.
    pub replicate_insert: bool,
    /// `replicate_update`.
    pub replicate_update: bool,
    /// `replicate_delete`.
    pub replicate_delete: bool,
    /// `replicate_truncate`.
    pub replicate_truncate: bool,
}

/// The sets `spock.node_create` makes, as Spock does: `default` publishes every
/// action, `default_insert_only` INSERT and TRUNCATE (tables without a replica
/// identity), `ddl_sql` INSERT only (the `spock.queue` rows of `replicate_ddl`).
/// A subscription created without `replication_sets` subscribes to all three.
pub const NODE_DEFAULT_SETS: [NodeDefaultSet; 3] = [
    NodeDefaultSet {
        name: DEFAULT_SET,
        replicate_insert: true,
        replicate_update: true,
        replicate_delete: true,
        replicate_truncate: true,
    },
    NodeDefaultSet {
        name: DEFAULT_INSERT_ONLY_SET,
        replicate_insert: true,
        replicate_update: false,
        replicate_delete: false,
        replicate_truncate: true,
    },
    NodeDefaultSet {
        name: REPLICATE_DDL_DEFAULT_SET,
        replicate_insert: true,
        replicate_update: false,
        replicate_delete: false,
        replicate_truncate: false,
    },
];

/// How far ahead of its current value `spock.sync_seq` announces a sequence
/// (Spock's `SEQUENCE_REPLICATION_MIN_CACHE`, the initial `sequence_state.cache_size`).
pub const SEQUENCE_SYNC_MARGIN: i32 = 1000;

/// A decoded `spock.queue` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueuedMessage {
    /// `Q`: SQL from `spock.replicate_ddl`.
    Sql(String),
    /// `D`: a statement captured by AutoDDL.
    Ddl(String),
    /// `A`: synchronize a table's data.
    TableSync {
        /// Schema of the table.
        schema: String,
        /// Table name.
        table: String,
    },
    /// `S`: a sequence's position.
    Sequence {
        /// Schema of the sequence.
        schema: String,
        /// Sequence name.
        name: String,
        /// The value the subscriber's sequence should have reached.
        last_value: i64,
    },
}

/// Why a queue row could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueMessageError {
    /// `message_type` is none of Q, D, A, S.
    #[error("unknown queued message type '{0}'")]
    UnknownType(char),
    /// The json is not valid.
    #[error("malformed message in queued message tuple: {0}")]
    Malformed(String),
    /// A key the message type needs is missing.
    #[error("missing {key} in {what} message")]
    Missing {
        /// The key.
        key: &'static str,
        /// The message kind.
        what: &'static str,
    },
}

fn malformed(what: impl Into<String>) -> QueueMessageError {
    QueueMessageError::Malformed(what.into())
}

/// A JSON string literal, escaped as PostgreSQL's `escape_json` does.
pub fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

impl QueuedMessage {
    /// The row's `message_type`.
    pub fn message_type(&self) -> u8 {
        match self {
            QueuedMessage::Sql(_) => QUEUE_SQL,
            QueuedMessage::Ddl(_) => QUEUE_DDL,
            QueuedMessage::TableSync { .. } => QUEUE_TABLE_SYNC,
            QueuedMessage::Sequence { .. } => QUEUE_SEQUENCE,
        }
    }

    /// The row's `message`, byte for byte what Spock writes.
    pub fn to_json(&self) -> String {
        match self {
            QueuedMessage::Sql(sql) | QueuedMessage::Ddl(sql) => json_string(sql),
            QueuedMessage::TableSync { schema, table } => {
                format!("{{\"schema_name\": {},\"table_name\": {}}}", json_string(schema), json_string(table))
            }
            QueuedMessage::Sequence { schema, name, last_value } => format!(
                "{{\"schema_name\": {},\"sequence_name\": {},\"last_value\": \"{last_value}\"}}",
                json_string(schema),
                json_string(name)
            ),
        }
    }

    /// Decodes a row's `message_type` and `message`. Unknown keys in object messages
    /// are ignored (Spock rejects them; ignoring keeps newer senders working).
    pub fn decode(message_type: u8, json: &str) -> Result<QueuedMessage, QueueMessageError> {
        let value: serde_json::Value = serde_json::from_str(json).map_err(|e| malformed(e.to_string()))?;
        match message_type {
            QUEUE_SQL | QUEUE_DDL => {
                let sql = value.as_str().ok_or_else(|| malformed("root is not a string"))?.to_string();
                Ok(if message_type == QUEUE_SQL { QueuedMessage::Sql(sql) } else { QueuedMessage::Ddl(sql) })
            }
            QUEUE_TABLE_SYNC => {
                let obj = value.as_object().ok_or_else(|| malformed("root is not object"))?;
                Ok(QueuedMessage::TableSync {
                    schema: string_key(obj, "schema_name", "relation")?,
                    table: string_key(obj, "table_name", "relation")?,
                })
            }
            QUEUE_SEQUENCE => {
                let obj = value.as_object().ok_or_else(|| malformed("root is not object"))?;
                let raw = match obj.get("last_value") {
                    None | Some(serde_json::Value::Null) => {
                        return Err(QueueMessageError::Missing { key: "last_value", what: "sequence" })
                    }
                    Some(serde_json::Value::String(s)) => s.trim().to_string(),
                    Some(serde_json::Value::Number(n)) => n.to_string(),
                    Some(other) => return Err(malformed(format!("unexpected type for key 'last_value': {other}"))),
                };
                let last_value =
                    raw.parse::<i64>().map_err(|_| malformed(format!("last_value \"{raw}\" is not a bigint")))?;
                Ok(QueuedMessage::Sequence {
                    schema: string_key(obj, "schema_name", "sequence")?,
                    name: string_key(obj, "sequence_name", "sequence")?,
                    last_value,
                })
            }
            other => Err(QueueMessageError::UnknownType(char::from(other))),
        }
    }
}

fn string_key(
    obj: &serde_json::Map<String, serde_json::Value>,
    key: &'static str,
    what: &'static str,
) -> Result<String, QueueMessageError> {
    match obj.get(key) {
        None | Some(serde_json::Value::Null) => Err(QueueMessageError::Missing { key, what }),
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(malformed(format!("unexpected type for key '{key}': {other}"))),
    }
}

/// Whether the table `schema`.`table` is the queue table `spock.queue`, which both
/// the output plugin (it publishes queue rows by their own rules) and the apply
/// worker (it acts on the rows it inserts) recognise by this one rule.
pub fn is_queue_table(schema: &str, table: &str) -> bool {
    schema == "spock" && table == "queue"
}

/// Whether a queue row with `row_sets` (NULL = `None`) goes to a subscriber of
/// `subscribed` (set names): NULL means every subscriber, otherwise one common name.
pub fn queue_row_wanted(row_sets: Option<&[Option<String>]>, subscribed: &[&str]) -> bool {
    match row_sets {
        None => true,
        Some(sets) => sets.iter().flatten().any(|s| subscribed.contains(&s.as_str())),
    }
}

/// The `SET search_path TO ...; ` prefix Spock puts before queued SQL so that the
/// subscriber resolves names as the origin did. `search_path` is the setting's value
/// (parsed like `SplitIdentifierString`); each schema is quoted like the server's
/// `quote_identifier` ([`crate::ident::quote_identifier`]). A path naming no schema
/// gives `SET search_path TO ''; `.
pub fn search_path_command(search_path: &str) -> Result<String, IdentListError> {
    let schemas = split_identifier_list(search_path, ',')?;
    if schemas.is_empty() {
        return Ok("SET search_path TO ''; ".to_string());
    }
    let quoted: Vec<String> = schemas.iter().map(|s| crate::ident::quote_identifier(s)).collect();
    Ok(format!("SET search_path TO {}; ", quoted.join(", ")))
}

/// How an ALTER TABLE changed a table's primary key / replica identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityChange {
    /// Neither gained nor lost.
    Unchanged,
    /// The table has one now and the statement asked for it.
    Added,
    /// The table has none now and the statement may have removed it.
    Dropped,
}

/// Spock's `classify_alter_pkri_change`: combines the table's state after the ALTER
/// with what its subcommands could have done.
pub fn classify_identity_change(
    has_identity_after: bool,
    adds_identity: bool,
    may_drop_identity: bool,
) -> IdentityChange {
    if has_identity_after && adds_identity {
        IdentityChange::Added
    } else if !has_identity_after && may_drop_identity {
        IdentityChange::Dropped
    } else {
        IdentityChange::Unchanged
    }
}

/// One replication set a table is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetMembership {
    /// Set name.
    pub name: String,
    /// Whether the set replicates UPDATE or DELETE (needs a replica identity).
    pub replicates_update_or_delete: bool,
}

impl SetMembership {
    fn is_default(&self) -> bool {
        self.name == DEFAULT_SET || self.name == DEFAULT_INSERT_ONLY_SET
    }
}

/// What is known about a table after a DDL statement ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFacts {
    /// Replicable: permanent (neither UNLOGGED nor TEMP) and not in a schema kept
    /// out of replication sets (spock.reserved_object).
    pub logged: bool,
    /// Rows can be found by key: a replica identity index (primary key or `USING
    /// INDEX`) or `REPLICA IDENTITY FULL`.
    pub has_identity: bool,
    /// Its current memberships in the local node's sets.
    pub memberships: Vec<SetMembership>,
}

/// The statement that touched the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableStatement {
    /// CREATE TABLE, CREATE TABLE AS, a table created in CREATE SCHEMA.
    Create,
    /// ALTER TABLE, with its effect on the identity.
    Alter(IdentityChange),
}

/// Something to tell the user about a placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementNote {
    /// WARNING: the table lost its identity while in a custom set that replicates
    /// UPDATE/DELETE; it moves to `default_insert_only`.
    IdentityLostInCustomSet,
    /// NOTICE: the table gained a primary key while in a custom set; membership
    /// is left alone.
    IdentityGainedInCustomSet,
}

/// What AutoDDL does with a table's replication-set memberships.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Placement {
    /// Sets to remove the table from.
    pub remove_from: Vec<String>,
    /// Set to add it to (when not already a member).
    pub add_to: Option<String>,
    /// What to report.
    pub note: Option<PlacementNote>,
}

/// Where `spock.include_ddl_repset` puts a table (Spock's
/// `apply_repset_policy_for_reloid`): tables with a replica identity go to
/// `default`, others to `default_insert_only`; unlogged ones leave every set; an
/// ALTER TABLE that does not change the identity leaves memberships alone, and
/// memberships in custom sets are respected unless they would break replication.
pub fn place_table(statement: TableStatement, facts: &TableFacts) -> Placement {
    let all = |f: &dyn Fn(&SetMembership) -> bool| {
        facts.memberships.iter().filter(|m| f(m)).map(|m| m.name.clone()).collect::<Vec<_>>()
    };
    if !facts.logged {
        return Placement { remove_from: all(&|_| true), add_to: None, note: None };
    }
    let mut note = None;
    if let TableStatement::Alter(change) = statement {
        let in_upd_del = facts.memberships.iter().any(|m| m.replicates_update_or_delete);
        let in_custom = facts.memberships.iter().any(|m| !m.is_default());
        match change {
            IdentityChange::Unchanged => return Placement::default(),
            IdentityChange::Dropped => {
                if in_upd_del {
                    if in_custom {
                        note = Some(PlacementNote::IdentityLostInCustomSet);
                    }
                } else if in_custom {
                    return Placement::default();
                }
            }
            IdentityChange::Added => {
                if in_custom {
                    return Placement { note: Some(PlacementNote::IdentityGainedInCustomSet), ..Placement::default() };
                }
            }
        }
    }
    let member = |name: &str| facts.memberships.iter().any(|m| m.name == name);
    if facts.has_identity {
        Placement {
            remove_from: all(&|m| m.name != DEFAULT_SET),
            add_to: (!member(DEFAULT_SET)).then(|| DEFAULT_SET.to_string()),
            note,
        }
    } else {
        Placement {
            remove_from: all(&|m| m.replicates_update_or_delete && m.name != DEFAULT_INSERT_ONLY_SET),
            add_to: (!member(DEFAULT_INSERT_ONLY_SET)).then(|| DEFAULT_INSERT_ONLY_SET.to_string()),
            note,
        }
    }
}

/// A sequence's state: its `last_value`, direction and bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalSequence {
    /// `last_value` of the sequence relation.
    pub last_value: i64,
    /// `increment_by`.
    pub increment: i64,
    /// `min_value`.
    pub min_value: i64,
    /// `max_value`.
    pub max_value: i64,
}

/// The value to `setval` a subscriber's sequence to for a received `S` message, or
/// `None` to leave it: a sequence never moves back (in its direction of increment),
/// and the value is clamped to the sequence's bounds so that a margin added on the
/// provider cannot make the apply fail.
pub fn sequence_catch_up(local: LocalSequence, remote_last_value: i64) -> Option<i64> {
    let target = remote_last_value.clamp(local.min_value.min(local.max_value), local.max_value.max(local.min_value));
    let ahead = if local.increment >= 0 { target > local.last_value } else { target < local.last_value };
    ahead.then_some(target)
}

/// The value `spock.sync_seq` announces for `seq` (on the provider): `margin`
/// values further in its direction of increment, so that subscribers stay ahead of
/// what the provider hands out meanwhile, clamped to the sequence's bounds.
pub fn sequence_sync_target(seq: LocalSequence, margin: i64) -> i64 {
    if seq.increment > 0 {
        seq.last_value.saturating_add(margin).min(seq.max_value)
    } else {
        seq.last_value.saturating_sub(margin).max(seq.min_value)
    }
}

#[cfg(test)]
mod tests;
