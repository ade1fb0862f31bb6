//! The end states' bytes in one pass (`features/state_build.py`): every entity's items of
//! every piece (its header, raw events, ids, each level's tiles), piece after piece, entity
//! after entity. numpy did it as a scatter per piece (an index array as large as the
//! buffer built and written for each): ~0.1 s of the card's ~0.28 s for 2M events.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::windows::{view, view_mut};

/// One piece: its items' bytes, an item's size in bytes, and how many items each entity
/// has (the items are entity after entity, as the buffer wants them).
type Piece = (PyBuffer<u8>, usize, PyBuffer<i64>);

/// Writes entity `g`'s items of every piece, in piece order, at `out[starts[g]..]`
/// (`starts`: `groups + 1` byte offsets, each entity's size the sum of its items').
#[pyfunction]
pub fn interleave_items(
    py: Python<'_>,
    pieces: Vec<Piece>,
    starts: PyBuffer<i64>,
    out: PyBuffer<u8>,
) -> PyResult<()> {
    let (at, dst) = (view(&starts, "starts")?, view_mut(&out, "out")?);
    let groups = at.len().saturating_sub(1);
    let mut parts: Vec<(&[u8], usize, &[i64])> = Vec::with_capacity(pieces.len());
    for (data, size, counts) in &pieces {
        parts.push((view(data, "piece")?, *size, view(counts, "counts")?));
    }
    let mut sizes = vec![0i64; groups];
    let mut ok = !at.is_empty() && at[0] == 0 && at[groups] as usize == dst.len();
    for &(data, size, counts) in &parts {
        let total: i64 = counts.iter().sum();
        ok &= size > 0 && counts.len() == groups && counts.iter().all(|&c| c >= 0);
        ok &= total as usize * size == data.len();
        if !ok {
            break;
        }
        for (s, &c) in sizes.iter_mut().zip(counts) {
            *s += c * size as i64;
        }
    }
    ok = ok
        && sizes
            .iter()
            .zip(at.windows(2))
            .all(|(&s, w)| w[1] - w[0] == s);
    if !ok {
        return Err(PyValueError::new_err(
            "interleave_items: one count per entity, counts matching each piece's bytes, \
             starts matching the entities' sizes",
        ));
    }
    py.allow_threads(|| {
        let mut from = vec![0usize; parts.len()];
        for (g, w) in at.windows(2).enumerate() {
            let mut o = w[0] as usize;
            for ((data, size, counts), f) in parts.iter().zip(from.iter_mut()) {
                let n = counts[g] as usize * size;
                dst[o..o + n].copy_from_slice(&data[*f..*f + n]);
                o += n;
                *f += n;
            }
        }
    });
    Ok(())
}
