//! The streaming GEMV of ptx/dense.cu (decode's projections: n <= 8 rows of x, weights read
//! once) and the ops of [`crate::fused`] built on it: the RMSNorm of x folded into the loads,
//! and RoPE, SiLU·mul or the residual add folded into the block's last step. Shapes that do not
//! fit the GEMV run the reference composition of plain ops instead.

use cudarc::driver::DeviceRepr;

use super::dense::{as_i32, cfg};
use super::{CudaBackend, CudaBuf, Family, cuda_err, suffix};
use crate::dtype::{DType, Half};
use crate::error::{Result, arg_err, expect_len};
use crate::fused::{self, RopeInput, check_projection, check_rope, check_swiglu};

/// Rows of x up to which the GEMV kernels (weights streamed once) are used.
pub(super) const GEMV_MAX_ROWS: usize = 8;
/// Matrices one GEMV launch can take (`GEMV_MAX_MATS` in ptx/dense.cu).
pub(super) const GEMV_MAX_MATS: usize = 4;

/// Whether `n` rows of x with rows of `k` go through the GEMV (16-byte weight chunks).
pub(super) fn fits(n: usize, k: usize) -> bool {
    (1..=GEMV_MAX_ROWS).contains(&n) && k % 8 == 0
}

/// What a matrix's blocks do with their row sums (`GEMV_STORE` .. `GEMV_SWIGLU` in ptx/dense.cu).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Store = 0,
    Add = 1,
    Rope = 2,
    SwiGlu = 3,
}

/// One matrix of a launch: `m` rows of k (for SwiGlu, `m` rows in each of `w` and `w2`).
#[derive(Clone, Copy, Debug)]
pub(super) struct GemvMat {
    w: u64,
    w2: u64,
    m: usize,
    out: u64,
    mode: Mode,
}

impl GemvMat {
    pub(super) fn store(w: u64, m: usize, out: u64) -> Self {
        GemvMat {
            w,
            w2: 0,
            m,
            out,
            mode: Mode::Store,
        }
    }
    fn with(self, mode: Mode) -> Self {
        GemvMat { mode, ..self }
    }
}

/// What a launch folds in besides the matmuls (0 / null where unused).
#[derive(Clone, Copy, Debug, Default)]
struct Fold {
    norm: u64,
    eps: f32,
    positions: u64,
    inv_freq: u64,
    head_dim: i32,
}

/// `GemvBatch` of ptx/dense.cu: up to 4 matrices sharing x, their row blocks concatenated.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct GemvBatch {
    w: [u64; GEMV_MAX_MATS],
    w2: [u64; GEMV_MAX_MATS],
    out: [u64; GEMV_MAX_MATS],
    m: [i32; GEMV_MAX_MATS],
    mode: [i32; GEMV_MAX_MATS],
    first: [i32; GEMV_MAX_MATS + 1],
    count: i32,
    n: i32,
    k: i32,
    head_dim: i32,
    norm: u64,
    positions: u64,
    inv_freq: u64,
    eps: f32,
}
// SAFETY: #[repr(C)] of u64/i32/f32 fields only, the same layout as `GemvBatch` in ptx/dense.cu.
unsafe impl DeviceRepr for GemvBatch {}
// The C struct's size and the 4 padding bytes before `norm`, pinned.
const _: () = assert!(
    std::mem::size_of::<GemvBatch>() == 200 && std::mem::offset_of!(GemvBatch, norm) == 168
);

/// The GEMV variant for `n` rows of x with rows of `k` weights of type `W`: (kernel prefix,
/// weight rows per block, threads). 2 and 5-8 rows of x with f16 weights go to the tensor cores
/// (`gemvtc`: 16 rows a block, k in chunks of 32), unless `QUEST_GEMV_TC=0`: there the CUDA-core
/// kernels are bound by reading x from L1 (8B batch 8: 24.3 -> 20.3 ms a step, H100). One row of
/// x streams the weights as fast on the CUDA cores, and 3-4 rows were 2% faster there; they also
/// keep bf16 and f32 weights (a bf16 hi/lo split of x would carry 16 bits, not f16's 22).
fn variant<W: Half>(n: usize, k: usize) -> (&'static str, usize, u32) {
    let tc_rows = n == 2 || n >= 5; // 3-4 rows: the CUDA-core gemv4 was 2% faster end to end
    if tc_rows && k % 32 == 0 && W::DTYPE == DType::F16 && tensor_core_gemv() {
        return ("gemvtc", 16, 256);
    }
    match n {
        1 => ("gemv1", 2, 256),
        2 => ("gemv2", 2, 256),
        3 | 4 => ("gemv4", 4, 128),
        _ => ("gemv8", 8, 128),
    }
}

/// `QUEST_GEMV_TC=0` keeps every GEMV on the CUDA cores, for A/B measurements.
fn tensor_core_gemv() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("QUEST_GEMV_TC").map_or(true, |v| v != "0"))
}

/// One launch of the streaming GEMV over `mats`, all sharing x[n, k]. Requires `fits(n, k)`,
/// every m >= 1 (even and whole heads for Rope), at most 4 matrices; the callers check the
/// buffers' lengths.
fn launch_folded<W: Half>(
    be: &CudaBackend,
    x: u64,
    mats: &[GemvMat],
    n: usize,
    k: usize,
    fold: Fold,
) -> Result<()> {
    const OP: &str = "matmul";
    if mats.len() > GEMV_MAX_MATS {
        return Err(arg_err(
            OP,
            format!(
                "{} matrices in one GEMV launch, at most {GEMV_MAX_MATS}",
                mats.len()
            ),
        ));
    }
    let (prefix, rows, threads) = variant::<W>(n, k);
    let pairs = rows / 2; // paired modes: (row, partner) pairs per block
    let mut p = GemvBatch {
        count: mats.len() as i32,
        n: as_i32(OP, "n", n)?,
        k: as_i32(OP, "k", k)?,
        head_dim: fold.head_dim,
        norm: fold.norm,
        positions: fold.positions,
        inv_freq: fold.inv_freq,
        eps: fold.eps,
        ..Default::default()
    };
    let mut blocks = 0usize;
    for (i, mat) in mats.iter().enumerate() {
        p.w[i] = mat.w;
        p.w2[i] = mat.w2;
        p.out[i] = mat.out;
        p.m[i] = as_i32(OP, "m", mat.m)?;
        p.mode[i] = mat.mode as i32;
        p.first[i] = as_i32(OP, "blocks", blocks)?;
        blocks += match mat.mode {
            Mode::Store | Mode::Add => mat.m.div_ceil(rows),
            Mode::Rope => (mat.m / 2).div_ceil(pairs),
            Mode::SwiGlu => mat.m.div_ceil(pairs),
        };
    }
    for f in &mut p.first[mats.len()..] {
        *f = as_i32(OP, "blocks", blocks)?;
    }
    if blocks == 0 {
        return Ok(()); // no matrices: nothing to launch (a grid of 0 blocks is an error)
    }
    let norm = if fold.norm != 0 { "n" } else { "" };
    let f = be.func(
        OP,
        Family::Dense,
        &format!("{prefix}{norm}_{}", suffix::<W>(OP)?),
    )?;
    let mut b = be.launch_builder(&f);
    b.arg(&x).arg(&p);
    let grid = u32::try_from(blocks).map_err(|_| arg_err(OP, "too many weight rows"))?;
    // SAFETY: matches `gemv<N>[n]_*` / `gemvtc[n]_f16(const float* x, GemvBatch)`; every matrix
    // holds m_i rows of k (w2 too for SwiGlu) and its output n rows of m_i (checked by the
    // callers), x holds n rows of k, k % 8 == 0 (k % 32 == 0 for gemvtc, `variant`) keeps every
    // 16-byte chunk inside its row and aligned; the norm weight holds k, positions n and
    // inv_freq head_dim / 2 where used.
    unsafe { b.launch(cfg((grid, 1, 1), threads)) }.map_err(|e| cuda_err(OP, e))?;
    Ok(())
}

/// [`launch_folded`] with nothing folded in: plain `out_i = x · w_i^T`.
pub(super) fn launch<W: Half>(
    be: &CudaBackend,
    x: u64,
    mats: &[GemvMat],
    n: usize,
    k: usize,
) -> Result<()> {
    launch_folded::<W>(be, x, mats, n, k, Fold::default())
}

#[allow(clippy::too_many_arguments)]
pub(super) fn rms_norm_matmul_many<W: Half>(
    be: &CudaBackend,
    x: &CudaBuf<f32>,
    norm: &CudaBuf<W>,
    eps: f32,
    ws: &[&CudaBuf<W>],
    n: usize,
    k: usize,
    outs: &mut [&mut CudaBuf<f32>],
) -> Result<()> {
    if !fits(n, k) || ws.len() > GEMV_MAX_MATS || ws.iter().any(|w| w.is_empty()) {
        return fused::rms_norm_matmul_many(be, x, norm, eps, ws, n, k, outs);
    }
    let w_lens: Vec<usize> = ws.iter().map(|w| w.len()).collect();
    let out_lens: Vec<usize> = outs.iter().map(|o| o.len()).collect();
    let op = "rms_norm_matmul_many";
    check_projection(op, x.len(), norm.len(), &w_lens, &out_lens, n, k)?;
    let mut mats = Vec::with_capacity(ws.len());
    for (w, out) in ws.iter().zip(outs.iter_mut()) {
        mats.push(GemvMat::store(w.ptr(), w.len() / k, out.touched()));
    }
    let fold = Fold {
        norm: norm.ptr(),
        eps,
        ..Default::default()
    };
    launch_folded::<W>(be, x.ptr(), &mats, n, k, fold)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn qkv_projection<W: Half>(
    be: &CudaBackend,
    x: &CudaBuf<f32>,
    norm: &CudaBuf<W>,
    eps: f32,
    w: [&CudaBuf<W>; 3],
    n: usize,
    k: usize,
    out: [&mut CudaBuf<f32>; 3],
    rope: &RopeInput<'_, CudaBackend>,
) -> Result<()> {
    const OP: &str = "rope";
    let hd = rope.head_dim;
    let whole_heads = |w: &CudaBuf<W>| k > 0 && hd > 0 && (w.len() / k) % hd == 0;
    if !fits(n, k)
        || hd % 2 != 0
        || w.iter().any(|w| w.is_empty())
        || !whole_heads(w[0])
        || !whole_heads(w[1])
    {
        return fused::qkv_projection(be, x, norm, eps, w, n, k, out, rope);
    }
    let [q, kk, v] = out;
    let w_lens = w.map(|w| w.len());
    let out_lens = [q.len(), kk.len(), v.len()];
    check_projection(
        "qkv_projection",
        x.len(),
        norm.len(),
        &w_lens,
        &out_lens,
        n,
        k,
    )?;
    check_rope(be, rope, n, out_lens[0], out_lens[1])?;
    be.check_positions(OP, rope.positions)?;
    let mats = [
        GemvMat::store(w[0].ptr(), w_lens[0] / k, q.touched()).with(Mode::Rope),
        GemvMat::store(w[1].ptr(), w_lens[1] / k, kk.touched()).with(Mode::Rope),
        GemvMat::store(w[2].ptr(), w_lens[2] / k, v.touched()),
    ];
    let fold = Fold {
        norm: norm.ptr(),
        eps,
        positions: rope.positions.ptr(),
        inv_freq: rope.inv_freq.ptr(),
        head_dim: as_i32(OP, "head_dim", hd)?,
    };
    launch_folded::<W>(be, x.ptr(), &mats, n, k, fold)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn rms_norm_swiglu<W: Half>(
    be: &CudaBackend,
    x: &CudaBuf<f32>,
    norm: &CudaBuf<W>,
    eps: f32,
    w_gate: &CudaBuf<W>,
    w_up: &CudaBuf<W>,
    n: usize,
    k: usize,
    out: &mut CudaBuf<f32>,
) -> Result<()> {
    if !fits(n, k) || w_gate.is_empty() || w_gate.len() != w_up.len() {
        return fused::rms_norm_swiglu(be, x, norm, eps, w_gate, w_up, n, k, out);
    }
    check_swiglu(
        x.len(),
        norm.len(),
        w_gate.len(),
        w_up.len(),
        out.len(),
        n,
        k,
    )?;
    let mat = GemvMat {
        w: w_gate.ptr(),
        w2: w_up.ptr(),
        m: w_gate.len() / k,
        out: out.touched(),
        mode: Mode::SwiGlu,
    };
    let fold = Fold {
        norm: norm.ptr(),
        eps,
        ..Default::default()
    };
    launch_folded::<W>(be, x.ptr(), &[mat], n, k, fold)
}

pub(super) fn matmul_add<W: Half>(
    be: &CudaBackend,
    x: &CudaBuf<f32>,
    w: &CudaBuf<W>,
    n: usize,
    k: usize,
    m: usize,
    out: &mut CudaBuf<f32>,
) -> Result<()> {
    if !fits(n, k) || m == 0 {
        return fused::matmul_add(be, x, w, n, k, m, out);
    }
    const OP: &str = "matmul";
    expect_len(OP, "x", x.len(), n * k)?;
    expect_len(OP, "w", w.len(), m * k)?;
    expect_len(OP, "out", out.len(), n * m)?;
    let mat = GemvMat::store(w.ptr(), m, out.touched()).with(Mode::Add);
    launch::<W>(be, x.ptr(), &[mat], n, k)
}
