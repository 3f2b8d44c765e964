//! Shared helpers for the `quest-kernels` integration tests: seeded random data, random paged KV
//! caches built through a [`Backend`], and f64 reference implementations that read the stored
//! (rounded) values straight from the layout.
//!
//! Everything here is generic over the backend so the same checks can run against CUDA and be
//! compared with the CPU reference.

#![allow(dead_code)]

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "cuda")]
#[allow(unused_imports)] // each test binary uses what it needs
pub use cuda::{check_close, cuda};

use proptest::prelude::*;
use quest_kernels::{
    AttentionShape, Backend, DevicePageTable, Half, PageTable, PagedLayout, TableRows,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

// ---- random data --------------------------------------------------------------------------------

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `n` values uniform in `[lo, hi)`, never all zero.
pub fn uniform(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    loop {
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
        if n == 0 || v.iter().any(|&x| x != 0.0) {
            return v;
        }
    }
}

/// `v` rounded to the storage type `T`.
pub fn to_half<T: Half>(v: &[f32]) -> Vec<T> {
    v.iter().map(|&x| T::from_f32(x)).collect()
}

/// `n` random values already rounded to `T`, uniform in `[-3, 3)`.
pub fn uniform_half<T: Half>(rng: &mut StdRng, n: usize) -> Vec<T> {
    to_half(&uniform(rng, n, -3.0, 3.0))
}

/// An output buffer whose every element is NaN, so an element the op fails to write shows up.
pub fn poison(n: usize) -> Vec<f32> {
    vec![f32::NAN; n]
}

/// Panics naming the first element still holding the NaN poison.
pub fn assert_written(what: &str, v: &[f32]) {
    if let Some(i) = v.iter().position(|x| x.is_nan()) {
        let count = v.iter().filter(|x| x.is_nan()).count();
        panic!(
            "{what}: {count} of {} elements never written (first at {i})",
            v.len()
        );
    }
}

/// `‖got - want‖ / ‖want‖` (absolute when `want` is zero).
pub fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).powi(2))
        .sum::<f64>()
        .sqrt();
    let den: f64 = want.iter().map(|w| w * w).sum::<f64>().sqrt();
    if den == 0.0 { num } else { num / den }
}

pub fn rel_err_f32(got: &[f32], want: &[f32]) -> f64 {
    let want: Vec<f64> = want.iter().map(|&w| w as f64).collect();
    rel_err(got, &want)
}

/// Largest `‖got_r - want_r‖ / ‖want_r‖` over consecutive rows of `width`, with the row index.
pub fn max_row_rel_err(got: &[f32], want: &[f64], width: usize) -> (f64, usize) {
    got.chunks(width)
        .zip(want.chunks(width))
        .map(|(g, w)| rel_err(g, w))
        .enumerate()
        .fold((0.0, 0), |acc, (i, e)| if e > acc.0 { (e, i) } else { acc })
}

// ---- backend conveniences -----------------------------------------------------------------------

pub fn up<B: Backend, T: quest_kernels::Elem>(b: &B, data: &[T]) -> B::Buf<T> {
    b.upload(data).expect("upload")
}

pub fn down<B: Backend, T: quest_kernels::Elem>(b: &B, buf: &B::Buf<T>) -> Vec<T> {
    b.download(buf).expect("download")
}

/// An output page table for `select_top_pages` with indices and last page lengths poisoned to -1.
pub fn poisoned_selection<B: Backend>(
    b: &B,
    input_indptr: &[i32],
    heads: usize,
    budget_pages: usize,
) -> DevicePageTable<B> {
    let mut t = DevicePageTable::for_selection(b, input_indptr, heads, budget_pages)
        .expect("for_selection");
    let nnz = t.nnz();
    let rows = t.rows();
    b.write(&mut t.indices, 0, &vec![-1i32; nnz]).unwrap();
    b.write(&mut t.last_page_len, 0, &vec![-1i32; rows])
        .unwrap();
    t
}

// ---- random paged caches ------------------------------------------------------------------------

/// Geometry of a random cache: sequences of `seq_lens` tokens, pages drawn from a pool with
/// `spare_pages` more pages than needed.
#[derive(Clone, Debug)]
pub struct CacheSpec {
    pub page_size: usize,
    pub head_dim: usize,
    pub num_kv_heads: usize,
    pub group: usize,
    pub seq_lens: Vec<usize>,
    pub spare_pages: usize,
}

impl CacheSpec {
    pub fn num_qo_heads(&self) -> usize {
        self.num_kv_heads * self.group
    }
    pub fn pages_of(&self, len: usize) -> usize {
        len.div_ceil(self.page_size)
    }
}

/// page_size from {8, 16, 32, 64}, head_dim from {64, 128}, 1–2 KV heads, groups of 1–3,
/// 1–3 sequences of 1..=max_len tokens.
pub fn cache_spec(max_len: usize) -> impl Strategy<Value = CacheSpec> {
    (
        prop::sample::select(vec![8usize, 16, 32, 64]),
        prop::sample::select(vec![64usize, 128]),
        1usize..=2,
        1usize..=3,
        prop::collection::vec(1usize..=max_len, 1..=3),
        0usize..=3,
    )
        .prop_map(
            |(page_size, head_dim, num_kv_heads, group, seq_lens, spare_pages)| CacheSpec {
                page_size,
                head_dim,
                num_kv_heads,
                group,
                seq_lens,
                spare_pages,
            },
        )
}

/// A paged KV cache filled through the backend's `append_kv` + `update_bounds`, with host copies.
pub struct Cache<B: Backend, T: Half> {
    pub shape: AttentionShape,
    pub seq_lens: Vec<usize>,
    /// The per-sequence table; page ids are a random permutation of the pool.
    pub table: PageTable,
    pub kv: B::Buf<T>,
    pub bounds: B::Buf<T>,
    pub kv_host: Vec<T>,
    pub bounds_host: Vec<T>,
    /// 8-bit bounds kept alongside (by `update_bounds_int8` after every append), when asked for.
    pub int8: Option<Int8Bounds<B>>,
}

/// One layer's 8-bit page bounds on a backend, with host copies.
pub struct Int8Bounds<B: Backend> {
    pub codes: B::Buf<u8>,
    pub params: B::Buf<f32>,
    pub codes_host: Vec<u8>,
    pub params_host: Vec<f32>,
}

impl<B: Backend, T: Half> Cache<B, T> {
    pub fn layout(&self) -> &PagedLayout {
        &self.shape.layout
    }
    pub fn batch(&self) -> usize {
        self.seq_lens.len()
    }
    /// Tokens held by position `j` of row `b` of the per-sequence table.
    pub fn page_fill(&self, b: usize, j: usize) -> usize {
        let n = self.table.row(b).len();
        if j + 1 == n {
            self.table.last_page_len[b] as usize
        } else {
            self.layout().page_size
        }
    }
}

/// Builds a cache: the whole pool starts as random garbage (so reading a wrong page or a slot past
/// the end gives a wrong answer), then the sequences are appended in random chunks, round-robin,
/// each round one `append_kv` over all sequences followed by one `update_bounds` over the pages it
/// touched (partly filled last pages included).
pub fn build_cache<B: Backend, T: Half>(
    backend: &B,
    rng: &mut StdRng,
    spec: &CacheSpec,
) -> Cache<B, T> {
    build_cache_with(
        backend,
        rng,
        spec,
        &|r, n, w| uniform(r, n * w, -3.0, 3.0),
        false,
    )
}

/// Keys of `tokens` tokens of `width` channels each, drawn from the generator.
pub type KeyGen<'a> = dyn Fn(&mut StdRng, usize, usize) -> Vec<f32> + 'a;

/// [`build_cache`] with the keys from `keys` (values stay uniform in `[-3, 3)`) and, when `int8`,
/// 8-bit bounds updated with `update_bounds_int8` after every round too (from garbage codes, so a
/// page the update misses shows up).
pub fn build_cache_with<B: Backend, T: Half>(
    backend: &B,
    rng: &mut StdRng,
    spec: &CacheSpec,
    keys: &KeyGen<'_>,
    int8: bool,
) -> Cache<B, T> {
    let ps = spec.page_size;
    let needed: usize = spec.seq_lens.iter().map(|&l| spec.pages_of(l)).sum();
    let layout = PagedLayout {
        num_pages: needed + spec.spare_pages,
        page_size: ps,
        num_kv_heads: spec.num_kv_heads,
        head_dim: spec.head_dim,
    };
    let shape = AttentionShape {
        num_qo_heads: spec.num_qo_heads(),
        layout,
        sm_scale: 1.0 / (spec.head_dim as f32).sqrt(),
    };
    let mut ids: Vec<i32> = (0..layout.num_pages as i32).collect();
    ids.shuffle(rng);
    let mut table = PageTable::new();
    let mut next = 0;
    for &len in &spec.seq_lens {
        let n = spec.pages_of(len);
        table.push_row(&ids[next..next + n], (len - ps * (n - 1)) as i32);
        next += n;
    }

    let mut kv = up(backend, &uniform_half::<T>(rng, layout.kv_len()));
    let mut bounds = up(backend, &uniform_half::<T>(rng, layout.bounds_len()));
    let mut int8_bufs = int8.then(|| {
        let codes: Vec<u8> = (0..layout.bounds_len()).map(|_| rng.random()).collect();
        let params = uniform(rng, layout.int8_params_len(), -3.0, 3.0);
        (up(backend, &codes), up(backend, &params))
    });

    let width = layout.token_width();
    let mut filled = vec![0usize; spec.seq_lens.len()];
    loop {
        let (mut k, mut v, mut slots) = (Vec::new(), Vec::new(), Vec::new());
        let (mut pages, mut lens) = (Vec::new(), Vec::new());
        for (b, &len) in spec.seq_lens.iter().enumerate() {
            if filled[b] == len {
                continue;
            }
            let chunk = rng.random_range(1..=(2 * ps).min(len - filled[b]));
            let row = table.row(b);
            let (start, end) = (filled[b], filled[b] + chunk);
            for t in start..end {
                slots.push(row[t / ps] * ps as i32 + (t % ps) as i32);
            }
            k.extend(keys(rng, chunk, width));
            v.extend(uniform(rng, chunk * width, -3.0, 3.0));
            let first = start / ps;
            for (i, &page) in row.iter().enumerate().take((end - 1) / ps + 1).skip(first) {
                pages.push(page);
                lens.push((end - i * ps).min(ps) as i32);
            }
            filled[b] = end;
        }
        if slots.is_empty() {
            break;
        }
        backend
            .append_kv(
                &mut kv,
                &layout,
                &up(backend, &k),
                &up(backend, &v),
                &up(backend, &slots),
            )
            .expect("append_kv");
        backend
            .update_bounds(
                &kv,
                &mut bounds,
                &layout,
                &up(backend, &pages),
                &up(backend, &lens),
            )
            .expect("update_bounds");
        if let Some((codes, params)) = &mut int8_bufs {
            backend
                .update_bounds_int8(
                    &kv,
                    codes,
                    params,
                    &layout,
                    &up(backend, &pages),
                    &up(backend, &lens),
                )
                .expect("update_bounds_int8");
        }
    }
    let kv_host = down(backend, &kv);
    let bounds_host = down(backend, &bounds);
    let int8 = int8_bufs.map(|(codes, params)| Int8Bounds {
        codes_host: down(backend, &codes),
        params_host: down(backend, &params),
        codes,
        params,
    });
    Cache {
        shape,
        seq_lens: spec.seq_lens.clone(),
        table,
        kv,
        bounds,
        kv_host,
        bounds_host,
        int8,
    }
}

// ---- f64 references -----------------------------------------------------------------------------

/// One stored key (`which == 0`) or value (`which == 1`) vector, in f64.
pub fn stored_f64<T: Half>(
    kv: &[T],
    layout: &PagedLayout,
    page: usize,
    which: usize,
    slot: usize,
    head: usize,
) -> Vec<f64> {
    let base = layout.kv_offset(page, which, slot, head);
    kv[base..base + layout.head_dim]
        .iter()
        .map(|x| x.to_f32() as f64)
        .collect()
}

/// The keys or values of one KV head along a list of pages (the last holding `last_len` tokens).
pub fn gather_f64<T: Half>(
    kv: &[T],
    layout: &PagedLayout,
    pages: &[i32],
    last_len: usize,
    which: usize,
    head: usize,
) -> Vec<Vec<f64>> {
    let mut out = Vec::new();
    for (i, &p) in pages.iter().enumerate() {
        let fill = if i + 1 == pages.len() {
            last_len
        } else {
            layout.page_size
        };
        for slot in 0..fill {
            out.push(stored_f64(kv, layout, p as usize, which, slot, head));
        }
    }
    out
}

pub fn dot_f64(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `softmax(q · K^T * scale) · V` in f64.
pub fn attend_f64(q: &[f32], keys: &[Vec<f64>], values: &[Vec<f64>], scale: f32) -> Vec<f64> {
    let q: Vec<f64> = q.iter().map(|&x| x as f64).collect();
    let logits: Vec<f64> = keys.iter().map(|k| dot_f64(&q, k) * scale as f64).collect();
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = weights.iter().sum();
    let mut out = vec![0f64; q.len()];
    for (w, v) in weights.iter().zip(values) {
        for (o, x) in out.iter_mut().zip(v) {
            *o += w * x;
        }
    }
    out.iter_mut().for_each(|o| *o /= sum);
    out
}

/// Decode attention in f64 over any table (`rows` says what its rows are).
pub fn decode_ref<T: Half>(
    q: &[f32],
    kv: &[T],
    shape: &AttentionShape,
    table: &PageTable,
    rows: TableRows,
) -> Vec<f64> {
    let l = &shape.layout;
    let (hq, hkv, d) = (shape.num_qo_heads, l.num_kv_heads, l.head_dim);
    let group = hq / hkv;
    let batch = q.len() / (hq * d);
    let mut out = Vec::with_capacity(q.len());
    for b in 0..batch {
        for h in 0..hq {
            // The row mapping, spelled out here rather than borrowed from `TableRows::row`.
            let r = match rows {
                TableRows::PerSequence => b,
                TableRows::PerQoHead => b * hq + h,
                TableRows::PerKvHead => b * hkv + h / group,
            };
            let last = table.last_page_len[r] as usize;
            let keys = gather_f64(kv, l, table.row(r), last, 0, h / group);
            let values = gather_f64(kv, l, table.row(r), last, 1, h / group);
            out.extend(attend_f64(
                &q[(b * hq + h) * d..][..d],
                &keys,
                &values,
                shape.sm_scale,
            ));
        }
    }
    out
}

/// Causal prefill attention in f64: query `i` of `n` in a sequence of `L` tokens sees keys
/// `0..=L - n + i`.
pub fn prefill_ref<T: Half>(
    q: &[f32],
    kv: &[T],
    shape: &AttentionShape,
    table: &PageTable,
    qo_indptr: &[i32],
) -> Vec<f64> {
    let l = &shape.layout;
    let (hq, hkv, d) = (shape.num_qo_heads, l.num_kv_heads, l.head_dim);
    let group = hq / hkv;
    let mut out = Vec::with_capacity(q.len());
    for b in 0..table.rows() {
        let len = table.row_tokens(b, l.page_size);
        let last = table.last_page_len[b] as usize;
        let heads: Vec<_> = (0..hkv)
            .map(|g| {
                (
                    gather_f64(kv, l, table.row(b), last, 0, g),
                    gather_f64(kv, l, table.row(b), last, 1, g),
                )
            })
            .collect();
        let (q0, q1) = (qo_indptr[b] as usize, qo_indptr[b + 1] as usize);
        for i in 0..q1 - q0 {
            let visible = len - (q1 - q0) + i + 1;
            for h in 0..hq {
                let (keys, values) = &heads[h / group];
                out.extend(attend_f64(
                    &q[((q0 + i) * hq + h) * d..][..d],
                    &keys[..visible],
                    &values[..visible],
                    shape.sm_scale,
                ));
            }
        }
    }
    out
}

/// Quest's criticality `Σ_i max(q_i M_i, q_i m_i)` in f64 from stored bounds, plus
/// `Σ_i |q_i| max(|M_i|, |m_i|)` (the magnitude rounding errors scale with).
pub fn score_ref<T: Half>(
    q: &[f32],
    bounds: &[T],
    layout: &PagedLayout,
    page: usize,
    kv_head: usize,
) -> (f64, f64) {
    let d = layout.head_dim;
    let hi = &bounds[layout.bounds_offset(page, 0, kv_head)..][..d];
    let lo = &bounds[layout.bounds_offset(page, 1, kv_head)..][..d];
    let mut s = 0.0;
    let mut mag = 0.0;
    for i in 0..d {
        let (qi, a, b) = (q[i] as f64, hi[i].to_f32() as f64, lo[i].to_f32() as f64);
        s += (qi * a).max(qi * b);
        mag += qi.abs() * a.abs().max(b.abs());
    }
    (s, mag)
}

/// Positions (in table order) that Quest keeps in a row of `scores.len()` pages: the last page,
/// and the `budget - 1` best others, best first by `(-score, position)`; everything when the row
/// fits in the budget. Written independently of the kernels: a full sort of the candidates.
pub fn top_k_ref(scores: &[f64], budget: usize) -> Vec<usize> {
    let n = scores.len();
    if n <= budget {
        return (0..n).collect();
    }
    let mut cand: Vec<usize> = (0..n - 1).collect();
    cand.sort_by(|&a, &b| {
        scores[b]
            .partial_cmp(&scores[a])
            .expect("reference scores are never NaN")
            .then(a.cmp(&b))
    });
    cand.truncate(budget - 1);
    cand.sort_unstable();
    cand.push(n - 1);
    cand
}

/// The dequantized max (`which == 0`) or min (`1`) bounds of one page and KV head of 8-bit bounds.
pub fn dequant_bounds(
    codes: &[u8],
    params: &[f32],
    layout: &PagedLayout,
    page: usize,
    which: usize,
    kv_head: usize,
) -> Vec<f32> {
    let pr = &params[layout.int8_params_offset(page, kv_head)..][..4];
    codes[layout.bounds_offset(page, which, kv_head)..][..layout.head_dim]
        .iter()
        .map(|&c| quest_kernels::quant::dequant(c, pr[2 * which], pr[2 * which + 1]))
        .collect()
}

/// Quest's criticality in f64 from 8-bit bounds (dequantized), plus `Σ_i |q_i| max(|H_i|, |L_i|)`.
pub fn score_ref_int8(
    q: &[f32],
    codes: &[u8],
    params: &[f32],
    layout: &PagedLayout,
    page: usize,
    kv_head: usize,
) -> (f64, f64) {
    let hi = dequant_bounds(codes, params, layout, page, 0, kv_head);
    let lo = dequant_bounds(codes, params, layout, page, 1, kv_head);
    let mut s = 0.0;
    let mut mag = 0.0;
    for i in 0..layout.head_dim {
        let (qi, a, b) = (q[i] as f64, hi[i] as f64, lo[i] as f64);
        s += (qi * a).max(qi * b);
        mag += qi.abs() * a.abs().max(b.abs());
    }
    (s, mag)
}
