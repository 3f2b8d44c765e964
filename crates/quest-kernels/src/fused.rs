//! Llama's decode-step projections with the work around them folded in: the RMSNorm before a
//! projection, RoPE after the q/k projection, SiLU·mul after gate/up and the residual add after
//! the output projections. Each is a [`Backend`] op whose *meaning* is the composition of the
//! plain ops written here; the CPU runs exactly that composition, and the CUDA backend folds it
//! into its streaming GEMV when decoding (see `gemv` in ptx/dense.cu), so the step launches one
//! kernel per projection and no norm, rope, SiLU or add kernels.

use crate::backend::{Backend, check_matmul_many};
use crate::dtype::Half;
use crate::error::{Result, arg_err, expect_len, shape_err};

/// The rotary embedding applied after a projection (see [`Backend::rope`]).
pub struct RopeInput<'a, B: Backend> {
    /// One position per row of x.
    pub positions: &'a B::Buf<i32>,
    /// `head_dim / 2` inverse frequencies, see [`crate::rope`].
    pub inv_freq: &'a B::Buf<f32>,
    pub head_dim: usize,
}

/// The norm weight of a pre-norm projection must cover the projection's input row (`k`); the
/// plain `rms_norm` would accept any divisor of the row and silently normalise pieces of it.
fn check_norm(op: &'static str, norm_len: usize, k: usize) -> Result<()> {
    if norm_len != k {
        return Err(shape_err(
            op,
            format!(
                "norm weight of {norm_len} elements, but the projection input rows are k = {k}"
            ),
        ));
    }
    Ok(())
}

/// The checks of a pre-norm projection, the same on every backend and every path (in this order):
/// the norm weight covers `k`, the weights are whole rows of `k` (one output each), x holds `n`
/// rows of `k`, each output `n` rows of its matrix. Lengths in elements.
pub(crate) fn check_projection(
    op: &'static str,
    x: usize,
    norm: usize,
    ws: &[usize],
    outs: &[usize],
    n: usize,
    k: usize,
) -> Result<()> {
    check_norm(op, norm, k)?;
    check_matmul_many(ws.iter().copied(), outs.len(), k)?;
    expect_len("matmul", "x", x, n * k)?;
    for (&w, &out) in ws.iter().zip(outs) {
        expect_len("matmul", "out", out, n * (w / k))?;
    }
    Ok(())
}

/// RoPE's checks on q and k of `n` rows (`rope`'s messages): an even head_dim, `head_dim / 2`
/// inverse frequencies, one position per row, q and k whole heads. (Negative positions are
/// refused by each backend's RoPE, which reads the positions on the host.)
pub(crate) fn check_rope<B: Backend>(
    b: &B,
    rope: &RopeInput<'_, B>,
    n: usize,
    q_len: usize,
    k_len: usize,
) -> Result<()> {
    const OP: &str = "rope";
    let hd = rope.head_dim;
    if hd == 0 || hd % 2 != 0 {
        return Err(arg_err(OP, format!("head_dim {hd} must be even and > 0")));
    }
    expect_len(OP, "inv_freq", b.buf_len(rope.inv_freq), hd / 2)?;
    expect_len(OP, "positions", b.buf_len(rope.positions), n)?;
    for len in [q_len, k_len] {
        if len == 0 || len % (n.max(1) * hd) != 0 {
            return Err(shape_err(
                OP,
                format!("x of {len} elements is not {n} rows of whole heads of {hd}"),
            ));
        }
    }
    Ok(())
}

/// The reference of [`Backend::rms_norm_matmul_many`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn rms_norm_matmul_many<B: Backend, W: Half>(
    b: &B,
    x: &B::Buf<f32>,
    norm: &B::Buf<W>,
    eps: f32,
    ws: &[&B::Buf<W>],
    n: usize,
    k: usize,
    outs: &mut [&mut B::Buf<f32>],
) -> Result<()> {
    let w_lens: Vec<usize> = ws.iter().map(|w| b.buf_len(*w)).collect();
    let out_lens: Vec<usize> = outs.iter().map(|o| b.buf_len(&**o)).collect();
    let op = "rms_norm_matmul_many";
    check_projection(op, b.buf_len(x), b.buf_len(norm), &w_lens, &out_lens, n, k)?;
    let mut h = b.zeros(b.buf_len(x))?;
    b.rms_norm(x, norm, eps, &mut h)?;
    b.matmul_many(&h, ws, n, k, outs)
}

/// The reference of [`Backend::qkv_projection`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn qkv_projection<B: Backend, W: Half>(
    b: &B,
    x: &B::Buf<f32>,
    norm: &B::Buf<W>,
    eps: f32,
    w: [&B::Buf<W>; 3],
    n: usize,
    k: usize,
    out: [&mut B::Buf<f32>; 3],
    rope: &RopeInput<'_, B>,
) -> Result<()> {
    let [q, kk, v] = out;
    let w_lens = w.map(|w| b.buf_len(w));
    let out_lens = [b.buf_len(&*q), b.buf_len(&*kk), b.buf_len(&*v)];
    check_projection(
        "qkv_projection",
        b.buf_len(x),
        b.buf_len(norm),
        &w_lens,
        &out_lens,
        n,
        k,
    )?;
    check_rope(b, rope, n, out_lens[0], out_lens[1])?;
    rms_norm_matmul_many(b, x, norm, eps, &w, n, k, &mut [&mut *q, &mut *kk, v])?;
    b.rope_qk(q, kk, rope.positions, rope.inv_freq, rope.head_dim)
}

/// The checks of [`Backend::rms_norm_swiglu`] (every backend, every path): gate and up of the
/// same shape, then those of a projection whose two outputs are both `out`.
pub(crate) fn check_swiglu(
    x: usize,
    norm: usize,
    gate: usize,
    up: usize,
    out: usize,
    n: usize,
    k: usize,
) -> Result<()> {
    if gate != up {
        return Err(shape_err(
            "rms_norm_swiglu",
            format!("gate weight of {gate} elements but up weight of {up}"),
        ));
    }
    check_projection("rms_norm_swiglu", x, norm, &[gate, up], &[out, out], n, k)
}

/// The reference of [`Backend::rms_norm_swiglu`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn rms_norm_swiglu<B: Backend, W: Half>(
    b: &B,
    x: &B::Buf<f32>,
    norm: &B::Buf<W>,
    eps: f32,
    w_gate: &B::Buf<W>,
    w_up: &B::Buf<W>,
    n: usize,
    k: usize,
    out: &mut B::Buf<f32>,
) -> Result<()> {
    check_swiglu(
        b.buf_len(x),
        b.buf_len(norm),
        b.buf_len(w_gate),
        b.buf_len(w_up),
        b.buf_len(out),
        n,
        k,
    )?;
    let len = b.buf_len(out);
    let (mut gate, mut up) = (b.zeros(len)?, b.zeros(len)?);
    rms_norm_matmul_many(
        b,
        x,
        norm,
        eps,
        &[w_gate, w_up],
        n,
        k,
        &mut [&mut gate, &mut up],
    )?;
    b.silu_mul(&gate, &up, out)
}

/// The reference of [`Backend::matmul_add`].
pub(crate) fn matmul_add<B: Backend, W: Half>(
    b: &B,
    x: &B::Buf<f32>,
    w: &B::Buf<W>,
    n: usize,
    k: usize,
    m: usize,
    out: &mut B::Buf<f32>,
) -> Result<()> {
    let mut y = b.zeros(b.buf_len(out))?;
    b.matmul(x, w, n, k, m, &mut y)?;
    b.add_assign(out, &y)
}
