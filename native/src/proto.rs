//! `ScoreBatchRequest` bytes -> validated event tuples, without protobuf message objects.
//!
//! A protobuf wire-format reader for the typed request (`repeated Transaction`, the
//! `include_features` flag) whose field numbers, types and presence come from the
//! generated descriptors (`serving.request_native`), and whose rules are the event
//! schema's ([`FieldRule`], shared with the stream's JSON fast path). It only ever
//! *accepts*: anything upb might read differently or refuse (a known field with another
//! wire type, invalid UTF-8, a group, a varint past ten bytes, a generic `Event`, a rule
//! broken, a batch over the limit) returns None, and the Python path parses the request
//! strictly and names the field. What it accepts, it reads as upb does: unknown fields
//! skipped, the last value of a repeated scalar kept, a repeated `Timestamp` merged.

use std::borrow::Cow;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use crate::columns::{Columns, Layout, PyColumns};
use crate::event::{FieldRule, FieldSpec, Raw};

/// A Transaction field's protobuf type, as far as the reader needs it.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Int64,
    Int32,
    Bool,
    Double,
    Str,
    Timestamp,
}

impl Kind {
    fn parse(name: &str) -> PyResult<Kind> {
        Ok(match name {
            "int64" => Kind::Int64,
            "int32" => Kind::Int32,
            "bool" => Kind::Bool,
            "double" => Kind::Double,
            "string" => Kind::Str,
            "timestamp" => Kind::Timestamp,
            other => {
                return Err(PyValueError::new_err(format!(
                    "proto type {other:?} has no native reader"
                )))
            }
        })
    }

    fn wire_type(self) -> u8 {
        match self {
            Kind::Int64 | Kind::Int32 | Kind::Bool => 0,
            Kind::Double => 1,
            Kind::Str | Kind::Timestamp => 2,
        }
    }
}

/// One Transaction field: its type, whether it has presence, the schema field it fills.
struct Slot {
    kind: Kind,
    presence: bool,
    schema: Option<usize>,
}

/// A field's value as read off the wire (the last one sent; a Timestamp merged).
#[derive(Clone, Copy)]
enum Val<'a> {
    Absent,
    Int(i64),
    Bool(bool),
    Double(f64),
    Str(&'a str),
    Time(i64, i32),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// A varint of at most ten bytes whose tenth byte holds only bit 63 (None otherwise:
    /// what upb does with the rest is left to upb).
    #[inline]
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            if i == 9 && b > 1 {
                return None;
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    fn delimited(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.varint()?).ok()?;
        self.bytes(n)
    }

    /// `(field number, wire type)`; None for a number upb refuses (0, above 2^29 - 1).
    #[inline]
    fn tag(&mut self) -> Option<(u32, u8)> {
        let t = self.varint()?;
        let number = t >> 3;
        if number == 0 || number > 0x1fff_ffff {
            return None;
        }
        Some((number as u32, (t & 7) as u8))
    }

    /// Skip an unknown field's value (None: a group or an invalid wire type).
    fn skip(&mut self, wire_type: u8) -> Option<()> {
        match wire_type {
            0 => self.varint().map(|_| ()),
            1 => self.bytes(8).map(|_| ()),
            2 => self.delimited().map(|_| ()),
            5 => self.bytes(4).map(|_| ()),
            _ => None,
        }
    }
}

/// Merge one `google.protobuf.Timestamp` occurrence into `(seconds, nanos)`.
fn merge_timestamp(buf: &[u8], seconds: &mut i64, nanos: &mut i32) -> Option<()> {
    let mut r = Reader::new(buf);
    while !r.done() {
        let (number, wt) = r.tag()?;
        match (number, wt) {
            (1, 0) => *seconds = r.varint()? as i64,
            (2, 0) => *nanos = r.varint()? as i32,
            (1 | 2, _) => return None,
            _ => r.skip(wt)?,
        }
    }
    Some(())
}

/// The typed `ScoreBatchRequest` reader for one schema (see the module docs).
#[pyclass(module = "skewless_native", frozen)]
pub struct TransactionBatchParser {
    rules: Vec<FieldRule>,
    /// indexed by Transaction field number
    slots: Vec<Option<Slot>>,
    transactions: u32,
    include_features: u32,
    events: u32,
    /// `ScoreRequest`'s `transaction`, `include_features` and `event` numbers
    single: (u32, u32, u32),
    /// the schema fields' Arrow layouts, when `parse_columns` is to build them
    layouts: Option<Vec<Layout>>,
}

impl TransactionBatchParser {
    /// One Transaction's event tuple, or None (Python decides).
    fn event<'py, 'a>(
        &self,
        py: Python<'py>,
        tx: &'a [u8],
        vals: &mut [Val<'a>],
        raws: &mut [Option<Raw<'a>>],
        mut columns: Option<&mut Columns>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        if self.transaction(tx, vals).is_none() {
            return Ok(None);
        }
        for r in raws.iter_mut() {
            *r = None;
        }
        for (v, s) in vals.iter().zip(&self.slots) {
            let Some(Slot {
                schema: Some(i), ..
            }) = s
            else {
                continue;
            };
            raws[*i] = match *v {
                Val::Absent => None,
                Val::Int(x) => Some(Raw::I64(x)),
                Val::Bool(b) => Some(Raw::Bool(b)),
                Val::Double(x) => Some(Raw::F64(x)),
                Val::Str(s) => Some(Raw::Str(Cow::Borrowed(s))),
                Val::Time(s, n) => {
                    if !(0..1_000_000_000).contains(&n) {
                        return Ok(None);
                    }
                    let Some(ms) = s
                        .checked_mul(1000)
                        .and_then(|m| m.checked_add(i64::from(n / 1_000_000)))
                    else {
                        return Ok(None);
                    };
                    Some(Raw::I64(ms))
                }
            };
        }
        let mut items = Vec::with_capacity(self.rules.len());
        for (i, (rule, raw)) in self.rules.iter().zip(raws.iter()).enumerate() {
            match rule.check(raw.as_ref()) {
                Some(p) => {
                    if let Some(c) = columns.as_deref_mut() {
                        c.push(i, &p);
                    }
                    items.push(p.to_py(py)?)
                }
                None => return Ok(None),
            }
        }
        if let Some(c) = columns {
            c.end_row();
        }
        Ok(Some(PyTuple::new(py, items)?))
    }

    /// `parse`, and every accepted value in columns too when `layouts` are given.
    #[allow(clippy::type_complexity)]
    fn read_batch<'py>(
        &self,
        py: Python<'py>,
        data: &[u8],
        max_batch: usize,
        layouts: Option<&[Layout]>,
    ) -> PyResult<Option<(Bound<'py, PyList>, bool, Option<Columns>)>> {
        let mut r = Reader::new(data);
        let mut txs: Vec<&[u8]> = Vec::new();
        let mut include = false;
        while !r.done() {
            let Some((number, wt)) = r.tag() else {
                return Ok(None);
            };
            let ok = if number == self.transactions && wt == 2 {
                r.delimited().map(|b| txs.push(b))
            } else if number == self.include_features && wt == 0 {
                r.varint().map(|v| include = v != 0)
            } else if number == self.transactions
                || number == self.include_features
                || number == self.events
            {
                None // a generic event, or a known field with another wire type
            } else {
                r.skip(wt)
            };
            if ok.is_none() {
                return Ok(None);
            }
        }
        if txs.len() > max_batch {
            return Ok(None);
        }
        let mut vals: Vec<Val> = vec![Val::Absent; self.slots.len()];
        let mut raws: Vec<Option<Raw>> = (0..self.rules.len()).map(|_| None).collect();
        let mut columns = layouts.map(|l| Columns::new(l, txs.len()));
        let out = PyList::empty(py);
        for tx in txs {
            match self.event(py, tx, &mut vals, &mut raws, columns.as_mut())? {
                Some(e) => out.append(e)?,
                None => return Ok(None),
            }
        }
        Ok(Some((out, include, columns)))
    }

    /// One Transaction's values in schema order, or None (Python decides).
    fn transaction<'a>(&self, buf: &'a [u8], vals: &mut [Val<'a>]) -> Option<()> {
        for (v, s) in vals.iter_mut().zip(&self.slots) {
            *v = match s {
                None => Val::Absent,
                Some(s) if s.presence || s.kind == Kind::Timestamp => Val::Absent,
                Some(s) => match s.kind {
                    Kind::Str => Val::Str(""),
                    Kind::Double => Val::Double(0.0),
                    Kind::Bool => Val::Bool(false),
                    _ => Val::Int(0),
                },
            };
        }
        let mut r = Reader::new(buf);
        while !r.done() {
            let (number, wt) = r.tag()?;
            let Some(Some(slot)) = self.slots.get(number as usize) else {
                r.skip(wt)?;
                continue;
            };
            if wt != slot.kind.wire_type() {
                return None; // the strict parser names it
            }
            let at = number as usize;
            vals[at] = match slot.kind {
                Kind::Int64 => Val::Int(r.varint()? as i64),
                Kind::Int32 => Val::Int(i64::from(r.varint()? as i32)),
                Kind::Bool => Val::Bool(r.varint()? != 0),
                Kind::Double => Val::Double(f64::from_le_bytes(r.bytes(8)?.try_into().ok()?)),
                Kind::Str => Val::Str(std::str::from_utf8(r.delimited()?).ok()?),
                Kind::Timestamp => {
                    let (mut s, mut n) = match vals[at] {
                        Val::Time(s, n) => (s, n),
                        _ => (0, 0),
                    };
                    merge_timestamp(r.delimited()?, &mut s, &mut n)?;
                    Val::Time(s, n)
                }
            };
        }
        Some(())
    }
}

#[pymethods]
impl TransactionBatchParser {
    /// `fields`: the schema's rules in schema order; `slots`: per Transaction field,
    /// `(number, proto type, has presence, schema position or None)`; `request`: the
    /// field numbers of `transactions`, `include_features` and `events`; `single`: those
    /// of `ScoreRequest`'s `transaction`, `include_features` and `event`; `columns`: the
    /// schema fields' types (`int64`, `float64`, `string`, `bool`, `timestamp`), for
    /// `parse_columns`.
    #[new]
    #[pyo3(signature = (fields, slots, request, single, columns=None))]
    fn new(
        fields: Vec<FieldSpec>,
        slots: Vec<(u32, String, bool, Option<usize>)>,
        request: (u32, u32, u32),
        single: (u32, u32, u32),
        columns: Option<Vec<String>>,
    ) -> PyResult<TransactionBatchParser> {
        let rules = fields
            .into_iter()
            .map(FieldRule::from_spec)
            .collect::<PyResult<Vec<_>>>()?;
        let top = slots.iter().map(|s| s.0).max().unwrap_or(0) as usize;
        if top > 1024 {
            return Err(PyValueError::new_err(
                "Transaction field numbers above 1024",
            ));
        }
        let mut by_number: Vec<Option<Slot>> = (0..=top).map(|_| None).collect();
        for (number, kind, presence, schema) in slots {
            if schema.is_some_and(|i| i >= rules.len()) {
                return Err(PyValueError::new_err(format!(
                    "field {number}: no schema field"
                )));
            }
            by_number[number as usize] = Some(Slot {
                kind: Kind::parse(&kind)?,
                presence,
                schema,
            });
        }
        let layouts = columns
            .map(|c| {
                c.iter()
                    .map(|k| Layout::parse(k))
                    .collect::<PyResult<Vec<_>>>()
            })
            .transpose()?;
        if layouts.as_ref().is_some_and(|l| l.len() != rules.len()) {
            return Err(PyValueError::new_err("columns: one type per schema field"));
        }
        Ok(TransactionBatchParser {
            layouts,
            rules,
            slots: by_number,
            transactions: request.0,
            include_features: request.1,
            events: request.2,
            single,
        })
    }

    /// `(events, include_features)`: the request's Transactions as tuples in schema order
    /// (times as epoch ms), when every one is valid and there are at most `max_batch`;
    /// None otherwise.
    fn parse<'py>(
        &self,
        py: Python<'py>,
        data: &[u8],
        max_batch: usize,
    ) -> PyResult<Option<(Bound<'py, PyList>, bool)>> {
        Ok(self
            .read_batch(py, data, max_batch, None)?
            .map(|(events, include, _)| (events, include)))
    }

    /// `parse`'s `(events, include_features)` and the same values by schema field as
    /// Arrow buffers, `(values, validity or None, string data or None)` each (None in
    /// place of the list when they cannot be built; needs `columns` at construction).
    #[allow(clippy::type_complexity)]
    fn parse_columns<'py>(
        &self,
        py: Python<'py>,
        data: &[u8],
        max_batch: usize,
    ) -> PyResult<Option<(Bound<'py, PyList>, bool, Option<PyColumns<'py>>)>> {
        let Some(layouts) = &self.layouts else {
            return Err(PyValueError::new_err(
                "parse_columns: the parser was built without column types",
            ));
        };
        Ok(self.read_batch(py, data, max_batch, Some(layouts))?.map(
            |(events, include, columns)| (events, include, columns.and_then(|c| c.into_py(py))),
        ))
    }

    /// `(event, include_features)` of a `ScoreRequest` holding one valid typed
    /// Transaction; None otherwise (a generic event, no transaction, anything unsure).
    fn parse_one<'py>(
        &self,
        py: Python<'py>,
        data: &[u8],
    ) -> PyResult<Option<(Bound<'py, PyTuple>, bool)>> {
        let (transaction, include_features, event) = self.single;
        let mut r = Reader::new(data);
        let mut tx: Option<&[u8]> = None;
        let mut include = false;
        while !r.done() {
            let Some((number, wt)) = r.tag() else {
                return Ok(None);
            };
            let ok = if number == transaction && wt == 2 && tx.is_none() {
                r.delimited().map(|b| tx = Some(b))
            } else if number == include_features && wt == 0 {
                r.varint().map(|v| include = v != 0)
            } else if number == transaction || number == include_features || number == event {
                None // a generic event, a second (merged) transaction, another wire type
            } else {
                r.skip(wt)
            };
            if ok.is_none() {
                return Ok(None);
            }
        }
        let Some(tx) = tx else { return Ok(None) };
        let mut vals: Vec<Val> = vec![Val::Absent; self.slots.len()];
        let mut raws: Vec<Option<Raw>> = (0..self.rules.len()).map(|_| None).collect();
        Ok(self
            .event(py, tx, &mut vals, &mut raws, None)?
            .map(|e| (e, include)))
    }
}
