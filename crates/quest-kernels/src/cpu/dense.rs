//! CPU reference for the dense ops of a Llama layer: embedding, RMSNorm, matmul, RoPE, SiLU·mul,
//! residual add, argmax and sampling. f32 arithmetic throughout; `rayon` over rows where it pays.

use rayon::prelude::*;

use crate::backend::SamplingParams;
use crate::dtype::Half;
use crate::error::{Result, arg_err, expect_len, index_err, shape_err};

/// `out[i, :] = table[tokens[i], :]`.
pub fn embedding<W: Half>(
    table: &[W],
    hidden: usize,
    tokens: &[u32],
    out: &mut [f32],
) -> Result<()> {
    const OP: &str = "embedding";
    if hidden == 0 || table.len() % hidden != 0 {
        return Err(shape_err(
            OP,
            format!("table of {} elements is not rows of {hidden}", table.len()),
        ));
    }
    let vocab = table.len() / hidden;
    expect_len(OP, "out", out.len(), tokens.len() * hidden)?;
    for (row, &t) in out.chunks_exact_mut(hidden).zip(tokens) {
        if t as usize >= vocab {
            return Err(index_err(
                OP,
                format!("token {t} outside vocabulary of {vocab}"),
            ));
        }
        let t = t as usize;
        W::to_f32_slice(&table[t * hidden..(t + 1) * hidden], row);
    }
    Ok(())
}

/// `out[i, :] = x[i, :] / sqrt(mean(x[i, :]^2) + eps) * weight`.
pub fn rms_norm<W: Half>(x: &[f32], weight: &[W], eps: f32, out: &mut [f32]) -> Result<()> {
    const OP: &str = "rms_norm";
    let dim = weight.len();
    if dim == 0 || x.len() % dim != 0 {
        return Err(shape_err(
            OP,
            format!("x of {} elements is not rows of {dim}", x.len()),
        ));
    }
    expect_len(OP, "out", out.len(), x.len())?;
    let mut w = vec![0f32; dim];
    W::to_f32_slice(weight, &mut w);
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(&w) {
            *o = v * inv * g;
        }
    }
    Ok(())
}

/// Dot product with eight independent accumulators, so the compiler vectorizes it.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// `out[n, m] = x[n, k] · w[m, k]^T`. Each weight row is converted to f32 once and used for all
/// `n` rows of `x`, so the weights are read once whatever `n` is.
pub fn matmul<W: Half>(
    x: &[f32],
    w: &[W],
    n: usize,
    k: usize,
    m: usize,
    out: &mut [f32],
) -> Result<()> {
    const OP: &str = "matmul";
    expect_len(OP, "x", x.len(), n * k)?;
    expect_len(OP, "w", w.len(), m * k)?;
    expect_len(OP, "out", out.len(), n * m)?;
    if n == 0 || m == 0 {
        return Ok(());
    }
    if k == 0 {
        out.fill(0.0);
        return Ok(());
    }
    // Transposed result [m, n]: each task owns whole weight rows.
    const ROWS_PER_TASK: usize = 16;
    let mut out_t = vec![0f32; m * n];
    out_t
        .par_chunks_mut(ROWS_PER_TASK * n)
        .enumerate()
        .for_each(|(task, chunk)| {
            let mut wrow = vec![0f32; k];
            for (r, dst) in chunk.chunks_exact_mut(n).enumerate() {
                let j = task * ROWS_PER_TASK + r;
                W::to_f32_slice(&w[j * k..(j + 1) * k], &mut wrow);
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = dot(&x[i * k..(i + 1) * k], &wrow);
                }
            }
        });
    if n == 1 {
        out.copy_from_slice(&out_t);
    } else {
        for j in 0..m {
            for i in 0..n {
                out[i * m + j] = out_t[j * n + i];
            }
        }
    }
    Ok(())
}

/// Rotary embedding in place on `x[n, heads, head_dim]`, rotate-half pairing.
pub fn rope(x: &mut [f32], positions: &[i32], inv_freq: &[f32], head_dim: usize) -> Result<()> {
    const OP: &str = "rope";
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(arg_err(
            OP,
            format!("head_dim {head_dim} must be even and > 0"),
        ));
    }
    let half = head_dim / 2;
    expect_len(OP, "inv_freq", inv_freq.len(), half)?;
    let n = positions.len();
    if n == 0 {
        return expect_len(OP, "x", x.len(), 0);
    }
    if x.is_empty() || x.len() % (n * head_dim) != 0 {
        return Err(shape_err(
            OP,
            format!(
                "x of {} elements is not {n} rows of whole heads of {head_dim}",
                x.len()
            ),
        ));
    }
    // Checked before anything is rotated, so a refused call leaves x unchanged.
    if let Some(&pos) = positions.iter().find(|&&p| p < 0) {
        return Err(index_err(OP, format!("negative position {pos}")));
    }
    let row = x.len() / n;
    let mut cos = vec![0f32; half];
    let mut sin = vec![0f32; half];
    for (xr, &pos) in x.chunks_exact_mut(row).zip(positions) {
        for i in 0..half {
            // f32 angle, as in the reference implementations, so logits match them closely.
            let angle = pos as f32 * inv_freq[i];
            cos[i] = angle.cos();
            sin[i] = angle.sin();
        }
        for head in xr.chunks_exact_mut(head_dim) {
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (x0, x1) = (a[i], b[i]);
                a[i] = x0 * cos[i] - x1 * sin[i];
                b[i] = x1 * cos[i] + x0 * sin[i];
            }
        }
    }
    Ok(())
}

/// `out = silu(gate) * up` with `silu(x) = x / (1 + e^-x)`.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) -> Result<()> {
    const OP: &str = "silu_mul";
    expect_len(OP, "up", up.len(), gate.len())?;
    expect_len(OP, "out", out.len(), gate.len())?;
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
    Ok(())
}

/// `x += y`.
pub fn add_assign(x: &mut [f32], y: &[f32]) -> Result<()> {
    expect_len("add_assign", "y", y.len(), x.len())?;
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
    Ok(())
}

fn check_rows(op: &'static str, logits: &[f32], vocab: usize, out: &[u32]) -> Result<()> {
    if vocab == 0 || logits.len() % vocab != 0 {
        return Err(shape_err(
            op,
            format!(
                "logits of {} elements are not rows of {vocab}",
                logits.len()
            ),
        ));
    }
    expect_len(op, "out", out.len(), logits.len() / vocab)
}

/// Index of the largest value; NaN never wins (not even over -inf); lowest index on ties; 0 for
/// a row of NaNs only.
fn argmax_row(row: &[f32]) -> u32 {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in row.iter().enumerate() {
        if !v.is_nan() && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map_or(0, |(i, _)| i as u32)
}

/// Greedy choice per row of `logits[n, vocab]`.
pub fn argmax(logits: &[f32], vocab: usize, out: &mut [u32]) -> Result<()> {
    check_rows("argmax", logits, vocab, out)?;
    for (row, o) in logits.chunks_exact(vocab).zip(out.iter_mut()) {
        *o = argmax_row(row);
    }
    Ok(())
}

/// Temperature + top-p sampling per row; see [`crate::Backend::sample`].
pub fn sample(
    logits: &[f32],
    vocab: usize,
    params: SamplingParams,
    uniforms: &[f32],
    out: &mut [u32],
) -> Result<()> {
    const OP: &str = "sample";
    check_rows(OP, logits, vocab, out)?;
    expect_len(OP, "uniforms", uniforms.len(), out.len())?;
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
    for ((row, o), &u) in logits.chunks_exact(vocab).zip(out.iter_mut()).zip(uniforms) {
        if temperature == 0.0 {
            *o = argmax_row(row);
            continue;
        }
        let max = row[argmax_row(row) as usize];
        let mut probs: Vec<(f32, u32)> = row
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                let p = ((l - max) / temperature).exp();
                (if p.is_nan() { 0.0 } else { p }, i as u32)
            })
            .collect();
        let total: f32 = probs.iter().map(|p| p.0).sum();
        probs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut kept = 0usize;
        let mut mass = 0f32;
        for &(p, _) in &probs {
            mass += p;
            kept += 1;
            if mass >= top_p * total {
                break;
            }
        }
        let target = u.clamp(0.0, 1.0) * mass;
        let mut acc = 0f32;
        *o = probs[kept - 1].1;
        for &(p, i) in &probs[..kept] {
            acc += p;
            if target < acc {
                *o = i;
                break;
            }
        }
    }
    Ok(())
}
