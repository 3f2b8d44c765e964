//! Appending K/V to the paged cache and recomputing page key bounds (`ptx/paged.cu`); the
//! checks and their order are those of [`crate::cpu::paged`].

use cudarc::driver::LaunchConfig;

use super::{CudaBackend, CudaBuf, Family, cuda_err, suffix};
use crate::dtype::Half;
use crate::error::{Result, arg_err, expect_len, index_err};
use crate::layout::PagedLayout;

/// `rows` blocks along x, each row's token width spread over blocks of 256 channels along y.
fn block_cfg(rows: usize, width: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, width.div_ceil(256).clamp(1, 65535) as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn width_i32(op: &'static str, layout: &PagedLayout) -> Result<(i32, i32)> {
    let w =
        i32::try_from(layout.token_width()).map_err(|_| arg_err(op, "token width exceeds i32"))?;
    Ok((layout.page_size as i32, w))
}

pub(super) fn append_kv<T: Half>(
    be: &CudaBackend,
    kv: &mut CudaBuf<T>,
    layout: &PagedLayout,
    k: &CudaBuf<f32>,
    v: &CudaBuf<f32>,
    slots: &CudaBuf<i32>,
) -> Result<()> {
    const OP: &str = "append_kv";
    layout.validate(OP)?;
    expect_len(OP, "kv pages", kv.len(), layout.kv_len())?;
    let width = layout.token_width();
    expect_len(OP, "k", k.len(), slots.len() * width)?;
    expect_len(OP, "v", v.len(), slots.len() * width)?;
    let capacity = layout.num_pages * layout.page_size;
    if let Some(&bad) = be
        .host_ints(slots)?
        .iter()
        .find(|&&s| s < 0 || s as usize >= capacity)
    {
        return Err(index_err(OP, format!("slot {bad} outside 0..{capacity}")));
    }
    if slots.is_empty() {
        return Ok(());
    }
    let f = be.func(
        OP,
        Family::Paged,
        &format!("append_kv_{}", suffix::<T>(OP)?),
    )?;
    let (ps, w) = width_i32(OP, layout)?;
    let cap = capacity as i64;
    let (kvp, kp, vp, sp) = (kv.touched(), k.ptr(), v.ptr(), slots.ptr());
    let mut b = be.launch_builder(&f);
    b.arg(&kvp)
        .arg(&kp)
        .arg(&vp)
        .arg(&sp)
        .arg(&ps)
        .arg(&w)
        .arg(&cap);
    // SAFETY: matches `append_kv_*(T*, const float*, const float*, const int*, int, int, long
    // long)`; every slot is inside the cache (checked above, and again in the kernel).
    unsafe { b.launch(block_cfg(slots.len(), layout.token_width())) }
        .map_err(|e| cuda_err(OP, e))?;
    Ok(())
}

pub(super) fn update_bounds<T: Half>(
    be: &CudaBackend,
    kv: &CudaBuf<T>,
    bounds: &mut CudaBuf<T>,
    layout: &PagedLayout,
    pages: &CudaBuf<i32>,
    page_lens: &CudaBuf<i32>,
) -> Result<()> {
    const OP: &str = "update_bounds";
    layout.validate(OP)?;
    expect_len(OP, "kv pages", kv.len(), layout.kv_len())?;
    expect_len(OP, "bounds", bounds.len(), layout.bounds_len())?;
    expect_len(OP, "page_lens", page_lens.len(), pages.len())?;
    let (hp, hl) = (be.host_ints(pages)?, be.host_ints(page_lens)?);
    for (&p, &len) in hp.iter().zip(hl.iter()) {
        if p < 0 || p as usize >= layout.num_pages {
            return Err(index_err(
                OP,
                format!("page {p} outside 0..{}", layout.num_pages),
            ));
        }
        if len < 1 || len as usize > layout.page_size {
            return Err(index_err(
                OP,
                format!("page {p} length {len} outside 1..={}", layout.page_size),
            ));
        }
    }
    if pages.is_empty() {
        return Ok(());
    }
    let f = be.func(
        OP,
        Family::Paged,
        &format!("update_bounds_{}", suffix::<T>(OP)?),
    )?;
    let (ps, w) = width_i32(OP, layout)?;
    let np = i32::try_from(layout.num_pages).map_err(|_| arg_err(OP, "num_pages exceeds i32"))?;
    let (kvp, bp, pp, lp) = (kv.ptr(), bounds.touched(), pages.ptr(), page_lens.ptr());
    let mut b = be.launch_builder(&f);
    b.arg(&kvp)
        .arg(&bp)
        .arg(&pp)
        .arg(&lp)
        .arg(&ps)
        .arg(&w)
        .arg(&np);
    // SAFETY: matches `update_bounds_*(const T*, T*, const int*, const int*, int, int, int)`;
    // pages and lengths were checked above (and are re-checked in the kernel).
    unsafe { b.launch(block_cfg(pages.len(), layout.token_width())) }
        .map_err(|e| cuda_err(OP, e))?;
    Ok(())
}
