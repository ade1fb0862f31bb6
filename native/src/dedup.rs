//! The backfill's dedup scan and lateness in one pass each, off the GIL
//! (`features/dedup.py`): over a whole file's ids and keys these were the job's serial
//! numpy passes (a hash per 8-byte word, a sort, `isin`; a radix argsort and a prefix
//! maximum per entity).

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::collections::HashMap;

use crate::windows::view;

const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// A 64-bit hash of a string's bytes (its length mixed in): equal strings hash equal;
/// different ones rarely collide, which only adds a candidate.
fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = (b.len() as u64).wrapping_mul(MIX);
    let mut words = b.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        h = (h ^ w).wrapping_mul(MIX);
        h ^= h >> 29;
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(last)).wrapping_mul(MIX);
        h ^= h >> 29;
    }
    h ^ (h >> 32)
}

/// Rows whose string `data[offsets[i]..offsets[i + 1]]` may occur more than once: every
/// repeated one, and the rare row whose hash collides with another's. Sorted row numbers
/// as little-endian int64s.
#[pyfunction]
pub fn repeated_rows<'py>(
    py: Python<'py>,
    data: PyBuffer<u8>,
    offsets: PyBuffer<i64>,
) -> PyResult<Bound<'py, PyBytes>> {
    let (d, o) = (view(&data, "data")?, view(&offsets, "offsets")?);
    let n = o.len().saturating_sub(1);
    let bad = o.windows(2).any(|w| w[0] < 0 || w[1] < w[0])
        || o.last().is_some_and(|&e| e as usize > d.len());
    if bad {
        return Err(PyValueError::new_err(
            "repeated_rows: offsets outside the data or not increasing",
        ));
    }
    let rows = py.allow_threads(|| {
        let h: Vec<u64> = (0..n)
            .map(|i| hash_bytes(&d[o[i] as usize..o[i + 1] as usize]))
            .collect();
        let mut sorted = h.clone();
        sorted.sort_unstable();
        let mut twice: Vec<u64> = sorted
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| w[0])
            .collect();
        twice.dedup();
        if twice.is_empty() {
            return Vec::new();
        }
        (0..n)
            .filter(|&i| twice.binary_search(&h[i]).is_ok())
            .map(|i| i as i64)
            .collect::<Vec<i64>>()
    });
    let bytes: Vec<u8> = rows.iter().flat_map(|r| r.to_le_bytes()).collect();
    Ok(PyBytes::new(py, &bytes))
}

/// Per-key latest time seen so far: a direct table for small non-negative keys, else a map.
enum Latest {
    Table(Vec<i64>),
    Map(HashMap<i64, i64>),
}

impl Latest {
    fn new(keys: &[i64]) -> Self {
        let top = keys.iter().copied().max().unwrap_or(0);
        let low = keys.iter().copied().min().unwrap_or(0);
        if low >= 0 && (top as u64) < 4 * keys.len() as u64 + 65_536 {
            Latest::Table(vec![i64::MIN; top as usize + 1])
        } else {
            Latest::Map(HashMap::with_capacity(keys.len() / 8 + 16))
        }
    }

    /// The latest time before this row (`i64::MIN` if none), then record `t`.
    fn swap_max(&mut self, key: i64, t: i64) -> i64 {
        let slot = match self {
            Latest::Table(v) => &mut v[key as usize],
            Latest::Map(m) => m.entry(key).or_insert(i64::MIN),
        };
        let prev = *slot;
        if t > prev {
            *slot = t;
        }
        prev
    }
}

/// In file order, the rows (among `first`) older than their key's newest earlier `first`
/// row minus `lateness_ms`: one byte (0/1) per row, as numpy's bool.
#[pyfunction]
pub fn late_rows<'py>(
    py: Python<'py>,
    keys: PyBuffer<i64>,
    ts: PyBuffer<i64>,
    first: PyBuffer<u8>,
    lateness_ms: i64,
) -> PyResult<Bound<'py, PyBytes>> {
    let (k, t, f) = (
        view(&keys, "keys")?,
        view(&ts, "ts")?,
        view(&first, "first")?,
    );
    if t.len() != k.len() || f.len() != k.len() {
        return Err(PyValueError::new_err(
            "late_rows: keys, ts and first differ in length",
        ));
    }
    let out = py.allow_threads(|| {
        let mut latest = Latest::new(k);
        let mut out = vec![0u8; k.len()];
        for i in 0..k.len() {
            if f[i] == 0 {
                continue;
            }
            let prev = latest.swap_max(k[i], t[i]);
            out[i] = u8::from(prev != i64::MIN && t[i] < prev.wrapping_sub(lateness_ms));
        }
        out
    });
    Ok(PyBytes::new(py, &out))
}
