//! One `Score` call's window half in one native call: every entity's stored bytes
//! finalized at the event's time, placed in the model's input row, with each entity's
//! newest event time (`serving.scorer`'s direct path).
//!
//! Per entity this is `Core.features` and `state_max_seen` (the same values, the same
//! errors); what it saves is the Python around them: two native calls and a list per
//! entity, and the loop placing each value in its model column, which a lone call pays
//! for with cold caches (docs/perf-plan.md, "Session 7: the lone call").

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyList, PyTuple};

use crate::engine::{self, Val};
use crate::replies::ReplyScan;
use crate::{vals_to_list, Core};

/// The entities of one model plan: their layouts and the model column of each value.
#[pyclass(module = "skewless_native", frozen)]
pub struct RowFinalizer {
    cores: Vec<Py<Core>>,
    /// per entity, the model column of each of its values (layout order)
    columns: Vec<Vec<usize>>,
    /// the model's input width
    n: usize,
}

#[pymethods]
impl RowFinalizer {
    #[new]
    fn new(cores: Vec<Py<Core>>, columns: Vec<Vec<usize>>, n: usize) -> PyResult<Self> {
        if cores.len() != columns.len() {
            return Err(PyValueError::new_err("columns: one list per entity layout"));
        }
        for (core, cols) in cores.iter().zip(&columns) {
            let spec = &core.get().spec;
            if cols.len() != spec.n_names || cols.iter().any(|&c| c >= n) {
                return Err(PyValueError::new_err(format!(
                    "columns: {} needs {} columns below {n}",
                    spec.entity, spec.n_names
                )));
            }
        }
        Ok(RowFinalizer { cores, columns, n })
    }

    /// `(row, windows, newest)` for state bytes `datas` (one per entity, None: never
    /// seen) at time `t`: the model row (NaN where no window value goes), each entity's
    /// values as `Core.features` gives them, and each state's newest event time. An
    /// entity's failure is raised as a ValueError whose args are `(entity index,
    /// exception)`, the exception the entity's `Core.features` raises.
    fn fill<'py>(
        &self,
        py: Python<'py>,
        datas: Vec<Option<Bound<'py, PyBytes>>>,
        t: i64,
    ) -> PyResult<Bound<'py, PyTuple>> {
        if datas.len() != self.cores.len() {
            return Err(PyValueError::new_err("datas: one per entity layout"));
        }
        let mut row = vec![f64::NAN; self.n];
        let windows = PyList::empty(py);
        let newest = PyList::empty(py);
        for (j, (core, data)) in self.cores.iter().zip(&datas).enumerate() {
            let core = core.get();
            let spec = &core.spec;
            let got: Result<(Vec<Val>, Option<i64>), engine::Error> = match data {
                Some(d) => {
                    let d = d.as_bytes();
                    spec.view(d)
                        .and_then(|v| spec.finalize_view(&v, t))
                        .and_then(|vals| Ok((vals, engine::read_header(d)?.max_seen)))
                }
                None => spec.finalize(&mut spec.new_state(), t).map(|v| (v, None)),
            };
            let (vals, ms) = match got {
                Ok(x) => x,
                Err(e) => {
                    let exc = core.err(py, e);
                    return Err(PyValueError::new_err((j, exc.into_value(py))));
                }
            };
            for (v, &c) in vals.iter().zip(&self.columns[j]) {
                row[c] = v.as_f64();
            }
            windows.append(vals_to_list(py, &vals)?)?;
            newest.append(ms)?;
        }
        PyTuple::new(
            py,
            [
                PyList::new(py, row)?.into_any(),
                windows.into_any(),
                newest.into_any(),
            ],
        )
    }

    /// `ScoreBatch`'s window half for `ts.len()` events in one call, from the replies
    /// `scan` found in `buf` (`serving.batch_read`): `idx[j]` holds, per event, the reply
    /// index (u32 little-endian) of its entity `j`'s state. Returns `(X, missing,
    /// newest)`: the model input, `n x width` float64 row-major in a bytearray (NaN where
    /// no window value goes), per entity the events whose state was not found, and, with
    /// `want_newest`, per entity each event's state's newest event time. The values and
    /// errors are `Core.features_many`'s: an entity's first failing event is raised as a
    /// ValueError whose args are `(entity index, event index, exception)`, entities in
    /// order.
    fn fill_batch<'py>(
        &self,
        py: Python<'py>,
        scan: PyRef<'py, ReplyScan>,
        buf: &Bound<'py, PyByteArray>,
        idx: Vec<Bound<'py, PyBytes>>,
        ts: Vec<i64>,
        want_newest: bool,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let (n, width) = (ts.len(), self.n);
        if idx.len() != self.cores.len() {
            return Err(PyValueError::new_err("idx: one per entity layout"));
        }
        let mut x = vec![f64::NAN; n * width];
        let missing = PyList::empty(py);
        let newest = PyList::empty(py);
        // SAFETY: no Python code runs while the slice is alive (the GIL is held throughout)
        let data = unsafe { buf.as_bytes() };
        for (j, (core, at)) in self.cores.iter().zip(&idx).enumerate() {
            let at = at.as_bytes();
            if at.len() != 4 * n {
                return Err(PyValueError::new_err("idx: one u32 per event"));
            }
            let spec = &core.get().spec;
            let cols = &self.columns[j];
            let mut lost: Vec<usize> = Vec::new();
            let mut seen: Vec<Option<i64>> = Vec::with_capacity(if want_newest { n } else { 0 });
            for (i, &t) in ts.iter().enumerate() {
                let k = u32::from_le_bytes(at[4 * i..4 * i + 4].try_into().unwrap()) as usize;
                let slot = *scan
                    .slots
                    .get(k)
                    .ok_or_else(|| PyValueError::new_err("idx: past the replies"))?;
                let got = match slot {
                    Some((s, l)) => {
                        let d = data
                            .get(s..s + l)
                            .ok_or_else(|| PyValueError::new_err("buf: shorter than scanned"))?;
                        spec.view(d)
                            .and_then(|v| spec.finalize_view(&v, t))
                            .and_then(|vals| {
                                let ms = if want_newest {
                                    engine::read_header(d)?.max_seen
                                } else {
                                    None
                                };
                                Ok((vals, ms))
                            })
                    }
                    None => {
                        lost.push(i);
                        spec.finalize(&mut spec.new_state(), t).map(|v| (v, None))
                    }
                };
                let (vals, ms) = match got {
                    Ok(x) => x,
                    Err(e) => {
                        let exc = core.get().err(py, e);
                        return Err(PyValueError::new_err((j, i, exc.into_value(py))));
                    }
                };
                let row = &mut x[i * width..(i + 1) * width];
                for (v, &c) in vals.iter().zip(cols) {
                    row[c] = v.as_f64();
                }
                if want_newest {
                    seen.push(ms);
                }
            }
            missing.append(lost)?;
            if want_newest {
                newest.append(seen)?;
            }
        }
        let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        let newest = if want_newest {
            newest.into_any()
        } else {
            py.None().into_bound(py)
        };
        PyTuple::new(
            py,
            [
                PyByteArray::new(py, &bytes).into_any(),
                missing.into_any(),
                newest,
            ],
        )
    }
}
