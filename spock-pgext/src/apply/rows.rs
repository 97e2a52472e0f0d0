//! Rows as text for `spock.resolutions` (`local_tuple`, `remote_tuple`): a JSON
//! object of column name → the value's text output (or null); and for
//! `spock.exception_log.local_tup` the array form of its remote tuples. Only built
//! when a conflict or an exception is recorded.

use std::ffi::CStr;

use pgrx::pg_sys;

/// The slot's values as a JSON object of text values.
///
/// SAFETY: `slot` is a valid, filled slot of the table's descriptor, inside a
/// transaction (output functions may read catalogs).
pub unsafe fn slot_json(slot: *mut pg_sys::TupleTableSlot) -> String {
    let mut out = String::from("{");
    // SAFETY: forwarded: the slot and its descriptor are valid; arrays have natts entries.
    unsafe {
        pg_sys::slot_getallattrs(slot);
        let desc = (*slot).tts_tupleDescriptor;
        let natts = (*desc).natts as usize;
        let values = std::slice::from_raw_parts((*slot).tts_values, natts);
        let nulls = std::slice::from_raw_parts((*slot).tts_isnull, natts);
        let mut first = true;
        for i in 0..natts {
            let att = &*pg_sys::TupleDescAttr(desc, i as i32);
            if att.attisdropped {
                continue;
            }
            if !first {
                out.push_str(", ");
            }
            first = false;
            let name = CStr::from_ptr(att.attname.data.as_ptr()).to_string_lossy();
            spock_core::exception::push_json_string(&mut out, &name);
            out.push_str(": ");
            if nulls[i] {
                out.push_str("null");
                continue;
            }
            let mut func = pg_sys::InvalidOid;
            let mut varlena = false;
            pg_sys::getTypeOutputInfo(att.atttypid, &mut func, &mut varlena);
            let text = pg_sys::OidOutputFunctionCall(func, values[i]);
            spock_core::exception::push_json_string(&mut out, &CStr::from_ptr(text).to_string_lossy());
            pg_sys::pfree(text.cast());
        }
    }
    out.push('}');
    out
}

/// The slot's values as `spock.exception_log` shows tuples
/// (spock_core::exception::tuple_json): an array of `{"attname", "atttype",
/// "value"}` with the local column types and the values' text output.
///
/// SAFETY: as [`slot_json`].
pub unsafe fn slot_json_array(slot: *mut pg_sys::TupleTableSlot) -> String {
    let mut labels = Vec::new();
    let mut columns = Vec::new();
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
            let type_name = pg_sys::format_type_with_typemod(att.atttypid, att.atttypmod);
            labels.push(spock_core::exception::ColumnLabel {
                name: CStr::from_ptr(att.attname.data.as_ptr()).to_string_lossy().into_owned(),
                type_name: Some(CStr::from_ptr(type_name).to_string_lossy().into_owned()),
            });
            pg_sys::pfree(type_name.cast());
            columns.push(if nulls[i] {
                spock_core::proto::Datum::Null
            } else {
                let mut func = pg_sys::InvalidOid;
                let mut varlena = false;
                pg_sys::getTypeOutputInfo(att.atttypid, &mut func, &mut varlena);
                let text = pg_sys::OidOutputFunctionCall(func, values[i]);
                let d = spock_core::proto::Datum::Text(CStr::from_ptr(text).to_bytes().to_vec().into());
                pg_sys::pfree(text.cast());
                d
            });
        }
    }
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
