//! `ScoreBatch`'s Redis read without a Python object per key: the replies to a pipeline
//! of `HGET`s are scanned where they were received (one buffer), each found state located
//! inside its feast `ValueProto` (`bytes_val`), and `RowFinalizer.fill_batch` finalizes
//! them from there (docs/perf-plan.md, "ScoreBatch, second round", session 8).
//!
//! It only reads what `hiredis` + `unwrap_bytes_values` read the same way: bulk strings
//! and nils (RESP2). Anything else (an error reply, another reply type, a stored value
//! that is not a `bytes_val`) marks the scan `odd` and the caller reads the keys again
//! the ordinary way, whose errors are the ones it has always raised.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyByteArray;

/// Where one reply's state is in the buffer: `(start, len)`, or None (nil or empty).
pub type Slot = Option<(usize, usize)>;

/// The replies to `n` `HGET`s, scanned as they arrive (`feed`).
#[pyclass(module = "skewless_native")]
pub struct ReplyScan {
    n: usize,
    pos: usize,
    pub slots: Vec<Slot>,
    odd: bool,
}

/// The decimal integer of a RESP header line starting at `at` (after its type byte):
/// `(value, index after its CRLF)`, None while the line is incomplete, Err when it is
/// not a number.
fn line_int(buf: &[u8], at: usize) -> Result<Option<(i64, usize)>, ()> {
    let Some(cr) = buf[at..].iter().position(|&c| c == b'\r') else {
        return Ok(None);
    };
    let end = at + cr;
    if end + 1 >= buf.len() {
        return Ok(None);
    }
    if buf[end + 1] != b'\n' {
        return Err(());
    }
    let s = std::str::from_utf8(&buf[at..end]).map_err(|_| ())?;
    let v: i64 = s.parse().map_err(|_| ())?;
    Ok(Some((v, end + 2)))
}

/// The state inside a stored feast `ValueProto` (`0x0a`, varint length, bytes), as
/// `unwrap_bytes_values` reads it; None when the value is not one.
fn unwrap(b: &[u8]) -> Option<(usize, usize)> {
    if b.first() != Some(&0x0a) {
        return None;
    }
    let (mut n, mut shift, mut i) = (0usize, 0u32, 1usize);
    loop {
        let &c = b.get(i)?;
        n |= ((c & 0x7f) as usize) << shift;
        i += 1;
        if c < 0x80 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
    let end = i.saturating_add(n).min(b.len());
    Some((i, end - i))
}

impl ReplyScan {
    /// Scans complete replies in `buf` from where the last call stopped.
    fn scan(&mut self, buf: &[u8]) {
        while !self.odd && self.slots.len() < self.n && self.pos < buf.len() {
            if buf[self.pos] != b'$' {
                self.odd = true;
                return;
            }
            let (len, body) = match line_int(buf, self.pos + 1) {
                Ok(Some(x)) => x,
                Ok(None) => return,
                Err(()) => {
                    self.odd = true;
                    return;
                }
            };
            if len < 0 {
                self.slots.push(None); // nil: the key or field does not exist
                self.pos = body;
                continue;
            }
            let len = len as usize;
            if buf.len() < body + len + 2 {
                return;
            }
            if &buf[body + len..body + len + 2] != b"\r\n" {
                self.odd = true;
                return;
            }
            let value = &buf[body..body + len];
            if value.is_empty() {
                self.slots.push(None);
            } else {
                match unwrap(value) {
                    Some((s, l)) => self.slots.push(Some((body + s, l))),
                    None => {
                        self.odd = true;
                        return;
                    }
                }
            }
            self.pos = body + len + 2;
        }
    }
}

#[pymethods]
impl ReplyScan {
    #[new]
    fn new(n: usize) -> Self {
        ReplyScan {
            n,
            pos: 0,
            slots: Vec::with_capacity(n),
            odd: false,
        }
    }

    /// Scans the first `got` bytes of `buf` (the receive buffer, reused by every call):
    /// True once all `n` replies are complete, or as soon as one is odd.
    fn feed(&mut self, buf: &Bound<'_, PyByteArray>, got: usize) -> PyResult<bool> {
        // SAFETY: no Python code runs while the slice is alive (the GIL is held throughout)
        let all = unsafe { buf.as_bytes() };
        if got > all.len() || got < self.pos {
            return Err(PyValueError::new_err("feed: got is past the buffer"));
        }
        self.scan(&all[..got]);
        Ok(self.done())
    }

    /// All replies read, or an odd one found.
    #[getter]
    fn done(&self) -> bool {
        self.odd || self.slots.len() == self.n
    }

    /// A reply this scan does not read (the caller reads the keys the ordinary way).
    #[getter]
    fn odd(&self) -> bool {
        self.odd
    }

    /// Bytes of the buffer the replies took.
    #[getter]
    fn size(&self) -> usize {
        self.pos
    }
}
