//! 8-bit page bounds (`ptx/bounds_int8.cu`): encoding them from the stored keys and Quest's
//! estimate over them; the same checks, in the same order, and the same results as
//! [`crate::cpu::paged::update_bounds_int8`] (bit for bit) and
//! [`crate::cpu::select::estimate_pages_int8`] (up to f32 summation order).

use cudarc::driver::{DeviceRepr, LaunchConfig};

use super::select::{check_estimate_teams, i32_of};
use super::{CudaBackend, CudaBuf, Family, check_table, cuda_err, suffix};
use crate::backend::{AttentionShape, DevicePageTable};
use crate::cpu::paged::check_bounds_args;
use crate::cpu::select::{check_estimate_io, check_heads};
use crate::dtype::Half;
use crate::error::{Result, arg_err, expect_len};
use crate::layout::PagedLayout;

#[repr(C)]
#[derive(Clone, Copy)]
struct Int8EstimateParams {
    batch: i32,
    num_qo_heads: i32,
    num_kv_heads: i32,
    head_dim: i32,
    nnz: i32,
    num_pages: i32,
    slices: i32,
}
// SAFETY: plain #[repr(C)] i32 fields, the same layout as `Int8EstimateParams` in
// ptx/bounds_int8.cu.
unsafe impl DeviceRepr for Int8EstimateParams {}

/// The kernels give each lane 16 channels (one 16-byte load of codes), a power-of-two team of
/// `head_dim / 16` lanes up to half a warp; the encoder keeps at most 8 channels a lane.
fn check_head_dim(op: &'static str, head_dim: usize) -> Result<()> {
    if !matches!(head_dim, 16 | 32 | 64 | 128 | 256) {
        return Err(arg_err(
            op,
            format!(
                "the CUDA kernels for 8-bit bounds support head_dim 16, 32, 64, 128 or 256, not {head_dim}"
            ),
        ));
    }
    Ok(())
}

pub(super) fn update_bounds_int8<T: Half>(
    be: &CudaBackend,
    kv: &CudaBuf<T>,
    codes: &mut CudaBuf<u8>,
    params: &mut CudaBuf<f32>,
    layout: &PagedLayout,
    pages: &CudaBuf<i32>,
    page_lens: &CudaBuf<i32>,
) -> Result<()> {
    const OP: &str = "update_bounds_int8";
    layout.validate(OP)?; // before the lengths below are computed
    let lens = [
        ("kv pages", kv.len(), layout.kv_len()),
        ("bound codes", codes.len(), layout.bounds_len()),
        ("bound params", params.len(), layout.int8_params_len()),
    ];
    // The CPU's checks, on the host copies of the page ids and lengths.
    let (hp, hl) = (be.host_ints(pages)?, be.host_ints(page_lens)?);
    check_bounds_args(OP, layout, &lens, &hp, &hl)?;
    check_head_dim(OP, layout.head_dim)?;
    if pages.is_empty() {
        return Ok(());
    }
    let f = be.func(
        OP,
        Family::BoundsInt8,
        &format!("update_bounds_int8_{}", suffix::<T>(OP)?),
    )?;
    let ps = i32_of(OP, "page_size", layout.page_size)?;
    let kvh = i32_of(OP, "num_kv_heads", layout.num_kv_heads)?;
    let hd = layout.head_dim as i32;
    let np = i32_of(OP, "num_pages", layout.num_pages)?;
    i32_of(OP, "token width", layout.token_width())?;
    let (kvp, cp, pp) = (kv.ptr(), codes.touched(), params.touched());
    let (ip, lp) = (pages.ptr(), page_lens.ptr());
    let mut b = be.launch_builder(&f);
    b.arg(&kvp)
        .arg(&cp)
        .arg(&pp)
        .arg(&ip)
        .arg(&lp)
        .arg(&ps)
        .arg(&kvh)
        .arg(&hd)
        .arg(&np);
    let cfg = LaunchConfig {
        // One warp per KV head: blocks of 8 warps along y (a decode step touches one page).
        grid_dim: (
            i32_of(OP, "pages", pages.len())? as u32,
            (kvh as u32).div_ceil(8).max(1),
            1,
        ),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: matches `update_bounds_int8_*(const T*, uint8_t*, float*, const int*, const int*,
    // int, int, int, int)`; buffer lengths, pages and lengths were checked above (and pages and
    // lengths are re-checked in the kernel), head_dim is one the kernel supports.
    unsafe { b.launch(cfg) }.map_err(|e| cuda_err(OP, e))?;
    Ok(())
}

pub(super) fn estimate_pages_int8(
    be: &CudaBackend,
    q: &CudaBuf<f32>,
    codes: &CudaBuf<u8>,
    params: &CudaBuf<f32>,
    shape: &AttentionShape,
    table: &DevicePageTable<CudaBackend>,
    scores: &mut CudaBuf<f32>,
) -> Result<()> {
    const OP: &str = "estimate_pages_int8";
    let layout = &shape.layout;
    check_heads(OP, shape)?;
    check_table(OP, table, layout)?;
    expect_len(OP, "bound codes", codes.len(), layout.bounds_len())?;
    expect_len(OP, "bound params", params.len(), layout.int8_params_len())?;
    let (hq, d) = (shape.num_qo_heads, layout.head_dim);
    let (batch, nnz) = (table.rows(), table.nnz());
    check_estimate_io(OP, shape, batch, nnz, q.len(), scores.len())?;
    check_head_dim(OP, d)?;
    if nnz == 0 {
        return Ok(());
    }
    // Query heads a team scores (compile-time in the kernel), entries per team and resident
    // blocks per SM (the instance's __launch_bounds__): EST8_* in ptx/bounds_int8.cu.
    let group = shape.group_size();
    let (heads, per_team, resident) = match group {
        1 => (1, 2, 4),
        2 => (2, 4, 2),
        _ => (4, 4, 2),
    };
    let slices = group.div_ceil(heads);
    let p = Int8EstimateParams {
        batch: i32_of(OP, "batch", batch)?,
        num_qo_heads: i32_of(OP, "num_qo_heads", hq)?,
        num_kv_heads: i32_of(OP, "num_kv_heads", layout.num_kv_heads)?,
        head_dim: d as i32,
        nnz: i32_of(OP, "nnz", nnz)?,
        num_pages: i32_of(OP, "num_pages", layout.num_pages)?,
        slices: i32_of(OP, "head slices", slices)?,
    };
    let f = be.func(
        OP,
        Family::BoundsInt8,
        &format!("estimate_pages_int8_g{heads}"),
    )?;
    let teams = nnz.div_ceil(per_team) * layout.num_kv_heads * slices;
    check_estimate_teams(OP, teams)?;
    let threads = teams * (d / 16);
    // The kernel loops grid-stride: at most the resident blocks, so there is no partial last wave.
    let blocks = u32::try_from(threads.div_ceil(256).min(resident * be.num_sms() as usize))
        .map_err(|_| arg_err(OP, format!("{threads} threads exceed one launch")))?;
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let (qp, cp, pp) = (q.ptr(), codes.ptr(), params.ptr());
    let (ip, xp, sp) = (table.indptr.ptr(), table.indices.ptr(), scores.touched());
    let mut b = be.launch_builder(&f);
    b.arg(&qp)
        .arg(&cp)
        .arg(&pp)
        .arg(&ip)
        .arg(&xp)
        .arg(&sp)
        .arg(&p);
    // SAFETY: matches `estimate_pages_int8_g*(const float*, const uint8_t*, const float*, const
    // int*, const int*, float*, Int8EstimateParams)`; lengths checked above, head_dim supported
    // (16-byte aligned code rows), page ids range-checked in the kernel.
    unsafe { b.launch(cfg) }.map_err(|e| cuda_err(OP, e))?;
    Ok(())
}
