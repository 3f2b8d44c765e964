//! CPU reference for Quest's page selection: the criticality estimate from per-page key bounds,
//! and top-k pages per head.

use crate::backend::{AttentionShape, SelectOptions};
use crate::dtype::Half;
use crate::error::{Result, expect_len, shape_err};
use crate::layout::{EMPTY_PAGE, PageTable, TableRows, check_row_structure};
use crate::quant::dequant;

/// `scores[h, j] = Σ_i max(q_i · max_i, q_i · min_i)`, an upper bound of `q · k` for every key `k`
/// in page `indices[j]` (each term bounds `q_i k_i` because `min_i <= k_i <= max_i`).
pub fn estimate_pages<T: Half>(
    q: &[f32],
    bounds: &[T],
    shape: &AttentionShape,
    table: &PageTable,
    scores: &mut [f32],
) -> Result<()> {
    const OP: &str = "estimate_pages";
    let layout = &shape.layout;
    check_heads(OP, shape)?;
    table.validate(OP, layout)?;
    expect_len(OP, "bounds", bounds.len(), layout.bounds_len())?;
    let (hq, d) = (shape.num_qo_heads, layout.head_dim);
    let (batch, nnz) = (table.rows(), table.indices.len());
    check_estimate_io(OP, shape, batch, nnz, q.len(), scores.len())?;
    let group = shape.group_size();
    for b in 0..batch {
        for j in table.indptr[b] as usize..table.indptr[b + 1] as usize {
            let page = table.indices[j] as usize;
            for h in 0..hq {
                let g = h / group;
                let qh = &q[(b * hq + h) * d..(b * hq + h + 1) * d];
                let hi = &bounds[layout.bounds_offset(page, 0, g)..][..d];
                let lo = &bounds[layout.bounds_offset(page, 1, g)..][..d];
                scores[h * nnz + j] = qh
                    .iter()
                    .zip(hi.iter().zip(lo))
                    .map(|(&qi, (&a, &b))| (qi * a.to_f32()).max(qi * b.to_f32()))
                    .sum();
            }
        }
    }
    Ok(())
}

/// [`estimate_pages`] over 8-bit bounds (`codes`, `params`: see [`crate::layout`]): the same sum
/// with each max and min replaced by its [`dequant`]ized code, which is `>=` the max and `<=`
/// the min, so the score is `>=` the one from exact bounds summed in this same order.
pub fn estimate_pages_int8(
    q: &[f32],
    codes: &[u8],
    params: &[f32],
    shape: &AttentionShape,
    table: &PageTable,
    scores: &mut [f32],
) -> Result<()> {
    const OP: &str = "estimate_pages_int8";
    let layout = &shape.layout;
    check_heads(OP, shape)?;
    table.validate(OP, layout)?;
    expect_len(OP, "bound codes", codes.len(), layout.bounds_len())?;
    expect_len(OP, "bound params", params.len(), layout.int8_params_len())?;
    let (hq, d) = (shape.num_qo_heads, layout.head_dim);
    let (batch, nnz) = (table.rows(), table.indices.len());
    check_estimate_io(OP, shape, batch, nnz, q.len(), scores.len())?;
    let group = shape.group_size();
    let (mut hi, mut lo) = (vec![0f32; d], vec![0f32; d]);
    for b in 0..batch {
        for j in table.indptr[b] as usize..table.indptr[b + 1] as usize {
            let page = table.indices[j] as usize;
            for g in 0..layout.num_kv_heads {
                let pr = &params[layout.int8_params_offset(page, g)..][..4];
                let ch = &codes[layout.bounds_offset(page, 0, g)..][..d];
                let cl = &codes[layout.bounds_offset(page, 1, g)..][..d];
                for i in 0..d {
                    hi[i] = dequant(ch[i], pr[0], pr[1]);
                    lo[i] = dequant(cl[i], pr[2], pr[3]);
                }
                for h in g * group..(g + 1) * group {
                    let qh = &q[(b * hq + h) * d..(b * hq + h + 1) * d];
                    scores[h * nnz + j] = qh
                        .iter()
                        .zip(hi.iter().zip(&lo))
                        .map(|(&qi, (&a, &b))| (qi * a).max(qi * b))
                        .sum();
                }
            }
        }
    }
    Ok(())
}

/// The q and scores lengths of an estimate over `rows` sequences and `nnz` table entries (every
/// backend's f16 and 8-bit estimate checks them the same way, after the table and the bounds).
pub(crate) fn check_estimate_io(
    op: &'static str,
    shape: &AttentionShape,
    rows: usize,
    nnz: usize,
    q_len: usize,
    scores_len: usize,
) -> Result<()> {
    let (hq, d) = (shape.num_qo_heads, shape.layout.head_dim);
    expect_len(op, "q", q_len, rows * hq * d)?;
    expect_len(op, "scores", scores_len, hq * nnz)
}

pub(crate) fn check_heads(op: &'static str, shape: &AttentionShape) -> Result<()> {
    let kvh = shape.layout.num_kv_heads;
    if kvh == 0 || shape.num_qo_heads == 0 || shape.num_qo_heads % kvh != 0 {
        return Err(shape_err(
            op,
            format!(
                "{} query heads are not a multiple of {kvh} KV heads",
                shape.num_qo_heads
            ),
        ));
    }
    // Then the geometry: an empty or overflowing layout would otherwise divide by zero or
    // overflow in the shape arithmetic of the callers.
    shape.layout.validate(op)
}

/// Keeps the last page of each sequence and the `budget_pages - 1` best others, per head row, or
/// with `opts.mass` the adaptive prefix of them; see [`crate::Backend::select_top_pages`]. `out`
/// must have the row structure of [`crate::DevicePageTable::for_selection`]; its indices and last
/// page lengths are written. Returns the number of pages written (empty slots not counted).
pub fn select_top_pages(
    scores: &[f32],
    shape: &AttentionShape,
    table: &PageTable,
    opts: SelectOptions,
    out: &mut PageTable,
) -> Result<u64> {
    const OP: &str = "select_top_pages";
    check_heads(OP, shape)?;
    table.validate(OP, &shape.layout)?;
    opts.validate(OP)?;
    let budget_pages = opts.budget_pages;
    let hq = shape.num_qo_heads;
    let nnz = table.indices.len();
    expect_len(OP, "scores", scores.len(), hq * nnz)?;
    let (heads, group) = match opts.rows {
        TableRows::PerKvHead => (shape.layout.num_kv_heads, shape.group_size()),
        _ => (hq, 1),
    };
    let batch = table.rows();
    expect_len(OP, "output rows", out.rows(), batch * heads)?;
    let mut want = vec![0i32];
    for b in 0..batch {
        let n = table.row(b).len().min(budget_pages) as i32;
        for _ in 0..heads {
            want.push(want.last().copied().unwrap_or(0) + n);
        }
    }
    if out.indptr != want {
        return Err(shape_err(
            OP,
            "output table rows do not match the budget (build it with for_selection)",
        ));
    }
    out.indices.resize(*want.last().unwrap_or(&0) as usize, 0);
    out.last_page_len.resize(batch * heads, 0);
    // exp(scale * (s - s_max)) with the per-head scale of a summed row.
    let scale = shape.sm_scale / group as f32;
    let mut kept_total = 0u64;
    let mut order: Vec<usize> = Vec::new();
    for b in 0..batch {
        let (start, end) = (table.indptr[b] as usize, table.indptr[b + 1] as usize);
        let n = end - start;
        for head in 0..heads {
            let row = b * heads + head;
            let dst = out.indptr[row] as usize;
            out.last_page_len[row] = table.last_page_len[b];
            // Empty rows have no last page to keep: nothing to select, with or without a mass.
            if n == 0 || (n <= budget_pages && opts.trim().is_none()) {
                out.indices[dst..dst + n].copy_from_slice(&table.indices[start..end]);
                kept_total += n as u64;
                continue;
            }
            let slots = n.min(budget_pages);
            let score = |j: usize| -> f32 {
                (head * group..(head + 1) * group)
                    .map(|h| scores[h * nnz + start + j])
                    .sum()
            };
            // All but the last page compete; best first, earlier page on ties, NaN last (below
            // -inf). Numeric comparison, so -0.0 and +0.0 tie (`total_cmp` would rank +0.0 first).
            let keyed: Vec<f32> = (0..n - 1).map(score).collect();
            order.clear();
            order.extend(0..n - 1);
            order.sort_by(|&a, &b| {
                let (sa, sb) = (keyed[a], keyed[b]);
                let by_score = match (sa.is_nan(), sb.is_nan()) {
                    (false, false) => sb.partial_cmp(&sa).unwrap_or(std::cmp::Ordering::Equal),
                    (na, nb) => na.cmp(&nb),
                };
                by_score.then(a.cmp(&b))
            });
            order.truncate(slots - 1);
            if let Some(p) = opts.trim() {
                let keep = mass_prefix(&keyed, &order, scale, p);
                order.truncate(keep);
            }
            order.sort_unstable();
            for (i, &j) in order.iter().enumerate() {
                out.indices[dst + i] = table.indices[start + j];
            }
            out.indices[dst + order.len()..dst + slots - 1].fill(EMPTY_PAGE);
            out.indices[dst + slots - 1] = table.indices[end - 1];
            kept_total += order.len() as u64 + 1;
        }
    }
    Ok(kept_total)
}

/// How many of `order` (a row's top-k candidates, best first) the adaptive budget keeps: every
/// forced page (score `+inf`), and non-forced pages while the mass before them is `< p * total`,
/// where a finite score `s` has mass `exp(scale * (s - s_max))` (`s_max`: the largest finite
/// score of all candidates `keyed`), NaN and `-inf` none, and `total` sums every non-forced
/// candidate of `keyed` in page order. Forced pages come first in `order`, so the kept pages are
/// a prefix of it.
pub fn mass_prefix(keyed: &[f32], order: &[usize], scale: f32, p: f32) -> usize {
    let s_max = keyed
        .iter()
        .copied()
        .filter(|s| s.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    let mass = |s: f32| {
        if s.is_finite() {
            (scale * (s - s_max)).exp()
        } else {
            0.0
        }
    };
    let total: f32 = keyed.iter().map(|&s| mass(s)).sum();
    let goal = p * total;
    let mut before = 0f32;
    let mut keep = 0;
    for &j in order {
        let s = keyed[j];
        if s != f32::INFINITY {
            if before >= goal {
                break;
            }
            before += mass(s);
        }
        keep += 1;
    }
    keep
}

/// Forces Quest's sink and recent pages: `scores[h, j] = +inf` for every query head and, in each
/// sequence row of `n` pages, the first `first` pages and the `recent` pages just before the last
/// (which top-k keeps anyway). Top-k then keeps them ahead of every scored page.
pub fn force_pages(
    scores: &mut [f32],
    num_qo_heads: usize,
    table: &PageTable,
    first: usize,
    recent: usize,
) -> Result<()> {
    const OP: &str = "force_pages";
    let nnz = table.indices.len();
    expect_len(OP, "scores", scores.len(), num_qo_heads * nnz)?;
    // Every row is checked before any score is written: a refused call changes nothing.
    check_row_structure(
        OP,
        "page table",
        &table.indptr,
        nnz,
        table.last_page_len.len(),
    )?;
    for w in table.indptr.windows(2) {
        let (start, n) = (w[0] as usize, (w[1] - w[0]) as usize);
        let last = n.saturating_sub(1);
        let nf = first.min(last);
        let r0 = nf.max(last.saturating_sub(recent));
        for h in 0..num_qo_heads {
            for j in (0..nf).chain(r0..last) {
                scores[h * nnz + start + j] = f32::INFINITY;
            }
        }
    }
    Ok(())
}
