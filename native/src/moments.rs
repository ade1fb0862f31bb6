//! The moments monoid of `features/moments.py`, bit for bit.
//!
//! A tile holds `n`, exact sums `s1 = Σx·2^k` and `s2 = d·Σx²·2^(2k)` (big integers), the
//! exponent `k`, min, max, the denominator `d` (1 unless rebuilt from a summary) and the
//! cached correctly rounded summary `(Σx, Σ(x-mean)²)`.

use num_bigint::{BigInt, BigUint, Sign};
use num_integer::Integer;
use num_traits::{One, Signed, Zero};

#[derive(Clone, Debug)]
pub struct Tile {
    pub n: u64,
    pub s1: BigInt,
    pub s2: BigInt,
    pub k: u64,
    pub min: f64,
    pub max: f64,
    pub d: u64,
    pub cache: Option<(f64, f64)>,
}

impl Tile {
    pub fn empty() -> Tile {
        Tile {
            n: 0,
            s1: BigInt::zero(),
            s2: BigInt::zero(),
            k: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            d: 1,
            cache: None,
        }
    }

    /// A read-only tile: only the summary, min and max are meaningful (serving).
    pub fn summary_only(n: u64, sum: f64, m2: f64, min: f64, max: f64) -> Tile {
        Tile {
            n,
            s1: BigInt::zero(),
            s2: BigInt::zero(),
            k: 0,
            min,
            max,
            d: 1,
            cache: Some((sum, m2)),
        }
    }

    fn raise_to(&mut self, k: u64) -> u64 {
        if k > self.k {
            let by = k - self.k;
            self.s1 <<= by;
            self.s2 <<= 2 * by;
            self.k = k;
        }
        self.k
    }

    /// `moments.add`: one value in place; `m, k` is `exact(x)`.
    pub fn add(&mut self, x: f64, m: &BigInt, k: u64) {
        let tk = self.raise_to(k);
        let m: BigInt = if tk > k { m << (tk - k) } else { m.clone() };
        self.n += 1;
        let sq = &m * &m;
        if self.d == 1 {
            self.s2 += sq;
        } else {
            self.s2 += sq * self.d;
        }
        self.s1 += m;
        self.cache = None;
        if x < self.min {
            self.min = x;
        }
        if x > self.max {
            self.max = x;
        }
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
        Tile {
            n,
            s1,
            s2,
            k,
            min,
            max,
            d: n,
            cache: Some((sum, m2)),
        }
    }

    fn total(&self) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        div_round(&self.s1, &BigUint::one(), self.k)
    }

    fn m2(&self) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let num = &self.s2 * self.n - &self.s1 * &self.s1 * self.d;
        if num.sign() != Sign::Plus {
            return 0.0;
        }
        let den = BigUint::from(self.d) * BigUint::from(self.n);
        div_round(&num, &den, 2 * self.k)
    }

    /// `moments.summary`: (Σx, Σ(x-mean)²), correctly rounded, cached.
    pub fn summary(&mut self) -> (f64, f64) {
        if let Some(c) = self.cache {
            return c;
        }
        let c = (self.total(), self.m2());
        self.cache = Some(c);
        c
    }

    pub fn write_exact(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.n.to_le_bytes());
        out.extend_from_slice(&self.k.to_le_bytes());
        out.extend_from_slice(&self.d.to_le_bytes());
        out.extend_from_slice(&self.min.to_le_bytes());
        out.extend_from_slice(&self.max.to_le_bytes());
        for v in [&self.s1, &self.s2] {
            let b = v.to_signed_bytes_le();
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(&b);
        }
    }
}

/// `moments.exact`: `x == m / 2**k` exactly, the reduced fraction of `as_integer_ratio`.
pub fn exact(x: f64) -> (BigInt, u64) {
    if x == 0.0 {
        return (BigInt::zero(), 0);
    }
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

/// `num / (den * 2^scale)` correctly rounded to nearest, ties to even (Python's int true
/// division). `den` is small (a count), so the division is by one machine word.
pub fn div_round(num: &BigInt, den: &BigUint, scale: u64) -> f64 {
    if num.is_zero() {
        return 0.0;
    }
    let neg = num.is_negative();
    let a = num.magnitude();
    let (la, ld) = (a.bits() as i64, den.bits() as i64);
    // q = floor(a * 2^s / den) has 55 or 56 bits
    let s = 55 - (la - ld);
    let (q, sticky) = if den.is_one() {
        // a power-of-two scale (a tile's Σx): shifts only
        if s >= 0 {
            (a << (s as u64), false)
        } else {
            let r = (-s) as u64;
            (a >> r, a.trailing_zeros().is_some_and(|tz| tz < r))
        }
    } else if s >= 0 {
        let n = a << (s as u64);
        let (q, r) = n.div_rem(den);
        (q, !r.is_zero())
    } else {
        let r = (-s) as u64;
        let low = a.trailing_zeros().is_some_and(|tz| tz < r);
        let (q, rem) = (a >> r).div_rem(den);
        (q, low || !rem.is_zero())
    };
    let excess = q.bits() as i64 - 53;
    let q64: u64 = q.iter_u64_digits().next().unwrap_or(0); // q < 2^56
    let mut mant = q64 >> excess;
    let rem = q64 & ((1u64 << excess) - 1);
    let half = 1u64 << (excess - 1);
    if rem > half || (rem == half && (sticky || mant & 1 == 1)) {
        mant += 1;
    }
    let mut e = excess - s - scale as i64;
    if mant == 1u64 << 53 {
        mant >>= 1;
        e += 1;
    }
    let v = ldexp(mant, e);
    if neg {
        -v
    } else {
        v
    }
}

/// `mant * 2^e` for `2^52 <= mant < 2^53`.
fn ldexp(mant: u64, e: i64) -> f64 {
    let biased = e + 52 + 1023;
    if (1..2047).contains(&biased) {
        f64::from_bits(((biased as u64) << 52) | (mant & ((1u64 << 52) - 1)))
    } else if biased >= 2047 {
        f64::INFINITY
    } else {
        // subnormal: one more rounding step; never reached by sums of amounts
        (mant as f64) * 2f64.powi(e as i32)
    }
}
