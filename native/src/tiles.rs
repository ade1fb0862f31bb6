//! Exact folds of value ranges for the vectorized backfill: the end states' tiles, whose
//! `(Σx, Σ(x-mean)²)` come from the engine's own tile (`moments::Tile`, so they are the
//! stream's bits), and the binary lifting of the window std rows whose moments cancel
//! (`features/range_folds.py` `_lift`, the same float operations).

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::moments::Tile;
use crate::windows::{view, view_mut};

/// The block of `2^j` values at `p` as `range_folds._lift` builds its level `j`: level 0
/// is the values, level `j` merges the two halves' (mean, m2), numpy's operations in order.
fn lift_block(x: &[f64], p: usize, j: u32) -> (f64, f64) {
    if j == 0 {
        return (x[p], 0.0);
    }
    let half = 1usize << (j - 1);
    let (am, a2) = lift_block(x, p, j - 1);
    let (bm, b2) = lift_block(x, p + half, j - 1);
    let d = bm - am;
    (am + d * 0.5, (a2 + b2) + d * d * (half as f64 / 2.0))
}

/// `range_folds._lift(x, lo, hi)[1]`: Σ(x - mean)² over each `[lo, hi)` by binary lifting
/// with Chan's update, the same bits, each row in O(its length) instead of numpy's levels
/// over every value (a few thousand cancelling std rows paid for the whole array).
#[pyfunction]
pub fn lift_m2<'py>(
    py: Python<'py>,
    x: PyBuffer<f64>,
    lo: PyBuffer<i64>,
    hi: PyBuffer<i64>,
) -> PyResult<Bound<'py, PyBytes>> {
    let (xs, lo_s, hi_s) = (view(&x, "x")?, view(&lo, "lo")?, view(&hi, "hi")?);
    let bad = lo_s.len() != hi_s.len()
        || lo_s
            .iter()
            .zip(hi_s)
            .any(|(&a, &b)| a < 0 || b < a || b as usize > xs.len());
    if bad {
        return Err(PyValueError::new_err("lift_m2: ranges outside the values"));
    }
    let out: Vec<f64> = py.allow_threads(|| {
        lo_s.iter()
            .zip(hi_s)
            .map(|(&a, &b)| {
                let len = (b - a) as usize;
                let (mut cnt, mut mean, mut m2, mut pos) = (0.0f64, 0.0f64, 0.0f64, a as usize);
                for j in 0..usize::BITS {
                    let size = 1usize << j;
                    if size > len {
                        break;
                    }
                    if len & size != 0 {
                        let (bm, b2) = lift_block(xs, pos, j);
                        let (a, sz) = (cnt, size as f64);
                        let tot = a + sz;
                        let delta = bm - mean;
                        mean += delta * (sz / tot);
                        m2 += b2 + delta * delta * (a * sz / tot);
                        cnt = tot;
                        pos += size;
                    }
                }
                m2
            })
            .collect()
    });
    let bytes: Vec<u8> = out.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok(PyBytes::new(py, &bytes))
}

/// Each tile's correctly rounded `(Σx, Σ(x-mean)²)` over `x[start[i]..stop[i]]`, folded
/// by the engine's tile (`moments.summary`), written to `sum_out` and `m2_out`.
#[pyfunction]
pub fn tile_moments(
    py: Python<'_>,
    x: PyBuffer<f64>,
    start: PyBuffer<i64>,
    stop: PyBuffer<i64>,
    sum_out: PyBuffer<f64>,
    m2_out: PyBuffer<f64>,
) -> PyResult<()> {
    let (xs, a, b) = (view(&x, "x")?, view(&start, "start")?, view(&stop, "stop")?);
    let (so, mo) = (view_mut(&sum_out, "sum_out")?, view_mut(&m2_out, "m2_out")?);
    let k = a.len();
    if b.len() != k || so.len() != k || mo.len() != k {
        return Err(PyValueError::new_err(
            "tile_moments: one start, stop and output per tile",
        ));
    }
    if a.iter()
        .zip(b)
        .any(|(&s, &e)| s < 0 || e < s || e as usize > xs.len())
    {
        return Err(PyValueError::new_err(
            "tile_moments: a tile outside the values",
        ));
    }
    py.allow_threads(|| {
        for i in 0..k {
            let mut tile = Tile::empty();
            for &v in &xs[a[i] as usize..b[i] as usize] {
                tile.add(v);
            }
            (so[i], mo[i]) = tile.summary();
        }
    });
    Ok(())
}
