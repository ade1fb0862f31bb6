//! The vectorized backfill's per-window pass (`features/backfill.py`, `EventIndex`) as one
//! native loop over an entity's sorted queries: each query's range, then its count, exact
//! digit sums, mean, std, max and min, off the GIL.
//! Every float operation is the one numpy performed, in the same order, so the bits are
//! the same; the rare std the moments cannot give (cancellation) is returned for the
//! caller's binary lifting (`tiles::lift_m2`).

use std::cmp::Ordering;
use std::collections::VecDeque;

use pyo3::buffer::{Element, PyBuffer};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// std falls back to lifting where Σx² exceeds n·var by more than this (`range_folds._GUARD`)
const GUARD: f64 = 65536.0;

pub(crate) fn view<'a, T: Element>(b: &'a PyBuffer<T>, what: &str) -> PyResult<&'a [T]> {
    if !b.is_c_contiguous() {
        return Err(PyValueError::new_err(format!("{what} must be contiguous")));
    }
    // SAFETY: contiguous, and the buffer (held by the caller for the call) pins it
    Ok(unsafe { std::slice::from_raw_parts(b.buf_ptr() as *const T, b.item_count()) })
}

#[allow(clippy::mut_from_ref)]
pub(crate) fn view_mut<'a, T: Element>(b: &'a PyBuffer<T>, what: &str) -> PyResult<&'a mut [T]> {
    if b.readonly() || !b.is_c_contiguous() {
        return Err(PyValueError::new_err(format!(
            "{what} must be a writable contiguous array"
        )));
    }
    // SAFETY: as `view`; the caller passes each output array once and reads none of them
    Ok(unsafe { std::slice::from_raw_parts_mut(b.buf_ptr() as *mut T, b.item_count()) })
}

/// `2.0 ** e` as Python computes it (exact; 0 below the subnormals).
fn pow2(e: i64) -> f64 {
    if e > 1023 {
        f64::INFINITY
    } else if e >= -1022 {
        f64::from_bits(((e + 1023) as u64) << 52)
    } else if e >= -1074 {
        f64::from_bits(1u64 << (e + 1074))
    } else {
        0.0
    }
}

/// Exact digit prefix sums of one field (`range_folds.Moments`): the digits of `x·2^scale`
/// in base `2^width`, lowest first; `parts2` the same for `fl(x²)` (empty without std).
/// A tuple `(x, width, scale1, parts1, scale2, parts2)`.
#[derive(FromPyObject)]
pub struct FieldSums(
    PyBuffer<f64>,
    i64,
    i64,
    Vec<PyBuffer<i64>>,
    i64,
    Vec<PyBuffer<i64>>,
);

struct Sums<'a> {
    x: &'a [f64],
    width: f64,
    scale1: f64,
    parts1: Vec<&'a [i64]>,
    scale2: f64,
    parts2: Vec<&'a [i64]>,
}

/// `range_folds._range_sum`: the top digit's difference, then each lower one, in float64.
#[inline]
fn range_sum(parts: &[&[i64]], lo: usize, hi: usize, width: f64, scale: f64) -> f64 {
    let top = parts.len() - 1;
    let mut v = (parts[top][hi] - parts[top][lo]) as f64;
    for p in parts[..top].iter().rev() {
        v *= width;
        v += (p[hi] - p[lo]) as f64;
    }
    v * scale
}

/// max or min over `[lo, hi)` for ranges whose ends never move back (a monotone deque;
/// rebuilt from `lo` when they do). The caller rules out NaN and -0.0, so any of equal
/// values is the same bits.
struct Extreme<'a> {
    x: &'a [f64],
    max: bool,
    q: VecDeque<usize>,
    next: usize,
    last: (usize, usize),
}

impl Extreme<'_> {
    fn get(&mut self, lo: usize, hi: usize) -> f64 {
        if lo < self.last.0 || hi < self.last.1 || self.next < lo {
            self.q.clear();
            self.next = lo;
        }
        self.last = (lo, hi);
        while self.next < hi {
            let v = self.x[self.next];
            while let Some(&b) = self.q.back() {
                let w = self.x[b];
                if (self.max && w <= v) || (!self.max && w >= v) {
                    self.q.pop_back();
                } else {
                    break;
                }
            }
            self.q.push_back(self.next);
            self.next += 1;
        }
        while self.q.front().is_some_and(|&f| f < lo) {
            self.q.pop_front();
        }
        match self.q.front() {
            Some(&f) if hi > lo => self.x[f],
            _ => f64::NAN,
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Sum,
    Mean,
    Std,
    Max,
    Min,
}

/// Where each query's range starts in one window: the merge's position, walked forward
/// as the sorted queries' bounds grow.
struct Cursor {
    length: i64,
    hop: i64,
    p: usize,
    last_needle: i64,
    /// the hop bucket of the previous query: sorted times mostly stay in it, and a 64-bit
    /// division per query and window was the loop's largest cost
    floor: Option<i64>,
}

impl Cursor {
    /// The first event at or after `floor(t/hop)·hop - length` of group `g` (`_rank`).
    #[inline]
    fn lo(&mut self, comp: &[i64], g: i64, t: i64, stride: i64, tmin: i64) -> usize {
        let floor = match self.floor {
            Some(f) if t >= f && (t.wrapping_sub(f) as u64) < self.hop as u64 => f,
            _ => t.div_euclid(self.hop) * self.hop,
        };
        self.floor = Some(floor);
        let needle = (floor - self.length).clamp(tmin, tmin + stride - 1) + g * stride - tmin;
        if needle < self.last_needle {
            self.p = comp.partition_point(|&c| c < needle);
        } else {
            while self.p < comp.len() && comp[self.p] < needle {
                self.p += 1;
            }
        }
        self.last_needle = needle;
        self.p
    }
}

/// A window's outputs: `(op, field, slot)`.
type Outputs = Vec<(String, usize, usize)>;

/// Every window of an entity at sorted queries `(g, t)` (`g` < 0: a key with no events),
/// their range ends `hi` given, in one pass: `windows` are `(length, hop, outputs)` and an
/// output `(op, field, slot)` goes to `table`, one row of `width` 8-byte slots per query in
/// the queries' order, a count's slot holding int64 bits (`columns`: slot-major instead,
/// `width` columns of one row per query, for a caller that wants the queries' order).
/// Rows rather than columns, each written once, and the queries' order rather than the
/// spine's: `gather_columns` then
/// reads each spine row's one or two cache lines (writing every output straight to its
/// spine row measured 3-4x slower: random stores; a pass per window, reading and writing
/// the whole table each time, ~1.5x). `comp` is the index's sorted `gid·stride + ts -
/// tmin`. Returns, per output (windows in order), the std rows left to the caller as
/// little-endian int64 triples (query, lo, hi).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (comp, g, t, hi, stride, tmin, table, width, columns, windows, fields))]
pub fn window_pass<'py>(
    py: Python<'py>,
    comp: PyBuffer<i64>,
    g: PyBuffer<i64>,
    t: PyBuffer<i64>,
    hi: PyBuffer<i64>,
    stride: i64,
    tmin: i64,
    table: PyBuffer<f64>,
    width: usize,
    columns: bool,
    windows: Vec<(i64, i64, Outputs)>,
    fields: Vec<FieldSums>,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let err = |m: &str| PyValueError::new_err(format!("window_pass: {m}"));
    let (comp_s, g_s, t_s, hi_s) = (
        view(&comp, "comp")?,
        view(&g, "g")?,
        view(&t, "t")?,
        view(&hi, "hi")?,
    );
    let q = g_s.len();
    if t_s.len() != q || hi_s.len() != q || stride <= 0 || width == 0 {
        return Err(err(
            "g, t and hi differ in length, or stride or width is not positive",
        ));
    }
    let mut sums = Vec::with_capacity(fields.len());
    for f in &fields {
        let x = view(&f.0, "x")?;
        let p1: Vec<&[i64]> =
            f.3.iter()
                .map(|p| view(p, "digits"))
                .collect::<PyResult<_>>()?;
        let p2: Vec<&[i64]> =
            f.5.iter()
                .map(|p| view(p, "digits"))
                .collect::<PyResult<_>>()?;
        if p1.iter().chain(&p2).any(|p| p.len() != comp_s.len() + 1) || x.len() != comp_s.len() {
            return Err(err(
                "a field's values or prefix sums do not match the events",
            ));
        }
        sums.push(Sums {
            x,
            width: pow2(f.1),
            scale1: pow2(-f.2),
            parts1: p1,
            scale2: pow2(-f.4),
            parts2: p2,
        });
    }
    // per window its cursor, per output (window, kind, field, slot)
    let mut cursors = Vec::with_capacity(windows.len());
    let mut outs: Vec<(usize, Option<Kind>, usize, usize)> = Vec::new();
    for (w, (length, hop, outputs)) in windows.iter().enumerate() {
        if *hop <= 0 {
            return Err(err("a hop is not positive"));
        }
        cursors.push(Cursor {
            length: *length,
            hop: *hop,
            p: 0,
            last_needle: i64::MIN,
            floor: None,
        });
        for (op, field, slot) in outputs {
            let kind = match op.as_str() {
                "count" => None,
                "sum" => Some(Kind::Sum),
                "mean" => Some(Kind::Mean),
                "std" => Some(Kind::Std),
                "max" => Some(Kind::Max),
                "min" => Some(Kind::Min),
                _ => return Err(err(&format!("op {op:?} is not a window op here"))),
            };
            let need = match kind {
                None => true,
                Some(k) => {
                    let s = sums.get(*field).ok_or_else(|| err("field out of range"))?;
                    match k {
                        Kind::Sum | Kind::Mean => !s.parts1.is_empty(),
                        Kind::Std => !s.parts1.is_empty() && !s.parts2.is_empty(),
                        Kind::Max | Kind::Min => true,
                    }
                }
            };
            if !need || *slot >= width {
                return Err(err(
                    "an output needs prefix sums its field lacks, or a slot past the row",
                ));
            }
            outs.push((w, kind, *field, *slot));
        }
    }
    let rows = view_mut(&table, "table")?;
    if rows.len() != q * width {
        return Err(err("the table has not one row per query"));
    }
    let n = comp_s.len();
    if hi_s.iter().any(|&h| h < 0 || h as usize > n) {
        return Err(err("hi outside the events"));
    }
    let hard: Vec<Vec<i64>> = py.allow_threads(|| {
        let mut hard: Vec<Vec<i64>> = vec![Vec::new(); outs.len()];
        let mut ext: Vec<Option<Extreme>> = outs
            .iter()
            .map(|(_, k, f, _)| match k {
                Some(Kind::Max) | Some(Kind::Min) => Some(Extreme {
                    x: sums[*f].x,
                    max: *k == Some(Kind::Max),
                    q: VecDeque::new(),
                    next: 0,
                    last: (0, 0),
                }),
                _ => None,
            })
            .collect();
        let nw = cursors.len();
        let mut ranges = vec![(0usize, 0usize); nw];
        // Σx per (window, field), made once per query
        let mut s1 = vec![0.0f64; nw * sums.len()];
        let mut have = vec![usize::MAX; nw * sums.len()];
        for i in 0..q {
            let (gi, h) = (g_s[i], hi_s[i] as usize);
            let at = |slot: usize| {
                if columns {
                    slot * q + i
                } else {
                    i * width + slot
                }
            };
            for (r, c) in ranges.iter_mut().zip(cursors.iter_mut()) {
                *r = if gi < 0 {
                    (0, 0)
                } else {
                    // an empty range when the bound is past the query
                    (c.lo(comp_s, gi, t_s[i], stride, tmin).min(h), h)
                };
            }
            for (j, (w, kind, f, slot)) in outs.iter().enumerate() {
                let (lo, h) = ranges[*w];
                let count = (h - lo) as i64;
                let Some(kind) = kind else {
                    rows[at(*slot)] = f64::from_bits(count as u64);
                    continue;
                };
                let nf = count as f64;
                let s = &sums[*f];
                let key = w * sums.len() + f;
                let mut sum = || {
                    if have[key] != i {
                        s1[key] = range_sum(&s.parts1, lo, h, s.width, s.scale1);
                        have[key] = i;
                    }
                    s1[key]
                };
                rows[at(*slot)] = match kind {
                    Kind::Sum => sum(),
                    Kind::Mean => {
                        let v = sum();
                        if count > 0 {
                            v / nf
                        } else {
                            f64::NAN
                        }
                    }
                    Kind::Std => {
                        let s1v = sum();
                        let s2 = range_sum(&s.parts2, lo, h, s.width, s.scale2);
                        let mean = s1v / nf;
                        let mut var = s2 / nf - mean * mean;
                        // numpy's `~(var * GUARD > s2 / n)`: NaN counts as cancelling too
                        let fine = (var * GUARD).partial_cmp(&(s2 / nf)) == Some(Ordering::Greater);
                        if count >= 2 && !fine {
                            hard[j].extend_from_slice(&[i as i64, lo as i64, h as i64]);
                            f64::NAN
                        } else {
                            if count == 1 {
                                var = 0.0;
                            }
                            if count > 0 {
                                (if var < 0.0 { 0.0 } else { var }).sqrt()
                            } else {
                                f64::NAN
                            }
                        }
                    }
                    Kind::Max | Kind::Min => ext[j].as_mut().expect("extreme").get(lo, h),
                };
            }
        }
        hard
    });
    Ok(hard
        .iter()
        .map(|h| {
            let bytes: Vec<u8> = h.iter().flat_map(|v| v.to_le_bytes()).collect();
            PyBytes::new(py, &bytes)
        })
        .collect())
}
