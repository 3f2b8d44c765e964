//! CPU reference for writing the paged KV cache and keeping its per-page key bounds.

use crate::dtype::Half;
use crate::error::{Result, expect_len, index_err};
use crate::layout::PagedLayout;

/// Writes `k[t]`, `v[t]` (`[n, num_kv_heads, head_dim]`, f32) into slot `slots[t]`, rounding to
/// the storage type. Slots are checked before anything is written, so a bad slot changes nothing.
pub fn append_kv<T: Half>(
    kv: &mut [T],
    layout: &PagedLayout,
    k: &[f32],
    v: &[f32],
    slots: &[i32],
) -> Result<()> {
    const OP: &str = "append_kv";
    layout.validate(OP)?;
    expect_len(OP, "kv pages", kv.len(), layout.kv_len())?;
    let width = layout.token_width();
    expect_len(OP, "k", k.len(), slots.len() * width)?;
    expect_len(OP, "v", v.len(), slots.len() * width)?;
    let capacity = layout.num_pages * layout.page_size;
    if let Some(&bad) = slots.iter().find(|&&s| s < 0 || s as usize >= capacity) {
        return Err(index_err(OP, format!("slot {bad} outside 0..{capacity}")));
    }
    for (t, &slot) in slots.iter().enumerate() {
        let (page, off) = (
            slot as usize / layout.page_size,
            slot as usize % layout.page_size,
        );
        for (which, src) in [(0, k), (1, v)] {
            let dst = layout.kv_offset(page, which, off, 0);
            for (d, s) in kv[dst..dst + width]
                .iter_mut()
                .zip(&src[t * width..(t + 1) * width])
            {
                *d = T::from_f32(*s);
            }
        }
    }
    Ok(())
}

/// For each listed page, recomputes `bounds[page, 0] = max` and `bounds[page, 1] = min` over the
/// page's first `page_lens[i]` stored keys, per KV head and channel. Rounding is exact: the max of
/// stored values is a stored value.
pub fn update_bounds<T: Half>(
    kv: &[T],
    bounds: &mut [T],
    layout: &PagedLayout,
    pages: &[i32],
    page_lens: &[i32],
) -> Result<()> {
    const OP: &str = "update_bounds";
    layout.validate(OP)?;
    expect_len(OP, "kv pages", kv.len(), layout.kv_len())?;
    expect_len(OP, "bounds", bounds.len(), layout.bounds_len())?;
    expect_len(OP, "page_lens", page_lens.len(), pages.len())?;
    for (&p, &len) in pages.iter().zip(page_lens) {
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
    let width = layout.token_width();
    for (&p, &len) in pages.iter().zip(page_lens) {
        let p = p as usize;
        let mut hi = vec![f32::NEG_INFINITY; width];
        let mut lo = vec![f32::INFINITY; width];
        for slot in 0..len as usize {
            let base = layout.kv_offset(p, 0, slot, 0);
            for (c, key) in kv[base..base + width].iter().enumerate() {
                let x = key.to_f32();
                hi[c] = hi[c].max(x);
                lo[c] = lo[c].min(x);
            }
        }
        let (max_at, min_at) = (layout.bounds_offset(p, 0, 0), layout.bounds_offset(p, 1, 0));
        for c in 0..width {
            bounds[max_at + c] = T::from_f32(hi[c]);
            bounds[min_at + c] = T::from_f32(lo[c]);
        }
    }
    Ok(())
}
