//! A request's validated events as Arrow column buffers, built while they are read.
//!
//! The prediction log writes every request field of every scored event; built from the
//! event tuples in Python (a transpose, then `pyarrow.array` over Python values) that was
//! ~0.8 µs per event of the serving process's CPU under the GIL. The native request
//! reader (`proto.rs`) pushes each value it validated here as well, and Python wraps the
//! buffers with `pyarrow.Array.from_buffers` (`serving.predlog`): the same arrays,
//! nothing per event in Python.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::event::Parsed;

/// Per schema field: `(values, validity or None, string data or None)`.
pub(crate) type PyColumns<'py> = Vec<(
    Bound<'py, PyBytes>,
    Option<Bound<'py, PyBytes>>,
    Option<Bound<'py, PyBytes>>,
)>;

/// A schema field's Arrow layout.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Layout {
    /// int64 and timestamp (epoch ms): 8 bytes little-endian
    I64,
    F64,
    /// utf8: i32 offsets + data
    Str,
    /// bit-packed
    Bool,
}

impl Layout {
    pub(crate) fn parse(name: &str) -> PyResult<Layout> {
        Ok(match name {
            "int64" | "timestamp" => Layout::I64,
            "float64" => Layout::F64,
            "string" => Layout::Str,
            "bool" => Layout::Bool,
            other => {
                return Err(PyValueError::new_err(format!(
                    "field type {other:?} has no Arrow column"
                )))
            }
        })
    }
}

/// One column being built: values (offsets for strings), string data, validity bitmap
/// (only once a null came: before it every row was valid).
struct Column {
    layout: Layout,
    values: Vec<u8>,
    data: Vec<u8>,
    valid: Vec<u8>,
    nulls: usize,
}

impl Column {
    fn validity(&mut self, row: usize, present: bool) {
        if present && self.nulls == 0 {
            return;
        }
        if !present && self.nulls == 0 {
            self.valid = vec![0xff; row / 8];
            if !row.is_multiple_of(8) {
                self.valid.push((1u8 << (row % 8)) - 1);
            }
        }
        self.nulls += usize::from(!present);
        set_bit(&mut self.valid, row, present);
    }
}

/// Every schema field's column for one request, in schema order.
pub(crate) struct Columns {
    cols: Vec<Column>,
    rows: usize,
    /// a value of another kind than its field's layout, or strings past i32 offsets:
    /// no columns (the log builds them from the events, as before)
    broken: bool,
}

fn set_bit(bits: &mut Vec<u8>, row: usize, on: bool) {
    if row.is_multiple_of(8) {
        bits.push(0);
    }
    if on {
        let last = bits.len() - 1;
        bits[last] |= 1 << (row % 8);
    }
}

impl Columns {
    pub(crate) fn new(layouts: &[Layout], rows: usize) -> Columns {
        let cols = layouts
            .iter()
            .map(|&layout| {
                let mut values = Vec::with_capacity(match layout {
                    Layout::I64 | Layout::F64 => 8 * rows,
                    Layout::Str => 4 * (rows + 1),
                    Layout::Bool => rows / 8 + 1,
                });
                if layout == Layout::Str {
                    values.extend_from_slice(&0i32.to_le_bytes());
                }
                Column {
                    layout,
                    values,
                    data: Vec::with_capacity(if layout == Layout::Str { 16 * rows } else { 0 }),
                    valid: Vec::new(),
                    nulls: 0,
                }
            })
            .collect();
        Columns {
            cols,
            rows: 0,
            broken: false,
        }
    }

    /// Field `i`'s value of the current row (every field once per row, then `end_row`).
    pub(crate) fn push(&mut self, i: usize, value: &Parsed) {
        let row = self.rows;
        let c = &mut self.cols[i];
        c.validity(row, !matches!(value, Parsed::Null));
        match (c.layout, value) {
            (Layout::I64, Parsed::Int(x)) => c.values.extend_from_slice(&x.to_le_bytes()),
            (Layout::I64, Parsed::Null) => c.values.extend_from_slice(&0i64.to_le_bytes()),
            (Layout::F64, Parsed::Float(x)) => c.values.extend_from_slice(&x.to_le_bytes()),
            (Layout::F64, Parsed::Null) => c.values.extend_from_slice(&0f64.to_le_bytes()),
            (Layout::Bool, Parsed::Bool(b)) => set_bit(&mut c.values, row, *b),
            (Layout::Bool, Parsed::Null) => set_bit(&mut c.values, row, false),
            (Layout::Str, Parsed::Str(s)) => {
                c.data.extend_from_slice(s.as_bytes());
                self.broken |= push_offset(&mut c.values, c.data.len());
            }
            (Layout::Str, Parsed::Null) => {
                self.broken |= push_offset(&mut c.values, c.data.len());
            }
            _ => self.broken = true,
        }
    }

    pub(crate) fn end_row(&mut self) {
        self.rows += 1;
    }

    /// Per field `(values, validity or None, string data or None)`; None when broken.
    pub(crate) fn into_py(self, py: Python<'_>) -> Option<PyColumns<'_>> {
        if self.broken {
            return None;
        }
        Some(
            self.cols
                .into_iter()
                .map(|c| {
                    let valid = (c.nulls > 0).then(|| PyBytes::new(py, &c.valid));
                    let data = (c.layout == Layout::Str).then(|| PyBytes::new(py, &c.data));
                    (PyBytes::new(py, &c.values), valid, data)
                })
                .collect(),
        )
    }
}

/// Append a string end offset; true when it does not fit an i32 (Arrow's `string`).
fn push_offset(offsets: &mut Vec<u8>, end: usize) -> bool {
    match i32::try_from(end) {
        Ok(o) => {
            offsets.extend_from_slice(&o.to_le_bytes());
            false
        }
        Err(_) => {
            offsets.extend_from_slice(&0i32.to_le_bytes());
            true
        }
    }
}
