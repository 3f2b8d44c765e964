//! CPU reference for paged attention: decode (one query per sequence, dense or sparse page lists)
//! and causal prefill. Softmax in f32 with the running max subtracted; K/V converted from storage
//! to f32 as they are read.

use rayon::prelude::*;

use super::dense::dot;
use super::select::check_heads;
use crate::backend::AttentionShape;
use crate::dtype::Half;
use crate::error::{Result, expect_len, shape_err};
use crate::layout::{EMPTY_PAGE, PageTable, PagedLayout, TableRows};

/// The keys (kv = 0) or values (kv = 1) of one KV head along a table row, as f32 `[tokens, d]`.
/// Empty slots ([`EMPTY_PAGE`]) hold no tokens: nothing is read for them.
fn gather_row<T: Half>(
    kv: &[T],
    layout: &PagedLayout,
    table: &PageTable,
    row: usize,
    which: usize,
    head: usize,
) -> Vec<f32> {
    let d = layout.head_dim;
    let pages = table.row(row);
    let tokens = table.row_tokens(row, layout.page_size);
    let mut out = vec![0f32; tokens * d];
    let mut t = 0;
    for (i, &p) in pages.iter().enumerate() {
        if p == EMPTY_PAGE {
            continue;
        }
        let filled = if i + 1 == pages.len() {
            table.last_page_len[row] as usize
        } else {
            layout.page_size
        };
        for slot in 0..filled {
            let src = &kv[layout.kv_offset(p as usize, which, slot, head)..][..d];
            T::to_f32_slice(src, &mut out[t * d..(t + 1) * d]);
            t += 1;
        }
    }
    out.truncate(t * d);
    out
}

/// `out = softmax(q · K^T * scale) · V` over the first `n` rows of `keys`/`values` (`[*, d]`).
fn attend(q: &[f32], keys: &[f32], values: &[f32], n: usize, scale: f32, out: &mut [f32]) {
    out.fill(0.0);
    if n == 0 {
        return;
    }
    let d = q.len();
    let logits: Vec<f32> = (0..n)
        .map(|t| dot(q, &keys[t * d..(t + 1) * d]) * scale)
        .collect();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for (t, &l) in logits.iter().enumerate() {
        let p = (l - max).exp();
        sum += p;
        for (o, &v) in out.iter_mut().zip(&values[t * d..(t + 1) * d]) {
            *o += p * v;
        }
    }
    let inv = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= inv);
}

/// Decode attention; see [`crate::Backend::decode_attention`].
pub fn decode_attention<T: Half>(
    q: &[f32],
    kv: &[T],
    shape: &AttentionShape,
    table: &PageTable,
    rows: TableRows,
    out: &mut [f32],
) -> Result<()> {
    const OP: &str = "decode_attention";
    let layout = &shape.layout;
    check_heads(OP, shape)?;
    table.validate_sparse(OP, layout)?;
    expect_len(OP, "kv pages", kv.len(), layout.kv_len())?;
    let (hq, hkv, d) = (shape.num_qo_heads, layout.num_kv_heads, layout.head_dim);
    if q.len() % (hq * d) != 0 {
        return Err(shape_err(OP, "q is not [batch, num_qo_heads, head_dim]"));
    }
    let batch = q.len() / (hq * d);
    expect_len(OP, "out", out.len(), q.len())?;
    expect_len(OP, "table rows", table.rows(), rows.count(batch, hq, hkv))?;
    let group = shape.group_size();
    out.par_chunks_mut(d).enumerate().for_each(|(bh, o)| {
        let (b, h) = (bh / hq, bh % hq);
        let row = rows.row(b, h, hq, hkv);
        let keys = gather_row(kv, layout, table, row, 0, h / group);
        let values = gather_row(kv, layout, table, row, 1, h / group);
        let n = keys.len() / d; // the tokens of the row's pages, empty slots skipped
        attend(
            &q[bh * d..(bh + 1) * d],
            &keys,
            &values,
            n,
            shape.sm_scale,
            o,
        );
    });
    Ok(())
}

/// Causal prefill attention; see [`crate::Backend::prefill_attention`].
pub fn prefill_attention<T: Half>(
    q: &[f32],
    kv: &[T],
    shape: &AttentionShape,
    table: &PageTable,
    qo_indptr: &[i32],
    out: &mut [f32],
) -> Result<()> {
    const OP: &str = "prefill_attention";
    let layout = &shape.layout;
    check_heads(OP, shape)?;
    table.validate(OP, layout)?;
    expect_len(OP, "kv pages", kv.len(), layout.kv_len())?;
    let (hq, d) = (shape.num_qo_heads, layout.head_dim);
    let batch = table.rows();
    expect_len(OP, "qo_indptr", qo_indptr.len(), batch + 1)?;
    if qo_indptr[0] != 0 {
        return Err(shape_err(OP, "qo_indptr must start with 0"));
    }
    for b in 0..batch {
        // In i64: hostile i32 entries must not overflow the subtraction.
        let n = qo_indptr[b + 1] as i64 - qo_indptr[b] as i64;
        let len = table.row_tokens(b, layout.page_size);
        if n < 0 || n as usize > len {
            return Err(shape_err(
                OP,
                format!("sequence {b} has {n} queries but {len} tokens in the cache"),
            ));
        }
    }
    let total = qo_indptr[batch] as usize;
    expect_len(OP, "q", q.len(), total * hq * d)?;
    expect_len(OP, "out", out.len(), total * hq * d)?;
    let group = shape.group_size();
    for b in 0..batch {
        let (q0, q1) = (qo_indptr[b] as usize, qo_indptr[b + 1] as usize);
        let len = table.row_tokens(b, layout.page_size);
        let heads: Vec<(Vec<f32>, Vec<f32>)> = (0..layout.num_kv_heads)
            .map(|g| {
                (
                    gather_row(kv, layout, table, b, 0, g),
                    gather_row(kv, layout, table, b, 1, g),
                )
            })
            .collect();
        let first_pos = len - (q1 - q0);
        out[q0 * hq * d..q1 * hq * d]
            .par_chunks_mut(d)
            .enumerate()
            .for_each(|(ih, o)| {
                let (i, h) = (ih / hq, ih % hq);
                let (keys, values) = &heads[h / group];
                let qv = &q[((q0 + i) * hq + h) * d..][..d];
                attend(qv, keys, values, first_pos + i + 1, shape.sm_scale, o);
            });
    }
    Ok(())
}
