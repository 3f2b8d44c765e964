//! Deterministic synthetic data: a counter-based hash turned into uniforms, so any element of a
//! buffer can be computed independently (and the GPU produces the same bits; see
//! `ptx/random.cu`). Used to build benchmark models and caches without multi-gigabyte files.

use rayon::prelude::*;

use crate::dtype::Half;
use crate::error::{Result, arg_err};

/// Uniform in `(-1, 1)` for element `i` of stream `seed`: an odd multiple of `2^-23`, so never
/// zero, and computed exactly (no rounding) from the 23 high bits of a SplitMix64 finaliser of
/// `seed + (i + 1) * golden`.
#[inline]
pub fn hash_uniform(seed: u64, i: u64) -> f32 {
    let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let k = (z >> 41) as u32; // 23 bits
    (2 * k + 1) as f32 * (1.0 / 8_388_608.0) - 1.0
}

/// Checks the arguments of `fill_random`: a finite, non-zero scale.
pub(crate) fn check_scale(scale: f32) -> Result<()> {
    if scale.is_finite() && scale != 0.0 {
        Ok(())
    } else {
        Err(arg_err(
            "fill_random",
            format!("scale must be finite and non-zero, got {scale}"),
        ))
    }
}

/// `out[i] = T::from_f32(scale * hash_uniform(seed, i))`: uniform in `[-|scale|, |scale|]` (the
/// ends only through rounding to `T`).
pub fn fill_random<T: Half>(out: &mut [T], seed: u64, scale: f32) -> Result<()> {
    check_scale(scale)?;
    out.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(c, chunk)| {
            let base = (c as u64) << 16;
            for (j, o) in chunk.iter_mut().enumerate() {
                *o = T::from_f32(scale * hash_uniform(seed, base + j as u64));
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniforms_are_nonzero_symmetric_and_spread() {
        let v: Vec<f32> = (0..100_000).map(|i| hash_uniform(7, i)).collect();
        assert!(v.iter().all(|&x| x != 0.0 && x > -1.0 && x < 1.0));
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0 / 3.0).abs() < 0.01, "variance {var}");
        assert_ne!(hash_uniform(7, 0), hash_uniform(8, 0));
    }

    #[test]
    fn fill_is_deterministic_and_refuses_bad_scales() {
        let mut a = vec![0f32; 1000];
        let mut b = vec![0f32; 1000];
        fill_random(&mut a, 3, 0.5).unwrap();
        fill_random(&mut b, 3, 0.5).unwrap();
        assert_eq!(a, b);
        assert!(a.iter().all(|&x| x != 0.0 && x.abs() < 0.5));
        assert!(fill_random(&mut a, 3, 0.0).is_err());
        assert!(fill_random(&mut a, 3, f32::NAN).is_err());
    }
}
