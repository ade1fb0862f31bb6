//! One entity's batch of stream items in one call (`update_items`): the stream's
//! per-event Python loop (read the time and values, call `update`, track the newest
//! produced time) costs more than the native update itself (docs/perf-plan.md, "Shard-
//! batched state"). The items are read with the GIL held, then the updates run without
//! it when the batch is long enough to pay for the hand-over (`RELEASE_GIL_FROM`), so
//! another Bytewax worker thread can run Python meanwhile.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::{Core, State};

/// Items from which a call releases the GIL while it updates.
const RELEASE_GIL_FROM: usize = 64;

/// Field `i` of a tuple (named tuples are tuples: no attribute lookup).
fn field<'py>(t: &Bound<'py, PyTuple>, i: usize, what: &str) -> PyResult<Bound<'py, PyAny>> {
    t.get_item(i)
        .map_err(|_| PyValueError::new_err(format!("update_items: {what} has no field {i}")))
}

/// Updates `state` with `items` (the stream's `Ingested` tuples: `(event, produced_ms,
/// txid, ...)`, in arrival order): for each, the event's time at `time_pos` and its values
/// at `value_pos` (as `float()`; none: the entity only counts, one 0.0), exactly as one
/// `Core.update(state, t, values, txid)` per item. Returns `(outcomes, applied, newest)`:
/// one outcome byte per item (an index into `OUTCOMES`), how many were applied, and the
/// largest `produced_ms` among those (0 if none).
#[pyfunction]
#[pyo3(signature = (core, state, items, time_pos, value_pos))]
pub fn update_items<'py>(
    py: Python<'py>,
    core: &Core,
    state: &mut State,
    items: &Bound<'py, PyList>,
    time_pos: usize,
    value_pos: Vec<usize>,
) -> PyResult<(Bound<'py, PyBytes>, usize, i64)> {
    let nf = value_pos.len().max(1);
    if nf != core.spec.nf {
        return Err(PyValueError::new_err(format!(
            "update_items: {} value positions for {} fields of {}",
            value_pos.len(),
            core.spec.nf,
            core.spec.entity
        )));
    }
    let n = items.len();
    let mut ts = Vec::with_capacity(n);
    let mut produced = Vec::with_capacity(n);
    let mut txids = Vec::with_capacity(n);
    let mut values = Vec::with_capacity(n * nf);
    for item in items.iter() {
        let item = item.downcast_into::<PyTuple>()?;
        let event = field(&item, 0, "an item")?.downcast_into::<PyTuple>()?;
        produced.push(field(&item, 1, "an item")?.extract::<i64>()?);
        txids.push(field(&item, 2, "an item")?.extract::<u64>()?);
        ts.push(field(&event, time_pos, "an event")?.extract::<i64>()?);
        if value_pos.is_empty() {
            values.push(0.0);
        }
        for &p in &value_pos {
            values.push(field(&event, p, "an event")?.extract::<f64>()?);
        }
    }
    let st = core.writable(state)?;
    let spec = &core.spec;
    let mut run = || {
        let mut outcomes = Vec::with_capacity(n);
        let (mut applied, mut newest) = (0usize, 0i64);
        for i in 0..n {
            let o = spec.update(st, ts[i], &values[i * nf..(i + 1) * nf], Some(txids[i])) as u8;
            if o == 0 {
                applied += 1;
                newest = newest.max(produced[i]);
            }
            outcomes.push(o);
        }
        (outcomes, applied, newest)
    };
    // a GIL hand-over costs more than a few updates: released for long batches only
    let (outcomes, applied, newest) = if n >= RELEASE_GIL_FROM {
        py.allow_threads(run)
    } else {
        run()
    };
    Ok((PyBytes::new(py, &outcomes), applied, newest))
}
