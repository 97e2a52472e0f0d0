//! What the output plugin knows about one relation on one connection: whether and
//! how it is published (from the replication sets), the columns it sends and how each
//! column's values travel (internal, send/recv binary or text), its row filters
//! ready to evaluate, and whether its `R` message was sent. Built on first use and
//! dropped when PostgreSQL invalidates the relation (see [`crate::invalidation`]).
//!
//! What an entry allocates in PostgreSQL memory (looked-up functions and what they
//! cache, prepared row filters) lives in the entry's own memory context, a child of
//! the connection's, deleted when the entry is dropped: rebuilding an entry after
//! each invalidation does not grow the walsender's memory.

use std::ffi::CStr;

use bytes::BytesMut;
use pgrx::pg_sys;
use pgrx::varlena;
use pgrx::PgSqlErrorCode;
use spock_core::proto::transfer::{self, TransferKind, TypeFacts};
use spock_core::proto::writer::TupleWriter;
use spock_core::proto::{EncodeError, RelColumn, Relation as RelMessage};
use spock_core::repset::{self, Action, RepSet, TablePublication, UpdateRoute, UpdateRow};

use super::catalog;
use super::row_filter::{FilterExpr, RowFilters};
use crate::error::PgError;

/// How a column's values are sent.
enum Transfer {
    /// `i`: the datum's bytes (by-value of `len` bytes, fixed-length by-reference, or
    /// varlena).
    Internal { byval: bool, len: i16 },
    /// `b`: the type's send function.
    Binary(Box<pg_sys::FmgrInfo>),
    /// `b` for a built-in by-value type whose send function writes the datum's
    /// `len` low bytes big-endian (see [`transfer::big_endian_send_len`]): written here
    /// without calling it (no call, no allocation per value).
    BinaryBigEndian(u8),
    /// `t`: the type's output function.
    Text(Box<pg_sys::FmgrInfo>),
}

/// One sent column.
struct Column {
    /// 0-based index in the tuple descriptor.
    index: usize,
    varlena: bool,
    transfer: Transfer,
    /// Text output, used when a value cannot travel as `transfer` says (an indirect
    /// TOAST pointer for internal transfer), and for `proto_format = json`.
    fallback_text: Box<pg_sys::FmgrInfo>,
    /// pg_type.typcategory of the column's type (how json writes its values).
    category: u8,
}

/// Whether the WAL of an UPDATE tells how the old row stood with the row filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OldFilterColumns {
    /// REPLICA IDENTITY FULL: the old row is all there.
    InOldRow,
    /// The filters read replica identity columns only: the old key when the UPDATE
    /// changed it, otherwise they equal the new row's.
    InKeyOrNewRow,
    /// The filters read other columns, which the WAL does not hold for the old row.
    Unknown,
}

/// Per-relation state of an output plugin connection.
pub struct RelEntry {
    /// The entry's memory (see the module comment), deleted on drop.
    cxt: pg_sys::MemoryContext,
    /// What the subscriber gets of the table, with its row filters prepared.
    publication: TablePublication<FilterExpr>,
    /// Where the row filters run; `None` without row filters.
    filters: Option<RowFilters>,
    /// What the row filters can know of an UPDATE's old row.
    old_filter_columns: OldFilterColumns,
    /// The table is `spock.queue`, whose rows have their own rule (`queue.rs`).
    pub is_queue: bool,
    columns: Vec<Column>,
    natts: usize,
    /// Whether the old tuple is the whole row (REPLICA IDENTITY FULL).
    pub identity_full: bool,
    relmessage: RelMessage,
    /// Whether the `R` message went out on this connection.
    pub relmeta_sent: bool,
    /// A DELETE without a key was skipped with a WARNING (once per entry).
    pub warned_keyless_delete: bool,
    /// Scratch arrays for deforming tuples, reused across changes.
    values: Vec<pg_sys::Datum>,
    nulls: Vec<bool>,
}

impl Drop for RelEntry {
    fn drop(&mut self) {
        // The filters' executor state first, then the memory it lives in.
        self.filters = None;
        // SAFETY: the entry's own context, created in `build`; the looked-up
        // functions in it are dropped with the entry and not called afterwards.
        unsafe { pg_sys::MemoryContextDelete(self.cxt) };
    }
}

/// How a column of type `facts` travels (`spock_core::proto::transfer`), with the
/// function a `b` or `t` column calls looked up in `cxt`.
///
/// SAFETY: `facts` comes from a pg_type row; `cxt` is a valid memory context.
unsafe fn column_transfer(
    facts: &TypeFacts,
    cxt: pg_sys::MemoryContext,
    allow_internal: bool,
    allow_binary: bool,
) -> Transfer {
    match transfer::decide_transfer(facts, allow_internal, allow_binary) {
        TransferKind::Internal { byval, len } => Transfer::Internal { byval, len },
        TransferKind::BinaryBigEndian(len) => Transfer::BinaryBigEndian(len),
        // SAFETY: a function oid from pg_type.
        TransferKind::Binary { send } => Transfer::Binary(unsafe { fmgr_info(send, cxt) }),
        // SAFETY: a function oid from pg_type.
        TransferKind::Text { output } => Transfer::Text(unsafe { fmgr_info(output, cxt) }),
    }
}

/// Looks function `func` up once for repeated calls; what it caches between calls
/// goes to `cxt`.
///
/// SAFETY: `func` must be a valid function oid and `cxt` a valid memory context.
unsafe fn fmgr_info(func: u32, cxt: pg_sys::MemoryContext) -> Box<pg_sys::FmgrInfo> {
    let mut finfo = Box::new(pg_sys::FmgrInfo::default());
    // SAFETY: fills the FmgrInfo we own, with `cxt` as its fn_mcxt.
    unsafe { pg_sys::fmgr_info_cxt(pg_sys::Oid::from(func), finfo.as_mut(), cxt) };
    finfo
}

/// What the pg_type row of `typid` says for [`transfer::decide_transfer`].
fn type_facts(typid: pg_sys::Oid) -> TypeFacts {
    // SAFETY: syscache lookup and release around plain field copies.
    unsafe {
        let tup = pg_sys::SearchSysCache1(pg_sys::SysCacheIdentifier::TYPEOID as i32, pg_sys::Datum::from(typid));
        if tup.is_null() {
            PgError::new(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("cache lookup failed for type {typid:?}"))
                .raise();
        }
        let typ = &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_type>(tup);
        let facts = TypeFacts {
            oid: u32::from(typid),
            typtype: typ.typtype as u8,
            typelem: u32::from(typ.typelem),
            typlen: typ.typlen,
            typbyval: typ.typbyval,
            typsend: u32::from(typ.typsend),
            typreceive: u32::from(typ.typreceive),
            typoutput: u32::from(typ.typoutput),
        };
        pg_sys::ReleaseSysCache(tup);
        facts
    }
}

impl RelEntry {
    /// Builds the entry of `rel` for a connection subscribed to `sets` (or catching
    /// up `only_table`), with its memory in a new child of `parent`.
    ///
    /// SAFETY: `rel` must be an open relation and `parent` a valid memory context.
    pub unsafe fn build(
        rel: pg_sys::Relation,
        parent: pg_sys::MemoryContext,
        sets: &[RepSet],
        only_table: Option<&(String, String)>,
        allow_internal: bool,
        allow_binary: bool,
    ) -> RelEntry {
        // SAFETY: the caller passes an open relation; its descriptor and form are valid.
        let (relid, relform, desc) = unsafe { ((*rel).rd_id, &*(*rel).rd_rel, (*rel).rd_att) };
        // SAFETY: namespace oid from the relation's own form.
        let nspname = unsafe { cstr_or_empty(pg_sys::get_namespace_name(relform.relnamespace)) };
        let relname = unsafe { CStr::from_ptr(relform.relname.data.as_ptr()) }.to_string_lossy().into_owned();
        let only_table = only_table.map(|(schema, table)| (schema.as_str(), table.as_str()));
        let publication =
            repset::table_publication(&nspname, &relname, only_table, sets, || catalog::table_memberships(relid));

        // SAFETY: a new child of the caller's valid context; deleted on drop (or with
        // its parent, should the build fail below).
        let cxt = unsafe {
            pg_sys::AllocSetContextCreateInternal(parent, c"spock output relation".as_ptr(), 0, 1024, 8 * 1024)
        };
        // SAFETY: rel is open; the node strings come from our catalog; everything is
        // allocated in the entry's context.
        let mut filter_columns: *mut pg_sys::Bitmapset = std::ptr::null_mut();
        let (filters, publication) = unsafe {
            let old = pg_sys::MemoryContextSwitchTo(cxt);
            let filters = publication.has_row_filters().then(|| RowFilters::new(rel));
            let publication = publication.map_filters(|tree| RowFilters::prepare(&tree, &mut filter_columns));
            pg_sys::MemoryContextSwitchTo(old);
            (filters, publication)
        };

        // SAFETY: returns a palloc'd bitmap of the identity key columns of an open relation.
        let identity = unsafe {
            pg_sys::RelationGetIndexAttrBitmap(rel, pg_sys::IndexAttrBitmapKind::INDEX_ATTR_BITMAP_IDENTITY_KEY)
        };
        let identity_full = relform.relreplident == pg_sys::REPLICA_IDENTITY_FULL as std::ffi::c_char;
        let old_filter_columns = if identity_full {
            OldFilterColumns::InOldRow
        // SAFETY: two valid (possibly empty) bitmaps.
        } else if unsafe { pg_sys::bms_is_subset(filter_columns, identity) } {
            OldFilterColumns::InKeyOrNewRow
        } else {
            OldFilterColumns::Unknown
        };
        // SAFETY: desc is the relation's valid tuple descriptor.
        let natts = unsafe { (*desc).natts } as usize;
        let mut columns = Vec::new();
        let mut relcolumns = Vec::new();
        for index in 0..natts {
            // SAFETY: index < natts.
            let att = unsafe { &*pgrx::pg_sys::TupleDescAttr(desc, index as i32) };
            if att.attisdropped || att.attgenerated != 0 {
                continue;
            }
            let name = unsafe { CStr::from_ptr(att.attname.data.as_ptr()) }.to_string_lossy().into_owned();
            if !publication.columns.includes(&name) {
                continue;
            }
            let facts = type_facts(att.atttypid);
            // SAFETY: facts of the column's type; cxt is the entry's context.
            let (transfer, fallback_text) = unsafe {
                (column_transfer(&facts, cxt, allow_internal, allow_binary), fmgr_info(facts.typoutput, cxt))
            };
            let mut category: std::ffi::c_char = 0;
            let mut preferred = false;
            // SAFETY: a type oid from the descriptor; writes the two outputs.
            unsafe { pg_sys::get_type_category_preferred(att.atttypid, &mut category, &mut preferred) };
            columns.push(Column {
                index,
                varlena: att.attlen == -1,
                transfer,
                fallback_text,
                category: category as u8,
            });
            // SAFETY: identity is a valid (possibly empty) bitmap.
            let is_identity = unsafe {
                pg_sys::bms_is_member(i32::from(att.attnum) - pg_sys::FirstLowInvalidHeapAttributeNumber, identity)
            };
            relcolumns.push(RelColumn {
                flags: if is_identity { spock_core::proto::message::COLUMN_FLAG_REPLICA_IDENTITY } else { 0 },
                name,
                type_oid: u32::from(att.atttypid),
                typmod: att.atttypmod,
            });
        }
        RelEntry {
            cxt,
            filters,
            old_filter_columns,
            is_queue: spock_core::ddl::is_queue_table(&nspname, &relname),
            identity_full,
            relmessage: RelMessage { flags: 0, relid: u32::from(relid), nspname, relname, columns: relcolumns },
            relmeta_sent: false,
            warned_keyless_delete: false,
            publication,
            columns,
            natts,
            values: Vec::with_capacity(natts),
            nulls: Vec::with_capacity(natts),
        }
    }

    /// The `R` message for this relation.
    pub fn relation_message(&self) -> &RelMessage {
        &self.relmessage
    }

    /// Whether an INSERT or TRUNCATE is sent, with the row filters evaluated on
    /// `tuple` (the new row of an INSERT): a row that is not there does not pass
    /// filters. DELETE and UPDATE have their own rules ([`RelEntry::delete_passes`],
    /// [`RelEntry::route_update`]).
    ///
    /// SAFETY: `tuple` is null or a tuple of the entry's relation.
    pub unsafe fn change_passes(&mut self, action: Action, tuple: pg_sys::HeapTuple) -> bool {
        let mut filters = self.filters.as_mut().filter(|_| !tuple.is_null());
        let verdict = self.publication.change_passes(action, |expr| {
            // SAFETY: the filters were prepared for this relation; tuple belongs to it.
            Ok::<_, std::convert::Infallible>(filters.as_mut().and_then(|f| unsafe { f.evaluate(*expr, tuple) }))
        });
        if let Some(f) = filters {
            // SAFETY: ends the evaluations of this change.
            unsafe { f.finish() };
        }
        verdict.unwrap_or_else(|never| match never {})
    }

    /// Whether a DELETE with old row or key `oldtuple` is sent
    /// ([`TablePublication::delete_passes`]).
    ///
    /// SAFETY: `oldtuple` is null or a tuple of the entry's relation.
    pub unsafe fn delete_passes(&mut self, oldtuple: pg_sys::HeapTuple) -> bool {
        let known = !oldtuple.is_null() && self.old_filter_columns != OldFilterColumns::Unknown;
        let filters = &mut self.filters;
        let verdict = self.publication.delete_passes(known, |expr| {
            // SAFETY: the filters were prepared for this relation; the tuple belongs to it.
            Ok::<_, std::convert::Infallible>(filters.as_mut().and_then(|f| unsafe { f.evaluate(*expr, oldtuple) }))
        });
        if let Some(f) = filters {
            // SAFETY: ends the evaluations of this change.
            unsafe { f.finish() };
        }
        verdict.unwrap_or_else(|never| match never {})
    }

    /// Where an UPDATE goes for this connection ([`UpdateRoute`]): `newtuple` is its
    /// new row, `oldtuple` its old row or key as the WAL holds it (null when the key
    /// did not change and the identity is not FULL).
    ///
    /// SAFETY: the tuples are null or tuples of the entry's relation.
    pub unsafe fn route_update(&mut self, newtuple: pg_sys::HeapTuple, oldtuple: pg_sys::HeapTuple) -> UpdateRoute {
        if newtuple.is_null() {
            return UpdateRoute::Skip;
        }
        // The row the filters see as the old one; null: not known.
        let old_row = match self.old_filter_columns {
            OldFilterColumns::InOldRow => oldtuple,
            OldFilterColumns::InKeyOrNewRow if oldtuple.is_null() => newtuple,
            OldFilterColumns::InKeyOrNewRow => oldtuple,
            OldFilterColumns::Unknown => std::ptr::null_mut(),
        };
        let filters = &mut self.filters;
        let route = self.publication.route_update(!old_row.is_null(), |expr, row| {
            let tuple = if row == UpdateRow::New { newtuple } else { old_row };
            // SAFETY: the filters were prepared for this relation; the tuples belong to it.
            Ok::<_, std::convert::Infallible>(filters.as_mut().and_then(|f| unsafe { f.evaluate(*expr, tuple) }))
        });
        if let Some(f) = filters {
            // SAFETY: ends the evaluations of this change.
            unsafe { f.finish() };
        }
        route.unwrap_or_else(|never| match never {})
    }

    /// `newtuple` with each value the UPDATE left in TOAST (an on-disk pointer the
    /// subscriber could not resolve in an INSERT) taken from `oldtuple` where that
    /// has it; `newtuple` itself when it has none. A new tuple in the current memory
    /// context otherwise.
    ///
    /// SAFETY: `rel` is open; both are valid tuples of it.
    pub unsafe fn with_unchanged_from(
        &mut self,
        rel: pg_sys::Relation,
        newtuple: pg_sys::HeapTuple,
        oldtuple: pg_sys::HeapTuple,
    ) -> pg_sys::HeapTuple {
        // SAFETY: rel is open.
        let desc = unsafe { (*rel).rd_att };
        let mut old_values = vec![pg_sys::Datum::from(0usize); self.natts];
        let mut old_nulls = vec![true; self.natts];
        self.values.clear();
        self.values.resize(self.natts, pg_sys::Datum::from(0usize));
        self.nulls.clear();
        self.nulls.resize(self.natts, true);
        // SAFETY: arrays sized to the descriptor's natts.
        unsafe {
            pg_sys::heap_deform_tuple(newtuple, desc, self.values.as_mut_ptr(), self.nulls.as_mut_ptr());
            pg_sys::heap_deform_tuple(oldtuple, desc, old_values.as_mut_ptr(), old_nulls.as_mut_ptr());
        }
        let mut changed = false;
        for col in self.columns.iter().filter(|c| c.varlena && c.index < self.natts) {
            let i = col.index;
            // SAFETY: a non-null varlena datum of the new row.
            if !self.nulls[i] && unsafe { is_on_disk_toast(self.values[i]) } && !old_nulls[i] {
                self.values[i] = old_values[i];
                changed = true;
            }
        }
        if !changed {
            return newtuple;
        }
        // SAFETY: values and nulls match the descriptor.
        unsafe { pg_sys::heap_form_tuple(desc, self.values.as_mut_ptr(), self.nulls.as_mut_ptr()) }
    }

    /// Writes a heap tuple of the relation as a wire tuple straight into `out`.
    ///
    /// SAFETY: `rel` is open and `tuple` a valid tuple of it.
    pub unsafe fn write_tuple(
        &mut self,
        rel: pg_sys::Relation,
        tuple: pg_sys::HeapTuple,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        // SAFETY: as the caller guarantees.
        unsafe { self.deform(rel, tuple) };
        let mut w = TupleWriter::new(out, self.columns.len() as u16);
        for col in &self.columns {
            if col.index >= self.natts || self.nulls[col.index] {
                w.null();
                continue;
            }
            let value = self.values[col.index];
            if col.varlena {
                let ptr = value.cast_mut_ptr::<pg_sys::varlena>();
                // SAFETY: a non-null varlena datum points to at least a 1-byte header;
                // an external one has its tag in the second byte. pgrx reads the
                // header bits of the server's byte order.
                let external = unsafe { varlena::varatt_is_1b_e(ptr) };
                // SAFETY: as above.
                if external && unsafe { is_on_disk_toast(value) } {
                    w.unchanged_toast();
                    continue;
                }
                if external {
                    // SAFETY: the output function detoasts indirect pointers itself.
                    unsafe { write_text(&mut w, &col.fallback_text, value)? };
                    continue;
                }
            }
            // SAFETY: value is a non-null, non-external datum of the column's type.
            unsafe { write_value(&mut w, col, value)? };
        }
        Ok(())
    }
}

impl RelEntry {
    /// Deforms `tuple` into the entry's scratch arrays (`values`, `nulls`).
    ///
    /// SAFETY: `rel` is open and `tuple` a valid tuple of it (decoding hands tuples
    /// of the relation's current shape).
    unsafe fn deform(&mut self, rel: pg_sys::Relation, tuple: pg_sys::HeapTuple) {
        self.values.clear();
        self.values.resize(self.natts, pg_sys::Datum::from(0usize));
        self.nulls.clear();
        self.nulls.resize(self.natts, true);
        // SAFETY: arrays sized to the descriptor's natts.
        unsafe { pg_sys::heap_deform_tuple(tuple, (*rel).rd_att, self.values.as_mut_ptr(), self.nulls.as_mut_ptr()) };
    }

    /// A heap tuple of the relation as `proto_format = json` writes it: each sent
    /// column by name, with its text output typed as `to_json` types it; a value
    /// an UPDATE left in TOAST is left out.
    ///
    /// SAFETY: `rel` is open and `tuple` a valid tuple of it.
    pub unsafe fn json_tuple(
        &mut self,
        rel: pg_sys::Relation,
        tuple: pg_sys::HeapTuple,
    ) -> Vec<(String, spock_core::proto::json::JsonValue)> {
        use spock_core::proto::json::JsonValue;
        // SAFETY: as the caller guarantees.
        unsafe { self.deform(rel, tuple) };
        let mut out = Vec::with_capacity(self.columns.len());
        for (col, meta) in self.columns.iter().zip(&self.relmessage.columns) {
            if col.index >= self.natts || self.nulls[col.index] {
                out.push((meta.name.clone(), JsonValue::Null));
                continue;
            }
            let value = self.values[col.index];
            // SAFETY: a non-null varlena datum; see write_tuple.
            if col.varlena && unsafe { is_on_disk_toast(value) } {
                continue;
            }
            // SAFETY: the column's output function on a non-null datum of its type.
            let text = unsafe { with_output_text(&col.fallback_text, value, |s| s.to_string_lossy().into_owned()) };
            out.push((meta.name.clone(), JsonValue::from_text(col.category, meta.type_oid, text)));
        }
        out
    }
}

/// Whether a non-null varlena datum is a pointer to a value in the TOAST table
/// (what decoding hands for a value an UPDATE did not change).
///
/// SAFETY: `value` is a non-null varlena datum.
unsafe fn is_on_disk_toast(value: pg_sys::Datum) -> bool {
    let ptr = value.cast_mut_ptr::<pg_sys::varlena>();
    // SAFETY: a varlena has at least a 1-byte header; an external one has its tag in
    // the second byte. pgrx reads the header bits of the server's byte order.
    unsafe {
        varlena::varatt_is_1b_e(ptr)
            && u32::from(varlena::vartag_external(ptr)) == pg_sys::vartag_external::VARTAG_ONDISK
    }
}

/// SAFETY: `finfo` is an output function and `value` a datum of its type.
unsafe fn write_text(
    w: &mut TupleWriter<'_>,
    finfo: &pg_sys::FmgrInfo,
    value: pg_sys::Datum,
) -> Result<(), EncodeError> {
    // SAFETY: forwarded.
    unsafe { with_output_text(finfo, value, |s| w.text(s.to_bytes())) }
}

/// Calls `f` with the text output of `value`.
///
/// SAFETY: `finfo` is an output function and `value` a datum of its type.
unsafe fn with_output_text<R>(finfo: &pg_sys::FmgrInfo, value: pg_sys::Datum, f: impl FnOnce(&CStr) -> R) -> R {
    // SAFETY: OutputFunctionCall returns a palloc'd C string, freed after `f`.
    unsafe {
        let s = pg_sys::OutputFunctionCall(finfo as *const _ as *mut _, value);
        let r = f(CStr::from_ptr(s));
        pg_sys::pfree(s.cast());
        r
    }
}

/// SAFETY: `value` is a non-null, non-external datum of the column's type.
unsafe fn write_value(w: &mut TupleWriter<'_>, col: &Column, value: pg_sys::Datum) -> Result<(), EncodeError> {
    match &col.transfer {
        Transfer::Internal { byval: true, len } => {
            let raw = value.value() as u64;
            match len {
                1 => w.internal(&[raw as u8]),
                2 => w.internal(&(raw as u16).to_ne_bytes()),
                4 => w.internal(&(raw as u32).to_ne_bytes()),
                _ => w.internal(&raw.to_ne_bytes()),
            }
        }
        Transfer::Internal { byval: false, len } if *len > 0 => {
            // SAFETY: a fixed-length by-reference datum points to `len` bytes.
            w.internal(unsafe { std::slice::from_raw_parts(value.cast_mut_ptr::<u8>(), *len as usize) })
        }
        Transfer::Internal { .. } => {
            let ptr = value.cast_mut_ptr::<pg_sys::varlena>();
            // SAFETY: a non-external varlena: its header (read in the server's byte
            // order) gives its total size, all of which belongs to the datum.
            w.internal(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), varlena::varsize_any(ptr)) })
        }
        Transfer::Binary(finfo) => {
            // SAFETY: SendFunctionCall returns a palloc'd bytea with a 4-byte header
            // (or a short 1-byte one), read in the server's byte order; freed after
            // copying.
            unsafe {
                let b = pg_sys::SendFunctionCall(finfo.as_ref() as *const _ as *mut _, value);
                let data = varlena::vardata_any(b).cast::<u8>();
                let r = w.binary(std::slice::from_raw_parts(data, varlena::varsize_any_exhdr(b)));
                pg_sys::pfree(b.cast());
                r
            }
        }
        Transfer::BinaryBigEndian(len) => {
            let raw = value.value() as u64;
            match len {
                1 => w.binary(&[u8::from(raw & 0xff != 0)]),
                2 => w.binary(&(raw as u16).to_be_bytes()),
                4 => w.binary(&(raw as u32).to_be_bytes()),
                _ => w.binary(&raw.to_be_bytes()),
            }
        }
        // SAFETY: forwarded precondition.
        Transfer::Text(finfo) => unsafe { write_text(w, finfo, value) },
    }
}

/// SAFETY: `p` is null or a valid C string.
unsafe fn cstr_or_empty(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: non-null C string from PostgreSQL.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}
