//! Row changes applied through the executor, as PostgreSQL's own apply worker does
//! (`ExecSimpleRelationInsert/Update/Delete`, rows found by replica identity index):
//! constraints, indexes and replica triggers behave as for any write.
//!
//! [`LocalRelation`] maps a remote relation (`R` message) onto the local table by
//! schema, table and column names, with the input functions of each column; it is
//! rebuilt when the remote relation changes or the local table is invalidated.

use std::ffi::{CStr, CString};

use pgrx::pg_sys;
use pgrx::{PgList, PgSqlErrorCode};
use spock_core::proto::{Datum, Relation as RemoteRelation, Tuple};

use crate::error::PgError;

/// How one local column receives its value.
struct ColumnIn {
    text_in: Box<pg_sys::FmgrInfo>,
    binary_in: Option<Box<pg_sys::FmgrInfo>>,
    typioparam: pg_sys::Oid,
    typmod: i32,
    type_oid: pg_sys::Oid,
    name: String,
}

/// A remote relation mapped onto a local table.
pub struct LocalRelation {
    /// Local table oid.
    pub relid: pg_sys::Oid,
    /// `schema.table`, for messages.
    pub qualified: String,
    /// For each remote column, the local attribute index (0-based).
    attmap: Vec<usize>,
    /// Local attribute count.
    natts: usize,
    /// Per local attribute: how to read remote values into it (mapped columns only).
    columns: Vec<Option<ColumnIn>>,
    /// Local columns the remote side does not send that have a default:
    /// (attribute index, prepared default expression).
    defaults: Vec<(usize, *mut pg_sys::ExprState)>,
    /// Index used to find rows (replica identity or primary key).
    pub identity_index: pg_sys::Oid,
    /// REPLICA IDENTITY FULL without index: rows are found by sequential scan.
    pub identity_full: bool,
    /// Per local attribute: whether a search for a row needs it (the identity
    /// index's key columns; every column without an index).
    search_atts: Vec<bool>,
    /// Columns applied as local + (new - old) (crate::delta): attribute index,
    /// `spock.delta_apply` for its type, and the type's length and by-value flag.
    deltas: Vec<(usize, Box<pg_sys::FmgrInfo>, i16, bool)>,
    /// The memory of the input functions and default expressions above, freed with
    /// the mapping (last: the fields above point into it).
    _memory: RelationMemory,
}

/// A memory context of one [`LocalRelation`] (a child of `CacheMemoryContext`),
/// deleted when the mapping is dropped: a mapping is rebuilt at every relcache
/// invalidation of its table, and its lookups must not pile up in the cache.
struct RelationMemory(pg_sys::MemoryContext);

impl RelationMemory {
    /// SAFETY: in a backend with a relation cache.
    unsafe fn new() -> RelationMemory {
        // SAFETY: a small child of CacheMemoryContext, owned by the returned value.
        RelationMemory(unsafe {
            pg_sys::AllocSetContextCreateInternal(
                pg_sys::CacheMemoryContext,
                c"spock apply relation".as_ptr(),
                0,
                1024,
                8 * 1024 * 1024,
            )
        })
    }

    /// Runs `f` with this context current; the caller's is current again when `f`
    /// returns or raises.
    ///
    /// SAFETY: `f` allocates nothing that must outlive the mapping here.
    unsafe fn enter<T>(&self, f: impl FnOnce() -> T) -> T {
        struct Back(pg_sys::MemoryContext);
        impl Drop for Back {
            fn drop(&mut self) {
                // SAFETY: the context current before `enter`, alive around it.
                unsafe { pg_sys::MemoryContextSwitchTo(self.0) };
            }
        }
        // SAFETY: the context lives as long as self.
        let _back = Back(unsafe { pg_sys::MemoryContextSwitchTo(self.0) });
        f()
    }
}

impl Drop for RelationMemory {
    fn drop(&mut self) {
        // SAFETY: made by `new` and owned here; never current outside `enter`, which
        // switches back even when an error unwinds through it.
        unsafe { pg_sys::MemoryContextDelete(self.0) };
    }
}

/// A value received in binary as receive functions read it: a StringInfo over a
/// palloc'd, NUL-terminated copy (receive functions may keep pointers into it).
///
/// SAFETY: inside a memory context that outlives the value received from it.
pub(crate) unsafe fn string_info_copy(bytes: &[u8]) -> pg_sys::StringInfoData {
    let len = bytes.len();
    // SAFETY: a fresh allocation of len + 1 bytes, filled and terminated here.
    unsafe {
        let data = pg_sys::palloc(len + 1) as *mut u8;
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), data, len);
        *data.add(len) = 0;
        pg_sys::StringInfoData { data: data.cast(), len: len as i32, maxlen: len as i32 + 1, cursor: 0 }
    }
}

fn err(code: PgSqlErrorCode, msg: String) -> ! {
    PgError::new(code, msg).raise()
}

/// SAFETY: `p` is a valid C string.
unsafe fn cstr(p: *const std::ffi::c_char) -> String {
    // SAFETY: forwarded.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

impl LocalRelation {
    /// Maps `remote` onto the local table of the same schema and name.
    ///
    /// SAFETY: must run inside a transaction.
    pub unsafe fn build(remote: &RemoteRelation) -> LocalRelation {
        let qualified = format!("{}.{}", remote.nspname, remote.relname);
        let nsp = CString::new(remote.nspname.as_str()).unwrap_or_default();
        let rel_name = CString::new(remote.relname.as_str()).unwrap_or_default();
        // SAFETY: catalog lookups by name inside a transaction.
        let relid = unsafe {
            let nspid = pg_sys::get_namespace_oid(nsp.as_ptr(), true);
            if nspid == pg_sys::InvalidOid {
                pg_sys::InvalidOid
            } else {
                pg_sys::get_relname_relid(rel_name.as_ptr(), nspid)
            }
        };
        if relid == pg_sys::InvalidOid {
            err(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!("spock: table {qualified} replicated from the provider does not exist on this node"),
            );
        }
        // SAFETY: the relation exists; opened for the lifetime of this function.
        unsafe {
            // Deleted again if the mapping fails below.
            let memory = RelationMemory::new();
            let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
            let relkind = (*(*rel).rd_rel).relkind as u8;
            if relkind != b'r' && relkind != b'p' {
                pg_sys::table_close(rel, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
                err(
                    PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
                    format!("spock: {qualified} is not a table on this node"),
                );
            }
            let desc = (*rel).rd_att;
            let natts = (*desc).natts as usize;
            let mut columns: Vec<Option<ColumnIn>> = (0..natts).map(|_| None).collect();
            let mut attmap = Vec::with_capacity(remote.columns.len());
            for rc in &remote.columns {
                let mut found = None;
                for i in 0..natts {
                    let att = &*pg_sys::TupleDescAttr(desc, i as i32);
                    if att.attisdropped || att.attgenerated != 0 {
                        continue;
                    }
                    if cstr(att.attname.data.as_ptr()) == rc.name {
                        found = Some(i);
                        break;
                    }
                }
                let Some(i) = found else {
                    pg_sys::table_close(rel, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
                    err(
                        PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                        format!(
                            "spock: column \"{}\" of replicated table {qualified} does not exist on this node",
                            rc.name
                        ),
                    );
                };
                let att = &*pg_sys::TupleDescAttr(desc, i as i32);
                let builtin = |o: pg_sys::Oid| u32::from(o) < pg_sys::FirstNormalObjectId;
                let remote_type = pg_sys::Oid::from(rc.type_oid);
                if remote_type != att.atttypid && builtin(remote_type) && builtin(att.atttypid) {
                    pg_sys::table_close(rel, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
                    err(
                        PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                        format!(
                            "spock: column \"{}\" of table {qualified} has type oid {} on the provider and {} here",
                            rc.name,
                            rc.type_oid,
                            u32::from(att.atttypid)
                        ),
                    );
                }
                let mut input = pg_sys::InvalidOid;
                let mut typioparam = pg_sys::InvalidOid;
                pg_sys::getTypeInputInfo(att.atttypid, &mut input, &mut typioparam);
                let mut text_in = Box::new(pg_sys::FmgrInfo::default());
                pg_sys::fmgr_info_cxt(input, text_in.as_mut(), memory.0);
                let binary_in = {
                    let tup = pg_sys::SearchSysCache1(
                        pg_sys::SysCacheIdentifier::TYPEOID as i32,
                        pg_sys::Datum::from(att.atttypid),
                    );
                    let receive = if tup.is_null() {
                        pg_sys::InvalidOid
                    } else {
                        let r = (*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_type>(tup)).typreceive;
                        pg_sys::ReleaseSysCache(tup);
                        r
                    };
                    (receive != pg_sys::InvalidOid).then(|| {
                        let mut f = Box::new(pg_sys::FmgrInfo::default());
                        pg_sys::fmgr_info_cxt(receive, f.as_mut(), memory.0);
                        f
                    })
                };
                columns[i] = Some(ColumnIn {
                    text_in,
                    binary_in,
                    typioparam,
                    typmod: att.atttypmod,
                    type_oid: att.atttypid,
                    name: rc.name.clone(),
                });
                attmap.push(i);
            }
            // Defaults of local columns the provider does not send.
            let mut defaults = Vec::new();
            for (i, mapped) in columns.iter().enumerate().take(natts) {
                let att = &*pg_sys::TupleDescAttr(desc, i as i32);
                if att.attisdropped || att.attgenerated != 0 || mapped.is_some() {
                    continue;
                }
                // The whole expression in the mapping's memory: planning copies nodes
                // flat, so a by-reference constant of the default ('x'::text) keeps
                // pointing into the memory the default was read into. Read into the
                // change's memory, it dangled after the change (a crash in
                // tts_virtual_materialize at the next INSERT that used the default).
                let state = memory.enter(|| {
                    let expr = pg_sys::build_column_default(rel, i as i32 + 1);
                    (!expr.is_null()).then(|| {
                        let planned = pg_sys::expression_planner(expr as *mut pg_sys::Expr);
                        pg_sys::ExecInitExpr(planned, std::ptr::null_mut())
                    })
                });
                if let Some(state) = state {
                    defaults.push((i, state));
                }
            }
            let mut identity_index = pg_sys::RelationGetReplicaIndex(rel);
            if identity_index == pg_sys::InvalidOid {
                identity_index = pg_sys::RelationGetPrimaryKeyIndex(rel, false);
            }
            let identity_full = (*(*rel).rd_rel).relreplident == pg_sys::REPLICA_IDENTITY_FULL as std::ffi::c_char;
            let search_atts = if identity_index == pg_sys::InvalidOid {
                vec![true; natts]
            } else {
                index_key_atts(identity_index, natts)
            };
            let mut deltas = Vec::new();
            for (i, column) in columns.iter().enumerate() {
                let Some(column) = column else { continue };
                if !crate::delta::is_delta_column(relid, i as i32 + 1) {
                    continue;
                }
                match crate::delta::delta_function(column.type_oid) {
                    Some(f) => {
                        let mut info = Box::new(pg_sys::FmgrInfo::default());
                        pg_sys::fmgr_info_cxt(f, info.as_mut(), memory.0);
                        let (mut len, mut byval) = (0i16, false);
                        pg_sys::get_typlenbyval(column.type_oid, &mut len, &mut byval);
                        deltas.push((i, info, len, byval));
                    }
                    None => pgrx::warning!(
                        "spock: column \"{}\" of table {qualified} is marked delta_apply, but spock has no delta_apply for its type: applied as is",
                        column.name
                    ),
                }
            }
            pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
            LocalRelation {
                relid,
                qualified,
                attmap,
                natts,
                columns,
                defaults,
                identity_index,
                identity_full,
                search_atts,
                deltas,
                _memory: memory,
            }
        }
    }

    /// Whether the table has delta-apply columns.
    pub fn has_deltas(&self) -> bool {
        !self.deltas.is_empty()
    }

    /// Sets each delta-apply column of `target` (the remote new row) to local +
    /// (new - old) (`spock.delta_apply`), `old` holding the remote old row and
    /// `local` the row here; a NULL anywhere leaves the new value. Returns whether
    /// some column now differs from the local value (the row must be written even
    /// when the local row wins the rest).
    ///
    /// SAFETY: the three slots have the local descriptor and are filled; `target`
    /// is virtual.
    pub unsafe fn apply_deltas(
        &self,
        target: *mut pg_sys::TupleTableSlot,
        old: *mut pg_sys::TupleTableSlot,
        local: *mut pg_sys::TupleTableSlot,
    ) -> bool {
        let mut changed = false;
        // SAFETY: slot arrays have natts entries; the result is allocated in the
        // current (per-change) memory context, as the other values of `target`.
        unsafe {
            pg_sys::slot_getallattrs(old);
            pg_sys::slot_getallattrs(local);
            for (i, f, len, byval) in &self.deltas {
                let i = *i;
                if *(*target).tts_isnull.add(i) || *(*old).tts_isnull.add(i) || *(*local).tts_isnull.add(i) {
                    continue;
                }
                let (o, n, l) = (*(*old).tts_values.add(i), *(*target).tts_values.add(i), *(*local).tts_values.add(i));
                let sum = pg_sys::FunctionCall3Coll(
                    (f.as_ref() as *const pg_sys::FmgrInfo).cast_mut(),
                    pg_sys::InvalidOid,
                    o,
                    n,
                    l,
                );
                *(*target).tts_values.add(i) = sum;
                changed |= !datumIsEqual(sum, l, *byval, i32::from(*len));
            }
        }
        changed
    }

    /// Fills `target` with the row `local` but for the delta-apply columns, taken
    /// from `with_deltas` (what [`apply_deltas`](Self::apply_deltas) made).
    ///
    /// SAFETY: the three slots have the local descriptor; `local` and `with_deltas`
    /// are filled.
    pub unsafe fn keep_local_but_deltas(
        &self,
        target: *mut pg_sys::TupleTableSlot,
        local: *mut pg_sys::TupleTableSlot,
        with_deltas: *mut pg_sys::TupleTableSlot,
    ) {
        // SAFETY: copies the local row into `target` (materialized in its own
        // memory), then overwrites values; the delta values live in the per-change
        // memory context, which outlives the update.
        unsafe {
            pg_sys::slot_getallattrs(local);
            pg_sys::ExecClearTuple(target);
            std::ptr::copy_nonoverlapping((*local).tts_values, (*target).tts_values, self.natts);
            std::ptr::copy_nonoverlapping((*local).tts_isnull, (*target).tts_isnull, self.natts);
            for (i, ..) in &self.deltas {
                *(*target).tts_values.add(*i) = *(*with_deltas).tts_values.add(*i);
                *(*target).tts_isnull.add(*i) = *(*with_deltas).tts_isnull.add(*i);
            }
            pg_sys::ExecStoreVirtualTuple(target);
            pg_sys::ExecMaterializeSlot(target);
        }
    }

    /// Fills `slot` (of the local descriptor) from a wire tuple. Columns the wire
    /// leaves out keep `base`'s value (the local row, for UPDATE) or get their default
    /// (INSERT, `base` None). `u` (unchanged TOAST) needs a base.
    ///
    /// SAFETY: `slot` has the local table's descriptor; `base` too, and is filled.
    pub unsafe fn fill_slot(
        &self,
        slot: *mut pg_sys::TupleTableSlot,
        tuple: &Tuple,
        base: Option<*mut pg_sys::TupleTableSlot>,
        econtext: *mut pg_sys::ExprContext,
    ) {
        // SAFETY: forwarded.
        unsafe { self.fill_columns(slot, tuple, base, econtext, false) }
    }

    /// Fills `slot` with what a search for the row of `tuple` (a key or a full row)
    /// needs: with an identity index only its key columns (the index scan reads no
    /// other; the index is unique, so no other column is compared), the others NULL;
    /// without one every column. Unchanged-TOAST markers become NULL (keys are never
    /// TOASTed out of line).
    ///
    /// SAFETY: `slot` has the local table's descriptor.
    pub unsafe fn fill_search_slot(
        &self,
        slot: *mut pg_sys::TupleTableSlot,
        tuple: &Tuple,
        econtext: *mut pg_sys::ExprContext,
    ) {
        // SAFETY: forwarded.
        unsafe { self.fill_columns(slot, tuple, None, econtext, true) }
    }

    /// SAFETY: as [`fill_slot`](Self::fill_slot).
    unsafe fn fill_columns(
        &self,
        slot: *mut pg_sys::TupleTableSlot,
        tuple: &Tuple,
        base: Option<*mut pg_sys::TupleTableSlot>,
        econtext: *mut pg_sys::ExprContext,
        search: bool,
    ) {
        if tuple.columns.len() != self.attmap.len() {
            err(
                PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION,
                format!(
                    "spock: tuple for {} has {} columns, its relation message {}",
                    self.qualified,
                    tuple.columns.len(),
                    self.attmap.len()
                ),
            );
        }
        // SAFETY: the slot's descriptor is read; its arrays have that many entries.
        let slot_natts = unsafe { (*(*slot).tts_tupleDescriptor).natts } as usize;
        if slot_natts != self.natts {
            err(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("spock: table {} changed while its changes were applied; retrying", self.qualified),
            );
        }
        // SAFETY: slot arrays have natts entries; values are built in the current
        // memory context, which lives until the change is applied.
        unsafe {
            pg_sys::ExecClearTuple(slot);
            let values = std::slice::from_raw_parts_mut((*slot).tts_values, self.natts);
            let nulls = std::slice::from_raw_parts_mut((*slot).tts_isnull, self.natts);
            match base {
                Some(b) => {
                    pg_sys::slot_getallattrs(b);
                    values.copy_from_slice(std::slice::from_raw_parts((*b).tts_values, self.natts));
                    nulls.copy_from_slice(std::slice::from_raw_parts((*b).tts_isnull, self.natts));
                }
                None => {
                    values.fill(pg_sys::Datum::from(0usize));
                    nulls.fill(true);
                    for &(i, state) in &self.defaults {
                        if search && !self.search_atts[i] {
                            continue;
                        }
                        let mut isnull = false;
                        let eval = (*state).evalfunc.expect("initialized ExprState has an evalfunc");
                        // Through a guard like any call into PostgreSQL: an ERROR of
                        // the default (user code) unwinds through here, so the worker's
                        // error handling (exception_behaviour) sees it.
                        values[i] = pg_sys::ffi::pg_guard_ffi_boundary(|| eval(state, econtext, &mut isnull));
                        nulls[i] = isnull;
                    }
                }
            }
            for (ri, datum) in tuple.columns.iter().enumerate() {
                let li = self.attmap[ri];
                if search && !self.search_atts[li] {
                    continue;
                }
                let col = self.columns[li].as_ref().expect("mapped column");
                match datum {
                    Datum::Null => {
                        values[li] = pg_sys::Datum::from(0usize);
                        nulls[li] = true;
                    }
                    Datum::UnchangedToast if search => {
                        values[li] = pg_sys::Datum::from(0usize);
                        nulls[li] = true;
                    }
                    Datum::UnchangedToast => {
                        if base.is_none() {
                            err(
                                PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION,
                                format!("spock: unchanged TOAST value for column \"{}\" of {} in a new row", col.name, self.qualified),
                            );
                        }
                    }
                    Datum::Text(bytes) => {
                        let c = CString::new(bytes.as_ref()).unwrap_or_else(|_| {
                            err(PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION, format!("spock: text value of column \"{}\" contains NUL", col.name))
                        });
                        values[li] = pg_sys::InputFunctionCall(
                            col.text_in.as_ref() as *const _ as *mut _,
                            c.as_ptr() as *mut _,
                            col.typioparam,
                            col.typmod,
                        );
                        nulls[li] = false;
                    }
                    Datum::Binary(bytes) => {
                        let Some(recv) = &col.binary_in else {
                            err(PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION, format!("spock: binary value for column \"{}\" whose type has no receive function", col.name));
                        };
                        let mut buf = string_info_copy(bytes);
                        values[li] = pg_sys::ReceiveFunctionCall(recv.as_ref() as *const _ as *mut _, &mut buf, col.typioparam, col.typmod);
                        if buf.cursor != buf.len {
                            err(
                                PgSqlErrorCode::ERRCODE_INVALID_BINARY_REPRESENTATION,
                                format!("spock: incorrect binary data format for column \"{}\" of {}", col.name, self.qualified),
                            );
                        }
                        nulls[li] = false;
                    }
                    Datum::Internal(_) => err(
                        PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION,
                        format!(
                            "spock: the provider sent column \"{}\" (type {}) in internal format, which this subscriber does not accept",
                            col.name,
                            u32::from(col.type_oid)
                        ),
                    ),
                }
            }
            pg_sys::ExecStoreVirtualTuple(slot);
        }
    }
}

/// Which of a table's `natts` attributes are key columns of index `index`.
///
/// SAFETY: inside a transaction; `index` is an index of the table, which is locked.
unsafe fn index_key_atts(index: pg_sys::Oid, natts: usize) -> Vec<bool> {
    let mut keys = vec![false; natts];
    // SAFETY: the index relation is opened and closed here; its pg_index row lists
    // `indnkeyatts` key attribute numbers (0 for an expression column).
    unsafe {
        let idx = pg_sys::index_open(index, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let form = (*idx).rd_index;
        let n = (*form).indnkeyatts as usize;
        for &attno in (*form).indkey.values.as_slice(n) {
            if attno > 0 && (attno as usize) <= natts {
                keys[attno as usize - 1] = true;
            }
        }
        pg_sys::index_close(idx, pg_sys::NoLock as pg_sys::LOCKMODE);
    }
    keys
}

/// The versions of one key in a table's identity index ([`TableWriter::key_versions`]).
#[derive(Debug, Clone, Copy)]
pub struct KeyVersions {
    /// The newest committed removal: its commit timestamp and origin.
    pub removed: Option<(i64, u16)>,
    /// Some version of the key is there (live, dead, or of a transaction in progress).
    pub any: bool,
}

/// Executor state for changes to one table (the open table and indexes, result
/// relation, slots), kept across changes and transactions: PostgreSQL's apply worker
/// builds it for every change, which was most of our per-change cost. It is dropped
/// when the table's relation cache entry is invalidated (the caller watches that).
///
/// Its relation references and tuple descriptor pins belong to a resource owner of
/// the apply session (`owner`), its memory to a session context, so neither a commit
/// nor an abort touches them. Only the slot for local rows (which pins buffers)
/// belongs to the current transaction: [`begin_transaction`](Self::begin_transaction)
/// creates it and takes the locks native apply takes, [`end_transaction`](Self::end_transaction)
/// drops it before a commit, [`forget_transaction`](Self::forget_transaction) after
/// a rollback released it. Dropping the writer closes everything.
pub struct TableWriter {
    /// The open relation.
    pub rel: pg_sys::Relation,
    estate: *mut pg_sys::EState,
    rri: *mut pg_sys::ResultRelInfo,
    /// A slot for the remote row.
    pub remote: *mut pg_sys::TupleTableSlot,
    /// A slot for a local row, of the current transaction (null outside one).
    pub local: *mut pg_sys::TupleTableSlot,
    /// A slot for the key a row is searched by.
    pub search: *mut pg_sys::TupleTableSlot,
    /// A slot for the new version of an updated row.
    pub new: *mut pg_sys::TupleTableSlot,
    /// Expression context for defaults.
    pub econtext: *mut pg_sys::ExprContext,
    /// The session's resource owner of relation references and descriptor pins.
    owner: pg_sys::ResourceOwner,
    /// The local transaction (the caller's number) the writer is ready for.
    pub txn: u64,
    /// Slots or relations the executor added during a change (trigger slots, trigger
    /// target relations) were released by a rollback.
    extras_gone: bool,
    /// The identity index as the arbiter list of
    /// [`insert_reporting_duplicate`](Self::insert_reporting_duplicate) (null until used).
    arbiters: *mut pg_sys::List,
    /// The identity index's equality keys for [`find_deleted`](Self::find_deleted),
    /// prepared at its first call (`None`), empty when the table has no usable index.
    deleted_keys: Option<Vec<(pg_sys::ScanKeyData, usize)>>,
}

/// Slots `open` puts in the executor state's tuple table (remote, search, new).
const OWN_SLOTS: usize = 3;

impl TableWriter {
    /// Opens `relid` and sets up an executor state for it in a child of `cxt`, its
    /// references owned by `owner`; ready for transaction `txn`.
    ///
    /// SAFETY: inside a transaction with an active snapshot; `owner` and `cxt` live
    /// as long as the writer.
    pub unsafe fn open(
        relid: pg_sys::Oid,
        owner: pg_sys::ResourceOwner,
        cxt: pg_sys::MemoryContext,
        txn: u64,
    ) -> TableWriter {
        // SAFETY: the same setup as PostgreSQL's apply worker (create_edata_for_relation),
        // with session-lived memory and references (locks still go with the transaction).
        unsafe {
            pg_sys::LockRelationOid(relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
            let tx_owner = pg_sys::CurrentResourceOwner;
            pg_sys::CurrentResourceOwner = owner;
            let rel = pg_sys::table_open(relid, pg_sys::NoLock as pg_sys::LOCKMODE);
            let caller = pg_sys::MemoryContextSwitchTo(cxt);
            let estate = pg_sys::CreateExecutorState();
            pg_sys::MemoryContextSwitchTo((*estate).es_query_cxt);
            let rte = pg_sys::palloc0(std::mem::size_of::<pg_sys::RangeTblEntry>()) as *mut pg_sys::RangeTblEntry;
            (*rte).type_ = pg_sys::NodeTag::T_RangeTblEntry;
            (*rte).rtekind = pg_sys::RTEKind::RTE_RELATION;
            (*rte).relid = relid;
            (*rte).relkind = (*(*rel).rd_rel).relkind;
            (*rte).rellockmode = pg_sys::AccessShareLock as i32;
            let mut perminfos: *mut pg_sys::List = std::ptr::null_mut();
            pg_sys::addRTEPermissionInfo(&mut perminfos, rte);
            let mut rtable = PgList::<pg_sys::RangeTblEntry>::new();
            rtable.push(rte);
            pg_sys::ExecInitRangeTable(estate, rtable.into_pg(), perminfos, pg_sys::bms_make_singleton(1));
            let rri = pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>()) as *mut pg_sys::ResultRelInfo;
            (*rri).type_ = pg_sys::NodeTag::T_ResultRelInfo;
            pg_sys::InitResultRelInfo(rri, rel, 1, std::ptr::null_mut(), 0);
            // Trigger functions are looked up now, in the writer's memory. PostgreSQL
            // would look each up at its first call, in the memory current then (a
            // transaction's): a function with a SET clause or SECURITY DEFINER keeps
            // its state there (fn_extra), which would dangle in the next transaction
            // of this kept writer (a crash in plpgsql_compile, seen).
            let trig = (*rri).ri_TrigDesc;
            if !trig.is_null() {
                for i in 0..(*trig).numtriggers as usize {
                    let t = (*trig).triggers.add(i);
                    pg_sys::fmgr_info_cxt((*t).tgfoid, (*rri).ri_TrigFunctions.add(i), (*estate).es_query_cxt);
                }
            }
            // Index locks are taken under the session owner here; the transaction's
            // end releases them all the same (they are not session locks).
            pg_sys::ExecOpenIndices(rri, false);
            let remote = pg_sys::ExecInitExtraTupleSlot(estate, (*rel).rd_att, &pg_sys::TTSOpsVirtual);
            let search = pg_sys::ExecInitExtraTupleSlot(estate, (*rel).rd_att, &pg_sys::TTSOpsVirtual);
            let new = pg_sys::ExecInitExtraTupleSlot(estate, (*rel).rd_att, &pg_sys::TTSOpsVirtual);
            let econtext = pg_sys::CreateExprContext(estate);
            pg_sys::MemoryContextSwitchTo(caller);
            pg_sys::CurrentResourceOwner = tx_owner;
            let mut w = TableWriter {
                rel,
                estate,
                rri,
                remote,
                local: std::ptr::null_mut(),
                search,
                new,
                econtext,
                owner,
                txn,
                extras_gone: false,
                arbiters: std::ptr::null_mut(),
                deleted_keys: None,
            };
            w.create_local_slot();
            w
        }
    }

    /// SAFETY: inside a transaction; `self.local` is null.
    unsafe fn create_local_slot(&mut self) {
        // SAFETY: a buffer slot in transaction memory, its descriptor pin owned by
        // the transaction.
        unsafe {
            let caller = pg_sys::MemoryContextSwitchTo(pg_sys::TopTransactionContext);
            self.local = pg_sys::MakeSingleTupleTableSlot((*self.rel).rd_att, pg_sys::table_slot_callbacks(self.rel));
            pg_sys::MemoryContextSwitchTo(caller);
        }
    }

    /// Makes a writer kept from an earlier transaction ready for transaction `txn`:
    /// the locks PostgreSQL's apply takes when it opens the table and its indexes
    /// (taking them brings pending invalidations, which the caller checks next),
    /// and a slot for local rows.
    ///
    /// SAFETY: inside transaction `txn`.
    pub unsafe fn begin_transaction(&mut self, txn: u64) {
        // SAFETY: the relation and index descriptors are open (session references).
        unsafe {
            pg_sys::LockRelationOid((*self.rel).rd_id, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
            for (_, index, _) in open_indexes(self.rri) {
                pg_sys::LockRelationOid((*index).rd_id, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
            }
            self.local = std::ptr::null_mut();
            self.create_local_slot();
        }
        self.txn = txn;
    }

    /// Drops the transaction's slot (and its buffer pin) before the transaction ends.
    ///
    /// SAFETY: inside the transaction the writer was made ready for.
    pub unsafe fn end_transaction(&mut self) {
        if !self.local.is_null() {
            // SAFETY: the slot was made in this transaction.
            unsafe { pg_sys::ExecDropSingleTupleTableSlot(self.local) };
            self.local = std::ptr::null_mut();
        }
        // SAFETY: the index access methods' per-statement insert state (BRIN keeps
        // buffer pins there) ends with the transaction, as ExecCloseIndices ends it
        // with each statement; a no-op for B-tree.
        unsafe {
            for (_, index, info) in open_indexes(self.rri) {
                pg_sys::index_insert_cleanup(index, info);
            }
        }
    }

    /// After a rollback: the slot of the rolled-back transaction is gone with it, so
    /// are slots and relations the executor added during its changes (the writer must
    /// then be dropped: see [`has_extras`](Self::has_extras)).
    pub fn forget_transaction(&mut self) {
        self.local = std::ptr::null_mut();
        // SAFETY: the rollback released what the indexes' insert state pinned; the
        // state itself is memory of the executor state: forget it without cleanup.
        unsafe {
            for (_, _, info) in open_indexes(self.rri) {
                (*info).ii_AmCache = std::ptr::null_mut();
            }
        }
        self.txn = 0;
        self.extras_gone = self.has_extras();
    }

    /// Whether the executor added slots or relations to the state during a change
    /// (AFTER triggers do): they belong to the transaction, so the writer cannot
    /// outlive it and is dropped after the change.
    pub fn has_extras(&self) -> bool {
        // SAFETY: reads lists of the live executor state.
        unsafe {
            let slots = (*self.estate).es_tupleTable;
            (!slots.is_null() && (*slots).length as usize > OWN_SLOTS)
                || !(*self.estate).es_trig_target_relations.is_null()
        }
    }

    /// Starts one change (one command of the local transaction).
    ///
    /// SAFETY: inside the transaction the writer is ready for.
    pub unsafe fn begin_change(&mut self) {
        // SAFETY: as the native apply worker does for each change; a table without
        // any trigger (its descriptor is rebuilt, and the writer closed, when one is
        // created) queues no AFTER-trigger event, so it needs no trigger query.
        unsafe {
            (*self.estate).es_output_cid = pg_sys::GetCurrentCommandId(true);
            if !(*self.rri).ri_TrigDesc.is_null() {
                pg_sys::AfterTriggerBeginQuery();
            }
        }
    }

    /// Ends the change begun by [`begin_change`](Self::begin_change): fires its
    /// queued AFTER triggers, lets go of the rows (and buffer pin) of the slots and
    /// frees the change's expression memory.
    ///
    /// SAFETY: after `begin_change`, in the same transaction.
    pub unsafe fn end_change(&mut self) {
        // SAFETY: what finish_edata does per change, short of freeing the state.
        // Calls into PostgreSQL are skipped where they would do nothing (empty slots,
        // memory already reset): each costs a guard of its own.
        unsafe {
            if !(*self.rri).ri_TrigDesc.is_null() {
                pg_sys::AfterTriggerEndQuery(self.estate);
            }
            for slot in [self.remote, self.local, self.search, self.new] {
                if !slot.is_null() && (*slot).tts_flags & pg_sys::TTS_FLAG_EMPTY as u16 == 0 {
                    pg_sys::ExecClearTuple(slot);
                }
            }
            let per_tuple = (*self.estate).es_per_tuple_exprcontext;
            if !per_tuple.is_null() && !(*(*per_tuple).ecxt_per_tuple_memory).isReset {
                pg_sys::MemoryContextReset((*per_tuple).ecxt_per_tuple_memory);
            }
            if !(*(*self.econtext).ecxt_per_tuple_memory).isReset {
                pg_sys::MemoryContextReset((*self.econtext).ecxt_per_tuple_memory);
            }
        }
    }

    /// Finds the local row whose identity matches `search` into `self.local`.
    ///
    /// SAFETY: `search` has the table's descriptor.
    pub unsafe fn find(&mut self, map: &LocalRelation, search: *mut pg_sys::TupleTableSlot) -> bool {
        // SAFETY: executor-level lookup with a row lock, as the native apply worker does.
        unsafe {
            if map.identity_index != pg_sys::InvalidOid {
                pg_sys::RelationFindReplTupleByIndex(
                    self.rel,
                    map.identity_index,
                    pg_sys::LockTupleMode::LockTupleExclusive,
                    search,
                    self.local,
                )
            } else if map.identity_full {
                pg_sys::RelationFindReplTupleSeq(
                    self.rel,
                    pg_sys::LockTupleMode::LockTupleExclusive,
                    search,
                    self.local,
                )
            } else {
                err(
                    PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!(
                        "spock: table {} has no replica identity on this node: cannot find rows to update or delete",
                        map.qualified
                    ),
                )
            }
        }
    }

    /// The newest committed removal of the row whose identity matches `search` (its
    /// DELETE, or an UPDATE that changed its key) among the dead versions the table
    /// still holds: the removing transaction's commit timestamp and origin, with that
    /// last version of the row in `self.local` (for values an UPDATE did not send).
    /// Call it after [`find`](Self::find) found no live row. `None` when no dead
    /// version is left (the key never existed here, or VACUUM removed it), when the
    /// table has no identity index, or without `track_commit_timestamp`.
    ///
    /// SAFETY: inside a transaction; `search` has the table's descriptor.
    pub unsafe fn find_deleted(
        &mut self,
        map: &LocalRelation,
        search: *mut pg_sys::TupleTableSlot,
    ) -> Option<(i64, u16)> {
        // SAFETY: forwarded.
        unsafe { self.key_versions(map, search) }.removed
    }

    /// What the identity index holds for the key of `search` under `SnapshotAny`:
    /// the newest committed removal (as [`find_deleted`](Self::find_deleted)) and
    /// whether any version of the key is there at all (live, dead, or written or
    /// removed by a transaction in progress): an INSERT skips searching only for a
    /// key of which no version is here. Without an identity index or
    /// `track_commit_timestamp`: nothing (no decision is taken against versions
    /// then).
    ///
    /// SAFETY: as [`find_deleted`](Self::find_deleted).
    pub unsafe fn key_versions(&mut self, map: &LocalRelation, search: *mut pg_sys::TupleTableSlot) -> KeyVersions {
        let none = KeyVersions { removed: None, any: false };
        // SAFETY: reads a setting.
        if map.identity_index == pg_sys::InvalidOid || !unsafe { pg_sys::track_commit_timestamp } {
            return none;
        }
        // SAFETY: the writer's open identity index (see `prepare_deleted_keys`); the
        // keys' function lookups keep what they cache in the writer's memory.
        let (rri, estate) = (self.rri, self.estate);
        let keys = self.deleted_keys.get_or_insert_with(|| unsafe {
            let caller = pg_sys::MemoryContextSwitchTo((*estate).es_query_cxt);
            let keys = prepare_deleted_keys(rri, map.identity_index);
            pg_sys::MemoryContextSwitchTo(caller);
            keys
        });
        if keys.is_empty() {
            return none;
        }
        // SAFETY: every version of the key is read under SnapshotAny and only tuple
        // headers and commit data are looked at; the scan and its slot live for this
        // call only.
        unsafe {
            pg_sys::slot_getallattrs(search);
            for (key, col) in keys.iter_mut() {
                key.sk_argument = *(*search).tts_values.add(*col);
                key.sk_flags = if *(*search).tts_isnull.add(*col) {
                    (pg_sys::SK_ISNULL | pg_sys::SK_SEARCHNULL) as i32
                } else {
                    0
                };
            }
            let mut scan_keys: Vec<pg_sys::ScanKeyData> = keys.iter().map(|(k, _)| *k).collect();
            let nkeys = scan_keys.len() as i32;
            let Some((_, index, _)) =
                open_indexes(self.rri).find(|(_, index, _)| (**index).rd_id == map.identity_index)
            else {
                return none;
            };
            let scan = pg_sys::index_beginscan(
                self.rel,
                index,
                &raw mut pg_sys::SnapshotAnyData,
                std::ptr::null_mut(),
                nkeys,
                0,
            );
            // Index entries of versions dead to every snapshot are marked killed by
            // other scans (our own search for the live row among them): they are
            // what this scan looks for.
            (*scan).ignore_killed_tuples = false;
            pg_sys::index_rescan(scan, scan_keys.as_mut_ptr(), nkeys, std::ptr::null_mut(), 0);
            let version = pg_sys::table_slot_create(self.rel, std::ptr::null_mut());
            let mut newest: Option<(i64, u16)> = None;
            let mut any = false;
            while pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, version) {
                any = true;
                let mut should_free = false;
                let tup = pg_sys::ExecFetchSlotHeapTuple(version, false, &mut should_free);
                let removed = removal_of((*tup).t_data);
                if should_free {
                    pg_sys::heap_freetuple(tup);
                }
                if let Some(removal) = removed.filter(|r| newest.is_none_or(|n| r.0 > n.0)) {
                    newest = Some(removal);
                    pg_sys::ExecCopySlot(self.local, version);
                }
            }
            pg_sys::ExecDropSingleTupleTableSlot(version);
            pg_sys::index_endscan(scan);
            KeyVersions { removed: newest, any }
        }
    }

    /// With `spock.check_all_uc_indexes`: the live local row that one of the table's
    /// unique indexes other than the identity index finds for the values of
    /// `self.remote`, locked, into `self.local` (Spock's `check_all_uc_indexes`).
    /// Indexes are tried in the order the executor opened them; an index on
    /// expressions is skipped, a partial one only counts when the remote row is in
    /// its predicate, and a NULL in a key finds nothing unless the index is NULLS
    /// NOT DISTINCT.
    ///
    /// SAFETY: inside the transaction the writer is ready for, with an active
    /// snapshot; `self.remote` holds a row.
    pub unsafe fn find_by_other_unique_index(&mut self, map: &LocalRelation) -> bool {
        // SAFETY: the writer's open indexes and executor state; the scans, keys and
        // predicate states live for this call (the keys' cached lookups and the
        // predicate state in per-tuple memory, reset after the change).
        unsafe {
            pg_sys::slot_getallattrs(self.remote);
            let candidates: Vec<(pg_sys::Relation, *mut pg_sys::IndexInfo)> = open_indexes(self.rri)
                .filter(|(_, index, info)| {
                    let form = (**index).rd_index;
                    (**index).rd_id != map.identity_index
                        && (*form).indisunique
                        && (*form).indisvalid
                        && (**info).ii_Expressions.is_null()
                })
                .map(|(_, index, info)| (index, info))
                .collect();
            for (index, info) in candidates {
                let caller = pg_sys::MemoryContextSwitchTo((*self.econtext).ecxt_per_tuple_memory);
                let in_predicate = (*info).ii_Predicate.is_null() || {
                    let qual = pg_sys::ExecPrepareQual((*info).ii_Predicate, self.estate);
                    (*self.econtext).ecxt_scantuple = self.remote;
                    pg_sys::ExecQual(qual, self.econtext)
                };
                let mut keys = if in_predicate { prepare_deleted_keys(self.rri, (*index).rd_id) } else { Vec::new() };
                pg_sys::MemoryContextSwitchTo(caller);
                if keys.is_empty() {
                    continue;
                }
                let mut has_null = false;
                for (key, col) in keys.iter_mut() {
                    key.sk_argument = *(*self.remote).tts_values.add(*col);
                    if *(*self.remote).tts_isnull.add(*col) {
                        has_null = true;
                        key.sk_flags = (pg_sys::SK_ISNULL | pg_sys::SK_SEARCHNULL) as i32;
                    }
                }
                if has_null && !(*info).ii_NullsNotDistinct {
                    continue;
                }
                if self.lock_row_found_by(index, &mut keys) {
                    return true;
                }
            }
            false
        }
    }

    /// Finds the live row that `keys` (equality keys on `index`'s columns) find,
    /// locks it and leaves it in `self.local`; a row updated or deleted concurrently
    /// is searched again, as PostgreSQL's own apply searches its rows.
    ///
    /// SAFETY: `index` is one of the writer's open indexes; inside its transaction.
    unsafe fn lock_row_found_by(&mut self, index: pg_sys::Relation, keys: &mut [(pg_sys::ScanKeyData, usize)]) -> bool {
        let mut scan_keys: Vec<pg_sys::ScanKeyData> = keys.iter().map(|(k, _)| *k).collect();
        let nkeys = scan_keys.len() as i32;
        // SAFETY: an MVCC index scan of the open index into the writer's local slot,
        // then a row lock as RelationFindReplTupleByIndex takes it.
        unsafe {
            loop {
                let snapshot = pg_sys::GetLatestSnapshot();
                let scan = pg_sys::index_beginscan(self.rel, index, snapshot, std::ptr::null_mut(), nkeys, 0);
                pg_sys::index_rescan(scan, scan_keys.as_mut_ptr(), nkeys, std::ptr::null_mut(), 0);
                let found = pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, self.local);
                pg_sys::index_endscan(scan);
                if !found {
                    return false;
                }
                let mut tmfd = pg_sys::TM_FailureData::default();
                let tid = (*self.local).tts_tid;
                let result = pg_sys::table_tuple_lock(
                    self.rel,
                    &tid as *const pg_sys::ItemPointerData as *mut pg_sys::ItemPointerData,
                    pg_sys::GetLatestSnapshot(),
                    self.local,
                    pg_sys::GetCurrentCommandId(false),
                    pg_sys::LockTupleMode::LockTupleExclusive,
                    pg_sys::LockWaitPolicy::LockWaitBlock,
                    0,
                    &mut tmfd,
                );
                match result {
                    pg_sys::TM_Result::TM_Ok => return true,
                    // Changed or deleted since the scan: search again.
                    pg_sys::TM_Result::TM_Updated | pg_sys::TM_Result::TM_Deleted => continue,
                    pg_sys::TM_Result::TM_Invisible => err(
                        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                        "spock: attempted to lock an invisible row".to_string(),
                    ),
                    _ => err(
                        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                        format!("spock: unexpected result {result} locking a row"),
                    ),
                }
            }
        }
    }

    /// Inserts `self.remote`.
    ///
    /// SAFETY: `self.remote` holds a row.
    pub unsafe fn insert(&mut self) {
        // SAFETY: see TableWriter::open.
        unsafe { pg_sys::ExecSimpleRelationInsert(self.rri, self.estate, self.remote) };
    }

    /// Whether [`insert_reporting_duplicate`](Self::insert_reporting_duplicate) can
    /// insert into this table: a plain table without stored generated columns whose
    /// identity index `identity` checks keys at once (identity indexes always do
    /// today; a deferrable one would report a duplicate only at commit). The rest
    /// goes through `ExecSimpleRelationInsert` after a search.
    pub fn can_insert_unsearched(&self, identity: pg_sys::Oid) -> bool {
        // SAFETY: reads the open relation's and its open indexes' descriptors.
        unsafe {
            let constr = (*(*self.rel).rd_att).constr;
            if (*(*self.rel).rd_rel).relkind as u8 != b'r' || (!constr.is_null() && (*constr).has_generated_stored) {
                return false;
            }
            open_indexes(self.rri).any(|(_, index, _)| (*index).rd_id == identity && (*(*index).rd_index).indimmediate)
        }
    }

    /// Inserts `self.remote` without searching for its key first, the way
    /// PostgreSQL's own apply inserts (ExecSimpleRelationInsert: BEFORE triggers,
    /// constraints, heap, indexes, AFTER triggers), with the unique index
    /// `identity` checked as its entry goes in: returns false when a row with the
    /// same key exists, committed or written by a transaction in progress. The new
    /// row is then in the table and its indexes all the same, so the caller must
    /// roll the transaction back (and apply it again searching first). Other unique
    /// indexes raise their usual error.
    ///
    /// SAFETY: `self.remote` holds a row; [`can_insert_unsearched`](Self::can_insert_unsearched).
    pub unsafe fn insert_reporting_duplicate(&mut self, identity: pg_sys::Oid) -> bool {
        // SAFETY: the executor calls of ExecSimpleRelationInsert on the state set up
        // by `open`, the arbiter list in the state's memory.
        unsafe {
            let (rri, estate, slot) = (self.rri, self.estate, self.remote);
            let rel = (*rri).ri_RelationDesc;
            let trig = (*rri).ri_TrigDesc;
            if !trig.is_null() && (*trig).trig_insert_before_row && !pg_sys::ExecBRInsertTriggers(estate, rri, slot) {
                // A BEFORE trigger said "do nothing".
                return true;
            }
            if !(*(*rel).rd_att).constr.is_null() {
                pg_sys::ExecConstraints(rri, slot, estate);
            }
            if (*(*rel).rd_rel).relispartition {
                pg_sys::ExecPartitionCheck(rri, slot, estate, true);
            }
            pg_sys::simple_table_tuple_insert(rel, slot);
            let mut duplicate = false;
            let mut recheck: *mut pg_sys::List = std::ptr::null_mut();
            if (*rri).ri_NumIndices > 0 {
                if self.arbiters.is_null() || pg_sys::list_nth_oid(self.arbiters, 0) != identity {
                    let caller = pg_sys::MemoryContextSwitchTo((*estate).es_query_cxt);
                    self.arbiters = pg_sys::lappend_oid(std::ptr::null_mut(), identity);
                    pg_sys::MemoryContextSwitchTo(caller);
                }
                recheck =
                    pg_sys::ExecInsertIndexTuples(rri, slot, estate, false, true, &mut duplicate, self.arbiters, false);
            }
            if duplicate {
                pg_sys::list_free(recheck);
                return false;
            }
            pg_sys::ExecARInsertTriggers(estate, rri, slot, recheck, std::ptr::null_mut());
            pg_sys::list_free(recheck);
            true
        }
    }

    /// Leaves a deleted version of the key in `key` (the search slot of a DELETE
    /// that found no row): the key is inserted, entered in the table's indexes and
    /// deleted again in this transaction, so that a later change of that key finds
    /// the DELETE's commit timestamp and origin ([`find_deleted`](Self::find_deleted))
    /// until the horizon of deleted versions passes it, as it finds any deleted row.
    /// Columns outside the key are NULL; constraints and triggers do not run (the
    /// row is never visible). Both changes are written under replication origin
    /// `tombstone` (the transaction itself commits under the DELETE's origin), which
    /// output plugins never send. Nothing is done for a table without an identity
    /// index (nothing would find it) or without commit timestamps.
    ///
    /// SAFETY: inside the transaction the writer is ready for, with an active
    /// snapshot; `key` has the table's descriptor.
    pub unsafe fn leave_deleted_version(
        &mut self,
        map: &LocalRelation,
        key: *mut pg_sys::TupleTableSlot,
        tombstone: pg_sys::RepOriginId,
    ) {
        if map.identity_index == pg_sys::InvalidOid || tombstone == 0 || !unsafe { pg_sys::track_commit_timestamp } {
            return;
        }
        crate::workers::removals::note_apply_removal();
        struct Origin(pg_sys::RepOriginId);
        impl Drop for Origin {
            fn drop(&mut self) {
                // SAFETY: restores the session's origin, also when an error unwinds.
                unsafe { pg_sys::replorigin_session_origin = self.0 };
            }
        }
        // SAFETY: a heap insert, its index entries and its delete, as
        // insert_reporting_duplicate and ExecSimpleRelationDelete do them, without
        // the row's constraints and triggers.
        unsafe {
            let _origin = Origin(pg_sys::replorigin_session_origin);
            pg_sys::replorigin_session_origin = tombstone;
            pg_sys::simple_table_tuple_insert(self.rel, key);
            if (*self.rri).ri_NumIndices > 0 {
                let recheck = pg_sys::ExecInsertIndexTuples(
                    self.rri,
                    key,
                    self.estate,
                    false,
                    false,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    false,
                );
                pg_sys::list_free(recheck);
            }
            pg_sys::CommandCounterIncrement();
            let mut tid = (*key).tts_tid;
            pg_sys::simple_table_tuple_delete(self.rel, &mut tid, pg_sys::GetActiveSnapshot());
            pg_sys::CommandCounterIncrement();
        }
    }

    /// Replaces the row in `self.local` by `new`.
    ///
    /// SAFETY: `self.local` holds a row found by [`find`](Self::find); `new` a full row.
    pub unsafe fn update(&mut self, map: &LocalRelation, new: *mut pg_sys::TupleTableSlot) {
        // SAFETY: both slots hold rows of the table.
        if unsafe { self.changes_key(map, new) } {
            crate::workers::removals::note_apply_removal();
        }
        // SAFETY: see TableWriter::open; `self.local` and `new` as the caller says.
        unsafe { self.with_epq(|w, epq| pg_sys::ExecSimpleRelationUpdate(w.rri, w.estate, epq, w.local, new)) }
    }

    /// Whether replacing `self.local` by `new` may make the row's key disappear
    /// (workers::removals): a column of the identity index differs (binary
    /// comparison), or a BEFORE UPDATE row trigger may change it. No for a table
    /// without an identity index: nothing looks for its deleted versions.
    ///
    /// SAFETY: both slots hold rows of the table (`self.local` found, `new` full).
    unsafe fn changes_key(&self, map: &LocalRelation, new: *mut pg_sys::TupleTableSlot) -> bool {
        if map.identity_index == pg_sys::InvalidOid {
            return false;
        }
        // SAFETY: the writer's result relation and the two slots' values.
        unsafe {
            let triggers = (*self.rri).ri_TrigDesc;
            if !triggers.is_null() && (*triggers).trig_update_before_row {
                return true;
            }
            pg_sys::slot_getallattrs(self.local);
            pg_sys::slot_getallattrs(new);
            let desc = (*new).tts_tupleDescriptor;
            map.search_atts.iter().enumerate().filter(|(_, key)| **key).any(|(i, _)| {
                let (a_null, b_null) = (*(*self.local).tts_isnull.add(i), *(*new).tts_isnull.add(i));
                if a_null || b_null {
                    return a_null != b_null;
                }
                let att = pg_sys::TupleDescAttr(desc, i as i32);
                !datumIsEqual(
                    *(*self.local).tts_values.add(i),
                    *(*new).tts_values.add(i),
                    (*att).attbyval,
                    (*att).attlen.into(),
                )
            })
        }
    }

    /// Runs `f` with an EvalPlanQual state for this writer's executor state (what
    /// the simple update and delete need), ended afterwards.
    ///
    /// SAFETY: `self` is open (see TableWriter::open).
    unsafe fn with_epq(&mut self, f: impl FnOnce(&mut Self, *mut pg_sys::EPQState)) {
        // SAFETY: a zeroed EPQState is what EvalPlanQualInit expects to fill; it is
        // ended before it goes out of scope (an ERROR aborts the transaction, which
        // releases what it holds).
        unsafe {
            let mut epq: pg_sys::EPQState = std::mem::zeroed();
            pg_sys::EvalPlanQualInit(
                &mut epq,
                self.estate,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                -1,
                std::ptr::null_mut(),
            );
            f(self, &mut epq);
            pg_sys::EvalPlanQualEnd(&mut epq);
        }
    }

    /// Deletes the row in `self.local`.
    ///
    /// SAFETY: `self.local` holds a row found by [`find`](Self::find).
    pub unsafe fn delete(&mut self) {
        crate::workers::removals::note_apply_removal();
        // SAFETY: see TableWriter::open; `self.local` as the caller says.
        unsafe { self.with_epq(|w, epq| pg_sys::ExecSimpleRelationDelete(w.rri, w.estate, epq, w.local)) }
    }

    /// Commit timestamp and origin of the row in `self.local`, or `None` when the
    /// row was written by the current transaction.
    ///
    /// SAFETY: `self.local` holds a row.
    pub unsafe fn local_row_version(&mut self) -> LocalVersion {
        // SAFETY: reads the tuple header of the found row and its commit data.
        unsafe {
            let mut should_free = false;
            let tup = pg_sys::ExecFetchSlotHeapTuple(self.local, false, &mut should_free);
            let header = (*tup).t_data;
            let infomask = (*header).t_infomask;
            let frozen = infomask & (pg_sys::HEAP_XMIN_FROZEN as u16) == pg_sys::HEAP_XMIN_FROZEN as u16;
            let xmin = (*header).t_choice.t_heap.t_xmin;
            let version = if frozen || xmin.into_inner() < pg_sys::FirstNormalTransactionId.into_inner() {
                // Frozen rows have no commit data: too old to conflict.
                LocalVersion::Unknown
            } else if pg_sys::TransactionIdIsCurrentTransactionId(xmin) {
                LocalVersion::ThisTransaction
            } else if !pg_sys::track_commit_timestamp {
                LocalVersion::Unknown
            } else {
                let mut ts: pg_sys::TimestampTz = 0;
                let mut origin: pg_sys::RepOriginId = 0;
                if pg_sys::TransactionIdGetCommitTsData(xmin, &mut ts, &mut origin) && ts != 0 {
                    LocalVersion::Committed { commit_ts: ts, origin }
                } else {
                    // Written while track_commit_timestamp was off (or truncated
                    // away): as PostgreSQL does, no conflict without commit data.
                    LocalVersion::Unknown
                }
            };
            if should_free {
                pg_sys::heap_freetuple(tup);
            }
            version
        }
    }
}

/// The equality scan keys of identity index `identity` (with the table column each
/// key takes its value from), built as PostgreSQL builds them for its own replica
/// identity lookups; empty when the index is not among `rri`'s open indexes or has a
/// column no B-tree equality operator covers.
///
/// SAFETY: `rri`'s indexes are open.
unsafe fn prepare_deleted_keys(
    rri: *mut pg_sys::ResultRelInfo,
    identity: pg_sys::Oid,
) -> Vec<(pg_sys::ScanKeyData, usize)> {
    // SAFETY: catalog lookups on an open index's descriptor.
    unsafe {
        let Some((_, index, _)) = open_indexes(rri).find(|(_, index, _)| (**index).rd_id == identity) else {
            return Vec::new();
        };
        let form = (*index).rd_index;
        let nkeys = (*form).indnkeyatts as usize;
        let mut keys = Vec::with_capacity(nkeys);
        for (i, &attno) in (*form).indkey.values.as_slice(nkeys).iter().enumerate() {
            if attno <= 0 {
                return Vec::new(); // an expression column: not a replica identity index
            }
            let opfamily = *(*index).rd_opfamily.add(i);
            let optype = *(*index).rd_opcintype.add(i);
            let operator = pg_sys::get_opfamily_member(opfamily, optype, optype, pg_sys::BTEqualStrategyNumber as i16);
            if operator == pg_sys::InvalidOid {
                return Vec::new();
            }
            let mut key = pg_sys::ScanKeyData::default();
            pg_sys::ScanKeyInit(
                &mut key,
                (i + 1) as pg_sys::AttrNumber,
                pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
                pg_sys::get_opcode(operator),
                pg_sys::Datum::from(0usize),
            );
            key.sk_collation = *(*index).rd_indcollation.add(i);
            keys.push((key, attno as usize - 1));
        }
        keys
    }
}

/// When and where the row version with header `header` was removed: the commit
/// timestamp and origin of the transaction that deleted it (or replaced it by an
/// UPDATE) and committed; `None` for a version that is live, only locked, removed by
/// a transaction that aborted, is in progress or is this one, or without commit data.
///
/// SAFETY: `header` is a valid heap tuple header.
unsafe fn removal_of(header: pg_sys::HeapTupleHeader) -> Option<(i64, u16)> {
    // SAFETY: header fields, then the commit log and commit timestamps of its xmax.
    unsafe {
        let infomask = u32::from((*header).t_infomask);
        if infomask & pg_sys::HEAP_XMAX_INVALID != 0 || pg_sys::HeapTupleHeaderIsOnlyLocked(header) {
            return None;
        }
        let xmax = if infomask & pg_sys::HEAP_XMAX_IS_MULTI != 0 {
            pg_sys::HeapTupleGetUpdateXid(header)
        } else {
            (*header).t_choice.t_heap.t_xmax
        };
        if xmax.into_inner() < pg_sys::FirstNormalTransactionId.into_inner()
            || pg_sys::TransactionIdIsCurrentTransactionId(xmax)
            || pg_sys::TransactionIdIsInProgress(xmax)
            || !pg_sys::TransactionIdDidCommit(xmax)
        {
            return None;
        }
        let mut ts: pg_sys::TimestampTz = 0;
        let mut origin: pg_sys::RepOriginId = 0;
        (pg_sys::TransactionIdGetCommitTsData(xmax, &mut ts, &mut origin) && ts != 0).then_some((ts, origin))
    }
}

/// The open indexes of result relation `rri` (slot number, index, its IndexInfo),
/// skipping slots already closed.
///
/// SAFETY: `rri` has had its indexes opened (ExecOpenIndices) and outlives the
/// iterator; entries are read as the iterator reaches them.
unsafe fn open_indexes(
    rri: *mut pg_sys::ResultRelInfo,
) -> impl Iterator<Item = (usize, pg_sys::Relation, *mut pg_sys::IndexInfo)> {
    // SAFETY: the caller's guarantee; `ri_NumIndices` entries in both arrays.
    let n = unsafe { (*rri).ri_NumIndices.max(0) as usize };
    (0..n).filter_map(move |i| {
        // SAFETY: i < ri_NumIndices.
        let (index, info) = unsafe { (*(*rri).ri_IndexRelationDescs.add(i), *(*rri).ri_IndexRelationInfo.add(i)) };
        (!index.is_null() && !info.is_null()).then_some((i, index, info))
    })
}

/// What is known about the local row a change meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalVersion {
    /// Committed with this timestamp and origin.
    Committed {
        /// Commit timestamp.
        commit_ts: i64,
        /// Commit origin.
        origin: u16,
    },
    /// Written earlier in the transaction being applied.
    ThisTransaction,
    /// No commit data (frozen row, written while `track_commit_timestamp` was off, or
    /// tracking is off now): no conflict can be detected; the change applies.
    Unknown,
}

impl Drop for TableWriter {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // An ERROR is being raised and the process is on its way out: calling
            // into the executor now could fail again.
            return;
        }
        // SAFETY: tears down what `open` set up, the session's references under the
        // session's owner; the local slot and what the executor added during a change
        // under the transaction's (skipped when a rollback released them).
        unsafe {
            if !self.local.is_null() {
                pg_sys::ExecDropSingleTupleTableSlot(self.local);
                self.local = std::ptr::null_mut();
            }
            let tx_owner = pg_sys::CurrentResourceOwner;
            let slots = PgList::<pg_sys::TupleTableSlot>::from_pg((*self.estate).es_tupleTable);
            for (i, slot) in slots.iter_ptr().enumerate() {
                if i >= OWN_SLOTS && self.extras_gone {
                    continue;
                }
                pg_sys::CurrentResourceOwner = if i < OWN_SLOTS { self.owner } else { tx_owner };
                pg_sys::ExecClearTuple(slot);
                let desc = (*slot).tts_tupleDescriptor;
                if !desc.is_null() && (*desc).tdrefcount >= 0 {
                    pg_sys::DecrTupleDescRefCount(desc);
                }
                (*slot).tts_tupleDescriptor = std::ptr::null_mut();
            }
            (*self.estate).es_tupleTable = std::ptr::null_mut();
            pg_sys::CurrentResourceOwner = tx_owner;
            if !self.extras_gone {
                pg_sys::ExecCloseResultRelations(self.estate);
            }
            pg_sys::CurrentResourceOwner = self.owner;
            // As ExecCloseIndices, but without releasing the indexes' locks: they
            // belong to the transaction that took them, which may be over already
            // (releasing a lock not held warns).
            for (i, index, info) in open_indexes(self.rri) {
                pg_sys::index_insert_cleanup(index, info);
                pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
                *(*self.rri).ri_IndexRelationDescs.add(i) = std::ptr::null_mut();
            }
            pg_sys::FreeExecutorState(self.estate);
            pg_sys::RelationClose(self.rel);
            pg_sys::CurrentResourceOwner = tx_owner;
        }
    }
}

// PostgreSQL's binary equality of two values of one type (utils/datum.h), not in
// pgrx's bindings: a value stored differently (compressed, say) compares unequal.
unsafe extern "C-unwind" {
    fn datumIsEqual(value1: pg_sys::Datum, value2: pg_sys::Datum, by_val: bool, len: std::ffi::c_int) -> bool;
}
