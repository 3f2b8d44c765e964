//! Argmax and temperature / top-p sampling (`ptx/sampling.cu`), same spec as
//! [`crate::cpu::dense::sample`].

use cudarc::driver::LaunchConfig;

use super::{CudaBackend, CudaBuf, Family, cuda_err};
use crate::backend::SamplingParams;
use crate::error::{Result, arg_err, expect_len, shape_err};

fn check_rows(
    op: &'static str,
    logits: &CudaBuf<f32>,
    vocab: usize,
    out: &CudaBuf<u32>,
) -> Result<usize> {
    if vocab == 0 || logits.len() % vocab != 0 {
        return Err(shape_err(
            op,
            format!(
                "logits of {} elements are not rows of {vocab}",
                logits.len()
            ),
        ));
    }
    expect_len(op, "out", out.len(), logits.len() / vocab)?;
    i32::try_from(vocab).map_err(|_| arg_err(op, format!("vocab {vocab} exceeds i32")))?;
    Ok(logits.len() / vocab)
}

fn rows_cfg(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (1024, 1, 1),
        shared_mem_bytes: 0,
    }
}

pub(super) fn argmax(
    be: &CudaBackend,
    logits: &CudaBuf<f32>,
    vocab: usize,
    out: &mut CudaBuf<u32>,
) -> Result<()> {
    const OP: &str = "argmax";
    let rows = check_rows(OP, logits, vocab, out)?;
    if rows == 0 {
        return Ok(());
    }
    let f = be.func(OP, Family::Sampling, "argmax_rows")?;
    let v = vocab as i32;
    let (lp, op) = (logits.ptr(), out.touched());
    let mut b = be.launch_builder(&f);
    b.arg(&lp).arg(&v).arg(&op);
    // SAFETY: matches `argmax_rows(const float*, int, u32*)`, one 1024-thread block per row.
    unsafe { b.launch(rows_cfg(rows)) }.map_err(|e| cuda_err(OP, e))?;
    Ok(())
}

pub(super) fn sample(
    be: &CudaBackend,
    logits: &CudaBuf<f32>,
    vocab: usize,
    params: SamplingParams,
    uniforms: &CudaBuf<f32>,
    out: &mut CudaBuf<u32>,
) -> Result<()> {
    const OP: &str = "sample";
    let rows = check_rows(OP, logits, vocab, out)?;
    expect_len(OP, "uniforms", uniforms.len(), rows)?;
    let SamplingParams { temperature, top_p } = params;
    if !(temperature >= 0.0 && temperature.is_finite()) {
        return Err(arg_err(
            OP,
            format!("temperature {temperature} must be >= 0"),
        ));
    }
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(arg_err(OP, format!("top_p {top_p} must be in (0, 1]")));
    }
    if rows == 0 {
        return Ok(());
    }
    let f = be.func(OP, Family::Sampling, "sample_rows")?;
    let v = vocab as i32;
    let (lp, up, op) = (logits.ptr(), uniforms.ptr(), out.touched());
    let mut b = be.launch_builder(&f);
    b.arg(&lp)
        .arg(&v)
        .arg(&temperature)
        .arg(&top_p)
        .arg(&up)
        .arg(&op);
    // SAFETY: matches `sample_rows(const float*, int, float, float, const float*, u32*)`; one
    // block per row, uniforms has one entry a row.
    unsafe { b.launch(rows_cfg(rows)) }.map_err(|e| cuda_err(OP, e))?;
    Ok(())
}
