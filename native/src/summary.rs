//! A tile's correctly rounded summary `(Σx, Σ(x-mean)²)`: `div_round` on its big-integer
//! sums, and the same rounding from its inline sums in fixed width (`total`, `m2`): the
//! big-integer path's temporaries (conversions, products, shifts, each allocated) were a
//! fifth of the stream's update and row. Both give the same bits: the fixed-width path
//! computes the same quotient and remainder and ends in the same `round_quotient`.

use num_bigint::{BigInt, BigUint};
use num_integer::Integer;
use num_traits::{One, Signed, Zero};

/// Little-endian 64-bit limbs, room for a 286-bit product and a shift's reach.
type Limbs = [u64; 8];

fn limbs(v: u128) -> Limbs {
    let mut out = [0; 8];
    (out[0], out[1]) = (v as u64, (v >> 64) as u64);
    out
}

/// `a * b`; None past the limbs' room.
fn mul(a: &Limbs, b: &Limbs) -> Option<Limbs> {
    let mut out = [0u64; 8];
    let (na, nb) = (used(a), used(b));
    if na + nb > 6 {
        return None;
    }
    for i in 0..na {
        let mut carry = 0u128;
        for j in 0..nb {
            let t = a[i] as u128 * b[j] as u128 + out[i + j] as u128 + carry;
            out[i + j] = t as u64;
            carry = t >> 64;
        }
        out[i + nb] = carry as u64;
    }
    Some(out)
}

fn used(a: &Limbs) -> usize {
    a.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1)
}

/// `a - b` when `a > b`, else None.
fn sub(a: &Limbs, b: &Limbs) -> Option<Limbs> {
    if (0..8).rev().map(|i| a[i].cmp(&b[i])).find(|o| o.is_ne())
        != Some(std::cmp::Ordering::Greater)
    {
        return None;
    }
    let mut out = [0u64; 8];
    let mut borrow = false;
    for i in 0..8 {
        let (d, b1) = a[i].overflowing_sub(b[i]);
        let (d, b2) = d.overflowing_sub(borrow as u64);
        out[i] = d;
        borrow = b1 || b2;
    }
    Some(out)
}

fn bits(a: &Limbs) -> i64 {
    match used(a) {
        0 => 0,
        n => (64 * n - a[n - 1].leading_zeros() as usize) as i64,
    }
}

fn trailing_zeros(a: &Limbs) -> u64 {
    let i = a.iter().position(|&x| x != 0).unwrap_or(0);
    64 * i as u64 + a[i].trailing_zeros() as u64
}

/// `a >> r` when the result fits 128 bits.
fn shr128(a: &Limbs, r: u64) -> u128 {
    let (i, b) = ((r / 64) as usize, (r % 64) as u32);
    let limb = |k: usize| a.get(k).copied().unwrap_or(0) as u128;
    let v = limb(i) | limb(i + 1) << 64;
    if b == 0 {
        v
    } else {
        v >> b | limb(i + 2) << (128 - b)
    }
}

/// `div_round(num, den, scale)` for `0 < num < 2^(64·6)` in limbs and a one-word `den`.
fn div_round_limbs(num: &Limbs, den: u64, scale: u64, neg: bool) -> f64 {
    let (la, ld) = (bits(num), (64 - den.leading_zeros()) as i64);
    // q = floor(num * 2^s / den) has 55 or 56 bits, and num * 2^s (or num >> -s) < 2^120
    let s = 55 - (la - ld);
    let (q, sticky) = if s >= 0 {
        let n = shr128(num, 0) << s;
        (n / den as u128, !n.is_multiple_of(den as u128))
    } else {
        let r = (-s) as u64;
        let low = trailing_zeros(num) < r;
        let n = shr128(num, r);
        (n / den as u128, low || !n.is_multiple_of(den as u128))
    };
    round_quotient(q as u64, s, scale, sticky, neg)
}

/// A tile's Σx from its inline `s1 = Σx·2^k`.
pub fn total(s1: i128, k: u64) -> f64 {
    if s1 == 0 {
        return 0.0;
    }
    div_round_limbs(&limbs(s1.unsigned_abs()), 1, k, s1 < 0)
}

/// A tile's M2 from its inline sums (`s2` as `(low 128, high 64)` bits): `(s2·n -
/// s1²·d) / (d·n·2^(2k))`, 0 when not positive; None when a product outgrows the limbs
/// (the caller takes the big-integer path).
pub fn m2(s1: i128, s2: (u128, u64), n: u64, d: u32, k: u64) -> Option<f64> {
    let mut s2l = limbs(s2.0);
    s2l[2] = s2.1;
    let a = mul(&s2l, &limbs(n as u128))?;
    let sq = limbs(s1.unsigned_abs());
    let b = mul(&mul(&sq, &sq)?, &limbs(d as u128))?;
    let den = (d as u64).checked_mul(n)?;
    Some(match sub(&a, &b) {
        None => 0.0,
        Some(num) => div_round_limbs(&num, den, 2 * k, false),
    })
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
    let q64: u64 = q.iter_u64_digits().next().unwrap_or(0); // q < 2^56
    round_quotient(q64, s, scale, sticky, neg)
}

/// `div_round`'s last step: `q · 2^(-s-scale)` for its quotient `q` (< 2^56; `sticky`:
/// a nonzero remainder below it), rounded once to a double, negated with `neg`.
pub fn round_quotient(q64: u64, s: i64, scale: u64, sticky: bool, neg: bool) -> f64 {
    // q's last bit weighs 2^lsb; a double keeps 53 bits, fewer below 2^-1022 (its last
    // bit never weighs less than 2^-1074): round once, at the bit the result keeps
    let lsb = -s - scale as i64;
    let mut excess = (64 - q64.leading_zeros()) as i64 - 53;
    let subnormal = lsb + excess < -1074;
    if subnormal {
        excess = -1074 - lsb;
        if excess > 56 {
            // q < 2^56 is below half the smallest subnormal
            return if neg { -0.0 } else { 0.0 };
        }
    }
    let mut mant = q64 >> excess;
    let rem = q64 & ((1u64 << excess) - 1);
    let half = 1u64 << (excess - 1);
    if rem > half || (rem == half && (sticky || mant & 1 == 1)) {
        mant += 1;
    }
    let v = if subnormal {
        // mant * 2^-1074 (a carry to 2^52 is the smallest normal, the same bits)
        f64::from_bits(mant)
    } else {
        let mut e = lsb + excess;
        if mant == 1u64 << 53 {
            mant >>= 1;
            e += 1;
        }
        ldexp(mant, e)
    };
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
        unreachable!("div_round rounds a subnormal itself")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The big-integer path, as `moments` takes it for a spilled tile.
    fn m2_big(s1: i128, s2: (u128, u64), n: u64, d: u32, k: u64) -> f64 {
        let s2 = (BigInt::from(s2.1) << 128) + BigInt::from(s2.0);
        let s1 = BigInt::from(s1);
        let num: BigInt = &s2 * n - &s1 * &s1 * d as u64;
        if num.sign() != num_bigint::Sign::Plus {
            return 0.0;
        }
        div_round(&num, &(BigUint::from(d) * BigUint::from(n)), 2 * k)
    }

    #[test]
    fn fixed_width_rounds_as_big_integers() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut compared, mut cancelling) = (0, 0);
        for case in 0..200_000 {
            let shift = next() % 128;
            let s1 = ((next() as i128) << 64 | next() as i128) >> shift;
            let k = next() % 1100;
            let want = div_round(&BigInt::from(s1), &BigUint::one(), k);
            assert_eq!(total(s1, k).to_bits(), want.to_bits(), "total {s1} {k}");
            // s2 near s1²·d/n (cancellation) or anywhere
            let n = 1 + next() % if case % 2 == 0 { 5 } else { 1 << 40 };
            let d = if case % 3 == 0 {
                1
            } else {
                1 + (next() % 1000) as u32
            };
            let sq = BigInt::from(s1) * BigInt::from(s1) * d as u64 / n;
            let jitter = BigInt::from(next() >> (next() % 64));
            let s2b = if case % 4 == 0 {
                sq + jitter
            } else {
                BigInt::from(next() as u128 * next() as u128)
            };
            let bytes = s2b.magnitude().to_bytes_le();
            if bytes.len() > 24 {
                continue;
            }
            let mut buf = [0u8; 24];
            buf[..bytes.len()].copy_from_slice(&bytes);
            let s2 = (
                u128::from_le_bytes(buf[..16].try_into().unwrap()),
                u64::from_le_bytes(buf[16..].try_into().unwrap()),
            );
            let want = m2_big(s1, s2, n, d, k);
            if let Some(got) = m2(s1, s2, n, d, k) {
                assert_eq!(got.to_bits(), want.to_bits(), "m2 {s1} {s2:?} {n} {d} {k}");
                compared += 1;
                cancelling += (case % 4 == 0 && got > 0.0) as usize;
            }
        }
        assert!(
            compared > 100_000 && cancelling > 10_000,
            "{compared} {cancelling}"
        );
    }
}
