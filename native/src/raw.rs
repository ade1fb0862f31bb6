//! An entity's raw events (those at or past its raw floor) in one vector: per event its
//! time, then its `nf` values' bits, in time order (ties by value). Two vectors, times
//! and values, grew and were reallocated apart at nearly every event of a merchant (5.5%
//! of `update_rows`' instructions, session 9 of perf-plan's stream, second round); one
//! grows once and costs one allocation per state.

/// The raw events, `1 + nf` words each (`nf` is the caller's, as for `Levels`).
#[derive(Clone, Default)]
pub struct Raw {
    words: Vec<u64>,
}

impl Raw {
    /// From `ts` (ascending) and their values, `nf` per event in the same order.
    pub fn from_parts(ts: &[i64], vals: &[f64], nf: usize) -> Raw {
        let mut words = Vec::with_capacity(ts.len() * (1 + nf));
        for (k, &t) in ts.iter().enumerate() {
            words.push(t as u64);
            words.extend(vals[k * nf..(k + 1) * nf].iter().map(|v| v.to_bits()));
        }
        Raw { words }
    }

    pub fn len(&self, nf: usize) -> usize {
        self.words.len() / (1 + nf)
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Event `k`'s time.
    pub fn ts(&self, k: usize, nf: usize) -> i64 {
        self.words[k * (1 + nf)] as i64
    }

    /// Event `k`'s value of field `f`.
    pub fn val(&self, k: usize, f: usize, nf: usize) -> f64 {
        f64::from_bits(self.words[k * (1 + nf) + 1 + f])
    }

    /// Every event's time, in order.
    pub fn times(&self, nf: usize) -> impl Iterator<Item = i64> + '_ {
        self.words.iter().step_by(1 + nf).map(|&w| w as i64)
    }

    /// Every event's values, `nf` per event, in order.
    pub fn values(&self, nf: usize) -> impl Iterator<Item = f64> + '_ {
        (self.words.chunks_exact(1 + nf)).flat_map(|e| e[1..].iter().map(|&w| f64::from_bits(w)))
    }

    /// The first event at or after `t`.
    pub fn bisect(&self, t: i64, nf: usize) -> usize {
        let (mut lo, mut hi) = (0, self.len(nf));
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.ts(mid, nf) < t {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Inserts an event after those before it in `(time, values)` order (ties by value, so
    /// arrival order never shows in the bytes). Room grows by an eighth of the events held
    /// at most (a doubling vector's slack, per entity, was most of their memory).
    pub fn insert(&mut self, ts: i64, values: &[f64], nf: usize) {
        debug_assert_eq!(values.len(), nf);
        let stride = 1 + nf;
        let mut k = self.bisect(ts, nf);
        let n = self.len(nf);
        while k < n && self.ts(k, nf) == ts && tuple_le(&self.words[k * stride + 1..][..nf], values)
        {
            k += 1;
        }
        if self.words.capacity() - self.words.len() < stride {
            self.words.reserve_exact(stride * (n / 8).max(1));
        }
        let at = k * stride;
        let event = std::iter::once(ts as u64).chain(values.iter().map(|v| v.to_bits()));
        if at == self.words.len() {
            self.words.extend(event);
        } else {
            self.words.splice(at..at, event);
        }
    }

    /// Drops the events before `floor`; returns the time of the last one dropped. The room
    /// past a quarter of slack goes back.
    pub fn drop_before(&mut self, floor: i64, nf: usize) -> Option<i64> {
        if self.is_empty() || self.ts(0, nf) >= floor {
            return None;
        }
        let cut = self.bisect(floor, nf);
        let last = self.ts(cut - 1, nf);
        self.words.drain(..cut * (1 + nf));
        let n = self.len(nf);
        if self.words.capacity() > (n + n / 4 + 1) * (1 + nf) {
            self.words.shrink_to_fit();
        }
        Some(last)
    }

    /// Heap bytes held (capacity, not length).
    pub fn heap_bytes(&self) -> usize {
        self.words.capacity() * 8
    }
}

/// Python tuple comparison `a <= b` for equal-length float tuples without NaN, `a` as bits.
fn tuple_le(a: &[u64], b: &[f64]) -> bool {
    for (&x, &y) in a.iter().zip(b) {
        let x = f64::from_bits(x);
        if x != y {
            return x < y;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_stay_in_time_then_value_order_and_drop_by_time() {
        let mut r = Raw::default();
        for (t, a, b) in [
            (5, 2.0, 1.0),
            (3, 9.0, 0.0),
            (5, 1.0, 7.0),
            (5, 2.0, 0.5),
            (8, 0.0, 0.0),
        ] {
            r.insert(t, &[a, b], 2);
        }
        assert_eq!(r.times(2).collect::<Vec<_>>(), [3, 5, 5, 5, 8]);
        let vals: Vec<f64> = r.values(2).collect();
        assert_eq!(vals, [9.0, 0.0, 1.0, 7.0, 2.0, 0.5, 2.0, 1.0, 0.0, 0.0]);
        assert_eq!(r.val(2, 1, 2), 0.5);
        assert_eq!(r.bisect(5, 2), 1);
        assert_eq!(r.bisect(6, 2), 4);
        assert_eq!(r.drop_before(3, 2), None);
        assert_eq!(r.drop_before(6, 2), Some(5));
        assert_eq!(r.times(2).collect::<Vec<_>>(), [8]);
        let back = Raw::from_parts(&[8], &[0.0, 0.0], 2);
        assert_eq!(back.words, r.words);
        assert_eq!(r.heap_bytes(), r.words.capacity() * 8);
    }
}
