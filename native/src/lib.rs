//! Python bindings: `Core` (one entity layout) and `State` (one entity's state).
//!
//! The Python engine (`features/engine.py`, `features/codec.py`) is the reference; this
//! crate computes the same state bytes and the same feature values, bit for bit, and the
//! tests hold the two against each other.

mod engine;
mod event;
mod moments;
mod resp;
mod view;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use engine::{Error, Group, Spec, Val};

/// `(length_ms, hop_ms, level, [(position, op, field)], need_m2)` of one window group.
type GroupSpec = (i64, i64, usize, Vec<(usize, u8, usize)>, bool);

#[pyclass(module = "skewless_native")]
pub struct State {
    inner: engine::State,
}

#[pymethods]
impl State {
    #[getter]
    fn max_seen(&self) -> Option<i64> {
        self.inner.max_seen
    }
    #[getter]
    fn last_before_raw(&self) -> Option<i64> {
        self.inner.last_before_raw
    }
    #[getter]
    fn raw_ts(&self) -> Vec<i64> {
        self.inner.raw_ts.clone()
    }
    #[getter]
    fn n_ids(&self) -> usize {
        self.inner.ids.len()
    }
    #[getter]
    fn n_tiles(&self) -> Vec<usize> {
        self.inner.levels.iter().map(|l| l.len()).collect()
    }
    #[getter]
    fn readonly(&self) -> bool {
        self.inner.readonly
    }
}

#[pyclass(module = "skewless_native", frozen)]
pub struct Core {
    spec: Spec,
    too_old: Py<PyAny>,
}

fn vals_to_list<'py>(py: Python<'py>, vals: &[Val]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for v in vals {
        match *v {
            Val::I(i) => list.append(i)?,
            Val::F(f) => list.append(f)?,
        }
    }
    Ok(list)
}

impl Core {
    fn err(&self, py: Python<'_>, e: Error) -> PyErr {
        match e {
            Error::TooOld(msg) => match self.too_old.bind(py).call1((msg,)) {
                Ok(exc) => PyErr::from_value(exc),
                Err(e) => e,
            },
            Error::Value(msg) => PyValueError::new_err(msg),
        }
    }

    fn check_values(&self, values: &[f64]) -> PyResult<()> {
        let n = if values.is_empty() { 1 } else { values.len() };
        if n != self.spec.nf {
            return Err(PyValueError::new_err(format!(
                "values: {} values for {} fields of {}",
                values.len(),
                self.spec.nf,
                self.spec.entity
            )));
        }
        Ok(())
    }

    fn writable<'a>(&self, st: &'a mut State) -> PyResult<&'a mut engine::State> {
        if st.inner.readonly {
            return Err(PyValueError::new_err(
                "state: a read-only state cannot be updated",
            ));
        }
        Ok(&mut st.inner)
    }
}

#[pymethods]
impl Core {
    /// Compiled from a Python `EntityLayout` + `StateCodec` by `features/native.py`.
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (entity, hops, keep, horizon, lateness, primary, nf, n_names, groups, since_last, needs, crc, too_old))]
    fn new(
        entity: String,
        hops: Vec<i64>,
        keep: Vec<i64>,
        horizon: i64,
        lateness: Option<i64>,
        primary: bool,
        nf: usize,
        n_names: usize,
        groups: Vec<GroupSpec>,
        since_last: Option<usize>,
        needs: Vec<Vec<u8>>,
        crc: u32,
        too_old: Py<PyAny>,
    ) -> PyResult<Core> {
        if hops.len() != keep.len() || hops.len() != needs.len() || hops.iter().any(|&h| h <= 0) {
            return Err(PyValueError::new_err(
                "layout: hops, keep and needs disagree",
            ));
        }
        let groups = groups
            .into_iter()
            .map(|(length, hop, level, outputs, need_m2)| Group {
                length,
                hop,
                level,
                outputs,
                need_m2,
            })
            .collect();
        let spec = Spec {
            entity,
            hops,
            keep,
            horizon,
            lateness,
            primary,
            nf,
            n_names,
            groups,
            since_last,
            needs,
            crc,
        };
        Ok(Core { spec, too_old })
    }

    fn new_state(&self) -> State {
        State {
            inner: self.spec.new_state(),
        }
    }

    /// 0 applied, 1 duplicate, 2 late (`features.engine.Outcome`).
    #[pyo3(signature = (state, ts, values, txid=None))]
    fn update(
        &self,
        state: &mut State,
        ts: i64,
        values: Vec<f64>,
        txid: Option<u64>,
    ) -> PyResult<u8> {
        self.check_values(&values)?;
        let st = self.writable(state)?;
        Ok(self.spec.update(st, ts, &values, txid) as u8)
    }

    /// Many events of one entity: `(ts, value)` pairs (one field) and optional txids.
    #[pyo3(signature = (state, ts, values, txids=None))]
    fn update_many(
        &self,
        state: &mut State,
        ts: Vec<i64>,
        values: Vec<f64>,
        txids: Option<Vec<u64>>,
    ) -> PyResult<Vec<u8>> {
        if self.spec.nf != 1
            || ts.len() != values.len()
            || txids.as_ref().is_some_and(|t| t.len() != ts.len())
        {
            return Err(PyValueError::new_err(
                "update_many: one field, equal lengths",
            ));
        }
        let st = self.writable(state)?;
        Ok((0..ts.len())
            .map(|i| {
                let txid = txids.as_ref().map(|t| t[i]);
                self.spec.update(st, ts[i], &values[i..i + 1], txid) as u8
            })
            .collect())
    }

    fn compact(&self, state: &mut State) {
        self.spec.compact(&mut state.inner)
    }

    fn finalize<'py>(
        &self,
        py: Python<'py>,
        state: &mut State,
        t: i64,
    ) -> PyResult<Bound<'py, PyList>> {
        let vals = self
            .spec
            .finalize(&mut state.inner, t)
            .map_err(|e| self.err(py, e))?;
        vals_to_list(py, &vals)
    }

    fn as_of_last<'py>(&self, py: Python<'py>, state: &mut State) -> PyResult<Bound<'py, PyList>> {
        vals_to_list(py, &self.spec.as_of_last(&mut state.inner))
    }

    /// `(as_of_last values, canonical bytes)`: what the stream writes per touched entity.
    fn row<'py>(&self, py: Python<'py>, state: &mut State) -> PyResult<Bound<'py, PyTuple>> {
        let st = self.writable(state)?;
        let vals = self.spec.as_of_last(st);
        let bytes = self.spec.encode(st);
        PyTuple::new(
            py,
            [
                vals_to_list(py, &vals)?.into_any(),
                PyBytes::new(py, &bytes).into_any(),
            ],
        )
    }

    fn encode<'py>(&self, py: Python<'py>, state: &mut State) -> PyResult<Bound<'py, PyBytes>> {
        let st = self.writable(state)?;
        Ok(PyBytes::new(py, &self.spec.encode(st)))
    }

    #[pyo3(signature = (data, readonly=false))]
    fn decode(&self, py: Python<'_>, data: &[u8], readonly: bool) -> PyResult<State> {
        let inner = self
            .spec
            .decode(data, readonly)
            .map_err(|e| self.err(py, e))?;
        Ok(State { inner })
    }

    /// Values at `t` straight from stored bytes (None: an entity never seen).
    #[pyo3(signature = (data, t))]
    fn features<'py>(
        &self,
        py: Python<'py>,
        data: Option<&[u8]>,
        t: i64,
    ) -> PyResult<Bound<'py, PyList>> {
        let vals = match data {
            Some(d) => self
                .spec
                .view(d)
                .and_then(|v| self.spec.finalize_view(&v, t)),
            None => self.spec.finalize(&mut self.spec.new_state(), t),
        }
        .map_err(|e| self.err(py, e))?;
        vals_to_list(py, &vals)
    }

    /// Many rows: float64 little-endian bytes, `len(datas) x n_names`, row-major; the
    /// error of the first bad row is raised as `(index, exception)` in a ValueError's args.
    fn features_many<'py>(
        &self,
        py: Python<'py>,
        datas: Vec<Option<Bound<'py, PyBytes>>>,
        ts: Vec<i64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        if datas.len() != ts.len() {
            return Err(PyValueError::new_err(
                "features_many: datas and ts differ in length",
            ));
        }
        let mut out: Vec<u8> = Vec::with_capacity(datas.len() * self.spec.n_names * 8);
        for (i, (d, &t)) in datas.iter().zip(&ts).enumerate() {
            let res = match d {
                Some(d) => self
                    .spec
                    .view(d.as_bytes())
                    .and_then(|v| self.spec.finalize_view(&v, t)),
                None => self.spec.finalize(&mut self.spec.new_state(), t),
            };
            match res {
                Ok(vals) => {
                    for v in vals {
                        out.extend_from_slice(&v.as_f64().to_le_bytes());
                    }
                }
                Err(e) => {
                    let exc = self.err(py, e);
                    return Err(PyValueError::new_err((i, exc.into_value(py))));
                }
            }
        }
        Ok(PyBytes::new(py, &out))
    }

    /// Exact bytes for a Bytewax snapshot (big-integer sums included).
    fn snapshot<'py>(&self, py: Python<'py>, state: &State) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.spec.snapshot(&state.inner))
    }

    fn restore(&self, py: Python<'_>, data: &[u8]) -> PyResult<State> {
        let inner = self.spec.restore(data).map_err(|e| self.err(py, e))?;
        Ok(State { inner })
    }
}

#[pymodule]
fn skewless_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Core>()?;
    m.add_class::<State>()?;
    m.add_class::<resp::HsetEncoder>()?;
    m.add_function(wrap_pyfunction!(event::parse_event_fast, m)?)?;
    m.add_function(wrap_pyfunction!(resp::unwrap_bytes_values, m)?)?;
    m.add_function(wrap_pyfunction!(event::txid_hash, m)?)?;
    m.add_function(wrap_pyfunction!(resp::score_batch_response, m)?)?;
    m.add("ENGINE_BYTES_VERSION", engine::VERSION)?;
    let _ = engine::MAGIC;
    Ok(())
}
