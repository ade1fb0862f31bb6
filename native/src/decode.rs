//! The stream's decode step for one poll in one call (`flows.stream_decode.Decoder`):
//! each message parsed by the native [`EventParser`], its event record and `Ingested`
//! tuple built here, its id hashed here. A message the parser is not sure of (invalid,
//! unusual) is left as None at its place and its index returned: the Python path decides
//! and names the field, so every output is what the per-message path gives.

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple, PyType};

use crate::event::{txid_hash_bytes, EventParser, Parsed};
use crate::shard_hash::shard_of;

/// A tuple subclass without `__dict__` (a named tuple): instances are made as
/// `tuple.__new__(cls, items)` makes them, without calling the class's Python `__new__`.
pub(crate) fn check_record(cls: &Bound<'_, PyType>, what: &str) -> PyResult<()> {
    let py = cls.py();
    let plain = py.get_type::<PyTuple>();
    let ok = cls.is_subclass(&plain)?
        && cls
            .getattr("__basicsize__")?
            .eq(plain.getattr("__basicsize__")?)?
        && cls
            .getattr("__itemsize__")?
            .eq(plain.getattr("__itemsize__")?)?;
    if ok {
        Ok(())
    } else {
        Err(PyTypeError::new_err(format!(
            "decode_poll: {what} must be a named tuple class (a tuple subclass without __dict__)"
        )))
    }
}

/// The checks `decode_route` and `decode_groups` (`name`) make of one poll's arguments.
pub(crate) fn check_poll(
    name: &str,
    n: usize,
    keys: &Bound<'_, PyList>,
    timestamps: &Bound<'_, PyList>,
    bits: u32,
    record: &Bound<'_, PyType>,
    ingested: &Bound<'_, PyType>,
) -> PyResult<()> {
    if keys.len() != n || timestamps.len() != n {
        return Err(PyTypeError::new_err(
            "decode: values, keys and timestamps differ in length",
        ));
    }
    if !(1..=16).contains(&bits) {
        return Err(PyTypeError::new_err(format!(
            "{name}: bits {bits} not in 1..=16"
        )));
    }
    check_record(record, "record")?;
    check_record(ingested, "ingested")
}

/// The key check of one message: its key must be the decimal bytes of the int at the
/// checked field (a None key fails); None when the Python path decides (the field is not
/// an int, or the key is neither bytes nor None).
pub(crate) fn key_matches(field: Option<&Parsed<'_>>, key: &Bound<'_, PyAny>) -> Option<bool> {
    match (field, key.downcast::<PyBytes>()) {
        (Some(Parsed::Int(v)), Ok(k)) => Some(k.as_bytes() == v.to_string().as_bytes()),
        (Some(Parsed::Int(_)), Err(_)) if key.is_none() => Some(false),
        _ => None,
    }
}

/// A new instance of the tuple subclass `cls` holding `items` (`tuple.__new__(cls, items)`).
pub(crate) fn new_record<'py>(
    cls: &Bound<'py, PyType>,
    items: Vec<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = cls.py();
    // SAFETY: `cls` is a tuple subclass of the tuple's own size (check_record), so its
    // tp_alloc makes a var-sized tuple of `n` empty slots; each slot is set once, on the
    // fresh object (reference count 1), with a reference the tuple takes over.
    unsafe {
        let t = cls.as_type_ptr();
        let alloc = ffi::PyType_GetSlot(t, ffi::Py_tp_alloc);
        if alloc.is_null() {
            return Err(PyTypeError::new_err("decode_poll: a type without tp_alloc"));
        }
        let alloc: ffi::allocfunc = std::mem::transmute(alloc);
        let obj = alloc(t, items.len() as ffi::Py_ssize_t);
        if obj.is_null() {
            return Err(PyErr::fetch(py));
        }
        let obj = Bound::from_owned_ptr(py, obj);
        for (i, item) in items.into_iter().enumerate() {
            if ffi::PyTuple_SetItem(obj.as_ptr(), i as ffi::Py_ssize_t, item.into_ptr()) != 0 {
                return Err(PyErr::fetch(py));
            }
        }
        Ok(obj)
    }
}

/// One poll: `values[i]` (bytes), `keys[i]`, `timestamps[i]` (ms; 0 or None: `now`).
/// Returns `(out, unsure)`: `out[i]` is `ingested(record(*values), ts or now,
/// txid_hash(values[id_at]), raw, key)`, or None for each index listed in `unsure`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn decode_poll<'py>(
    py: Python<'py>,
    parser: &Bound<'py, EventParser>,
    values: &Bound<'py, PyList>,
    keys: &Bound<'py, PyList>,
    timestamps: &Bound<'py, PyList>,
    now: i64,
    id_at: usize,
    record: &Bound<'py, PyType>,
    ingested: &Bound<'py, PyType>,
) -> PyResult<(Bound<'py, PyList>, Vec<usize>)> {
    // `decode_route` with no entity to group by and no key to check: the same items
    let (out, unsure, _, _) = decode_route(
        py,
        parser,
        values,
        keys,
        timestamps,
        now,
        id_at,
        record,
        ingested,
        Vec::new(),
        1,
        None,
    )?;
    Ok((out, unsure))
}

/// What `decode_route` could not decide itself: the Python path redoes the whole poll.
#[derive(PartialEq, Eq)]
enum Routing {
    Exact,
    /// an entity id is not an int64, or a message key is neither bytes nor None
    Python,
}

/// One poll decoded and routed for the sharded step in one call: `decode_poll`'s `(out,
/// unsure)`, then `routed` (per key position in `key_pos`: `(shard, {entity_id:
/// [items]})`, shards in first-touched order, each entity's items in arrival order:
/// `route_shards` over `out`'s sure items) and `mismatched`: the indices of sure items
/// whose message key is not the decimal id at `check_at` (the key check; empty without
/// `check_at`). `routed` is None when an id is not an int64 or a key neither bytes nor
/// None: the caller routes and checks `out` itself. The items of `unsure` are in no group:
/// a caller that finds one of them valid routes the whole `out` again.
#[pyfunction]
#[pyo3(signature = (parser, values, keys, timestamps, now, id_at, record, ingested, key_pos, bits, check_at=None))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn decode_route<'py>(
    py: Python<'py>,
    parser: &Bound<'py, EventParser>,
    values: &Bound<'py, PyList>,
    keys: &Bound<'py, PyList>,
    timestamps: &Bound<'py, PyList>,
    now: i64,
    id_at: usize,
    record: &Bound<'py, PyType>,
    ingested: &Bound<'py, PyType>,
    key_pos: Vec<usize>,
    bits: u32,
    check_at: Option<usize>,
) -> PyResult<(
    Bound<'py, PyList>,
    Vec<usize>,
    Option<Bound<'py, PyList>>,
    Vec<usize>,
)> {
    let n = values.len();
    check_poll("decode_route", n, keys, timestamps, bits, record, ingested)?;
    let parser = parser.get();
    let ne = key_pos.len();
    let mut out: Vec<Bound<'py, PyAny>> = Vec::with_capacity(n);
    let mut unsure = Vec::new();
    let mut mismatched = Vec::new();
    let mut routing = Routing::Exact;
    // per entity: its shards' groups and the order they were first touched
    let mut shards: Vec<Vec<Option<Bound<'py, PyDict>>>> = vec![vec![None; 1 << bits]; ne];
    let mut order: Vec<Vec<usize>> = vec![Vec::new(); ne];
    let mut ids: Vec<(i64, Bound<'py, PyAny>)> = Vec::with_capacity(ne);
    for i in 0..n {
        let raw = values.get_item(i)?;
        ids.clear();
        let mut key_ok = true;
        let made = match raw.downcast::<PyBytes>() {
            Ok(bytes) => parser
                .with_parsed(bytes.as_bytes(), |parsed| -> PyResult<_> {
                    let Some(Parsed::Str(id)) = parsed.get(id_at) else {
                        return Ok(None);
                    };
                    let txid = txid_hash_bytes(id.as_bytes());
                    let items = parsed
                        .iter()
                        .map(|p| p.to_py(py))
                        .collect::<PyResult<Vec<_>>>()?;
                    let ts = timestamps.get_item(i)?;
                    let ts = match ts.extract::<Option<i64>>() {
                        Ok(None | Some(0)) => now.into_pyobject(py)?.into_any(),
                        Ok(Some(_)) => ts,
                        Err(_) => return Ok(None), // not an int64: the Python path
                    };
                    for &p in &key_pos {
                        match parsed.get(p) {
                            Some(Parsed::Int(v)) => ids.push((*v, items[p].clone())),
                            _ => routing = Routing::Python,
                        }
                    }
                    let key = keys.get_item(i)?;
                    if let Some(c) = check_at {
                        key_ok = key_matches(parsed.get(c), &key).unwrap_or_else(|| {
                            routing = Routing::Python;
                            true
                        });
                    }
                    let event = new_record(record, items)?;
                    let txid = txid.into_pyobject(py)?.into_any();
                    Ok(Some(new_record(
                        ingested,
                        vec![event, ts, txid, raw.clone(), key],
                    )?))
                })
                .transpose()?
                .flatten(),
            Err(_) => None,
        };
        let Some(item) = made else {
            unsure.push(i);
            out.push(py.None().into_bound(py));
            continue;
        };
        if !key_ok {
            mismatched.push(i);
        }
        if routing == Routing::Exact {
            for (e, (id, key)) in ids.iter().enumerate() {
                let s = shard_of(*id, bits);
                let group = match &shards[e][s] {
                    Some(g) => g,
                    None => {
                        order[e].push(s);
                        shards[e][s].insert(PyDict::new(py))
                    }
                };
                match group.get_item(key)? {
                    Some(have) => have.downcast::<PyList>()?.append(&item)?,
                    None => group.set_item(key, PyList::new(py, [&item])?)?,
                }
            }
        }
        out.push(item);
    }
    let routed = if routing == Routing::Exact {
        let all = PyList::empty(py);
        for (e, firsts) in order.into_iter().enumerate() {
            let one = PyList::empty(py);
            for s in firsts {
                let group = shards[e][s].take().expect("a touched shard has a group");
                one.append((s, group))?;
            }
            all.append(one)?;
        }
        Some(all)
    } else {
        None
    };
    Ok((PyList::new(py, out)?, unsure, routed, mismatched))
}
