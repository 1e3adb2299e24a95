//! Log-linear latency buckets: four sub-buckets per power of two of nanoseconds, from 1 ns to
//! about 9 minutes, so every bucket is at most 25% wide.
//!
//! Bucket `i` holds the values `v` with `upper(i - 1) < v <= upper(i)`, i.e. `upper(i)` is the
//! Prometheus `le` of bucket `i`. The index is computed on `v - 1`: for `x = v - 1 < 4`, `i = x`;
//! otherwise with `m = floor(log2 x)`, `i = 4(m - 1) + ((x >> (m - 2)) & 3)`.

/// Number of buckets; values beyond the last bound land in the last bucket.
pub const BUCKETS: usize = 152;

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
    let x = v.saturating_sub(1);
    let i = if x < 4 {
        x as usize
    } else {
        let m = msb(x);
        (4 * (m - 1) + ((x >> (m - 2)) & 3) as u32) as usize
    };
    if i < BUCKETS { i } else { BUCKETS - 1 }
}

/// Inclusive upper bound of bucket `i`, in nanoseconds.
pub const fn upper(i: usize) -> u64 {
    if i < 4 {
        return i as u64 + 1;
    }
    let m = (i / 4 + 1) as u32;
    let sub = (i % 4) as u64;
    (5 + sub) << (m - 2)
}

/// Exclusive lower bound of bucket `i`, in nanoseconds.
pub const fn lower(i: usize) -> u64 {
    if i == 0 { 0 } else { upper(i - 1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_bounds_inclusive() {
        for i in 1..BUCKETS {
            assert_eq!(lower(i), upper(i - 1));
            assert!(upper(i) > upper(i - 1));
        }
        for v in (0..100_000u64).chain([1 << 20, (1 << 20) + 1, 100_000_000_000]) {
            let i = bucket(v);
            assert!(v <= upper(i) || i == BUCKETS - 1, "{v} above bucket {i}");
            assert!(v > lower(i) || i == 0, "{v} below bucket {i}");
        }
        // At least four sub-buckets per power of two: every bucket above 4 ns is at most 25% wide.
        for i in 4..BUCKETS {
            assert!((upper(i) - lower(i)) * 4 <= lower(i) + 1, "bucket {i} too wide");
        }
        assert!(upper(BUCKETS - 2) >= 100_000_000_000, "the histogram reaches 100 s");
        assert_eq!(msb(1), 0);
        assert_eq!(msb(u64::MAX), 63);
    }
}
