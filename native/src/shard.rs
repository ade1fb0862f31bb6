//! One shard's touched entities in one call (`update_rows`): for each entity, its batch
//! of stream items through `update` (as `update_items`) and, when any applied, its row
//! (as `Core.row`). The stream's sharded layout called both once per entity and batch
//! (about 0.6 entities per event at 5,000 per poll), and each call's argument handling
//! cost more than a card's update (docs/perf-plan.md, "One step for all entities").
//! The items are read with the GIL held; the updates, the finalize and the state
//! encoding run without it when the shard's batch is long enough to pay for it.
//! `route_shards` groups a poll for every entity by shard and id in one call (the
//! router's Python loop was ~0.9 µs per event, this ~0.4).

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::block::Events;
use crate::shard_hash::shard_of;
use crate::{engine, vals_to_list, Core, State};

/// Items (over all the shard's entities) from which a call releases the GIL.
const RELEASE_GIL_FROM: usize = 64;

/// One entity's items as read: times, values (`nf` per item), ids and produced times.
#[derive(Default)]
pub(crate) struct Batch {
    pub(crate) ts: Vec<i64>,
    values: Vec<f64>,
    txids: Vec<u64>,
    produced: Vec<i64>,
}

/// What one entity's batch gave: outcome bytes, applied count, newest applied produced
/// time, and the row (as-of-last values, canonical bytes) when any applied.
pub(crate) struct Done {
    outcomes: Vec<u8>,
    pub(crate) applied: usize,
    newest: i64,
    row: Option<(Vec<engine::Val>, Vec<u8>)>,
}

fn field<'py>(t: &Bound<'py, PyTuple>, i: usize, what: &str) -> PyResult<Bound<'py, PyAny>> {
    t.get_item(i)
        .map_err(|_| PyValueError::new_err(format!("update_rows: {what} has no field {i}")))
}

fn borrowed<'a, 'py>(
    t: &'a Bound<'py, PyTuple>,
    i: usize,
    what: &str,
) -> PyResult<Borrowed<'a, 'py, PyAny>> {
    t.get_borrowed_item(i)
        .map_err(|_| PyValueError::new_err(format!("update_rows: {what} has no field {i}")))
}

pub(crate) fn read(
    items: &Bound<'_, PyList>,
    time_pos: usize,
    value_pos: &[usize],
) -> PyResult<Batch> {
    let n = items.len();
    let mut b = Batch {
        ts: Vec::with_capacity(n),
        values: Vec::with_capacity(n * value_pos.len().max(1)),
        txids: Vec::with_capacity(n),
        produced: Vec::with_capacity(n),
    };
    for item in items.iter() {
        let item = item.downcast_into::<PyTuple>()?;
        // borrowed fields: a reference count taken and dropped per field was ~15% of a call
        let event = borrowed(&item, 0, "an item")?;
        let event = event.downcast::<PyTuple>()?;
        b.produced
            .push(borrowed(&item, 1, "an item")?.extract::<i64>()?);
        b.txids
            .push(borrowed(&item, 2, "an item")?.extract::<u64>()?);
        b.ts.push(borrowed(event, time_pos, "an event")?.extract::<i64>()?);
        if value_pos.is_empty() {
            b.values.push(0.0);
        }
        for &p in value_pos {
            b.values
                .push(borrowed(event, p, "an event")?.extract::<f64>()?);
        }
    }
    Ok(b)
}

/// One entity's events as `read` reads their `Ingested` tuples, from the poll's columns.
pub(crate) fn read_events(
    events: &Events,
    time_pos: usize,
    value_pos: &[usize],
) -> PyResult<Batch> {
    let block = events.block.get();
    let n = events.idx.len();
    let stride = block.stride;
    if time_pos >= stride || value_pos.iter().any(|&p| p >= stride) {
        return Err(PyValueError::new_err(format!(
            "update_rows: an event has no field {}",
            value_pos
                .iter()
                .chain([&time_pos])
                .max()
                .unwrap_or(&time_pos)
        )));
    }
    let mut b = Batch {
        ts: Vec::with_capacity(n),
        values: Vec::with_capacity(n * value_pos.len().max(1)),
        txids: Vec::with_capacity(n),
        produced: Vec::with_capacity(n),
    };
    let not_a = |what: &str, p: usize| {
        PyTypeError::new_err(format!("update_rows: field {p} of an event is not {what}"))
    };
    for &j in &events.idx {
        let j = j as usize;
        let row = &block.nums[j * stride..(j + 1) * stride];
        b.produced.push(block.produced[j]);
        b.txids.push(block.txids[j]);
        b.ts.push(
            row[time_pos]
                .i64()
                .ok_or_else(|| not_a("an int", time_pos))?,
        );
        if value_pos.is_empty() {
            b.values.push(0.0);
        }
        for &p in value_pos {
            b.values
                .push(row[p].f64().ok_or_else(|| not_a("a number", p))?);
        }
    }
    Ok(b)
}

/// How much of an entity's batch `run` does: everything (`Row`), or for a benchmark's
/// split (`engine_timed.rs`) the updates alone, or the updates and the row's values, each
/// then compacting the state as the row's encode would.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upto {
    Update,
    Finalize,
    Row,
}

pub(crate) fn run(spec: &engine::Spec, st: &mut engine::State, b: &Batch, upto: Upto) -> Done {
    let (nf, n) = (spec.nf, b.ts.len());
    let mut outcomes = Vec::with_capacity(n);
    let (mut applied, mut newest) = (0usize, 0i64);
    for i in 0..n {
        let o = spec.update(
            st,
            b.ts[i],
            &b.values[i * nf..(i + 1) * nf],
            Some(b.txids[i]),
        ) as u8;
        if o == 0 {
            applied += 1;
            newest = newest.max(b.produced[i]);
        }
        outcomes.push(o);
    }
    let row = if applied == 0 {
        None
    } else if upto == Upto::Row {
        Some((spec.as_of_last(st), spec.encode(st)))
    } else {
        if upto == Upto::Finalize {
            std::hint::black_box(spec.as_of_last(st));
        }
        spec.compact(st);
        None
    };
    Done {
        outcomes,
        applied,
        newest,
        row,
    }
}

/// `states[j]` updated with `batches[j]` (the stream's `Ingested` tuples, arrival order)
/// for each `j`, exactly as `update_items(core, states[j], batches[j], ...)` followed,
/// when any applied, by `core.row(states[j])`. Returns one tuple per entity:
/// `(outcomes, applied, newest, values, state_bytes)`, the last two None when none
/// applied.
#[pyfunction]
#[pyo3(signature = (core, states, batches, time_pos, value_pos))]
pub fn update_rows<'py>(
    py: Python<'py>,
    core: &Core,
    states: &Bound<'py, PyList>,
    batches: &Bound<'py, PyList>,
    time_pos: usize,
    value_pos: Vec<usize>,
) -> PyResult<Bound<'py, PyList>> {
    let done = with_states(core, states, batches, time_pos, &value_pos, |sts, reads| {
        let spec = &core.spec;
        let total: usize = reads.iter().map(|b| b.ts.len()).sum();
        let all = |sts: &mut Vec<&mut engine::State>| -> Vec<Done> {
            sts.iter_mut()
                .zip(reads)
                .map(|(st, b)| run(spec, st, b, Upto::Row))
                .collect()
        };
        if total >= RELEASE_GIL_FROM {
            py.allow_threads(|| all(sts))
        } else {
            all(sts)
        }
    })?;
    let out = PyList::empty(py);
    for d in done {
        let (values, bytes) = match &d.row {
            Some((vals, bytes)) => (
                vals_to_list(py, vals)?.into_any(),
                PyBytes::new(py, bytes).into_any(),
            ),
            None => (py.None().into_bound(py), py.None().into_bound(py)),
        };
        let outcomes = PyBytes::new(py, &d.outcomes).into_any();
        let applied = d.applied.into_pyobject(py)?.into_any();
        let newest = d.newest.into_pyobject(py)?.into_any();
        out.append(PyTuple::new(
            py,
            [outcomes, applied, newest, values, bytes],
        )?)?;
    }
    Ok(out)
}

/// `f` over the shard's states (borrowed mutably, refused when read-only) and its
/// batches as read, after the arguments are checked.
pub(crate) fn with_states<'py, R>(
    core: &Core,
    states: &Bound<'py, PyList>,
    batches: &Bound<'py, PyList>,
    time_pos: usize,
    value_pos: &[usize],
    f: impl FnOnce(&mut Vec<&mut engine::State>, &[Batch]) -> R,
) -> PyResult<R> {
    if value_pos.len().max(1) != core.spec.nf {
        return Err(PyValueError::new_err(format!(
            "update_rows: {} value positions for {} fields of {}",
            value_pos.len(),
            core.spec.nf,
            core.spec.entity
        )));
    }
    if states.len() != batches.len() {
        return Err(PyValueError::new_err(format!(
            "update_rows: {} states for {} batches",
            states.len(),
            batches.len()
        )));
    }
    let mut reads = Vec::with_capacity(batches.len());
    for items in batches.iter() {
        reads.push(match items.downcast::<Events>() {
            Ok(events) => read_events(events.get(), time_pos, value_pos)?,
            Err(_) => read(items.downcast::<PyList>()?, time_pos, value_pos)?,
        });
    }
    let mut guards: Vec<PyRefMut<'py, State>> = Vec::with_capacity(states.len());
    for s in states.iter() {
        let g = s.downcast_into::<State>()?.try_borrow_mut()?;
        guards.push(g);
    }
    let mut sts: Vec<&mut engine::State> = Vec::with_capacity(guards.len());
    for g in guards.iter_mut() {
        sts.push(core.writable(g)?);
    }
    Ok(f(&mut sts, &reads))
}

/// A poll's items grouped for every entity by shard and entity id, as
/// `flows.stream_shard.ShardRouter` groups them in Python: for each key position in
/// `key_pos`, a list of `(shard, {entity_id: [items]})`, shards in the order first
/// touched, each entity's items in arrival order. Items whose type is not `ingested` are
/// skipped. None when an entity id is not an int64 (the Python path decides).
#[pyfunction]
#[pyo3(signature = (items, key_pos, bits, ingested))]
pub fn route_shards<'py>(
    py: Python<'py>,
    items: &Bound<'py, PyList>,
    key_pos: Vec<usize>,
    bits: u32,
    ingested: &Bound<'py, pyo3::types::PyType>,
) -> PyResult<Option<Bound<'py, PyList>>> {
    if !(1..=16).contains(&bits) {
        return Err(PyValueError::new_err(format!(
            "route_shards: bits {bits} not in 1..=16"
        )));
    }
    let mut events = Vec::with_capacity(items.len());
    for item in items.iter() {
        if item.get_type().is(ingested) {
            let event = field(item.downcast::<PyTuple>()?, 0, "an item")?;
            events.push((item, event.downcast_into::<PyTuple>()?));
        }
    }
    let out = PyList::empty(py);
    for &p in &key_pos {
        let mut shards: Vec<Option<Bound<'py, pyo3::types::PyDict>>> = vec![None; 1 << bits];
        let mut order = Vec::new();
        for (item, event) in &events {
            let key = field(event, p, "an event")?;
            let Ok(id) = key.extract::<i64>() else {
                return Ok(None);
            };
            let s = shard_of(id, bits);
            let group = match &shards[s] {
                Some(g) => g,
                None => {
                    order.push(s);
                    shards[s].insert(pyo3::types::PyDict::new(py))
                }
            };
            match group.get_item(&key)? {
                Some(have) => have.downcast::<PyList>()?.append(item)?,
                None => group.set_item(&key, PyList::new(py, [item])?)?,
            }
        }
        let routed = PyList::empty(py);
        for s in order {
            let group = shards[s].take().expect("a touched shard has a group");
            routed.append((s, group))?;
        }
        out.append(routed)?;
    }
    Ok(Some(out))
}
