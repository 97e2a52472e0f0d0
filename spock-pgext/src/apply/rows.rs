//! Rows as text for `spock.resolutions` (`local_tuple`, `remote_tuple`): a JSON
//! object of column name → the value's text output (or null); and for
//! `spock.exception_log.local_tup` the array form of its remote tuples. Only built
//! when a conflict or an exception is recorded.

use std::ffi::CStr;

use pgrx::pg_sys;

/// One column of a row: its name, its type and modifier, and its value's text
/// output (`None`: NULL).
struct TextColumn {
    name: String,
    type_oid: pg_sys::Oid,
    value: Option<String>,
}

/// The slot's columns (dropped ones skipped), values as their types' text output.
/// What [`slot_json`] and [`slot_json_array`] both show.
///
/// SAFETY: `slot` is a valid, filled slot of the table's descriptor, inside a
/// transaction (output functions may read catalogs).
unsafe fn text_columns(slot: *mut pg_sys::TupleTableSlot) -> Vec<TextColumn> {
    let mut out = Vec::new();
    // SAFETY: forwarded: the slot and its descriptor are valid; arrays have natts
    // entries; the palloc'd strings are freed after being copied.
    unsafe {
        pg_sys::slot_getallattrs(slot);
        let desc = (*slot).tts_tupleDescriptor;
        let natts = (*desc).natts as usize;
        let values = std::slice::from_raw_parts((*slot).tts_values, natts);
        let nulls = std::slice::from_raw_parts((*slot).tts_isnull, natts);
        for i in 0..natts {
            let att = &*pg_sys::TupleDescAttr(desc, i as i32);
            if att.attisdropped {
                continue;
            }
            let value = (!nulls[i]).then(|| {
                let mut func = pg_sys::InvalidOid;
                let mut varlena = false;
                pg_sys::getTypeOutputInfo(att.atttypid, &mut func, &mut varlena);
                let text = pg_sys::OidOutputFunctionCall(func, values[i]);
                let v = CStr::from_ptr(text).to_string_lossy().into_owned();
                pg_sys::pfree(text.cast());
                v
            });
            out.push(TextColumn {
                name: CStr::from_ptr(att.attname.data.as_ptr()).to_string_lossy().into_owned(),
                type_oid: att.atttypid,
                value,
            });
        }
    }
    out
}

// PostgreSQL's SQL-callable `row_to_json` itself (pgrx's binding wraps it in a
// guard, which is not a `PGFunction`), called through the function manager.
unsafe extern "C-unwind" {
    #[link_name = "row_to_json"]
    fn row_to_json_c(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
}

/// The slot's row as `row_to_json` writes it (`{"id":3,"v":"x"}`, as Spock's
/// spock.resolutions shows rows); a JSON object of text values when the slot's
/// row type is anonymous.
///
/// SAFETY: as [`text_columns`].
pub unsafe fn slot_json(slot: *mut pg_sys::TupleTableSlot) -> String {
    // SAFETY: the slot's descriptor names its row type (a table's); the composite
    // datum and the json text are palloc'd in the caller's memory context.
    unsafe {
        if (*(*slot).tts_tupleDescriptor).tdtypeid != pg_sys::RECORDOID {
            let row = pg_sys::ExecFetchSlotHeapTupleDatum(slot);
            let json = pg_sys::DirectFunctionCall1Coll(Some(row_to_json_c), pg_sys::InvalidOid, row);
            let text = pg_sys::text_to_cstring(json.cast_mut_ptr());
            return CStr::from_ptr(text).to_string_lossy().into_owned();
        }
    }
    let mut out = String::from("{");
    // SAFETY: forwarded.
    for (i, c) in unsafe { text_columns(slot) }.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        spock_core::exception::push_json_string(&mut out, &c.name);
        out.push_str(": ");
        match &c.value {
            None => out.push_str("null"),
            Some(v) => spock_core::exception::push_json_string(&mut out, v),
        }
    }
    out.push('}');
    out
}

/// The slot's values as `spock.exception_log` shows tuples
/// (spock_core::exception::tuple_json): an array of `{"attname", "atttype",
/// "value"}` with the local column types and the values as `to_json` writes them.
///
/// SAFETY: as [`text_columns`].
pub unsafe fn slot_json_array(slot: *mut pg_sys::TupleTableSlot) -> String {
    // SAFETY: forwarded.
    let (labels, columns): (Vec<_>, Vec<_>) = unsafe { text_columns(slot) }
        .into_iter()
        .map(|c| {
            let (type_name, category) =
                type_name_and_category(c.type_oid).unwrap_or_else(|| (u32::from(c.type_oid).to_string(), b'X'));
            let label = spock_core::exception::ColumnLabel {
                name: c.name,
                type_name: Some(type_name),
                json_type: Some((u32::from(c.type_oid), category)),
            };
            let datum = c.value.map_or(spock_core::proto::Datum::Null, |v| spock_core::proto::Datum::Text(v.into()));
            (label, datum)
        })
        .unzip();
    spock_core::exception::tuple_json(&labels, &spock_core::proto::Tuple { columns })
}

/// The inserting transaction of the row in `slot`.
///
/// SAFETY: `slot` holds a heap row fetched from the table.
pub unsafe fn slot_xmin(slot: *mut pg_sys::TupleTableSlot) -> u32 {
    // SAFETY: forwarded; the tuple is freed if it was copied.
    unsafe {
        let mut should_free = false;
        let tup = pg_sys::ExecFetchSlotHeapTuple(slot, false, &mut should_free);
        let xmin = (*(*tup).t_data).t_choice.t_heap.t_xmin.into_inner();
        if should_free {
            pg_sys::heap_freetuple(tup);
        }
        xmin
    }
}

/// pg_type.typname and typcategory of type `oid`, if it exists.
pub fn type_name_and_category(oid: pg_sys::Oid) -> Option<(String, u8)> {
    // SAFETY: a syscache lookup in the caller's transaction, released after the
    // fields are copied.
    unsafe {
        let tup = pg_sys::SearchSysCache1(pg_sys::SysCacheIdentifier::TYPEOID as i32, oid.into());
        if tup.is_null() {
            return None;
        }
        let typ = &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_type>(tup);
        let t = (CStr::from_ptr(typ.typname.data.as_ptr()).to_string_lossy().into_owned(), typ.typcategory as u8);
        pg_sys::ReleaseSysCache(tup);
        Some(t)
    }
}
