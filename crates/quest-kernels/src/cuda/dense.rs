//! Dense ops (`ptx/dense.cu`): embedding, RMSNorm, matmul (GEMV for decode, tiled GEMM for
//! prefill), RoPE, SiLU·mul, residual add. Shapes are validated here exactly as in
//! [`crate::cpu::dense`], before anything is launched.

use cudarc::driver::LaunchConfig;

use super::gemv::{self, GEMV_MAX_MATS, GEMV_MAX_ROWS, GemvMat};
use super::{CudaBackend, CudaBuf, Family, cuda_err, elementwise_grid, suffix};
use crate::backend::{Backend, check_matmul_many};
use crate::dtype::Half;
use crate::error::{Result, arg_err, expect_len, index_err, shape_err};

pub(super) fn cfg(grid: (u32, u32, u32), block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

pub(super) fn as_i32(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| arg_err(op, format!("{what} = {v} exceeds the kernels' i32 range")))
}

pub(super) fn embedding<W: Half>(
    be: &CudaBackend,
    table: &CudaBuf<W>,
    hidden: usize,
    tokens: &CudaBuf<u32>,
    out: &mut CudaBuf<f32>,
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
    for &t in be.host_ints(tokens)?.iter() {
        if t as usize >= vocab {
            return Err(index_err(
                OP,
                format!("token {t} outside vocabulary of {vocab}"),
            ));
        }
    }
    if tokens.is_empty() {
        return Ok(());
    }
    let f = be.func(
        OP,
        Family::Dense,
        &format!("embedding_{}", suffix::<W>(OP)?),
    )?;
    let h = as_i32(OP, "hidden", hidden)?;
    let (tp, kp, op) = (table.ptr(), tokens.ptr(), out.touched());
    let mut b = be.launch_builder(&f);
    b.arg(&tp).arg(&kp).arg(&op).arg(&h);
    // SAFETY: argument types match `embedding_*(const W*, const u32*, float*, int)`; every token
    // was checked < vocab above, and out holds tokens.len() rows of `hidden`.
    unsafe { b.launch(cfg((tokens.len() as u32, 1, 1), 256)) }.map_err(|e| cuda_err(OP, e))?;
    Ok(())
}

pub(super) fn rms_norm<W: Half>(
    be: &CudaBackend,
    x: &CudaBuf<f32>,
    weight: &CudaBuf<W>,
    eps: f32,
    out: &mut CudaBuf<f32>,
) -> Result<()> {
    const OP: &str = "rms_norm";
    let dim = weight.len();
    if dim == 0 || x.len() % dim != 0 {
        return Err(shape_err(
            OP,
            format!("x of {} elements is not rows of {dim}", x.len()),
        ));
    }
    expect_len(OP, "out", out.len(), x.len())?;
    let rows = x.len() / dim;
    if rows == 0 {
        return Ok(());
    }
    let f = be.func(OP, Family::Dense, &format!("rms_norm_{}", suffix::<W>(OP)?))?;
    let d = as_i32(OP, "dim", dim)?;
    let (xp, wp, op) = (x.ptr(), weight.ptr(), out.touched());
    let mut b = be.launch_builder(&f);
    b.arg(&xp).arg(&wp).arg(&op).arg(&d).arg(&eps);
    // SAFETY: matches `rms_norm_*(const float*, const W*, float*, int, float)`; x and out hold
    // `rows` rows of `dim`, weight holds `dim`.
    unsafe { b.launch(cfg((rows as u32, 1, 1), NORM_THREADS)) }.map_err(|e| cuda_err(OP, e))?;
    Ok(())
}

pub(super) fn add_rms_norm<W: Half>(
    be: &CudaBackend,
    x: &mut CudaBuf<f32>,
    y: &CudaBuf<f32>,
    weight: &CudaBuf<W>,
    eps: f32,
    out: &mut CudaBuf<f32>,
) -> Result<()> {
    // The checks (and messages) of the two ops it fuses.
    expect_len("add_assign", "y", y.len(), x.len())?;
    let dim = weight.len();
    if dim == 0 || x.len() % dim != 0 {
        return Err(shape_err(
            "rms_norm",
            format!("x of {} elements is not rows of {dim}", x.len()),
        ));
    }
    expect_len("rms_norm", "out", out.len(), x.len())?;
    const OP: &str = "add_rms_norm";
    let rows = x.len() / dim;
    if rows == 0 {
        return Ok(());
    }
    let f = be.func(
        OP,
        Family::Dense,
        &format!("add_rms_norm_{}", suffix::<W>(OP)?),
    )?;
    let d = as_i32(OP, "dim", dim)?;
    let (xp, yp, wp, op) = (x.touched(), y.ptr(), weight.ptr(), out.touched());
    let mut b = be.launch_builder(&f);
    b.arg(&xp).arg(&yp).arg(&wp).arg(&op).arg(&d).arg(&eps);
    // SAFETY: matches `add_rms_norm_*(float*, const float*, const W*, float*, int, float)`; x, y
    // and out hold `rows` rows of `dim`, weight holds `dim`.
    unsafe { b.launch(cfg((rows as u32, 1, 1), NORM_THREADS)) }.map_err(|e| cuda_err(OP, e))?;
    Ok(())
}

/// Threads of a norm block (one row each): decode has one row per sequence, so a row's
/// elements are spread over many threads (few loads each) rather than looped over by few.
const NORM_THREADS: u32 = 1024;

pub(super) fn matmul<W: Half>(
    be: &CudaBackend,
    x: &CudaBuf<f32>,
    w: &CudaBuf<W>,
    n: usize,
    k: usize,
    m: usize,
    out: &mut CudaBuf<f32>,
) -> Result<()> {
    const OP: &str = "matmul";
    expect_len(OP, "x", x.len(), n * k)?;
    expect_len(OP, "w", w.len(), m * k)?;
    expect_len(OP, "out", out.len(), n * m)?;
    if n == 0 || m == 0 {
        return Ok(());
    }
    if k == 0 {
        let zeros = vec![0f32; n * m];
        return be.write(out, 0, &zeros);
    }
    let (ni, ki, mi) = (
        as_i32(OP, "n", n)?,
        as_i32(OP, "k", k)?,
        as_i32(OP, "m", m)?,
    );
    let s = suffix::<W>(OP)?;
    let (xp, wp, op) = (x.ptr(), w.ptr(), out.touched());
    if gemv::fits(n, k) {
        gemv::launch::<W>(be, xp, &[GemvMat::store(wp, m, op)], n, k)?;
    } else if n <= GEMV_MAX_ROWS {
        let f = be.func(OP, Family::Dense, &format!("gemv_any_{s}"))?;
        let mut b = be.launch_builder(&f);
        b.arg(&xp).arg(&wp).arg(&op).arg(&ni).arg(&ki).arg(&mi);
        // SAFETY: matches `gemv_any_*(const float*, const W*, float*, int n, int k, int m)`; one
        // warp per weight row, 8 warps a block; x, w and out have the lengths checked above.
        unsafe { b.launch(cfg((m.div_ceil(8) as u32, 1, 1), 256)) }.map_err(|e| cuda_err(OP, e))?;
    } else {
        let f = be.func(OP, Family::Dense, &format!("gemm_{s}"))?;
        let mut b = be.launch_builder(&f);
        b.arg(&xp).arg(&wp).arg(&op).arg(&ni).arg(&ki).arg(&mi);
        let grid = (m.div_ceil(64) as u32, n.div_ceil(64) as u32, 1);
        // SAFETY: matches `gemm_*`'s signature; 64x64 output tiles with bounds checks inside.
        unsafe { b.launch(cfg(grid, 256)) }.map_err(|e| cuda_err(OP, e))?;
    }
    Ok(())
}

/// Several matrices sharing x: one GEMV launch when it applies (decode), else one matmul each.
pub(super) fn matmul_many<W: Half>(
    be: &CudaBackend,
    x: &CudaBuf<f32>,
    ws: &[&CudaBuf<W>],
    n: usize,
    k: usize,
    outs: &mut [&mut CudaBuf<f32>],
) -> Result<()> {
    check_matmul_many(ws.iter().map(|w| w.len()), outs.len(), k)?;
    let fused = gemv::fits(n, k) && ws.len() <= GEMV_MAX_MATS && ws.iter().all(|w| !w.is_empty());
    if !fused {
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            matmul(be, x, w, n, k, w.len() / k, out)?;
        }
        return Ok(());
    }
    // The same checks and messages as `matmul` (and the CPU's one matmul per matrix).
    expect_len("matmul", "x", x.len(), n * k)?;
    let mut mats = Vec::with_capacity(ws.len());
    for (w, out) in ws.iter().zip(outs.iter_mut()) {
        let m = w.len() / k;
        expect_len("matmul", "out", out.len(), n * m)?;
        mats.push(GemvMat::store(w.ptr(), m, out.touched()));
    }
    gemv::launch::<W>(be, x.ptr(), &mats, n, k)
}

/// Checks one RoPE operand: whole heads of `head_dim` in each of the `n` rows; returns the row.
fn rope_row(op: &'static str, x: &CudaBuf<f32>, n: usize, head_dim: usize) -> Result<usize> {
    if x.is_empty() || x.len() % (n * head_dim) != 0 {
        return Err(shape_err(
            op,
            format!(
                "x of {} elements is not {n} rows of whole heads of {head_dim}",
                x.len()
            ),
        ));
    }
    Ok(x.len() / n)
}

/// RoPE on `x` and, when given, `y` (the keys of the same tokens) in one launch.
pub(super) fn rope(
    be: &CudaBackend,
    x: &mut CudaBuf<f32>,
    y: Option<&mut CudaBuf<f32>>,
    positions: &CudaBuf<i32>,
    inv_freq: &CudaBuf<f32>,
    head_dim: usize,
) -> Result<()> {
    const OP: &str = "rope";
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(arg_err(
            OP,
            format!("head_dim {head_dim} must be even and > 0"),
        ));
    }
    expect_len(OP, "inv_freq", inv_freq.len(), head_dim / 2)?;
    let n = positions.len();
    if n == 0 {
        expect_len(OP, "x", x.len(), 0)?;
        return match y {
            Some(y) => expect_len(OP, "x", y.len(), 0),
            None => Ok(()),
        };
    }
    let row_x = rope_row(OP, x, n, head_dim)?;
    let row_y = match y.as_deref() {
        Some(y) => rope_row(OP, y, n, head_dim)?,
        None => 0,
    };
    be.check_positions(OP, positions)?;
    let f = be.func(OP, Family::Dense, "rope")?;
    let (nn, rx, ry, hd) = (
        n as i64,
        as_i32(OP, "row", row_x)?,
        as_i32(OP, "row", row_y)?,
        as_i32(OP, "head_dim", head_dim)?,
    );
    let yp = y.map(|y| y.touched()).unwrap_or(0);
    let (xp, pp, fp) = (x.touched(), positions.ptr(), inv_freq.ptr());
    let mut b = be.launch_builder(&f);
    b.arg(&xp)
        .arg(&yp)
        .arg(&pp)
        .arg(&fp)
        .arg(&nn)
        .arg(&rx)
        .arg(&ry)
        .arg(&hd);
    let pairs = n * (row_x + row_y) / 2;
    // SAFETY: matches `rope(float* x, float* y, const int*, const float*, long long n, int row_x,
    // int row_y, int head_dim)`; x holds n rows of row_x, y (null when row_y = 0) n rows of
    // row_y, positions n entries, inv_freq head_dim / 2.
    unsafe { b.launch(cfg((elementwise_grid(pairs), 1, 1), 256)) }.map_err(|e| cuda_err(OP, e))?;
    Ok(())
}

pub(super) fn silu_mul(
    be: &CudaBackend,
    gate: &CudaBuf<f32>,
    up: &CudaBuf<f32>,
    out: &mut CudaBuf<f32>,
) -> Result<()> {
    const OP: &str = "silu_mul";
    expect_len(OP, "up", up.len(), gate.len())?;
    expect_len(OP, "out", out.len(), gate.len())?;
    if gate.is_empty() {
        return Ok(());
    }
    let f = be.func(OP, Family::Dense, "silu_mul")?;
    let n = gate.len() as i64;
    let (gp, upp, op) = (gate.ptr(), up.ptr(), out.touched());
    let mut b = be.launch_builder(&f);
    b.arg(&gp).arg(&upp).arg(&op).arg(&n);
    // SAFETY: matches `silu_mul(const float*, const float*, float*, long long)`; equal lengths.
    unsafe { b.launch(cfg((elementwise_grid(gate.len()), 1, 1), 256)) }
        .map_err(|e| cuda_err(OP, e))?;
    Ok(())
}

pub(super) fn add_assign(be: &CudaBackend, x: &mut CudaBuf<f32>, y: &CudaBuf<f32>) -> Result<()> {
    const OP: &str = "add_assign";
    expect_len(OP, "y", y.len(), x.len())?;
    if x.is_empty() {
        return Ok(());
    }
    let f = be.func(OP, Family::Dense, "add_assign")?;
    let n = x.len() as i64;
    let (xp, yp) = (x.touched(), y.ptr());
    let mut b = be.launch_builder(&f);
    b.arg(&xp).arg(&yp).arg(&n);
    // SAFETY: matches `add_assign(float*, const float*, long long)`; equal lengths.
    unsafe { b.launch(cfg((elementwise_grid(n as usize), 1, 1), 256)) }
        .map_err(|e| cuda_err(OP, e))?;
    Ok(())
}
