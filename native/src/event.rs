//! The event fast path: a parser compiled from the definitions' event schema
//! (`features.schema.EventSchema`, handed over by `features.native.event_parser`) that
//! decodes and validates the common, valid message natively. Every bound, length,
//! allowed value and the message size limit come from the schema; nothing is copied here.
//!
//! Anything it is not sure of (a rule broken, unusual JSON, a time format other than
//! `YYYY-MM-DDTHH:MM:SS[.fff|.ffffff](Z|±HH:MM)` or epoch ms, a negative zero) returns
//! None, and the Python validator decides and names the field.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyString, PyTuple};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A top-level JSON value as far as a field rule needs it; strings borrowed when they
/// hold no escapes, arrays and objects skipped.
pub(crate) enum Raw<'de> {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Str(Cow<'de, str>),
    Other,
}

impl Raw<'_> {
    fn as_i64(&self) -> Option<i64> {
        match *self {
            Raw::U64(u) => i64::try_from(u).ok(),
            Raw::I64(i) => Some(i),
            _ => None,
        }
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Raw<'de>, E> {
        Ok(Raw::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Raw<'de>, E> {
        Ok(Raw::Bool(b))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Raw<'de>, E> {
        Ok(Raw::U64(u))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Raw<'de>, E> {
        Ok(Raw::I64(i))
    }
    fn visit_f64<E>(self, x: f64) -> Result<Raw<'de>, E> {
        Ok(Raw::F64(x))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Raw<'de>, E> {
        Ok(Raw::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Raw<'de>, E> {
        Ok(Raw::Str(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Raw<'de>, E> {
        Ok(Raw::Str(Cow::Owned(s)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Raw::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Raw::Other)
    }
}

impl<'de> serde::Deserialize<'de> for Raw<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Raw<'de>, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

/// A top-level key: its field's position, or None for a key the schema lacks.
struct KeySeed<'p>(&'p [FieldRule]);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E>(self, s: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|f| f.name == s))
    }
}

/// The top-level object: each schema field's value (the last one of a repeated key, as
/// Python's `json` keeps), the rest skipped.
struct Fields<'p>(&'p [FieldRule]);

impl<'de> DeserializeSeed<'de> for Fields<'_> {
    type Value = Vec<Option<Raw<'de>>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Fields<'_> {
    type Value = Vec<Option<Raw<'de>>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out: Vec<Option<Raw<'de>>> = (0..self.0.len()).map(|_| None).collect();
        while let Some(at) = map.next_key_seed(KeySeed(self.0))? {
            match at {
                Some(i) => out[i] = Some(map.next_value::<Raw<'de>>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// One string pattern, as `features.native` compiles it from Python's own regex parser: a
/// sequence of `(ranges, negate, min, max)` atoms, each a set of code points repeated
/// `min..=max` times (max None: unbounded). Full match, as `re.fullmatch`.
/// `(code point ranges, negate, min, max)` of one pattern atom, as Python hands it over.
type AtomSpec = (Vec<(u32, u32)>, bool, usize, Option<usize>);

struct Pattern {
    atoms: Vec<Atom>,
    fixed: bool, // every atom repeats a fixed number of times: one pass, no search
}

struct Atom {
    ranges: Vec<(u32, u32)>,
    negate: bool,
    min: usize,
    max: usize,
}

impl Atom {
    #[inline]
    fn has(&self, c: char) -> bool {
        let c = c as u32;
        self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != self.negate
    }
}

impl Pattern {
    fn new(atoms: Vec<AtomSpec>) -> Pattern {
        let atoms: Vec<Atom> = atoms
            .into_iter()
            .map(|(ranges, negate, min, max)| Atom {
                ranges,
                negate,
                min,
                max: max.unwrap_or(usize::MAX),
            })
            .collect();
        let fixed = atoms.iter().all(|a| a.min == a.max);
        Pattern { atoms, fixed }
    }

    fn full_match(&self, s: &str) -> bool {
        if self.fixed {
            let mut chars = s.chars();
            for a in &self.atoms {
                for _ in 0..a.min {
                    match chars.next() {
                        Some(c) if a.has(c) => {}
                        _ => return false,
                    }
                }
            }
            return chars.next().is_none();
        }
        // the positions each atom can end at (a regular language: no backtracking needed)
        let chars: Vec<char> = s.chars().collect();
        let n = chars.len();
        let mut reach = vec![false; n + 1];
        reach[0] = true;
        for a in &self.atoms {
            let mut next = vec![false; n + 1];
            for p in (0..=n).filter(|&p| reach[p]) {
                if a.min == 0 {
                    next[p] = true;
                }
                let mut k = 0;
                while k < a.max && p + k < n && a.has(chars[p + k]) {
                    k += 1;
                    if k >= a.min {
                        next[p + k] = true;
                    }
                }
            }
            reach = next;
        }
        reach[n]
    }
}

/// One schema field's rules, read by attribute name (`features.native.NativeField`).
#[derive(FromPyObject)]
pub(crate) struct FieldSpec {
    name: String,
    kind: String,
    required: bool,
    /// int64 and timestamp: the inclusive range
    int_range: Option<(i64, i64)>,
    /// float64: `(min, min_exclusive, max, max_exclusive)`, infinite when unbounded
    float_range: Option<(f64, bool, f64, bool)>,
    min_length: Option<i64>,
    max_length: Option<i64>,
    pattern: Option<Vec<AtomSpec>>,
    allowed_ints: Option<Vec<i64>>,
    allowed_strs: Option<Vec<String>>,
}

enum Rule {
    Int {
        lo: i64,
        hi: i64,
        allowed: Option<HashSet<i64>>,
    },
    Float {
        lo: f64,
        lo_excl: bool,
        hi: f64,
        hi_excl: bool,
    },
    Str {
        min_len: Option<i64>,
        max_len: Option<i64>,
        pattern: Option<Pattern>,
        allowed: Option<HashSet<String>>,
    },
    Bool,
    Time {
        lo: i64,
        hi: i64,
    },
}

pub(crate) struct FieldRule {
    name: String,
    required: bool,
    rule: Rule,
}

pub(crate) enum Parsed<'a> {
    Null,
    Int(i64),
    Float(f64),
    Str(&'a str),
    Bool(bool),
}

impl Parsed<'_> {
    pub(crate) fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(match *self {
            Parsed::Null => py.None().into_bound(py),
            Parsed::Int(i) => i.into_pyobject(py)?.into_any(),
            Parsed::Float(x) => PyFloat::new(py, x).into_any(),
            Parsed::Str(s) => PyString::new(py, s).into_any(),
            Parsed::Bool(b) => PyBool::new(py, b).to_owned().into_any(),
        })
    }
}

impl FieldRule {
    pub(crate) fn from_spec(f: FieldSpec) -> PyResult<FieldRule> {
        let need_range = |r: Option<(i64, i64)>| {
            r.ok_or_else(|| {
                PyValueError::new_err(format!("{}: {} needs int_range", f.name, f.kind))
            })
        };
        let rule = match f.kind.as_str() {
            "int64" => {
                let (lo, hi) = need_range(f.int_range)?;
                Rule::Int {
                    lo,
                    hi,
                    allowed: f.allowed_ints.map(|a| a.into_iter().collect()),
                }
            }
            "timestamp" => {
                let (lo, hi) = need_range(f.int_range)?;
                Rule::Time { lo, hi }
            }
            "float64" => {
                let (lo, lo_excl, hi, hi_excl) =
                    f.float_range
                        .unwrap_or((f64::NEG_INFINITY, false, f64::INFINITY, false));
                Rule::Float {
                    lo,
                    lo_excl,
                    hi,
                    hi_excl,
                }
            }
            "string" => Rule::Str {
                min_len: f.min_length,
                max_len: f.max_length,
                pattern: f.pattern.map(Pattern::new),
                allowed: f.allowed_strs.map(|a| a.into_iter().collect()),
            },
            "bool" => Rule::Bool,
            other => {
                return Err(PyValueError::new_err(format!(
                    "{}: type {other:?} has no native rule",
                    f.name
                )))
            }
        };
        Ok(FieldRule {
            name: f.name,
            required: f.required,
            rule,
        })
    }

    /// The field's value if it passes every rule; None when unsure or invalid.
    pub(crate) fn check<'a>(&self, v: Option<&'a Raw<'_>>) -> Option<Parsed<'a>> {
        let v = match v {
            None | Some(Raw::Null) => return (!self.required).then_some(Parsed::Null),
            Some(v) => v,
        };
        match &self.rule {
            Rule::Int { lo, hi, allowed } => {
                let x = v.as_i64()?;
                let ok = *lo <= x && x <= *hi && allowed.as_ref().is_none_or(|a| a.contains(&x));
                ok.then_some(Parsed::Int(x))
            }
            Rule::Float {
                lo,
                lo_excl,
                hi,
                hi_excl,
            } => {
                let x = match *v {
                    Raw::U64(u) => u as f64,
                    Raw::I64(i) => i as f64,
                    Raw::F64(x) => x,
                    _ => return None,
                };
                // "-0" is the integer 0 to Python (0.0) but -0.0 to serde: let Python say
                if x == 0.0 && x.is_sign_negative() {
                    return None;
                }
                let above = if *lo_excl { x > *lo } else { x >= *lo };
                let below = if *hi_excl { x < *hi } else { x <= *hi };
                (x.is_finite() && above && below).then_some(Parsed::Float(x))
            }
            Rule::Str {
                min_len,
                max_len,
                pattern,
                allowed,
            } => {
                let Raw::Str(s) = v else { return None };
                let s: &str = s;
                if min_len.is_some() || max_len.is_some() {
                    let n = s.chars().count() as i64;
                    if min_len.is_some_and(|m| n < m) || max_len.is_some_and(|m| n > m) {
                        return None;
                    }
                }
                if pattern.as_ref().is_some_and(|p| !p.full_match(s)) {
                    return None;
                }
                if allowed.as_ref().is_some_and(|a| !a.contains(s)) {
                    return None;
                }
                Some(Parsed::Str(s))
            }
            Rule::Bool => match *v {
                Raw::Bool(b) => Some(Parsed::Bool(b)),
                _ => None,
            },
            Rule::Time { lo, hi } => {
                let ms = match v {
                    Raw::Str(s) => rfc3339_ms(s)?,
                    _ => v.as_i64()?,
                };
                (*lo <= ms && ms <= *hi).then_some(Parsed::Int(ms))
            }
        }
    }
}

/// A schema's event fast path: `parser(raw)` is the event's values in schema order (the
/// timestamps as epoch ms) when the message is valid, or None (the Python rules decide).
#[pyclass(module = "skewless_native", frozen)]
pub struct EventParser {
    max_message_bytes: usize,
    fields: Vec<FieldRule>,
}

#[pymethods]
impl EventParser {
    #[new]
    fn new(max_message_bytes: usize, fields: Vec<FieldSpec>) -> PyResult<EventParser> {
        let fields = fields
            .into_iter()
            .map(FieldRule::from_spec)
            .collect::<PyResult<Vec<_>>>()?;
        Ok(EventParser {
            max_message_bytes,
            fields,
        })
    }

    /// The field names, in schema (and tuple) order.
    #[getter]
    fn names(&self) -> Vec<String> {
        self.fields.iter().map(|f| f.name.clone()).collect()
    }

    fn __call__<'py>(&self, py: Python<'py>, raw: &[u8]) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.parse(py, raw)
    }

    /// `parser(raw)`, as a method (a bound method is called faster than the object).
    fn parse<'py>(&self, py: Python<'py>, raw: &[u8]) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.with_parsed(raw, |parsed| {
            let items = parsed.iter().map(|p| p.to_py(py));
            PyTuple::new(py, items.collect::<PyResult<Vec<_>>>()?)
        })
        .transpose()
    }
}

impl EventParser {
    /// `f` of the values of a valid message (schema order), or None when not sure.
    pub(crate) fn with_parsed<R>(
        &self,
        raw: &[u8],
        f: impl FnOnce(&[Parsed<'_>]) -> R,
    ) -> Option<R> {
        if raw.len() > self.max_message_bytes {
            return None;
        }
        // whole-message UTF-8 first: serde skips unknown keys' strings unchecked
        let text = std::str::from_utf8(raw).ok()?;
        let mut de = serde_json::Deserializer::from_str(text);
        let values = Fields(&self.fields).deserialize(&mut de).ok()?;
        de.end().ok()?;
        let mut parsed = Vec::with_capacity(self.fields.len());
        for (f, v) in self.fields.iter().zip(&values) {
            parsed.push(f.check(v.as_ref())?);
        }
        Some(f(&parsed))
    }
}

fn digits(b: &[u8]) -> Option<i64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0i64, |a, &d| a * 10 + (d - b'0') as i64))
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let (h, mi, se) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let mdays = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if y < 1
        || !(1..=12).contains(&mo)
        || d < 1
        || d > mdays[(mo - 1) as usize]
        || h > 23
        || mi > 59
        || se > 59
    {
        return None;
    }
    let mut rest = &b[19..];
    let mut micros = 0i64;
    if rest.first() == Some(&b'.') {
        let n = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        let frac = digits(&rest[1..1 + n])?;
        micros = match n {
            3 => frac * 1000,
            6 => frac,
            _ => return None,
        };
        rest = &rest[1 + n..];
    }
    let offset_min = match rest {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), ..] if rest.len() == 6 && rest[3] == b':' => {
            let (oh, om) = (digits(&rest[1..3])?, digits(&rest[4..6])?);
            if oh > 23 || om > 59 {
                return None;
            }
            let m = oh * 60 + om;
            if *sign == b'-' {
                -m
            } else {
                m
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset_min * 60;
    Some((secs * 1_000_000 + micros).div_euclid(1000))
}

/// `features.layout.txid_hash`: blake2b with an 8-byte digest, little-endian u64.
#[pyfunction]
pub fn txid_hash(transaction_id: &str) -> u64 {
    txid_hash_bytes(transaction_id.as_bytes())
}

/// [`txid_hash`] of a UTF-8 id's bytes.
pub fn txid_hash_bytes(transaction_id: &[u8]) -> u64 {
    use blake2::digest::{Update, VariableOutput};
    let mut h = blake2::Blake2bVar::new(8).expect("8 is a valid blake2b digest size");
    h.update(transaction_id);
    let mut out = [0u8; 8];
    h.finalize_variable(&mut out).expect("8-byte buffer");
    u64::from_le_bytes(out)
}
