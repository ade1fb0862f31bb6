//! A fast path for `features.events.parse_event`: decodes and validates the common, valid
//! message natively. Anything it is not sure of (any rule broken, unusual JSON, a time
//! format other than `YYYY-MM-DDTHH:MM:SS[.fff|.ffffff](Z|±HH:MM)` or epoch ms) returns
//! None, and the Python validator decides and names the field.

use pyo3::prelude::*;
use pyo3::types::PyTuple;
use serde_json::{Map, Value};

const MAX_MESSAGE_BYTES: usize = 16 * 1024;
const MAX_AMOUNT: f64 = 10_000_000.0;
const MIN_TIME_MS: i64 = 946_684_800_000; // 2000-01-01
const MAX_TIME_MS: i64 = 4_102_444_800_000; // 2100-01-01

fn int(obj: &Map<String, Value>, name: &str, hi: i64) -> Option<i64> {
    let v = obj.get(name)?.as_i64()?;
    (0..=hi).contains(&v).then_some(v)
}

fn upper(obj: &Map<String, Value>, name: &str, len: usize) -> Option<String> {
    let s = obj.get(name)?.as_str()?;
    (s.len() == len && s.bytes().all(|b| b.is_ascii_uppercase())).then(|| s.to_string())
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
        [sign @ (b'+' | b'-'), oh @ ..] if rest.len() == 6 && rest[3] == b':' => {
            let _ = oh;
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

/// `(transaction_id, card_id, merchant_id, amount, currency, country, mcc, event_time_ms,
/// is_fraud)` of a valid message, or None (the Python validator then decides).
#[pyfunction]
pub fn parse_event_fast<'py>(py: Python<'py>, raw: &[u8]) -> PyResult<Option<Bound<'py, PyTuple>>> {
    if raw.len() > MAX_MESSAGE_BYTES {
        return Ok(None);
    }
    let Ok(obj) = serde_json::from_slice::<Map<String, Value>>(raw) else {
        return Ok(None);
    };
    let parsed = (|| {
        let txid = obj.get("transaction_id")?.as_str()?;
        let n = txid.chars().count();
        if !(1..=64).contains(&n) {
            return None;
        }
        let card = int(&obj, "card_id", i64::MAX)?;
        let merchant = int(&obj, "merchant_id", i64::MAX)?;
        let amount = match obj.get("amount")? {
            Value::Number(x) => x.as_f64()?,
            _ => return None,
        };
        if !(amount.is_finite() && amount > 0.0 && amount <= MAX_AMOUNT) {
            return None;
        }
        let currency = upper(&obj, "currency", 3)?;
        let country = upper(&obj, "country", 2)?;
        let mcc = int(&obj, "mcc", 9999)?;
        let ts = match obj.get("event_time")? {
            Value::Number(x) => x.as_i64()?,
            Value::String(s) => rfc3339_ms(s)?,
            _ => return None,
        };
        if !(MIN_TIME_MS..MAX_TIME_MS).contains(&ts) {
            return None;
        }
        let fraud = match obj.get("is_fraud") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            _ => return None,
        };
        Some((
            txid.to_string(),
            card,
            merchant,
            amount,
            currency,
            country,
            mcc,
            ts,
            fraud,
        ))
    })();
    match parsed {
        None => Ok(None),
        Some(t) => Ok(Some(t.into_pyobject(py)?)),
    }
}

/// `features.engine.txid_hash`: blake2b with an 8-byte digest, little-endian u64.
#[pyfunction]
pub fn txid_hash(transaction_id: &str) -> u64 {
    use blake2::digest::{Update, VariableOutput};
    let mut h = blake2::Blake2bVar::new(8).expect("8 is a valid blake2b digest size");
    h.update(transaction_id.as_bytes());
    let mut out = [0u8; 8];
    h.finalize_variable(&mut out).expect("8-byte buffer");
    u64::from_le_bytes(out)
}
