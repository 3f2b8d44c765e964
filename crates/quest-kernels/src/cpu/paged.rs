//! CPU reference for writing the paged KV cache and keeping its per-page key bounds.

use crate::dtype::Half;
use crate::error::{Result, expect_len, index_err};
use crate::layout::PagedLayout;
use crate::quant::{encode_down, encode_up};

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
    layout.validate(OP)?; // before the lengths below are computed
    let lens = [
        ("kv pages", kv.len(), layout.kv_len()),
        ("bounds", bounds.len(), layout.bounds_len()),
    ];
    check_bounds_args(OP, layout, &lens, pages, page_lens)?;
    let width = layout.token_width();
    let (mut hi, mut lo) = (vec![0f32; width], vec![0f32; width]);
    for (&p, &len) in pages.iter().zip(page_lens) {
        let p = p as usize;
        key_range(kv, layout, p, len as usize, &mut hi, &mut lo);
        let (max_at, min_at) = (layout.bounds_offset(p, 0, 0), layout.bounds_offset(p, 1, 0));
        for c in 0..width {
            bounds[max_at + c] = T::from_f32(hi[c]);
            bounds[min_at + c] = T::from_f32(lo[c]);
        }
    }
    Ok(())
}

/// The 8-bit version of [`update_bounds`]: the same max and min, encoded outward per (page, KV
/// head) by [`crate::quant::encode_up`] (max) and [`crate::quant::encode_down`] (min) into `codes`
/// and `params` (layouts in [`crate::layout`]). Always from the stored keys.
pub fn update_bounds_int8<T: Half>(
    kv: &[T],
    codes: &mut [u8],
    params: &mut [f32],
    layout: &PagedLayout,
    pages: &[i32],
    page_lens: &[i32],
) -> Result<()> {
    const OP: &str = "update_bounds_int8";
    layout.validate(OP)?; // before the lengths below are computed
    let lens = [
        ("kv pages", kv.len(), layout.kv_len()),
        ("bound codes", codes.len(), layout.bounds_len()),
        ("bound params", params.len(), layout.int8_params_len()),
    ];
    check_bounds_args(OP, layout, &lens, pages, page_lens)?;
    let (width, d) = (layout.token_width(), layout.head_dim);
    let (mut hi, mut lo) = (vec![0f32; width], vec![0f32; width]);
    for (&p, &len) in pages.iter().zip(page_lens) {
        let p = p as usize;
        key_range(kv, layout, p, len as usize, &mut hi, &mut lo);
        for g in 0..layout.num_kv_heads {
            let at = layout.int8_params_offset(p, g);
            let max_at = layout.bounds_offset(p, 0, g);
            let (hb, hs) = encode_up(&hi[g * d..][..d], &mut codes[max_at..][..d]);
            let min_at = layout.bounds_offset(p, 1, g);
            let (lb, ls) = encode_down(&lo[g * d..][..d], &mut codes[min_at..][..d]);
            params[at..at + 4].copy_from_slice(&[hb, hs, lb, ls]);
        }
    }
    Ok(())
}

/// Shapes (`(name, got, want)` buffer lengths), page ids and lengths of an `update_bounds*` call,
/// all checked before anything is written.
pub(crate) fn check_bounds_args(
    op: &'static str,
    layout: &PagedLayout,
    lens: &[(&str, usize, usize)],
    pages: &[i32],
    page_lens: &[i32],
) -> Result<()> {
    layout.validate(op)?;
    for &(what, got, want) in lens {
        expect_len(op, what, got, want)?;
    }
    expect_len(op, "page_lens", page_lens.len(), pages.len())?;
    for (&p, &len) in pages.iter().zip(page_lens) {
        if p < 0 || p as usize >= layout.num_pages {
            return Err(index_err(
                op,
                format!("page {p} outside 0..{}", layout.num_pages),
            ));
        }
        if len < 1 || len as usize > layout.page_size {
            return Err(index_err(
                op,
                format!("page {p} length {len} outside 1..={}", layout.page_size),
            ));
        }
    }
    Ok(())
}

/// `hi`, `lo` = the channel-wise max and min (f32, NaN ignored) of page `p`'s first `len` keys.
fn key_range<T: Half>(
    kv: &[T],
    layout: &PagedLayout,
    p: usize,
    len: usize,
    hi: &mut [f32],
    lo: &mut [f32],
) {
    let width = layout.token_width();
    hi.fill(f32::NEG_INFINITY);
    lo.fill(f32::INFINITY);
    for slot in 0..len {
        let base = layout.kv_offset(p, 0, slot, 0);
        for (c, key) in kv[base..base + width].iter().enumerate() {
            let x = key.to_f32();
            hi[c] = hi[c].max(x);
            lo[c] = lo[c].min(x);
        }
    }
}
