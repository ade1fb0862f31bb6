//! Fixed-width exact integers for a tile's sums: `s1` in an `i128`, `s2` (never negative
//! when built by `add`) computed in 256 bits and stored in 192 (`split192`). Every operation says when it does not fit,
//! so the tile can spill to big integers and stay exact.

use num_bigint::{BigInt, BigUint, Sign};

/// `v << by`, or None when a bit (or the sign) would be lost.
#[inline]
pub fn shl_i128(v: i128, by: u64) -> Option<i128> {
    if v == 0 {
        return Some(0);
    }
    if by >= 128 {
        return None;
    }
    let r = v << by;
    (r >> by == v).then_some(r)
}

/// A 256-bit unsigned integer, `hi * 2^128 + lo`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct U256 {
    lo: u128,
    hi: u128,
}

#[inline]
fn mul_u128(a: u128, b: u128) -> U256 {
    let (a0, a1) = (a as u64 as u128, a >> 64);
    let (b0, b1) = (b as u64 as u128, b >> 64);
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    // middle column: the high half of p00 plus the low halves of the cross products
    let mid = (p00 >> 64) + (p01 as u64 as u128) + (p10 as u64 as u128);
    let lo = (p00 as u64 as u128) | (mid << 64);
    let hi = p11 + (p01 >> 64) + (p10 >> 64) + (mid >> 64);
    U256 { lo, hi }
}

impl U256 {
    pub fn from_parts(lo: u128, hi: u64) -> U256 {
        U256 { lo, hi: hi as u128 }
    }

    /// `(low 128 bits, high 64 bits)` when the value fits 192 bits.
    #[inline]
    pub fn split192(self) -> Option<(u128, u64)> {
        u64::try_from(self.hi).ok().map(|hi| (self.lo, hi))
    }

    pub fn is_zero(self) -> bool {
        self.lo == 0 && self.hi == 0
    }

    /// `v * v`: always fits (|v| <= 2^127).
    #[inline]
    pub fn square(v: i128) -> U256 {
        let a = v.unsigned_abs();
        mul_u128(a, a)
    }

    #[inline]
    pub fn checked_add(self, o: U256) -> Option<U256> {
        let (lo, carry) = self.lo.overflowing_add(o.lo);
        let hi = self.hi.checked_add(o.hi)?.checked_add(carry as u128)?;
        Some(U256 { lo, hi })
    }

    #[inline]
    pub fn checked_mul_u64(self, d: u64) -> Option<U256> {
        if d == 1 {
            return Some(self);
        }
        let lo = mul_u128(self.lo, d as u128);
        let hi = mul_u128(self.hi, d as u128);
        if hi.hi != 0 {
            return None;
        }
        let top = lo.hi.checked_add(hi.lo)?;
        Some(U256 { lo: lo.lo, hi: top })
    }

    #[inline]
    pub fn checked_shl(self, by: u64) -> Option<U256> {
        if self.is_zero() || by == 0 {
            return Some(self);
        }
        let lz = if self.hi != 0 {
            self.hi.leading_zeros() as u64
        } else {
            128 + self.lo.leading_zeros() as u64
        };
        if by > lz {
            return None;
        }
        Some(if by >= 128 {
            U256 {
                lo: 0,
                hi: self.lo << (by - 128),
            }
        } else {
            U256 {
                lo: self.lo << by,
                hi: (self.hi << by) | (self.lo >> (128 - by)),
            }
        })
    }

    pub fn to_bigint(self) -> BigInt {
        let mut bytes = [0u8; 32];
        bytes[..16].copy_from_slice(&self.lo.to_le_bytes());
        bytes[16..].copy_from_slice(&self.hi.to_le_bytes());
        BigInt::from_biguint(Sign::Plus, BigUint::from_bytes_le(&bytes))
    }

    /// The same value, when `0 <= v < 2^256`.
    pub fn from_bigint(v: &BigInt) -> Option<U256> {
        if v.sign() == Sign::Minus || v.bits() > 256 {
            return None;
        }
        let mut words = v.magnitude().iter_u64_digits();
        let mut next = || words.next().unwrap_or(0) as u128;
        let lo = next() | (next() << 64);
        let hi = next() | (next() << 64);
        Some(U256 { lo, hi })
    }
}

/// The same value, when it fits an `i128`.
pub fn i128_of(v: &BigInt) -> Option<i128> {
    i128::try_from(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use num_traits::One;

    fn big(v: U256) -> BigInt {
        v.to_bigint()
    }

    #[test]
    fn square_and_mul_match_big_integers() {
        let vals: [i128; 7] = [
            0,
            1,
            -3,
            (1 << 64) + 12345,
            i128::MAX,
            i128::MIN + 1,
            -(1i128 << 100) - 7,
        ];
        for &v in &vals {
            let sq = U256::square(v);
            assert_eq!(big(sq), BigInt::from(v) * BigInt::from(v));
            for d in [1u64, 2, 1000, u64::MAX] {
                let want = BigInt::from(v) * BigInt::from(v) * BigInt::from(d);
                match sq.checked_mul_u64(d) {
                    Some(p) => assert_eq!(big(p), want),
                    None => assert!(want.bits() > 256),
                }
            }
            for by in [0u64, 1, 64, 127, 128, 129, 200, 255, 256] {
                let want = (BigInt::from(v) * BigInt::from(v)) << by;
                match sq.checked_shl(by) {
                    Some(p) => assert_eq!(big(p), want),
                    None => assert!(want.bits() > 256),
                }
            }
        }
        let top = (BigInt::one() << 256) - 1;
        let max = U256::from_bigint(&top).unwrap();
        assert_eq!(big(max), top);
        assert!(max.checked_add(U256::square(1)).is_none());
        assert!(U256::from_bigint(&(top + 1)).is_none());
    }

    #[test]
    fn shl_i128_refuses_lost_bits() {
        assert_eq!(shl_i128(-1, 126), Some(-1i128 << 126));
        assert_eq!(shl_i128(-1, 127), Some(i128::MIN));
        assert_eq!(shl_i128(1, 127), None);
        assert_eq!(shl_i128(1, 126), Some(1i128 << 126));
        assert_eq!(shl_i128(2, 126), None);
        assert_eq!(shl_i128(0, 500), Some(0));
    }
}
