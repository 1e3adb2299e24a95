//! Latency buckets on the boundaries of Prometheus' native histograms, schema 2 (OpenTelemetry's
//! exponential histograms at scale 2): four buckets per power of two of **seconds**, bucket
//! `k` of that schema holding the durations `2^((k-1)/4) s < d <= 2^(k/4) s`. The kernel
//! buckets by exactly these boundaries, so a native or exponential histogram is the kernel's
//! counts relabelled, and a classic `le` bucket set built from every n-th boundary has no
//! rebinning error.
//!
//! Durations are integer nanoseconds, and `d <= 1e9 * 2^(k/4)` holds exactly when `d <=
//! floor(1e9 * 2^(k/4))`: the boundaries are kept as those integer floors. With `m = floor(log2
//! d)`, the boundary just above `d` is among five: `k = 4m - 119 + j`, `j` in `0..=4`, and
//! `1e9 * 2^(k/4) = D_j * 2^(m - 30)` with `D_j = 1e9 * 2^((j + 1)/4)`. Each `D_j` is held as
//! `floor(D_j * 2^32)` ([`D_FIXED`]), so the boundary is that constant shifted right by `62 -
//! m`: a bucket costs a `msb`, four shifts and four compares, no table (nothing for the
//! verifier to bound) and no floating point. The floors are exact (a test checks them against
//! integer arithmetic: `floor(floor(x) / 2^s) = floor(x / 2^s)`).
//!
//! Bucket `i` of this module is schema-2 bucket `k = i + FIRST_INDEX`: bucket 0 ends at
//! 2^(-119/4) s (1.09 ns) and also holds 0 and 1 ns; the last (about 17 minutes) also holds
//! everything slower. A few buckets below 8 ns hold no integer and stay empty.

/// Number of buckets: schema-2 buckets `FIRST_INDEX ..= FIRST_INDEX + BUCKETS - 1`.
pub const BUCKETS: usize = 160;

/// Schema-2 index of bucket 0.
pub const FIRST_INDEX: i32 = -119;

/// `floor(1e9 * 2^((j + 1) / 4) * 2^32)` for `j` in `0..4`; the last is exactly `2e9 * 2^32`.
pub const D_FIXED: [u64; 4] =
    [5_107_605_667_107_197_932, 6_074_000_999_952_099_384, 7_223_245_205_676_679_009, 8_589_934_592_000_000_000];

/// Position of the highest set bit of a non-zero value, without a loop (the verifier likes it).
#[inline(always)]
pub fn msb(mut x: u64) -> u32 {
    let mut r = 0;
    if x >> 32 != 0 {
        x >>= 32;
        r += 32;
    }
    if x >> 16 != 0 {
        x >>= 16;
        r += 16;
    }
    if x >> 8 != 0 {
        x >>= 8;
        r += 8;
    }
    if x >> 4 != 0 {
        x >>= 4;
        r += 4;
    }
    if x >> 2 != 0 {
        x >>= 2;
        r += 2;
    }
    if x >> 1 != 0 {
        r += 1;
    }
    r
}

/// The bucket of a duration in nanoseconds.
#[inline(always)]
pub fn bucket(v: u64) -> usize {
    if v <= 1 {
        return 0;
    }
    let m = msb(v);
    if m > 61 {
        return BUCKETS - 1;
    }
    // The boundaries of buckets 4m .. 4m + 3; past all four, bucket 4m + 4.
    let shift = 62 - m;
    let mut above = 0;
    if v > D_FIXED[0] >> shift {
        above += 1;
    }
    if v > D_FIXED[1] >> shift {
        above += 1;
    }
    if v > D_FIXED[2] >> shift {
        above += 1;
    }
    if v > D_FIXED[3] >> shift {
        above += 1;
    }
    let i = 4 * m as usize + above;
    if i < BUCKETS { i } else { BUCKETS - 1 }
}

/// Inclusive upper bound of bucket `i`, in nanoseconds: `floor(1e9 * 2^((i + FIRST_INDEX) /
/// 4))`.
pub const fn upper(i: usize) -> u64 {
    let m = (i / 4) as u32;
    D_FIXED[i % 4] >> (62 - m)
}

/// Exclusive lower bound of bucket `i`, in nanoseconds.
pub const fn lower(i: usize) -> u64 {
    if i == 0 { 0 } else { upper(i - 1) }
}

/// The schema-2 index of bucket `i`.
pub const fn native_index(i: usize) -> i32 {
    i as i32 + FIRST_INDEX
}

/// The upper bound of bucket `i` in seconds, `2^(k/4)`, as the nearest `f64`: the `le` of a
/// classic bucket ending there and the bound a native histogram's bucket has. Bounds at `k`
/// a multiple of 4 are powers of two, exact.
pub fn upper_seconds(i: usize) -> f64 {
    /// `2^(r/4)`, correctly rounded.
    const ROOTS: [f64; 4] = [1.0, 1.189_207_115_002_721, core::f64::consts::SQRT_2, 1.681_792_830_507_429];
    let k = native_index(i);
    ROOTS[k.rem_euclid(4) as usize] * pow2(k.div_euclid(4))
}

/// `2^e` for the exponents a bucket can have.
fn pow2(e: i32) -> f64 {
    if e >= 0 { (1u64 << e) as f64 } else { 1.0 / (1u64 << -e) as f64 }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    use super::*;

    /// Unsigned big integers as little-endian base-2^32 limbs: enough to check the floors.
    fn big(v: u64) -> Vec<u64> {
        vec![v & 0xffff_ffff, v >> 32]
    }

    fn mul(a: &[u64], b: u64) -> Vec<u64> {
        let mut out = Vec::with_capacity(a.len() + 2);
        let mut carry = 0u128;
        for &limb in a {
            let p = u128::from(limb) * u128::from(b) + carry;
            out.push((p & 0xffff_ffff) as u64);
            carry = p >> 32;
        }
        while carry != 0 {
            out.push((carry & 0xffff_ffff) as u64);
            carry >>= 32;
        }
        out
    }

    fn pow(v: u64, e: u32) -> Vec<u64> {
        let mut out = big(1);
        for _ in 0..e {
            out = mul(&out, v);
        }
        out
    }

    fn shl(a: &[u64], bits: u32) -> Vec<u64> {
        let mut out = a.to_vec();
        for _ in 0..bits {
            out = mul(&out, 2);
        }
        out
    }

    fn cmp(a: &[u64], b: &[u64]) -> std::cmp::Ordering {
        let trim = |x: &[u64]| x.iter().rposition(|&l| l != 0).map_or(0, |p| p + 1);
        let (la, lb) = (trim(a), trim(b));
        la.cmp(&lb).then_with(|| a[..la].iter().rev().cmp(b[..lb].iter().rev()))
    }

    #[test]
    fn the_fixed_point_constants_are_exact_floors() {
        // D = floor(1e9 * 2^((j+1)/4) * 2^32)  <=>  D^4 <= 1e36 * 2^(j+1) * 2^128 < (D+1)^4.
        for (j, &d) in D_FIXED.iter().enumerate() {
            let target = shl(&pow(1_000_000_000, 4), j as u32 + 1 + 128);
            assert!(cmp(&pow(d, 4), &target).is_le(), "D_FIXED[{j}] too large");
            assert!(cmp(&pow(d + 1, 4), &target).is_gt(), "D_FIXED[{j}] too small");
        }
    }

    #[test]
    fn bounds_are_the_floors_of_the_native_boundaries() {
        // upper(i) = floor(1e9 * 2^(k/4)): upper^4 <= 1e36 * 2^k < (upper + 1)^4 (scaled by
        // 2^-k on the left for negative k).
        for i in 0..BUCKETS {
            let (k, u) = (native_index(i), upper(i));
            let (left, right, lhs_shift, rhs_shift) = (pow(u, 4), pow(u + 1, 4), (-k).max(0) as u32, k.max(0) as u32);
            let target = shl(&pow(1_000_000_000, 4), rhs_shift);
            assert!(cmp(&shl(&left, lhs_shift), &target).is_le(), "bucket {i}: {u} above the boundary");
            assert!(cmp(&shl(&right, lhs_shift), &target).is_gt(), "bucket {i}: {u} below the boundary");
        }
        assert_eq!(upper(4 * 29 + 3), 1_000_000_000, "k = 0 is one second");
        assert_eq!(upper(BUCKETS - 1), 1_024_000_000_000, "the last bound is 2^10 s");
    }

    #[test]
    fn buckets_are_contiguous_and_bounds_inclusive() {
        for i in 1..BUCKETS {
            assert_eq!(lower(i), upper(i - 1));
            assert!(upper(i) >= upper(i - 1));
        }
        for v in (0..200_000u64).chain([
            1 << 20,
            (1 << 20) + 1,
            999_999_999,
            1_000_000_000,
            1_000_000_001,
            100_000_000_000,
            u64::MAX,
        ]) {
            let i = bucket(v);
            assert!(v <= upper(i) || i == BUCKETS - 1, "{v} above bucket {i}");
            assert!(v > lower(i) || i == 0, "{v} below bucket {i}");
        }
        // Every bound of the schema, so every bucket above 8 ns is at most 19% wide.
        for i in 20..BUCKETS {
            assert!((upper(i) - lower(i)) * 100 <= lower(i) * 19 + 100, "bucket {i} too wide");
        }
        assert_eq!(msb(1), 0);
        assert_eq!(msb(u64::MAX), 63);
    }

    #[test]
    fn upper_seconds_is_the_bound_in_seconds() {
        for i in 0..BUCKETS {
            let ns = upper_seconds(i) * 1e9;
            assert!(
                ns >= upper(i) as f64 && ns < upper(i) as f64 + 1.0 + ns * 1e-15,
                "bucket {i}: {ns} vs {}",
                upper(i)
            );
        }
        assert_eq!(upper_seconds(4 * 29 + 3), 1.0);
        assert_eq!(upper_seconds(4 * 19 + 3), 1.0 / 1024.0);
    }
}
