//! What the output plugin knows about one relation on one connection: whether and
//! how it is published (from the replication sets), the columns it sends and how each
//! column's values travel (internal, send/recv binary or text), its row filters
//! ready to evaluate, and whether its `R` message was sent. Built on first use and
//! dropped when PostgreSQL invalidates the relation (see [`crate::invalidation`]).

use std::ffi::CStr;

use bytes::BytesMut;
use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use spock_core::proto::transfer::{self, TransferKind, TypeFacts};
use spock_core::proto::writer::TupleWriter;
use spock_core::proto::{EncodeError, RelColumn, Relation as RelMessage};
use spock_core::repset::{RepSet, TablePublication};

use super::catalog;
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
    /// TOAST pointer for internal transfer).
    fallback_text: Box<pg_sys::FmgrInfo>,
}

/// Per-relation state of an output plugin connection.
pub struct RelEntry {
    /// What the subscriber gets of the table.
    pub publication: TablePublication<String>,
    columns: Vec<Column>,
    natts: usize,
    /// Whether the old tuple is the whole row (REPLICA IDENTITY FULL).
    pub identity_full: bool,
    relmessage: RelMessage,
    /// Whether the `R` message went out on this connection.
    pub relmeta_sent: bool,
    filters: Option<super::row_filter::RowFilters>,
    /// Scratch arrays for deforming tuples, reused across changes.
    values: Vec<pg_sys::Datum>,
    nulls: Vec<bool>,
}

/// The wire decision of Spock's `decide_datum_transfer` (made by
/// [`transfer::decide`]), with the function a `b` or `t` column calls.
///
/// SAFETY: `typ` must be a valid pg_type row.
unsafe fn decide_transfer(
    typid: pg_sys::Oid,
    typ: &pg_sys::FormData_pg_type,
    allow_internal: bool,
    allow_binary: bool,
) -> Transfer {
    let facts = TypeFacts {
        oid: u32::from(typid),
        typtype: typ.typtype as u8,
        has_element: typ.typelem != pg_sys::InvalidOid,
        typlen: typ.typlen,
        typbyval: typ.typbyval,
        has_send_receive: typ.typreceive != pg_sys::InvalidOid && typ.typsend != pg_sys::InvalidOid,
    };
    match transfer::decide(&facts, allow_internal, allow_binary) {
        TransferKind::Internal { byval, len } => Transfer::Internal { byval, len },
        TransferKind::BinaryBigEndian(len) => Transfer::BinaryBigEndian(len),
        // SAFETY: typsend is a valid function oid from pg_type.
        TransferKind::Binary => Transfer::Binary(unsafe { fmgr_info(typ.typsend) }),
        // SAFETY: typoutput is a valid function oid from pg_type.
        TransferKind::Text => Transfer::Text(unsafe { fmgr_info(typ.typoutput) }),
    }
}

/// Looks a function up once for repeated calls; lives in CacheMemoryContext.
///
/// SAFETY: `func` must be a valid function oid.
unsafe fn fmgr_info(func: pg_sys::Oid) -> Box<pg_sys::FmgrInfo> {
    let mut finfo = Box::new(pg_sys::FmgrInfo::default());
    // SAFETY: fills the FmgrInfo we own; extra data goes to CacheMemoryContext, which
    // outlives every decoding context.
    unsafe { pg_sys::fmgr_info_cxt(func, finfo.as_mut(), pg_sys::CacheMemoryContext) };
    finfo
}

/// The pg_type row of `typid`, copied.
fn type_row(typid: pg_sys::Oid) -> pg_sys::FormData_pg_type {
    // SAFETY: syscache lookup and release around a plain struct copy.
    unsafe {
        let tup = pg_sys::SearchSysCache1(pg_sys::SysCacheIdentifier::TYPEOID as i32, pg_sys::Datum::from(typid));
        if tup.is_null() {
            PgError::new(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("cache lookup failed for type {typid:?}"))
                .raise();
        }
        let row = *pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_type>(tup);
        pg_sys::ReleaseSysCache(tup);
        row
    }
}

impl RelEntry {
    /// Builds the entry of `rel` for a connection subscribed to `sets`.
    ///
    /// SAFETY: `rel` must be an open relation.
    pub unsafe fn build(
        rel: pg_sys::Relation,
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

        let publication = match only_table {
            Some((schema, table)) => {
                let all = RepSet {
                    id: 0,
                    name: String::new(),
                    replicate_insert: true,
                    replicate_update: true,
                    replicate_delete: true,
                    replicate_truncate: true,
                };
                let member = *schema == nspname && *table == relname;
                let memberships = if member {
                    vec![spock_core::repset::Membership { set_id: 0, columns: None, row_filter: None }]
                } else {
                    vec![]
                };
                TablePublication::new(&[all], &memberships)
            }
            None => TablePublication::new(sets, &catalog::table_memberships(relid)),
        };

        // SAFETY: returns a palloc'd bitmap of the identity key columns of an open relation.
        let identity = unsafe {
            pg_sys::RelationGetIndexAttrBitmap(rel, pg_sys::IndexAttrBitmapKind::INDEX_ATTR_BITMAP_IDENTITY_KEY)
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
            let typ = type_row(att.atttypid);
            // SAFETY: typ is the pg_type row of the column's type.
            let transfer = unsafe { decide_transfer(att.atttypid, &typ, allow_internal, allow_binary) };
            columns.push(Column {
                index,
                varlena: att.attlen == -1,
                transfer,
                // SAFETY: typoutput from pg_type.
                fallback_text: unsafe { fmgr_info(typ.typoutput) },
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
            filters: None,
            identity_full: relform.relreplident == pg_sys::REPLICA_IDENTITY_FULL as std::ffi::c_char,
            relmessage: RelMessage { flags: 0, relid: u32::from(relid), nspname, relname, columns: relcolumns },
            relmeta_sent: false,
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

    /// Whether the publication has row filters.
    pub fn has_row_filters(&self) -> bool {
        !self.publication.row_filters.is_empty()
    }

    /// Evaluates the row filters on `tuple`.
    ///
    /// SAFETY: `rel` is open and `tuple` is a tuple of it.
    pub unsafe fn row_passes(&mut self, rel: pg_sys::Relation, tuple: pg_sys::HeapTuple) -> bool {
        let filters = self
            .filters
            // SAFETY: rel is open; the node strings were written by nodeToString.
            .get_or_insert_with(|| unsafe {
                super::row_filter::RowFilters::prepare(rel, &self.publication.row_filters)
            });
        // SAFETY: tuple belongs to rel.
        unsafe { filters.all_pass(tuple) }
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
        self.values.clear();
        self.values.resize(self.natts, pg_sys::Datum::from(0usize));
        self.nulls.clear();
        self.nulls.resize(self.natts, true);
        // SAFETY: arrays sized to the descriptor's natts; decoding hands tuples of the
        // relation's current shape.
        unsafe { pg_sys::heap_deform_tuple(tuple, (*rel).rd_att, self.values.as_mut_ptr(), self.nulls.as_mut_ptr()) };
        let mut w = TupleWriter::new(out, self.columns.len() as u16);
        for col in &self.columns {
            if col.index >= self.natts || self.nulls[col.index] {
                w.null();
                continue;
            }
            let value = self.values[col.index];
            if col.varlena {
                let ptr = value.cast_mut_ptr::<u8>();
                // SAFETY: a non-null varlena datum points to at least a 1-byte header;
                // an external one (first byte 0x01) has its tag in the second byte.
                let (external, tag) = unsafe { (*ptr == 0x01, if *ptr == 0x01 { *ptr.add(1) } else { 0 }) };
                if external && u32::from(tag) == pg_sys::vartag_external::VARTAG_ONDISK {
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

/// SAFETY: `finfo` is an output function and `value` a datum of its type.
unsafe fn write_text(
    w: &mut TupleWriter<'_>,
    finfo: &pg_sys::FmgrInfo,
    value: pg_sys::Datum,
) -> Result<(), EncodeError> {
    // SAFETY: OutputFunctionCall returns a palloc'd C string, freed after copying.
    unsafe {
        let s = pg_sys::OutputFunctionCall(finfo as *const _ as *mut _, value);
        let r = w.text(CStr::from_ptr(s).to_bytes());
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
            let ptr = value.cast_mut_ptr::<u8>();
            // SAFETY: a non-external varlena: its header gives its total size, all of
            // which belongs to the datum.
            w.internal(unsafe { std::slice::from_raw_parts(ptr, varsize_any(ptr)) })
        }
        Transfer::Binary(finfo) => {
            // SAFETY: SendFunctionCall returns a palloc'd bytea with a 4-byte header
            // (or a short 1-byte one), freed after copying.
            unsafe {
                let b = pg_sys::SendFunctionCall(finfo.as_ref() as *const _ as *mut _, value);
                let ptr = b.cast::<u8>();
                let size = varsize_any(ptr);
                let hdr = if *ptr & 0x01 == 0x01 { 1 } else { 4 };
                let r = w.binary(std::slice::from_raw_parts(ptr.add(hdr), size - hdr));
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

/// `VARSIZE_ANY` for an inline (1-byte or 4-byte header) varlena on a
/// little-endian server.
///
/// SAFETY: `ptr` points to a non-external varlena.
unsafe fn varsize_any(ptr: *const u8) -> usize {
    // SAFETY: reading the header bytes of a valid varlena.
    unsafe {
        if *ptr & 0x01 == 0x01 {
            (*ptr >> 1) as usize
        } else {
            let header = u32::from_ne_bytes([*ptr, *ptr.add(1), *ptr.add(2), *ptr.add(3)]);
            (header >> 2) as usize
        }
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
