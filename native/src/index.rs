//! An entity's event index in one native call (`features.backfill.EventIndex`): the
//! events' stable order by (dense key, time) (a counting sort) and, in the same pass, the sorted keys,
//! times, their combined sort key and where each event (file order) lands. In numpy these
//! were a radix argsort and ~10 whole-array passes (gathers, products, an inverse).

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::windows::{view, view_mut};

/// Fills `order`, `gid`, `ts_out`, `comp` and `inverse` (each `len(ids)` int64s) for the
/// events `(ids, ts)` with dense ids in `0..groups`: the order is stable (file order
/// breaks ties; `by_time`, the events' stable order by time, when `ts` is not sorted), `comp = gid · stride + (ts − tmin)`. Returns each group's first
/// position (`groups + 1` entries, the last one `n`) as int64s.
#[pyfunction]
#[pyo3(signature = (ids, ts, groups, tmin, stride, order, gid, ts_out, comp, inverse, by_time=None))]
#[allow(clippy::too_many_arguments)]
pub fn index_order(
    py: Python<'_>,
    ids: PyBuffer<i64>,
    ts: PyBuffer<i64>,
    groups: usize,
    tmin: i64,
    stride: i64,
    order: PyBuffer<i64>,
    gid: PyBuffer<i64>,
    ts_out: PyBuffer<i64>,
    comp: PyBuffer<i64>,
    inverse: PyBuffer<i64>,
    by_time: Option<PyBuffer<i64>>,
) -> PyResult<Vec<i64>> {
    let (id, t) = (view(&ids, "ids")?, view(&ts, "ts")?);
    let n = id.len();
    let perm = match &by_time {
        Some(b) => Some(view(b, "by_time")?),
        None => None,
    };
    let outs = [
        view_mut(&order, "order")?,
        view_mut(&gid, "gid")?,
        view_mut(&ts_out, "ts_out")?,
        view_mut(&comp, "comp")?,
        view_mut(&inverse, "inverse")?,
    ];
    let bad = t.len() != n
        || outs.iter().any(|o| o.len() != n)
        || id.iter().any(|&g| g < 0 || g as usize >= groups)
        || perm.is_some_and(|p| p.len() != n || p.iter().any(|&i| i < 0 || i as usize >= n));
    if bad {
        return Err(PyValueError::new_err(
            "index_order: ids, times and outputs differ in length, or an id is out of range",
        ));
    }
    let [order, gid, ts_out, comp, inverse] = outs;
    let starts = py.allow_threads(|| {
        let mut starts = vec![0i64; groups + 1];
        for &g in id {
            starts[g as usize + 1] += 1;
        }
        for g in 0..groups {
            starts[g + 1] += starts[g];
        }
        // a stable counting sort by id over the events in time order (file order when
        // `by_time` is not given); every output is written where the event lands
        let mut next = starts.clone();
        for j in 0..n {
            let i = perm.map_or(j, |p| p[j] as usize);
            let (g, ti) = (id[i], t[i]);
            let at = &mut next[g as usize];
            let p = *at as usize;
            *at += 1;
            order[p] = i as i64;
            gid[p] = g;
            ts_out[p] = ti;
            comp[p] = g * stride + (ti - tmin);
            inverse[i] = p as i64;
        }
        starts
    });
    Ok(starts)
}
