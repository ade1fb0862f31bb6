//! `update_rows` with a clock on each phase, for `bench/stream_engine.py`: where the
//! engine's own time goes on the stream's batches (update per event; finalize and encode
//! per row), without the Python around it. The states change exactly as `update_rows`
//! changes them; nothing is returned but the counts and the nanoseconds.

use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::shard::{run, with_states, Phases};
use crate::Core;

/// `update_rows(core, states, batches, time_pos, value_pos)` without its result, the GIL
/// released: `(events, rows, update_ns, finalize_ns, encode_ns)` (wall clock per phase).
#[pyfunction]
#[pyo3(signature = (core, states, batches, time_pos, value_pos))]
pub fn update_rows_timed<'py>(
    py: Python<'py>,
    core: &Core,
    states: &Bound<'py, PyList>,
    batches: &Bound<'py, PyList>,
    time_pos: usize,
    value_pos: Vec<usize>,
) -> PyResult<(usize, usize, u64, u64, u64)> {
    with_states(core, states, batches, time_pos, &value_pos, |sts, reads| {
        py.allow_threads(|| {
            let mut phases: Phases = [0; 3];
            let (mut events, mut rows) = (0, 0);
            for (st, b) in sts.iter_mut().zip(reads) {
                let done = run(&core.spec, st, b, Some(&mut phases));
                events += b.ts.len();
                rows += done.row.is_some() as usize;
            }
            (events, rows, phases[0], phases[1], phases[2])
        })
    })
}
