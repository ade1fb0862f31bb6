//! A whole batch of Feast-layout `HSET`s as one RESP payload (`features.store.redis`'s
//! `write_rows`): the stream's sink wrote each row through `HsetEncoder.command` (one
//! Python call, a `list()` of the values and a `bytes` object per row, then a join: ~7% of
//! a drain). Here one call reads the rows (`OnlineRow` tuples) and writes every command
//! of the batch, all entities' and the commands that follow them, into one `bytes` of the
//! exact size: each state (a merchant's is ~20 KB, most of a poll's bytes) is copied once,
//! not into a buffer, then a `bytes` per row, then the joined payload. The bytes are
//! `HsetEncoder.command`'s, row after row (a test holds them equal).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PySequence, PyTuple};

use crate::resp::{feast_timestamp, feast_value, varint};

/// `$<len>\r\n` (the bulk string's header).
fn head(out: &mut Vec<u8>, len: usize) {
    out.push(b'$');
    out.extend_from_slice(len.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    head(out, b.len());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

#[pyclass(module = "skewless_native", frozen)]
pub struct HsetRows {
    key_head: Vec<u8>,
    key_tail: Vec<u8>,
    /// Each feature's field name as a ready bulk string.
    fields: Vec<Vec<u8>>,
    state_field: Vec<u8>,
    ts_field: Vec<u8>,
    /// `*<n>\r\n$4\r\nHSET\r\n`
    command_head: Vec<u8>,
}

/// A payload being built: its bytes but the states, and where each state goes.
struct Payload<'py> {
    out: Vec<u8>,
    states: Vec<(usize, Bound<'py, PyBytes>)>,
}

impl<'py> Payload<'py> {
    fn new() -> Self {
        Payload {
            out: Vec::with_capacity(1 << 16),
            states: Vec::new(),
        }
    }

    /// One `bytes` of the exact size, each state copied into it once.
    fn finish(self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let total = self.out.len()
            + self
                .states
                .iter()
                .map(|(_, s)| s.as_bytes().len())
                .sum::<usize>();
        PyBytes::new_with(py, total, |buf| {
            let (mut w, mut r) = (0, 0);
            for (at, state) in &self.states {
                let own = &self.out[r..*at];
                buf[w..w + own.len()].copy_from_slice(own);
                w += own.len();
                let st = state.as_bytes();
                buf[w..w + st.len()].copy_from_slice(st);
                w += st.len();
                r = *at;
            }
            buf[w..].copy_from_slice(&self.out[r..]);
            Ok(())
        })
    }
}

impl HsetRows {
    fn rows<'py>(&self, p: &mut Payload<'py>, rows: &Bound<'py, PyAny>) -> PyResult<usize> {
        let mut n = 0;
        for row in rows.try_iter()? {
            self.row(p, &row?)?;
            n += 1;
        }
        Ok(n)
    }

    fn row<'py>(&self, p: &mut Payload<'py>, row: &Bound<'py, PyAny>) -> PyResult<()> {
        let entity_id: i64 = row.get_item(0)?.extract()?;
        let ts_ms: i64 = row.get_item(1)?.extract()?;
        let values = row.get_item(2)?;
        let state = row.get_item(3)?.downcast_into::<PyBytes>()?;
        let state_len = state.as_bytes().len();
        let n = values.len()?;
        if n != self.fields.len() {
            return Err(PyValueError::new_err(format!(
                "values: {} values for {} fields",
                n,
                self.fields.len()
            )));
        }
        let out = &mut p.out;
        out.extend_from_slice(&self.command_head);
        head(out, self.key_head.len() + 8 + self.key_tail.len());
        out.extend_from_slice(&self.key_head);
        out.extend_from_slice(&entity_id.to_le_bytes());
        out.extend_from_slice(&self.key_tail);
        out.extend_from_slice(b"\r\n");
        let mut val = Vec::with_capacity(16);
        let seq = values.downcast::<PySequence>().ok();
        for (i, field) in self.fields.iter().enumerate() {
            out.extend_from_slice(field);
            let v = match &seq {
                Some(s) => s.get_item(i)?,
                None => values.get_item(i)?,
            };
            feast_value(&mut val, &v)?;
            bulk(out, &val);
        }
        out.extend_from_slice(&self.state_field);
        val.clear();
        val.push(0x0a);
        varint(&mut val, state_len as i64);
        head(out, val.len() + state_len);
        out.extend_from_slice(&val);
        p.states.push((out.len(), state)); // its bytes go here
        let out = &mut p.out;
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.ts_field);
        feast_timestamp(&mut val, ts_ms);
        bulk(out, &val);
        Ok(())
    }
}

#[pymethods]
impl HsetRows {
    /// `HsetEncoder`'s arguments: key = `key_head + int64 LE entity id + key_tail`, the
    /// features' field names in order, the state and timestamp fields.
    #[new]
    fn new(
        key_head: Vec<u8>,
        key_tail: Vec<u8>,
        fields: Vec<Vec<u8>>,
        state_field: Vec<u8>,
        ts_field: Vec<u8>,
    ) -> Self {
        let ready = |f: &[u8]| {
            let mut b = Vec::with_capacity(f.len() + 8);
            bulk(&mut b, f);
            b
        };
        let n = 2 + 2 * (fields.len() + 2);
        HsetRows {
            key_head,
            key_tail,
            fields: fields.iter().map(|f| ready(f)).collect(),
            state_field: ready(&state_field),
            ts_field: ready(&ts_field),
            command_head: format!("*{n}\r\n$4\r\nHSET\r\n").into_bytes(),
        }
    }

    /// One `HSET key f1 v1 ... state ts` per row (`(entity_id, event_ts_ms, values,
    /// state)` tuples: `OnlineRow`), in order, as one bytes object.
    fn commands<'py>(
        &self,
        py: Python<'py>,
        rows: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let mut p = Payload::new();
        self.rows(&mut p, rows)?;
        p.finish(py)
    }
}

/// A whole pipeline as one `bytes`: each `(HsetRows, rows)` pair's commands in order, then
/// `tail` (commands encoded already); and how many rows it holds.
#[pyfunction]
pub fn hset_pipeline<'py>(
    py: Python<'py>,
    batches: &Bound<'py, PyAny>,
    tail: &Bound<'py, PyBytes>,
) -> PyResult<(Bound<'py, PyBytes>, usize)> {
    let mut p = Payload::new();
    let mut n = 0;
    for item in batches.try_iter()? {
        let item = item?;
        let pair = item.downcast::<PyTuple>()?;
        let enc = pair.get_item(0)?;
        let enc = enc.downcast::<HsetRows>()?.get();
        n += enc.rows(&mut p, &pair.get_item(1)?)?;
    }
    p.out.extend_from_slice(tail.as_bytes());
    Ok((p.finish(py)?, n))
}
