//! The window pass's other columns: `seconds_since_last` at the sorted queries, and the
//! gather that puts the pass's rows in the spine's order (`features/window_native.py`).

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::windows::{view, view_mut};

/// `seconds_since_last` at sorted queries into `table[i·width + slot]` (`table[slot·q + i]`
/// with `columns`): `(t - ts[hi - 1]) /
/// ms_per_second` when the query's key has an event before it (`hi` past its first, `starts[g]`),
/// NaN otherwise, in numpy's float operations.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn seconds_since_last(
    py: Python<'_>,
    g: PyBuffer<i64>,
    t: PyBuffer<i64>,
    hi: PyBuffer<i64>,
    starts: PyBuffer<i64>,
    ts: PyBuffer<i64>,
    table: PyBuffer<f64>,
    width: usize,
    columns: bool,
    slot: usize,
    ms_per_second: f64,
) -> PyResult<()> {
    let (g_s, t_s, hi_s) = (view(&g, "g")?, view(&t, "t")?, view(&hi, "hi")?);
    let (st, ts_s, rows) = (
        view(&starts, "starts")?,
        view(&ts, "ts")?,
        view_mut(&table, "table")?,
    );
    let q = g_s.len();
    let bad = t_s.len() != q
        || hi_s.len() != q
        || slot >= width
        || rows.len() != q * width
        || g_s.iter().any(|&x| x >= st.len() as i64)
        || hi_s.iter().any(|&h| h < 0 || h as usize > ts_s.len());
    if bad {
        return Err(PyValueError::new_err(
            "seconds_since_last: queries, table or groups do not match",
        ));
    }
    py.allow_threads(|| {
        for i in 0..q {
            let (gi, h) = (g_s[i], hi_s[i]);
            let at = if columns {
                slot * q + i
            } else {
                i * width + slot
            };
            rows[at] = if gi >= 0 && h > st[gi as usize] {
                (t_s[i] - ts_s[h as usize - 1]) as f64 / ms_per_second
            } else {
                f64::NAN
            };
        }
    });
    Ok(())
}

/// Column `c` of `table` (rows of `width` 8-byte slots) into `outs[c]`, row `j` taken from
/// table row `inverse[j]` (row `j` without `inverse`): the spine's order, one pass.
#[pyfunction]
#[pyo3(signature = (table, width, inverse, outs))]
pub fn gather_columns(
    py: Python<'_>,
    table: PyBuffer<f64>,
    width: usize,
    inverse: Option<PyBuffer<i64>>,
    outs: Vec<PyBuffer<f64>>,
) -> PyResult<()> {
    let rows = view(&table, "table")?;
    let inv = inverse.as_ref().map(|b| view(b, "inverse")).transpose()?;
    let mut cols: Vec<&mut [f64]> = Vec::with_capacity(outs.len());
    for o in &outs {
        cols.push(view_mut(o, "output")?);
    }
    let q = rows.len().checked_div(width).unwrap_or(0);
    let bad = cols.len() != width
        || rows.len() != q * width
        || cols.iter().any(|c| c.len() != inv.map_or(q, |v| v.len()))
        || inv.is_some_and(|v| v.iter().any(|&r| r < 0 || r as usize >= q));
    if bad {
        return Err(PyValueError::new_err(
            "gather_columns: one output per slot, rows inside the table",
        ));
    }
    py.allow_threads(|| {
        let m = cols.first().map_or(0, |c| c.len());
        for j in 0..m {
            if let Some(v) = inv {
                // the rows are random reads: ask for one a few rows ahead, so the misses
                // overlap instead of each waiting on memory in turn
                if let Some(&ahead) = v.get(j + PREFETCH_AHEAD) {
                    prefetch(&rows[ahead as usize * width..ahead as usize * width + width]);
                }
            }
            let r = inv.map_or(j, |v| v[j] as usize) * width;
            let row = &rows[r..r + width];
            for (c, v) in cols.iter_mut().zip(row) {
                c[j] = *v;
            }
        }
    });
    Ok(())
}

/// How many rows ahead the gather asks for its row: about the memory latency over a row's
/// copy.
const PREFETCH_AHEAD: usize = 16;

/// A hint that `row` (one or two cache lines) will be read soon.
#[inline(always)]
fn prefetch(row: &[f64]) {
    #[cfg(target_arch = "x86_64")]
    if let (Some(first), Some(last)) = (row.first(), row.last()) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch is a hint: it never faults and reads nothing into the program
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>((first as *const f64).cast());
            _mm_prefetch::<_MM_HINT_T0>((last as *const f64).cast());
        }
    }
}
