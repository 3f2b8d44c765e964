//! Synthetic data (`ptx/random.cu`): the same hash-based uniforms as [`crate::cpu::random`],
//! bit for bit.

use cudarc::driver::LaunchConfig;

use super::{CudaBackend, CudaBuf, Family, cuda_err, elementwise_grid, suffix};
use crate::dtype::Half;
use crate::error::Result;

pub(super) fn fill_random<T: Half>(
    be: &CudaBackend,
    buf: &mut CudaBuf<T>,
    seed: u64,
    scale: f32,
) -> Result<()> {
    const OP: &str = "fill_random";
    crate::cpu::random::check_scale(scale)?;
    if buf.is_empty() {
        return Ok(());
    }
    let f = be.func(
        OP,
        Family::Random,
        &format!("fill_random_{}", suffix::<T>(OP)?),
    )?;
    let n = buf.len() as i64;
    let p = buf.touched();
    let mut b = be.launch_builder(&f);
    b.arg(&p).arg(&n).arg(&seed).arg(&scale);
    let cfg = LaunchConfig {
        grid_dim: (elementwise_grid(buf.len()), 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: matches `fill_random_*(T*, long long n, unsigned long long seed, float scale)`; the
    // kernel writes elements 0..n of a buffer of n elements (grid-stride).
    unsafe { b.launch(cfg) }.map_err(|e| cuda_err(OP, e))?;
    Ok(())
}
