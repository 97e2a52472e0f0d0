//! Replication sets: which changes of which table a subscriber receives.
//!
//! A table can be in several sets, each with its own action flags, an optional
//! column list and an optional row filter. For the sets a subscriber subscribed to:
//! an action is published when any of the table's sets publishes it; the columns are
//! the union of the column lists (a set without a list contributes all columns);
//! every row filter must accept the row (a NULL result rejects it). Row filters are
//! evaluated by the caller (the server evaluates expressions) through a hook.

use std::collections::BTreeSet;

/// A change action a set can publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// INSERT.
    Insert,
    /// UPDATE.
    Update,
    /// DELETE.
    Delete,
    /// TRUNCATE.
    Truncate,
}

/// A replication set (`spock.replication_set`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepSet {
    /// `set_id`.
    pub id: u32,
    /// `set_name`.
    pub name: String,
    /// `replicate_insert`.
    pub replicate_insert: bool,
    /// `replicate_update`.
    pub replicate_update: bool,
    /// `replicate_delete`.
    pub replicate_delete: bool,
    /// `replicate_truncate`.
    pub replicate_truncate: bool,
}

impl RepSet {
    /// Whether the set publishes `action`.
    pub fn replicates(&self, action: Action) -> bool {
        match action {
            Action::Insert => self.replicate_insert,
            Action::Update => self.replicate_update,
            Action::Delete => self.replicate_delete,
            Action::Truncate => self.replicate_truncate,
        }
    }

    /// Whether the set publishes UPDATE or DELETE, so its tables need a replica
    /// identity.
    pub fn needs_replica_identity(&self) -> bool {
        self.replicate_update || self.replicate_delete
    }
}

/// A table's membership in one set (`spock.replication_set_table`), with the row
/// filter in whatever form the caller evaluates (`F`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership<F> {
    /// The set.
    pub set_id: u32,
    /// `set_att_list`: the published columns, `None` for all.
    pub columns: Option<Vec<String>>,
    /// `set_row_filter`.
    pub row_filter: Option<F>,
}

/// Which columns are published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnSelection {
    /// Every column.
    All,
    /// Only these columns.
    Only(BTreeSet<String>),
}

impl ColumnSelection {
    /// Whether the column named `name` is published.
    pub fn includes(&self, name: &str) -> bool {
        match self {
            ColumnSelection::All => true,
            ColumnSelection::Only(set) => set.contains(name),
        }
    }
}

/// What a subscriber gets of one table: the combination of its memberships in the
/// subscribed sets. Build it once per table and connection (and again after the
/// catalog changes), then ask it per change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePublication<F> {
    insert: bool,
    update: bool,
    delete: bool,
    truncate: bool,
    /// Published columns.
    pub columns: ColumnSelection,
    /// Filters that must all accept a row.
    pub row_filters: Vec<F>,
}

impl<F: Clone> TablePublication<F> {
    /// Combines `memberships` of a table, keeping those in `subscribed` sets.
    pub fn new(subscribed: &[RepSet], memberships: &[Membership<F>]) -> TablePublication<F> {
        let mut publication = TablePublication {
            insert: false,
            update: false,
            delete: false,
            truncate: false,
            columns: ColumnSelection::Only(BTreeSet::new()),
            row_filters: Vec::new(),
        };
        for m in memberships {
            let Some(set) = subscribed.iter().find(|s| s.id == m.set_id) else {
                continue;
            };
            publication.insert |= set.replicate_insert;
            publication.update |= set.replicate_update;
            publication.delete |= set.replicate_delete;
            publication.truncate |= set.replicate_truncate;
            match (&mut publication.columns, &m.columns) {
                (ColumnSelection::All, _) => {}
                (sel @ ColumnSelection::Only(_), None) => *sel = ColumnSelection::All,
                (ColumnSelection::Only(cols), Some(list)) => cols.extend(list.iter().cloned()),
            }
            if let Some(f) = &m.row_filter {
                publication.row_filters.push(f.clone());
            }
        }
        if !publication.is_member() {
            publication.columns = ColumnSelection::All;
        }
        publication
    }
}

impl<F> TablePublication<F> {
    /// Every column of every row, for `actions` only (no set involved).
    fn unfiltered(actions: &[Action]) -> TablePublication<F> {
        TablePublication {
            insert: actions.contains(&Action::Insert),
            update: actions.contains(&Action::Update),
            delete: actions.contains(&Action::Delete),
            truncate: actions.contains(&Action::Truncate),
            columns: ColumnSelection::All,
            row_filters: Vec::new(),
        }
    }

    /// The same publication with each row filter turned into the form the caller
    /// evaluates (a filter prepared once from its stored text, say).
    pub fn map_filters<G>(self, f: impl FnMut(F) -> G) -> TablePublication<G> {
        TablePublication {
            insert: self.insert,
            update: self.update,
            delete: self.delete,
            truncate: self.truncate,
            columns: self.columns,
            row_filters: self.row_filters.into_iter().map(f).collect(),
        }
    }

    /// Whether the table is in any subscribed set that publishes anything.
    pub fn is_member(&self) -> bool {
        self.insert || self.update || self.delete || self.truncate
    }

    /// Whether changes of kind `action` are published.
    pub fn publishes(&self, action: Action) -> bool {
        match action {
            Action::Insert => self.insert,
            Action::Update => self.update,
            Action::Delete => self.delete,
            Action::Truncate => self.truncate,
        }
    }

    /// Whether a row passes every row filter. `eval` evaluates one filter on the row
    /// (the new row for INSERT/UPDATE, the old one for DELETE) and returns `None` for
    /// SQL NULL, which rejects the row.
    fn row_passes<E>(&self, mut eval: impl FnMut(&F) -> Result<Option<bool>, E>) -> Result<bool, E> {
        for f in &self.row_filters {
            if eval(f)? != Some(true) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether the change is sent: the action is published and every filter accepts
    /// the row. TRUNCATE has no row and ignores filters.
    pub fn change_passes<E>(&self, action: Action, eval: impl FnMut(&F) -> Result<Option<bool>, E>) -> Result<bool, E> {
        if !self.publishes(action) {
            return Ok(false);
        }
        if action == Action::Truncate {
            return Ok(true);
        }
        self.row_passes(eval)
    }
}

/// What one output plugin connection sends of the table `schema`.`table`:
///
/// * a connection that catches up one table (`only_table`, the table sync's
///   `spock.replicate_only_table`) gets every change of that table, whole, and
///   nothing of any other table, `spock.queue` included;
/// * otherwise `spock.queue` (see [`crate::ddl::is_queue_table`]), in no set, sends
///   every column of its INSERTs, and nothing else; which rows go to whom is
///   [`crate::ddl::queue_row_wanted`];
/// * any other table: its `memberships` (asked for only then) in the subscribed
///   `sets`, combined by [`TablePublication::new`].
pub fn table_publication<F: Clone>(
    schema: &str,
    table: &str,
    only_table: Option<(&str, &str)>,
    sets: &[RepSet],
    memberships: impl FnOnce() -> Vec<Membership<F>>,
) -> TablePublication<F> {
    const ALL: [Action; 4] = [Action::Insert, Action::Update, Action::Delete, Action::Truncate];
    match only_table {
        Some(only) if only == (schema, table) => TablePublication::unfiltered(&ALL),
        Some(_) => TablePublication::unfiltered(&[]),
        None if crate::ddl::is_queue_table(schema, table) => TablePublication::unfiltered(&[Action::Insert]),
        None => TablePublication::new(sets, &memberships()),
    }
}

/// A replication set name that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("replication set {0} not found")]
pub struct UnknownRepSet(pub String);

/// Looks up the sets a subscriber named, in its order, failing on the first unknown.
pub fn resolve_set_names<S: AsRef<str>>(names: &[S], available: &[RepSet]) -> Result<Vec<RepSet>, UnknownRepSet> {
    names
        .iter()
        .map(|n| {
            available
                .iter()
                .find(|s| s.name == n.as_ref())
                .cloned()
                .ok_or_else(|| UnknownRepSet(n.as_ref().to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests;
