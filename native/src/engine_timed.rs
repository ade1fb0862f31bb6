//! `update_rows` cut after a phase, for `bench/stream_engine.py`: the engine's own cost
//! on the stream's batches split by CPU time into update, finalize and encode, by
//! differences of whole runs (a clock per phase and entity costs as much as the phase:
//! the thread's CPU clock is a system call). Every cut evolves the states as
//! `update_rows` does: the state bytes depend on the updates and the compaction only.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::shard::{run, with_states, Upto};
use crate::Core;

/// `update_rows(core, states, batches, time_pos, value_pos)` without its result, the GIL
/// released, up to `phase`: 1 the updates (each touched state then compacted as a row's
/// encode compacts it), 2 also the row's values, 3 the whole row (values and state
/// bytes). Returns `(events, rows)`: the batches' events, the entities that had a row.
#[pyfunction]
#[pyo3(signature = (core, states, batches, time_pos, value_pos, phase))]
pub fn update_rows_upto<'py>(
    py: Python<'py>,
    core: &Core,
    states: &Bound<'py, PyList>,
    batches: &Bound<'py, PyList>,
    time_pos: usize,
    value_pos: Vec<usize>,
    phase: u8,
) -> PyResult<(usize, usize)> {
    let upto = match phase {
        1 => Upto::Update,
        2 => Upto::Finalize,
        3 => Upto::Row,
        _ => {
            return Err(PyValueError::new_err(format!(
                "update_rows_upto: phase {phase} is not 1, 2 or 3"
            )))
        }
    };
    with_states(core, states, batches, time_pos, &value_pos, |sts, reads| {
        py.allow_threads(|| {
            let (mut events, mut rows) = (0, 0);
            for (st, b) in sts.iter_mut().zip(reads) {
                let done = run(&core.spec, st, b, upto);
                events += b.ts.len();
                rows += (done.applied > 0) as usize;
            }
            (events, rows)
        })
    })
}
