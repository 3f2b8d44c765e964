//! Llama's decode-step projections with the work around them folded in: the RMSNorm before a
//! projection, RoPE after the q/k projection, SiLU·mul after gate/up and the residual add after
//! the output projections. Each is a [`Backend`] op whose *meaning* is the composition of the
//! plain ops written here; the CPU runs exactly that composition, and the CUDA backend folds it
//! into its streaming GEMV when decoding (see `gemv` in ptx/dense.cu), so the step launches one
//! kernel per projection and no norm, rope, SiLU or add kernels.

use crate::backend::{Backend, check_matmul_many};
use crate::dtype::Half;
use crate::error::{Result, shape_err};

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
pub(crate) fn check_norm(op: &'static str, norm_len: usize, k: usize) -> Result<()> {
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
    check_norm("rms_norm_matmul_many", b.buf_len(norm), k)?;
    check_matmul_many(ws.iter().map(|w| b.buf_len(*w)), outs.len(), k)?;
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
    rms_norm_matmul_many(b, x, norm, eps, &w, n, k, &mut [&mut *q, &mut *kk, v])?;
    b.rope_qk(q, kk, rope.positions, rope.inv_freq, rope.head_dim)
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
    let (gl, ul) = (b.buf_len(w_gate), b.buf_len(w_up));
    if gl != ul {
        return Err(shape_err(
            "rms_norm_swiglu",
            format!("gate weight of {gl} elements but up weight of {ul}"),
        ));
    }
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
