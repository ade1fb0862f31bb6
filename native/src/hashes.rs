//! `txid_hash` of many strings in one call, off the GIL: the vectorized backfill hashes
//! the event ids of a whole file (millions), which one Python call per id made its
//! slowest step.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::event::txid_hash_bytes;

/// Items below this count are hashed on the calling thread only.
const PER_THREAD: usize = 1 << 16;

fn contiguous<T: pyo3::buffer::Element>(b: &PyBuffer<T>, what: &str) -> PyResult<()> {
    if b.is_c_contiguous() {
        Ok(())
    } else {
        Err(PyValueError::new_err(format!(
            "txid_hashes: {what} must be contiguous"
        )))
    }
}

/// `features.layout.txid_hash` of `data[starts[i]..ends[i]]` for every `i`, as
/// little-endian u64s (`8 * len(starts)` bytes): UTF-8 bytes in, as Arrow stores strings.
#[pyfunction]
pub fn txid_hashes<'py>(
    py: Python<'py>,
    data: PyBuffer<u8>,
    starts: PyBuffer<i64>,
    ends: PyBuffer<i64>,
) -> PyResult<Bound<'py, PyBytes>> {
    contiguous(&data, "data")?;
    contiguous(&starts, "starts")?;
    contiguous(&ends, "ends")?;
    let n = starts.item_count();
    if ends.item_count() != n {
        return Err(PyValueError::new_err("txid_hashes: one end per start"));
    }
    // SAFETY: the buffers are contiguous, held (so alive and pinned) for this call, and
    // only read; the addresses cross into the GIL-free closure as integers.
    let (d, s, e) = (
        data.buf_ptr() as usize,
        starts.buf_ptr() as usize,
        ends.buf_ptr() as usize,
    );
    let len = data.item_count();
    let out = py.allow_threads(move || -> Result<Vec<u64>, String> {
        let data = unsafe { std::slice::from_raw_parts(d as *const u8, len) };
        let starts = unsafe { std::slice::from_raw_parts(s as *const i64, n) };
        let ends = unsafe { std::slice::from_raw_parts(e as *const i64, n) };
        let mut out = vec![0u64; n];
        let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
        let chunk = n.div_ceil(threads.min(n / PER_THREAD).max(1)).max(1);
        std::thread::scope(|scope| {
            let jobs: Vec<_> = out
                .chunks_mut(chunk)
                .zip(starts.chunks(chunk).zip(ends.chunks(chunk)))
                .map(|(o, (s, e))| scope.spawn(move || hash_into(data, s, e, o)))
                .collect();
            jobs.into_iter()
                .try_for_each(|j| j.join().expect("hash thread"))
        })?;
        Ok(out)
    });
    let out = out.map_err(PyValueError::new_err)?;
    let bytes: Vec<u8> = out.iter().flat_map(|h| h.to_le_bytes()).collect();
    Ok(PyBytes::new(py, &bytes))
}

fn hash_into(data: &[u8], starts: &[i64], ends: &[i64], out: &mut [u64]) -> Result<(), String> {
    for ((o, &a), &b) in out.iter_mut().zip(starts).zip(ends) {
        if a < 0 || b < a || b as usize > data.len() {
            return Err(format!(
                "txid_hashes: range {a}..{b} outside the {} data bytes",
                data.len()
            ));
        }
        *o = txid_hash_bytes(&data[a as usize..b as usize]);
    }
    Ok(())
}
