//! Python bindings: `Core` (one entity layout) and `State` (one entity's state).
//!
//! The Python engine (`features/reference_engine.py`, `features/reference_codec.py`) is the reference; this
//! crate computes the same state bytes and the same feature values, bit for bit, and the
//! tests hold the two against each other.

mod batch;
mod block;
mod columns;
mod decode;
mod dedup;
mod engine;
mod engine_timed;
mod event;
mod hashes;
mod hset_rows;
mod ids;
mod index;
mod level;
mod moments;
mod proto;
mod raw;
mod replies;
mod resp;
mod rows;
mod score_one;
mod shard;
mod shard_hash;
mod states;
mod summary;
mod tiles;
mod trees;
mod view;
mod wide;
mod windows;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use engine::{Comp, Error, Group, Op, Spec, Val};

/// One window group of a layout spec, read by attribute name (`features.native.GroupSpec`).
#[derive(FromPyObject)]
struct GroupSpec {
    length_ms: i64,
    hop_ms: i64,
    level: usize,
    /// `(position among the names, op name, field index)`
    outputs: Vec<(usize, String, usize)>,
    need_m2: bool,
}

/// One entity layout and its codec, read by attribute name (`features.native.CoreSpec`).
#[derive(FromPyObject)]
struct CoreSpec {
    entity: String,
    hops: Vec<i64>,
    keep: Vec<i64>,
    horizon_ms: i64,
    lateness_ms: Option<i64>,
    primary: bool,
    n_fields: usize,
    n_names: usize,
    groups: Vec<GroupSpec>,
    since_last: Option<usize>,
    /// per level, the tile component names it stores, in serialized order
    needs: Vec<Vec<String>>,
    crc: u32,
}

fn op_of(name: &str) -> PyResult<Op> {
    Op::from_name(name).ok_or_else(|| {
        let known: Vec<_> = Op::ALL.iter().map(|o| o.name()).collect();
        PyValueError::new_err(format!(
            "layout: op {name:?} is not a native window op ({})",
            known.join(", ")
        ))
    })
}

fn comp_of(name: &str) -> PyResult<Comp> {
    Comp::from_name(name)
        .ok_or_else(|| PyValueError::new_err(format!("layout: {name:?} is not a tile component")))
}

impl CoreSpec {
    fn compile(self) -> PyResult<Spec> {
        let nl = self.hops.len();
        if self.keep.len() != nl || self.needs.len() != nl || self.hops.iter().any(|&h| h <= 0) {
            return Err(PyValueError::new_err(
                "layout: hops, keep and needs disagree",
            ));
        }
        if self.n_fields == 0 {
            return Err(PyValueError::new_err("layout: n_fields must be at least 1"));
        }
        let mut groups = Vec::with_capacity(self.groups.len());
        for g in self.groups {
            if g.level >= nl || g.hop_ms != self.hops[g.level] {
                return Err(PyValueError::new_err(format!(
                    "layout: group ({}, {}) names level {} of {nl}",
                    g.length_ms, g.hop_ms, g.level
                )));
            }
            let mut outputs = Vec::with_capacity(g.outputs.len());
            for (pos, op, field) in g.outputs {
                if pos >= self.n_names || field >= self.n_fields {
                    return Err(PyValueError::new_err(format!(
                        "layout: output ({pos}, {op}, {field}) is outside {} names and {} fields",
                        self.n_names, self.n_fields
                    )));
                }
                outputs.push((pos, op_of(&op)?, field));
            }
            groups.push(Group {
                length: g.length_ms,
                hop: g.hop_ms,
                level: g.level,
                outputs,
                need_m2: g.need_m2,
            });
        }
        if self.since_last.is_some_and(|p| p >= self.n_names) {
            return Err(PyValueError::new_err(
                "layout: since_last is outside the names",
            ));
        }
        let needs = self
            .needs
            .iter()
            .map(|level| level.iter().map(|c| comp_of(c)).collect())
            .collect::<PyResult<_>>()?;
        Ok(Spec {
            entity: self.entity,
            hops: self.hops,
            keep: self.keep,
            horizon: self.horizon_ms,
            lateness: self.lateness_ms,
            primary: self.primary,
            nf: self.n_fields,
            n_names: self.n_names,
            groups,
            since_last: self.since_last,
            needs,
            crc: self.crc,
        })
    }
}

/// The header of a state's bytes: what a reader needs without decoding the state.
#[pyclass(module = "skewless_native", frozen, get_all)]
pub struct StateHeader {
    crc: u32,
    max_seen: Option<i64>,
    last_before_raw: Option<i64>,
    n_raw: usize,
    n_ids: usize,
    n_tiles: Vec<usize>,
}

#[pymethods]
impl StateHeader {
    fn __repr__(&self) -> String {
        format!(
            "StateHeader(crc={:08x}, max_seen={:?}, last_before_raw={:?}, n_raw={}, n_ids={}, \
             n_tiles={:?})",
            self.crc, self.max_seen, self.last_before_raw, self.n_raw, self.n_ids, self.n_tiles
        )
    }
}

/// The newest event time of state bytes of any layout (None: no bytes, or an empty state).
#[pyfunction]
#[pyo3(signature = (data))]
fn state_max_seen(data: Option<&[u8]>) -> PyResult<Option<i64>> {
    match data {
        None => Ok(None),
        Some(d) => engine::read_header(d)
            .map(|h| h.max_seen)
            .map_err(|e| match e {
                Error::Value(m) | Error::TooOld(m) => PyValueError::new_err(m),
            }),
    }
}

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
        let st = &self.inner;
        st.raw.times(st.nf as usize).collect()
    }
    #[getter]
    fn n_ids(&self) -> usize {
        self.inner.ids.len()
    }
    #[getter]
    fn n_tiles(&self) -> Vec<usize> {
        let levels = &self.inner.levels;
        (0..levels.count()).map(|j| levels.len(j)).collect()
    }
    #[getter]
    fn readonly(&self) -> bool {
        self.inner.readonly
    }
    /// Bytes this state holds: its own size and every allocation it owns (capacities).
    #[getter]
    fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.inner.heap_bytes()
    }
    /// Tiles whose exact sums outgrew the inline integers (kept as big integers).
    #[getter]
    fn n_big_tiles(&self) -> usize {
        self.inner.levels.n_big()
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
    /// Compiled from a `features.native.CoreSpec` (read by attribute name); `too_old` is
    /// the exception class a query older than the state can answer raises.
    #[new]
    fn new(spec: CoreSpec, too_old: Py<PyAny>) -> PyResult<Core> {
        Ok(Core {
            spec: spec.compile()?,
            too_old,
        })
    }

    /// Bytes of every header this layout writes before its tile counts and body.
    #[getter]
    fn header_size(&self) -> usize {
        engine::HEAD + 4 * self.spec.hops.len()
    }

    /// The header of this layout's state bytes (checked like `features`: magic, version,
    /// layout and length).
    fn header(&self, py: Python<'_>, data: &[u8]) -> PyResult<StateHeader> {
        let view = self.spec.view(data).map_err(|e| self.err(py, e))?;
        let head = engine::read_header(data).map_err(|e| self.err(py, e))?;
        Ok(StateHeader {
            crc: head.crc,
            max_seen: head.max_seen,
            last_before_raw: head.last_before_raw,
            n_raw: head.n_raw,
            n_ids: head.n_ids,
            n_tiles: view.tile_counts(),
        })
    }

    /// Many headers of this layout, concatenated (`header_size` bytes each): what a
    /// vectorized writer of states (`features/state_build.py`) puts before each body.
    /// `n_tiles[j][i]` is level `j`'s tile count of state `i`.
    fn encode_headers<'py>(
        &self,
        py: Python<'py>,
        max_seen: Vec<Option<i64>>,
        last_before_raw: Vec<Option<i64>>,
        n_raw: Vec<u32>,
        n_ids: Vec<u32>,
        n_tiles: Vec<Vec<u32>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let n = max_seen.len();
        if last_before_raw.len() != n
            || n_raw.len() != n
            || n_ids.len() != n
            || n_tiles.len() != self.spec.hops.len()
            || n_tiles.iter().any(|c| c.len() != n)
        {
            return Err(PyValueError::new_err(
                "encode_headers: one value per state, one tile-count list per level",
            ));
        }
        let mut out = Vec::with_capacity(n * self.header_size());
        for i in 0..n {
            engine::write_header(
                &mut out,
                self.spec.crc,
                max_seen[i],
                last_before_raw[i],
                n_raw[i],
                n_ids[i],
                n_tiles.iter().map(|c| c[i]),
            );
        }
        Ok(PyBytes::new(py, &out))
    }

    fn new_state(&self) -> State {
        State {
            inner: self.spec.new_state(),
        }
    }

    /// An index into `OUTCOMES` (the `features.layout.Outcome` values).
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
    m.add_class::<StateHeader>()?;
    m.add_class::<event::EventParser>()?;
    m.add_class::<resp::HsetEncoder>()?;
    m.add_class::<hset_rows::HsetRows>()?;
    m.add_class::<resp::ScoreBatchEncoder>()?;
    m.add_class::<proto::TransactionBatchParser>()?;
    m.add_class::<trees::TreeEnsemble>()?;
    m.add_class::<score_one::RowFinalizer>()?;
    m.add_class::<replies::ReplyScan>()?;
    m.add_function(wrap_pyfunction!(state_max_seen, m)?)?;
    m.add_function(wrap_pyfunction!(batch::update_items, m)?)?;
    m.add_function(wrap_pyfunction!(shard::update_rows, m)?)?;
    m.add_function(wrap_pyfunction!(shard::route_shards, m)?)?;
    m.add_function(wrap_pyfunction!(engine_timed::update_rows_upto, m)?)?;
    m.add_function(wrap_pyfunction!(resp::unwrap_bytes_values, m)?)?;
    m.add_function(wrap_pyfunction!(event::txid_hash, m)?)?;
    m.add_function(wrap_pyfunction!(decode::decode_poll, m)?)?;
    m.add_function(wrap_pyfunction!(decode::decode_route, m)?)?;
    m.add_function(wrap_pyfunction!(block::decode_groups, m)?)?;
    m.add_class::<block::Block>()?;
    m.add_class::<block::Events>()?;
    m.add_function(wrap_pyfunction!(hset_rows::hset_pipeline, m)?)?;
    m.add_function(wrap_pyfunction!(hashes::txid_hashes, m)?)?;
    m.add_function(wrap_pyfunction!(windows::window_pass, m)?)?;
    m.add_function(wrap_pyfunction!(tiles::tile_moments, m)?)?;
    m.add_function(wrap_pyfunction!(rows::seconds_since_last, m)?)?;
    m.add_function(wrap_pyfunction!(rows::gather_columns, m)?)?;
    m.add_function(wrap_pyfunction!(tiles::lift_m2, m)?)?;
    m.add_function(wrap_pyfunction!(dedup::repeated_rows, m)?)?;
    m.add_function(wrap_pyfunction!(dedup::late_rows, m)?)?;
    m.add_function(wrap_pyfunction!(index::index_order, m)?)?;
    m.add_function(wrap_pyfunction!(states::interleave_items, m)?)?;
    m.add("ENGINE_BYTES_VERSION", engine::VERSION)?;
    m.add("OPS", Op::ALL.map(Op::name).to_vec())?;
    m.add("COMPONENTS", Comp::ALL.map(Comp::name).to_vec())?;
    m.add("OUTCOMES", engine::Outcome::NAMES.to_vec())?;
    Ok(())
}
