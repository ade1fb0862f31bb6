//! A whole batch of Feast-layout `HSET`s as one RESP payload (`features.store.redis`'s
//! `write_rows`): the stream's sink wrote each row through `HsetEncoder.command` (one
//! Python call, a `list()` of the values and a `bytes` object per row, then a join: ~7% of
//! a drain). Here one call reads the rows (`OnlineRow` tuples) and appends every command
//! to one buffer; the bytes are `HsetEncoder.command`'s, row after row (a test holds them
//! equal).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyFloat, PyInt, PySequence};

fn varint(out: &mut Vec<u8>, v: i64) {
    let mut n = v as u64; // negative int64: ten bytes, two's complement (protobuf)
    while n > 0x7f {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

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

impl HsetRows {
    fn row(&self, out: &mut Vec<u8>, row: &Bound<'_, PyAny>) -> PyResult<()> {
        let entity_id: i64 = row.get_item(0)?.extract()?;
        let ts_ms: i64 = row.get_item(1)?.extract()?;
        let values = row.get_item(2)?;
        let state = row.get_item(3)?;
        let state: &[u8] = state.downcast::<PyBytes>()?.as_bytes();
        let n = values.len()?;
        if n != self.fields.len() {
            return Err(PyValueError::new_err(format!(
                "values: {} values for {} fields",
                n,
                self.fields.len()
            )));
        }
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
            val.clear();
            if v.is_none() {
            } else if let Ok(f) = v.downcast::<PyFloat>() {
                let x = f.value();
                if !x.is_nan() {
                    val.push(0x29);
                    val.extend_from_slice(&x.to_le_bytes());
                }
            } else if v.is_instance_of::<PyInt>() {
                val.push(0x20);
                varint(&mut val, v.extract::<i64>()?);
            } else {
                return Err(PyValueError::new_err(format!(
                    "values: {} is not int or float",
                    v.get_type().name()?
                )));
            }
            bulk(out, &val);
        }
        out.extend_from_slice(&self.state_field);
        val.clear();
        val.push(0x0a);
        varint(&mut val, state.len() as i64);
        head(out, val.len() + state.len());
        out.extend_from_slice(&val);
        out.extend_from_slice(state);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.ts_field);
        val.clear();
        let (secs, rem) = (ts_ms.div_euclid(1000), ts_ms.rem_euclid(1000));
        if secs != 0 {
            val.push(0x08);
            varint(&mut val, secs);
        }
        if rem != 0 {
            val.push(0x10);
            varint(&mut val, rem * 1_000_000);
        }
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
        let n = rows.len().unwrap_or(0);
        let mut out = Vec::with_capacity(n * (256 + 24 * self.fields.len()));
        for row in rows.try_iter()? {
            self.row(&mut out, &row?)?;
        }
        Ok(PyBytes::new(py, &out))
    }
}
