//! The moments monoid of `features/moments.py`, bit for bit.
//!
//! A tile holds `n`, exact sums `s1 = Σx·2^k` and `s2 = d·Σx²·2^(2k)` (inline 128- and
//! 256-bit integers while they fit, big integers after: `wide.rs`), the exponent `k`, min, max, the denominator `d` (1 unless rebuilt from a summary) and the
//! cached correctly rounded summary `(Σx, Σ(x-mean)²)`.

use std::borrow::Cow;

use num_bigint::{BigInt, BigUint, Sign};
use num_traits::{One, Zero};

use crate::summary::{self, div_round};
use crate::wide::{i128_of, shl_i128, U256};

/// The exact sums once they outgrow the fixed-width ones (kept from then on).
#[derive(Clone, Debug)]
struct Big {
    s1: BigInt,
    s2: BigInt,
}

/// One tile (96 bytes). The sums live inline (`s1` in an `i128`, `s2` in 192 bits) while
/// they fit, and in big integers (`big`) after the first add that would not fit: the
/// values, the summaries and the snapshot bytes are those of the big integers either way.
#[derive(Clone, Debug)]
pub struct Tile {
    pub n: u64,
    pub min: f64,
    pub max: f64,
    sum: f64,
    m2: f64,
    big: Option<Box<Big>>,
    s1: i128,
    s2_lo: u128,
    s2_hi: u64,
    /// 1 unless rebuilt from a summary (then `n`, a u32 in the state bytes)
    d: u32,
    /// at most 1075 (`exact`'s largest)
    k: u16,
    /// whether `sum` (bit 0) and `m2` (bit 1) hold the current summary
    cached: u8,
}

const SUM: u8 = 1;
const M2: u8 = 2;

// what a level holds per bucket and field: kept small on purpose
const _: () = assert!(std::mem::size_of::<Tile>() == 96);

impl Tile {
    pub fn empty() -> Tile {
        Tile {
            n: 0,
            d: 1,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            k: 0,
            cached: 0,
            sum: 0.0,
            m2: 0.0,
            s1: 0,
            s2_lo: 0,
            s2_hi: 0,
            big: None,
        }
    }

    /// A read-only tile: only the summary, min and max are meaningful (serving).
    pub fn summary_only(n: u64, sum: f64, m2: f64, min: f64, max: f64) -> Tile {
        Tile {
            n,
            min,
            max,
            cached: SUM | M2,
            sum,
            m2,
            ..Tile::empty()
        }
    }

    /// A tile from its exact parts (a snapshot, a rebuilt summary): inline when they fit.
    #[allow(clippy::too_many_arguments)]
    pub fn from_exact(
        n: u64,
        k: u64,
        d: u64,
        min: f64,
        max: f64,
        s1: BigInt,
        s2: BigInt,
        cache: Option<(f64, f64)>,
    ) -> Tile {
        let k = u16::try_from(k).expect("tile exponent out of range");
        let d = u32::try_from(d).expect("tile denominator out of range");
        let (sum, m2) = cache.unwrap_or((0.0, 0.0));
        let mut t = Tile {
            n,
            d,
            min,
            max,
            k,
            cached: if cache.is_some() { SUM | M2 } else { 0 },
            sum,
            m2,
            ..Tile::empty()
        };
        match (
            i128_of(&s1),
            U256::from_bigint(&s2).and_then(U256::split192),
        ) {
            (Some(a), Some((lo, hi))) => (t.s1, t.s2_lo, t.s2_hi) = (a, lo, hi),
            _ => t.big = Some(Box::new(Big { s1, s2 })),
        }
        t
    }

    /// Whether the sums have spilled to big integers.
    pub fn is_big(&self) -> bool {
        self.big.is_some()
    }

    /// Heap bytes this tile owns beyond its own size (big-integer digits, once spilled).
    pub fn heap_bytes(&self) -> usize {
        self.big.as_ref().map_or(0, |b| {
            let words = |v: &BigInt| v.bits().div_ceil(64) as usize * 8;
            std::mem::size_of::<Big>() + words(&b.s1) + words(&b.s2)
        })
    }

    /// `moments.add`: one value in place.
    pub fn add(&mut self, x: f64) {
        if self.big.is_none() {
            match exact_i128(x).and_then(|(m, k)| self.fast_sums(m, k)) {
                Some((k, s1, (lo, hi))) => {
                    (self.k, self.s1, self.s2_lo, self.s2_hi) = (k, s1, lo, hi)
                }
                None => {
                    self.big = Some(Box::new(Big {
                        s1: BigInt::from(self.s1),
                        s2: self.s2().to_bigint(),
                    }));
                    (self.s1, self.s2_lo, self.s2_hi) = (0, 0, 0);
                }
            }
        }
        if self.big.is_some() {
            let (m, k) = exact(x);
            self.add_big(&m, k);
        }
        self.n += 1;
        self.cached = 0;
        if x < self.min {
            self.min = x;
        }
        if x > self.max {
            self.max = x;
        }
    }

    /// The inline sums after adding `m / 2^k`, or None when they would not fit.
    #[inline]
    fn fast_sums(&self, m: i128, k: u64) -> Option<(u16, i128, (u128, u64))> {
        let k = u16::try_from(k).ok()?;
        let (tk, s1, s2) = if k > self.k {
            let by = (k - self.k) as u64;
            (k, shl_i128(self.s1, by)?, self.s2().checked_shl(2 * by)?)
        } else {
            (self.k, self.s1, self.s2())
        };
        let m = shl_i128(m, (tk - k) as u64)?;
        let s2 = s2.checked_add(U256::square(m).checked_mul_u64(self.d as u64)?)?;
        Some((tk, s1.checked_add(m)?, s2.split192()?))
    }

    #[inline]
    fn s2(&self) -> U256 {
        U256::from_parts(self.s2_lo, self.s2_hi)
    }

    fn add_big(&mut self, m: &BigInt, k: u64) {
        let big = self.big.as_mut().expect("spilled");
        let mut tk = self.k as u64;
        if k > tk {
            let by = k - tk;
            big.s1 <<= by;
            big.s2 <<= 2 * by;
            tk = k;
            self.k = u16::try_from(k).expect("tile exponent out of range");
        }
        let m: BigInt = if tk > k { m << (tk - k) } else { m.clone() };
        let sq = &m * &m;
        if self.d == 1 {
            big.s2 += sq;
        } else {
            big.s2 += sq * self.d as u64;
        }
        big.s1 += m;
    }

    /// `moments.from_summary`: rebuilt exactly with the denominator `d = n`.
    pub fn from_summary(n: u64, sum: f64, m2: f64, min: f64, max: f64) -> Tile {
        if n == 0 {
            return Tile::empty();
        }
        let (s1, k1) = exact(sum);
        let (a, ka) = exact(m2);
        let k = k1.max(ka.div_ceil(2));
        let s1 = s1 << (k - k1);
        let s2 = (a << (2 * k - ka)) * n + &s1 * &s1;
        Tile::from_exact(n, k, n, min, max, s1, s2, Some((sum, m2)))
    }

    /// `(s1, s2)` as big integers (borrowed once spilled).
    fn sums(&self) -> (Cow<'_, BigInt>, Cow<'_, BigInt>) {
        match &self.big {
            Some(b) => (Cow::Borrowed(&b.s1), Cow::Borrowed(&b.s2)),
            None => (
                Cow::Owned(BigInt::from(self.s1)),
                Cow::Owned(self.s2().to_bigint()),
            ),
        }
    }

    fn total(&self) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        if self.big.is_none() {
            return summary::total(self.s1, self.k as u64);
        }
        div_round(&self.sums().0, &BigUint::one(), self.k as u64)
    }

    fn m2(&self) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        if self.big.is_none() {
            let (s1, s2) = (self.s1, (self.s2_lo, self.s2_hi));
            if let Some(v) = summary::m2(s1, s2, self.n, self.d, self.k as u64) {
                return v;
            }
        }
        let (s1, s2) = self.sums();
        let num = s2.as_ref() * self.n - s1.as_ref() * s1.as_ref() * self.d as u64;
        if num.sign() != Sign::Plus {
            return 0.0;
        }
        let den = BigUint::from(self.d) * BigUint::from(self.n);
        div_round(&num, &den, 2 * self.k as u64)
    }

    /// `moments.summary`: (Σx, Σ(x-mean)²), correctly rounded, cached.
    pub fn summary(&mut self) -> (f64, f64) {
        (self.total_cached(), self.m2_cached())
    }

    /// The summary's Σx alone (a level or window without std never needs the M2).
    pub fn total_cached(&mut self) -> f64 {
        if self.cached & SUM == 0 {
            self.sum = self.total();
            self.cached |= SUM;
        }
        self.sum
    }

    /// The summary's Σ(x-mean)² alone.
    pub fn m2_cached(&mut self) -> f64 {
        if self.cached & M2 == 0 {
            self.m2 = self.m2();
            self.cached |= M2;
        }
        self.m2
    }

    pub fn write_exact(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.n.to_le_bytes());
        out.extend_from_slice(&(self.k as u64).to_le_bytes());
        out.extend_from_slice(&(self.d as u64).to_le_bytes());
        out.extend_from_slice(&self.min.to_le_bytes());
        out.extend_from_slice(&self.max.to_le_bytes());
        let (s1, s2) = self.sums();
        for v in [s1, s2] {
            let b = v.to_signed_bytes_le();
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(&b);
        }
    }
}

/// `(negative, m, e)` with `|x| == m * 2^e`, `m` odd (or zero).
fn parts(x: f64) -> (bool, u64, i64) {
    let bits = x.to_bits();
    let neg = bits >> 63 == 1;
    let exp = ((bits >> 52) & 0x7ff) as i64;
    let frac = bits & ((1u64 << 52) - 1);
    let (mut m, mut e) = if exp == 0 {
        (frac, -1074i64)
    } else {
        (frac | (1u64 << 52), exp - 1075)
    };
    let tz = m.trailing_zeros() as i64;
    m >>= tz;
    e += tz;
    (neg, m, e)
}

/// `exact(x)` when the numerator fits an `i128` (every value but huge integers).
#[inline]
pub fn exact_i128(x: f64) -> Option<(i128, u64)> {
    if x == 0.0 {
        return Some((0, 0));
    }
    let (neg, m, e) = parts(x);
    let (v, k) = if e >= 0 {
        if 64 - m.leading_zeros() as i64 + e > 126 {
            return None;
        }
        ((m as i128) << e, 0)
    } else {
        (m as i128, (-e) as u64)
    };
    Some((if neg { -v } else { v }, k))
}

/// `moments.exact`: `x == m / 2**k` exactly, the reduced fraction of `as_integer_ratio`.
pub fn exact(x: f64) -> (BigInt, u64) {
    if x == 0.0 {
        return (BigInt::zero(), 0);
    }
    let (neg, m, e) = parts(x);
    let mut big = BigInt::from(m);
    let k = if e >= 0 {
        big <<= e as u64;
        0
    } else {
        (-e) as u64
    };
    if neg {
        big = -big;
    }
    (big, k)
}
