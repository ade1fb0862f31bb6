//! A poll's valid events held as columns (`decode_groups`), and the sharded step's groups
//! as views of them ([`Events`]: the poll's block and one entity's indices). Between the
//! decode and `update_rows` no Python object is made per valid event: `update_rows` reads
//! the columns (`shard::read_events`); an `Ingested` tuple is made from the event's bytes
//! only where Python asks for one (a refused event, a key-check offender, a merge of two
//! polls' groups, a pickle: an `Events` pickles as its `Ingested` list), the same tuple
//! `decode_route` makes (docs/perf-plan.md, stream section 14).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use pyo3::exceptions::{PyIndexError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyType};

use crate::decode::{check_poll, key_matches, new_record};
use crate::event::{txid_hash_bytes, EventParser, Parsed};
use crate::shard_hash::{shard_of, MIX};

/// One field of one event as `update_rows` reads it.
#[derive(Clone, Copy)]
pub(crate) enum Num {
    Int(i64),
    Float(f64),
    Bool(bool),
    /// a string or a null: not a number
    No,
}

impl Num {
    fn of(p: &Parsed<'_>) -> Num {
        match *p {
            Parsed::Int(v) => Num::Int(v),
            Parsed::Float(x) => Num::Float(x),
            Parsed::Bool(b) => Num::Bool(b),
            Parsed::Null | Parsed::Str(_) => Num::No,
        }
    }

    /// As Python's `float(x)` (an int rounds to nearest, as `PyLong_AsDouble`).
    pub(crate) fn f64(self) -> Option<f64> {
        match self {
            Num::Int(v) => Some(v as f64),
            Num::Float(x) => Some(x),
            Num::Bool(b) => Some(if b { 1.0 } else { 0.0 }),
            Num::No => None,
        }
    }

    /// As an int64 extract of the field (a float or a string refused).
    pub(crate) fn i64(self) -> Option<i64> {
        match self {
            Num::Int(v) => Some(v),
            Num::Bool(b) => Some(b as i64),
            _ => None,
        }
    }
}

/// The valid events of one poll, by column (event `j`: `nums[j * stride ..]`, one per
/// schema field, and its produced time, id hash, bytes and Kafka key).
#[pyclass(frozen, module = "skewless_native")]
pub struct Block {
    parser: Py<EventParser>,
    record: Py<PyType>,
    ingested: Py<PyType>,
    pub(crate) stride: usize,
    pub(crate) nums: Vec<Num>,
    pub(crate) produced: Vec<i64>,
    pub(crate) txids: Vec<u64>,
    raws: Vec<Py<PyAny>>,
    keys: Vec<Py<PyAny>>,
}

impl Block {
    /// Event `j` as the `Ingested` tuple `decode_route` makes for it.
    fn ingested<'py>(&self, py: Python<'py>, j: usize) -> PyResult<Bound<'py, PyAny>> {
        let raw = self.raws[j].bind(py);
        let bytes = raw.downcast::<PyBytes>()?;
        let record = self.record.bind(py);
        let event = self
            .parser
            .get()
            .with_parsed(bytes.as_bytes(), |parsed| -> PyResult<_> {
                let items = parsed
                    .iter()
                    .map(|p| p.to_py(py))
                    .collect::<PyResult<Vec<_>>>()?;
                new_record(record, items)
            })
            .ok_or_else(|| PyValueError::new_err("Events: an event no longer parses"))??;
        let produced = self.produced[j].into_pyobject(py)?.into_any();
        let txid = self.txids[j].into_pyobject(py)?.into_any();
        new_record(
            self.ingested.bind(py),
            vec![
                event,
                produced,
                txid,
                raw.clone(),
                self.keys[j].bind(py).clone(),
            ],
        )
    }
}

/// One entity's events of one poll: the poll's [`Block`] and their indices, arrival order.
/// A sequence of `Ingested` tuples to Python (made on access); pickles as their list.
#[pyclass(frozen, sequence, module = "skewless_native")]
pub struct Events {
    pub(crate) block: Py<Block>,
    pub(crate) idx: Vec<u32>,
}

#[pymethods]
impl Events {
    fn __len__(&self) -> usize {
        self.idx.len()
    }

    fn __getitem__<'py>(&self, py: Python<'py>, i: isize) -> PyResult<Bound<'py, PyAny>> {
        let n = self.idx.len() as isize;
        let at = if i < 0 { i + n } else { i };
        if !(0..n).contains(&at) {
            return Err(PyIndexError::new_err("Events index out of range"));
        }
        self.block
            .get()
            .ingested(py, self.idx[at as usize] as usize)
    }

    /// The `Ingested` tuples, in order.
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let b = self.block.get();
        let out = self
            .idx
            .iter()
            .map(|&j| b.ingested(py, j as usize))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, out)
    }

    /// Pickled as the list of its `Ingested` tuples (Bytewax's exchange between workers).
    fn __reduce__<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyType>, (Bound<'py, PyList>,))> {
        Ok((py.get_type::<PyList>(), (self.items(py)?,)))
    }
}

/// Multiplicative hashing of an entity id (the std map's SipHash cost more than Python's
/// dicts: perf-plan section 12, "grouping in Rust first").
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(MIX);
        }
    }
    fn write_i64(&mut self, v: i64) {
        self.0 = (v as u64).wrapping_mul(MIX);
    }
}

type IdMap = HashMap<i64, usize, BuildHasherDefault<IdHasher>>;

/// What `decode_groups` gives back.
type Decoded<'py> = (
    usize,
    Vec<usize>,
    Option<Bound<'py, PyList>>,
    Vec<usize>,
    Bound<'py, PyList>,
);

/// One poll decoded as `decode_route` decodes it, its valid events kept as one [`Block`]:
/// returns `(valid, unsure, routed, mismatched, offenders)`: the count of valid events,
/// the indices the parser is not sure of (the Python path decides them), the groups as
/// `decode_route`'s (per key position: `(shard, {entity_id: Events})`, shards in
/// first-touched order, ids in first-seen order), the key check's offenders (message
/// indices) and their `Ingested` tuples. `routed` is None when an id is not an int64 or a
/// key neither bytes nor None (or a timestamp not an int64): the caller decodes again.
#[pyfunction]
#[pyo3(signature = (parser, values, keys, timestamps, now, id_at, record, ingested, key_pos, bits, check_at=None))]
#[allow(clippy::too_many_arguments)]
pub fn decode_groups<'py>(
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
) -> PyResult<Decoded<'py>> {
    let n = values.len();
    check_poll("decode_groups", n, keys, timestamps, bits, record, ingested)?;
    let p = parser.get();
    let ne = key_pos.len();
    let mut block = Block {
        parser: parser.clone().unbind(),
        record: record.clone().unbind(),
        ingested: ingested.clone().unbind(),
        stride: 0,
        nums: Vec::new(),
        produced: Vec::with_capacity(n),
        txids: Vec::with_capacity(n),
        raws: Vec::with_capacity(n),
        keys: Vec::with_capacity(n),
    };
    let mut unsure = Vec::new();
    let mut mismatched = Vec::new();
    let mut bad_at = Vec::new(); // the offenders' block indices
    let mut exact = true;
    // per entity: id -> its group, the groups (shard, id, indices), each shard's groups
    let mut maps: Vec<IdMap> = (0..ne).map(|_| IdMap::default()).collect();
    let mut groups: Vec<Vec<(usize, i64, Vec<u32>)>> = vec![Vec::new(); ne];
    let mut ids: Vec<i64> = Vec::with_capacity(ne);
    for i in 0..n {
        let raw = values.get_item(i)?;
        ids.clear();
        let mut key_ok = true;
        let ok = match raw.downcast::<PyBytes>() {
            Ok(bytes) => p
                .with_parsed(bytes.as_bytes(), |parsed| -> PyResult<bool> {
                    let Some(Parsed::Str(id)) = parsed.get(id_at) else {
                        return Ok(false);
                    };
                    let ts = timestamps.get_item(i)?;
                    let produced = match ts.extract::<Option<i64>>() {
                        Ok(None | Some(0)) => now,
                        Ok(Some(v)) => v,
                        Err(_) => return Ok(false), // not an int64: the Python path
                    };
                    for &k in &key_pos {
                        match parsed.get(k) {
                            Some(Parsed::Int(v)) => ids.push(*v),
                            _ => exact = false,
                        }
                    }
                    let key = keys.get_item(i)?;
                    if let Some(c) = check_at {
                        key_ok = key_matches(parsed.get(c), &key).unwrap_or_else(|| {
                            exact = false;
                            true
                        });
                    }
                    if block.stride == 0 {
                        block.stride = parsed.len();
                        block.nums.reserve(n * parsed.len());
                    }
                    block.nums.extend(parsed.iter().map(Num::of));
                    block.produced.push(produced);
                    block.txids.push(txid_hash_bytes(id.as_bytes()));
                    block.raws.push(raw.clone().unbind());
                    block.keys.push(key.unbind());
                    Ok(true)
                })
                .transpose()?
                .unwrap_or(false),
            Err(_) => false,
        };
        if !ok {
            unsure.push(i);
            continue;
        }
        let j = block.produced.len() - 1;
        if !key_ok {
            mismatched.push(i);
            bad_at.push(j);
        }
        if exact {
            for (e, &id) in ids.iter().enumerate() {
                let g = *maps[e].entry(id).or_insert_with(|| {
                    let s = shard_of(id, bits);
                    groups[e].push((s, id, Vec::new()));
                    groups[e].len() - 1
                });
                groups[e][g].2.push(j as u32);
            }
        }
    }
    let valid = block.produced.len();
    let block = Bound::new(py, block)?;
    let offenders = PyList::empty(py);
    for &j in &bad_at {
        offenders.append(block.get().ingested(py, j)?)?;
    }
    let routed = if exact {
        let all = PyList::empty(py);
        let mut of_shard: Vec<Vec<usize>> = vec![Vec::new(); 1 << bits];
        for mut gs in groups {
            let mut order = Vec::new();
            for (g, (s, _, _)) in gs.iter().enumerate() {
                if of_shard[*s].is_empty() {
                    order.push(*s);
                }
                of_shard[*s].push(g);
            }
            let one = PyList::empty(py);
            for s in order {
                let dict = PyDict::new(py);
                for g in of_shard[s].drain(..) {
                    let idx = std::mem::take(&mut gs[g].2);
                    let events = Events {
                        block: block.clone().unbind(),
                        idx,
                    };
                    dict.set_item(gs[g].1, Bound::new(py, events)?)?;
                }
                one.append((s, dict))?;
            }
            all.append(one)?;
        }
        Some(all)
    } else {
        None
    };
    Ok((valid, unsure, routed, mismatched, offenders))
}
