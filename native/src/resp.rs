//! Feast's Redis layout as ready-to-send RESP: one `HSET` per entity row, values as
//! serialized feast `ValueProto`s (int64 / double / bytes; NaN = unset), the row time as a
//! `google.protobuf.Timestamp` (same bytes as `features/store/encoding.py`).

use std::collections::HashMap;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyFloat, PyInt, PyList, PyString, PyTuple};

pub(crate) fn varint(out: &mut Vec<u8>, v: i64) {
    let mut n = v as u64; // negative int64: ten bytes, two's complement (protobuf)
    while n > 0x7f {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    out.push(b'$');
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// A feature value as Feast's `ValueProto` bytes into `val` (cleared first): a float as
/// `double_val` (NaN: no value), an int as `int64_val`, None as no value; anything else
/// is refused, naming its type. (`HsetEncoder` and `hset_rows` write the same bytes.)
pub(crate) fn feast_value(val: &mut Vec<u8>, v: &Bound<'_, PyAny>) -> PyResult<()> {
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
        varint(val, v.extract::<i64>()?);
    } else {
        return Err(PyValueError::new_err(format!(
            "values: {} is not int or float",
            v.get_type().name()?
        )));
    }
    Ok(())
}

/// An event time in milliseconds as Feast's `Timestamp` bytes into `val` (cleared first):
/// seconds and nanoseconds, each only when not zero.
pub(crate) fn feast_timestamp(val: &mut Vec<u8>, ts_ms: i64) {
    val.clear();
    let (secs, rem) = (ts_ms.div_euclid(1000), ts_ms.rem_euclid(1000));
    if secs != 0 {
        val.push(0x08);
        varint(val, secs);
    }
    if rem != 0 {
        val.push(0x10);
        varint(val, rem * 1_000_000);
    }
}

#[pyclass(module = "skewless_native", frozen)]
pub struct HsetEncoder {
    key_head: Vec<u8>,
    key_tail: Vec<u8>,
    fields: Vec<Vec<u8>>,
    state_field: Vec<u8>,
    ts_field: Vec<u8>,
}

#[pymethods]
impl HsetEncoder {
    /// Key = `key_head + int64 LE entity id + key_tail` (Feast's serialized entity key
    /// and project); `fields` are the murmur3 field names of the features, in order.
    #[new]
    fn new(
        key_head: Vec<u8>,
        key_tail: Vec<u8>,
        fields: Vec<Vec<u8>>,
        state_field: Vec<u8>,
        ts_field: Vec<u8>,
    ) -> Self {
        HsetEncoder {
            key_head,
            key_tail,
            fields,
            state_field,
            ts_field,
        }
    }

    /// One `HGET key field` command for an entity id.
    fn hget<'py>(&self, py: Python<'py>, entity_id: i64, field: &[u8]) -> Bound<'py, PyBytes> {
        let mut out = Vec::with_capacity(64 + self.key_head.len() + self.key_tail.len());
        out.extend_from_slice(b"*3\r\n$4\r\nHGET\r\n");
        let mut key = Vec::with_capacity(self.key_head.len() + 8 + self.key_tail.len());
        key.extend_from_slice(&self.key_head);
        key.extend_from_slice(&entity_id.to_le_bytes());
        key.extend_from_slice(&self.key_tail);
        bulk(&mut out, &key);
        bulk(&mut out, field);
        PyBytes::new(py, &out)
    }

    /// `HGET key field` for each distinct id of `ids` (first occurrence order) in one
    /// payload: `(payload, distinct, idx)`, `idx` the reply index of each id (u32
    /// little-endian, `base` + its distinct position), for `RowFinalizer.fill_batch`.
    fn hget_many<'py>(
        &self,
        py: Python<'py>,
        ids: Vec<i64>,
        field: &[u8],
        base: u32,
    ) -> (Bound<'py, PyBytes>, usize, Bound<'py, PyBytes>) {
        let mut first: HashMap<i64, u32> = HashMap::with_capacity(ids.len());
        let mut idx = Vec::with_capacity(4 * ids.len());
        let mut out =
            Vec::with_capacity(ids.len() * (48 + self.key_head.len() + self.key_tail.len()));
        let mut key = Vec::with_capacity(self.key_head.len() + 8 + self.key_tail.len());
        for &id in &ids {
            let next = first.len() as u32;
            let k = *first.entry(id).or_insert_with(|| {
                out.extend_from_slice(b"*3\r\n$4\r\nHGET\r\n");
                key.clear();
                key.extend_from_slice(&self.key_head);
                key.extend_from_slice(&id.to_le_bytes());
                key.extend_from_slice(&self.key_tail);
                bulk(&mut out, &key);
                bulk(&mut out, field);
                next
            });
            idx.extend_from_slice(&(base + k).to_le_bytes());
        }
        (PyBytes::new(py, &out), first.len(), PyBytes::new(py, &idx))
    }

    /// One `HSET key f1 v1 ... state ts` command.
    fn command<'py>(
        &self,
        py: Python<'py>,
        entity_id: i64,
        values: &Bound<'py, PyList>,
        state: &[u8],
        ts_ms: i64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        if values.len() != self.fields.len() {
            return Err(PyValueError::new_err(format!(
                "values: {} values for {} fields",
                values.len(),
                self.fields.len()
            )));
        }
        let mut out = Vec::with_capacity(160 + state.len() + 24 * self.fields.len());
        let n = 2 + 2 * (self.fields.len() + 2);
        out.extend_from_slice(format!("*{n}\r\n$4\r\nHSET\r\n").as_bytes());
        let mut key = Vec::with_capacity(self.key_head.len() + 8 + self.key_tail.len());
        key.extend_from_slice(&self.key_head);
        key.extend_from_slice(&entity_id.to_le_bytes());
        key.extend_from_slice(&self.key_tail);
        bulk(&mut out, &key);
        let mut val = Vec::with_capacity(16);
        for (field, v) in self.fields.iter().zip(values.iter()) {
            bulk(&mut out, field);
            feast_value(&mut val, &v)?;
            bulk(&mut out, &val);
        }
        bulk(&mut out, &self.state_field);
        val.clear();
        val.push(0x0a);
        varint(&mut val, state.len() as i64);
        val.extend_from_slice(state);
        bulk(&mut out, &val);
        bulk(&mut out, &self.ts_field);
        feast_timestamp(&mut val, ts_ms);
        bulk(&mut out, &val);
        Ok(PyBytes::new(py, &out))
    }
}

/// The `bytes_val` payloads of serialized feast `ValueProto`s (None or empty: None).
#[pyfunction]
pub fn unwrap_bytes_values<'py>(
    py: Python<'py>,
    raws: &Bound<'py, PyList>,
) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    for item in raws.iter() {
        if item.is_none() {
            out.append(py.None())?;
            continue;
        }
        let b = item.downcast::<PyBytes>()?.as_bytes();
        if b.is_empty() {
            out.append(py.None())?;
            continue;
        }
        if b[0] != 0x0a {
            return Err(PyValueError::new_err(
                "state: stored value is not a bytes value",
            ));
        }
        let (mut n, mut shift, mut i) = (0usize, 0u32, 1usize);
        loop {
            let Some(&c) = b.get(i) else {
                return Err(PyValueError::new_err("state: stored value is truncated"));
            };
            n |= ((c & 0x7f) as usize) << shift;
            i += 1;
            if c < 0x80 {
                break;
            }
            shift += 7;
            if shift > 63 {
                return Err(PyValueError::new_err("state: stored value is corrupt"));
            }
        }
        let end = (i + n).min(b.len());
        out.append(PyBytes::new(py, &b[i..end]))?;
    }
    Ok(out)
}

// protobuf field types (descriptor.proto `FieldDescriptorProto.Type`) this encoder writes
const TYPE_DOUBLE: i32 = 1;
const TYPE_BOOL: i32 = 8;
const TYPE_STRING: i32 = 9;
const TYPE_MESSAGE: i32 = 11;

/// The encoded tag of a field and the wire type its proto type implies.
fn tag(number: u32, proto_type: i32) -> Vec<u8> {
    let wire = match proto_type {
        TYPE_DOUBLE => 1,
        TYPE_STRING | TYPE_MESSAGE => 2,
        _ => 0, // bool
    };
    let mut out = Vec::with_capacity(2);
    varint(&mut out, (((number as u64) << 3) | wire) as i64);
    out
}

fn pb_len(out: &mut Vec<u8>, tag: &[u8], b: &[u8]) {
    out.extend_from_slice(tag);
    varint(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// A serialized `skewless.v1.ScoreBatchResponse` without features. The field numbers and
/// types come from the generated descriptor (`features.native.score_batch_encoder`): a
/// renumbered field follows, a retyped or missing one is refused here, naming it.
#[pyclass(module = "skewless_native", frozen)]
pub struct ScoreBatchEncoder {
    responses: Vec<u8>,
    transaction_id: Vec<u8>,
    score: Vec<u8>,
    decision: Vec<u8>,
    threshold: Vec<u8>,
    model_version: Vec<u8>,
    warnings: Vec<u8>,
}

#[pymethods]
impl ScoreBatchEncoder {
    /// `fields`: name -> `(number, proto type, repeated)` of `ScoreBatchResponse.responses`
    /// and of the `ScoreResponse` fields written (transaction_id, score, decision,
    /// threshold, model_version, warnings).
    #[new]
    fn new(fields: HashMap<String, (u32, i32, bool)>) -> PyResult<Self> {
        let get = |name: &str, want: i32, repeated: bool| -> PyResult<Vec<u8>> {
            let &(number, proto_type, rep) = fields.get(name).ok_or_else(|| {
                PyValueError::new_err(format!("{name}: not in the response descriptor"))
            })?;
            if proto_type != want || rep != repeated || number == 0 || number >= 1 << 29 {
                return Err(PyValueError::new_err(format!(
                    "{name}: the descriptor has field {number} of type {proto_type}{}; the \
                     native encoder writes type {want}{}",
                    if rep { " (repeated)" } else { "" },
                    if repeated { " (repeated)" } else { "" },
                )));
            }
            Ok(tag(number, proto_type))
        };
        Ok(ScoreBatchEncoder {
            responses: get("responses", TYPE_MESSAGE, true)?,
            transaction_id: get("transaction_id", TYPE_STRING, false)?,
            score: get("score", TYPE_DOUBLE, false)?,
            decision: get("decision", TYPE_BOOL, false)?,
            threshold: get("threshold", TYPE_DOUBLE, false)?,
            model_version: get("model_version", TYPE_STRING, false)?,
            warnings: get("warnings", TYPE_STRING, true)?,
        })
    }

    /// Per result `(transaction_id, score, decision, warnings)`, plus the shared threshold
    /// and model version. proto3 rules: default values are left out.
    fn encode<'py>(
        &self,
        py: Python<'py>,
        results: Vec<(String, f64, bool, Vec<String>)>,
        threshold: f64,
        model_version: &str,
    ) -> Bound<'py, PyBytes> {
        let mut out = Vec::with_capacity(results.len() * (48 + model_version.len()));
        for (txid, score, decision, warnings) in &results {
            let w: Vec<&str> = warnings.iter().map(String::as_str).collect();
            self.one(
                &mut out,
                txid,
                *score,
                *decision,
                &w,
                threshold,
                model_version,
            );
        }
        PyBytes::new(py, &out)
    }

    /// [`Self::encode`] from the batch's columns as the scorer holds them (lists of the
    /// same length; `warnings` a tuple of str per result), read in place.
    #[allow(clippy::too_many_arguments)]
    fn encode_columns<'py>(
        &self,
        py: Python<'py>,
        transaction_ids: &Bound<'py, PyList>,
        scores: Vec<f64>,
        decisions: Vec<bool>,
        warnings: &Bound<'py, PyList>,
        threshold: f64,
        model_version: &str,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let n = scores.len();
        if transaction_ids.len() != n || decisions.len() != n || warnings.len() != n {
            return Err(PyValueError::new_err("columns: lengths differ"));
        }
        let mut out = Vec::with_capacity(n * (48 + model_version.len()));
        let mut w: Vec<String> = Vec::new();
        for (i, (&score, &decision)) in scores.iter().zip(&decisions).enumerate() {
            let txid = transaction_ids.get_item(i)?;
            let txid = txid.downcast::<PyString>()?.to_str()?;
            let ws = warnings.get_item(i)?;
            let ws = ws.downcast::<PyTuple>()?;
            w.clear();
            for item in ws.iter() {
                w.push(item.extract::<String>()?);
            }
            let w: Vec<&str> = w.iter().map(String::as_str).collect();
            self.one(
                &mut out,
                txid,
                score,
                decision,
                &w,
                threshold,
                model_version,
            );
        }
        Ok(PyBytes::new(py, &out))
    }
}

impl ScoreBatchEncoder {
    /// One `ScoreResponse` appended to `out` as a `responses` element.
    #[allow(clippy::too_many_arguments)]
    fn one(
        &self,
        out: &mut Vec<u8>,
        txid: &str,
        score: f64,
        decision: bool,
        warnings: &[&str],
        threshold: f64,
        model_version: &str,
    ) {
        let mut msg = Vec::with_capacity(64 + model_version.len());
        if !txid.is_empty() {
            pb_len(&mut msg, &self.transaction_id, txid.as_bytes());
        }
        if score != 0.0 || score.is_sign_negative() {
            msg.extend_from_slice(&self.score);
            msg.extend_from_slice(&score.to_le_bytes());
        }
        if decision {
            msg.extend_from_slice(&self.decision);
            msg.push(1);
        }
        if threshold != 0.0 || threshold.is_sign_negative() {
            msg.extend_from_slice(&self.threshold);
            msg.extend_from_slice(&threshold.to_le_bytes());
        }
        if !model_version.is_empty() {
            pb_len(&mut msg, &self.model_version, model_version.as_bytes());
        }
        for w in warnings {
            pb_len(&mut msg, &self.warnings, w.as_bytes());
        }
        pb_len(out, &self.responses, &msg);
    }
}
