//! One shard's touched entities in one call (`update_rows`): for each entity, its batch
//! of stream items through `update` (as `update_items`) and, when any applied, its row
//! (as `Core.row`). The stream's sharded layout called both once per entity and batch
//! (about 0.6 entities per event at 5,000 per poll), and each call's argument handling
//! cost more than a card's update (docs/perf-plan.md, "One step for all entities").
//! The items are read with the GIL held; the updates, the finalize and the state
//! encoding run without it when the shard's batch is long enough to pay for it.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::{engine, vals_to_list, Core, State};

/// Items (over all the shard's entities) from which a call releases the GIL.
const RELEASE_GIL_FROM: usize = 64;

/// One entity's items as read: times, values (`nf` per item), ids and produced times.
#[derive(Default)]
struct Batch {
    ts: Vec<i64>,
    values: Vec<f64>,
    txids: Vec<u64>,
    produced: Vec<i64>,
}

/// What one entity's batch gave: outcome bytes, applied count, newest applied produced
/// time, and the row (as-of-last values, canonical bytes) when any applied.
struct Done {
    outcomes: Vec<u8>,
    applied: usize,
    newest: i64,
    row: Option<(Vec<engine::Val>, Vec<u8>)>,
}

fn field<'py>(t: &Bound<'py, PyTuple>, i: usize, what: &str) -> PyResult<Bound<'py, PyAny>> {
    t.get_item(i)
        .map_err(|_| PyValueError::new_err(format!("update_rows: {what} has no field {i}")))
}

fn read(items: &Bound<'_, PyList>, time_pos: usize, value_pos: &[usize]) -> PyResult<Batch> {
    let n = items.len();
    let mut b = Batch {
        ts: Vec::with_capacity(n),
        values: Vec::with_capacity(n * value_pos.len().max(1)),
        txids: Vec::with_capacity(n),
        produced: Vec::with_capacity(n),
    };
    for item in items.iter() {
        let item = item.downcast_into::<PyTuple>()?;
        let event = field(&item, 0, "an item")?.downcast_into::<PyTuple>()?;
        b.produced
            .push(field(&item, 1, "an item")?.extract::<i64>()?);
        b.txids.push(field(&item, 2, "an item")?.extract::<u64>()?);
        b.ts.push(field(&event, time_pos, "an event")?.extract::<i64>()?);
        if value_pos.is_empty() {
            b.values.push(0.0);
        }
        for &p in value_pos {
            b.values
                .push(field(&event, p, "an event")?.extract::<f64>()?);
        }
    }
    Ok(b)
}

fn run(spec: &engine::Spec, st: &mut engine::State, b: &Batch) -> Done {
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
    let row = (applied > 0).then(|| (spec.as_of_last(st), spec.encode(st)));
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
        reads.push(read(items.downcast::<PyList>()?, time_pos, &value_pos)?);
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
    let spec = &core.spec;
    let total: usize = reads.iter().map(|b| b.ts.len()).sum();
    let all = |sts: &mut Vec<&mut engine::State>| -> Vec<Done> {
        sts.iter_mut()
            .zip(&reads)
            .map(|(st, b)| run(spec, st, b))
            .collect()
    };
    let done = if total >= RELEASE_GIL_FROM {
        py.allow_threads(|| all(&mut sts))
    } else {
        all(&mut sts)
    };
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
