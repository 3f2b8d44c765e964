//! Quest's selection path: the paged cache writes that feed it (`append_kv`, `update_bounds`), the
//! criticality estimate (an upper bound of every key's `q·k` in its page), and top-k page selection
//! (exactly the k best, ties to the earlier page, last page always kept).

mod common;

use common::*;
use proptest::prelude::*;
use quest_kernels::{
    AttentionShape, Backend, CpuBackend, DevicePageTable, Half, PageTable, PagedLayout,
    SelectOptions, TableRows, bf16, f16,
};
use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};

// ---- append_kv / update_bounds --------------------------------------------------------------------

fn random_layout(r: &mut rand::rngs::StdRng) -> PagedLayout {
    PagedLayout {
        num_pages: r.random_range(1..=12),
        page_size: *[1usize, 3, 8, 16].choose(r).unwrap(),
        num_kv_heads: r.random_range(1..=3),
        head_dim: *[2usize, 8, 64].choose(r).unwrap(),
    }
}

/// Property 6a: after `append_kv`, each written slot reads back (through `kv_offset`) as the value
/// rounded to `T`, bit for bit; every other element of the pool is untouched.
fn check_append_reads_back<B: Backend, T: Half>(backend: &B, seed: u64) {
    let mut r = rng(seed);
    let layout = random_layout(&mut r);
    let capacity = layout.num_pages * layout.page_size;
    let n = r.random_range(0..=capacity.min(40));
    let mut all: Vec<i32> = (0..capacity as i32).collect();
    all.shuffle(&mut r);
    let slots = &all[..n];
    let w = layout.token_width();
    let k = uniform(&mut r, n * w, -3.0, 3.0);
    let v = uniform(&mut r, n * w, -3.0, 3.0);
    let before = uniform_half::<T>(&mut r, layout.kv_len());
    let mut kv = up(backend, &before);
    backend
        .append_kv(
            &mut kv,
            &layout,
            &up(backend, &k),
            &up(backend, &v),
            &up(backend, slots),
        )
        .expect("append_kv");
    let after = down(backend, &kv);

    let mut expect = before.clone();
    for (t, &s) in slots.iter().enumerate() {
        let (page, off) = (s as usize / layout.page_size, s as usize % layout.page_size);
        for (which, src) in [(0, &k), (1, &v)] {
            for head in 0..layout.num_kv_heads {
                let at = layout.kv_offset(page, which, off, head);
                for i in 0..layout.head_dim {
                    let x = src[(t * layout.num_kv_heads + head) * layout.head_dim + i];
                    expect[at + i] = T::from_f32(x);
                }
            }
        }
    }
    for (i, (a, e)) in after.iter().zip(&expect).enumerate() {
        assert!(
            a.to_f32().to_bits() == e.to_f32().to_bits(),
            "element {i}: got {a:?}, expected {e:?} (layout {layout:?})"
        );
    }
}

/// Property 6b: `update_bounds` equals the from-scratch max/min over the first `len` keys of each
/// listed page (bit for bit: a max of stored values is a stored value), leaves unlisted pages alone.
fn check_bounds_from_scratch<B: Backend, T: Half>(backend: &B, seed: u64) {
    let mut r = rng(seed);
    let layout = random_layout(&mut r);
    let kv_host = uniform_half::<T>(&mut r, layout.kv_len());
    let before = uniform_half::<T>(&mut r, layout.bounds_len());
    let mut ids: Vec<i32> = (0..layout.num_pages as i32).collect();
    ids.shuffle(&mut r);
    ids.truncate(r.random_range(0..=layout.num_pages));
    let lens: Vec<i32> = ids
        .iter()
        .map(|_| r.random_range(1..=layout.page_size as i32))
        .collect();
    let kv = up(backend, &kv_host);
    let mut bounds = up(backend, &before);
    backend
        .update_bounds(
            &kv,
            &mut bounds,
            &layout,
            &up(backend, &ids),
            &up(backend, &lens),
        )
        .expect("update_bounds");
    let got = down(backend, &bounds);

    let mut expect = before.clone();
    for (&p, &len) in ids.iter().zip(&lens) {
        for head in 0..layout.num_kv_heads {
            for i in 0..layout.head_dim {
                let keys = (0..len as usize)
                    .map(|s| kv_host[layout.kv_offset(p as usize, 0, s, head) + i].to_f32());
                let hi = keys.clone().fold(f32::NEG_INFINITY, f32::max);
                let lo = keys.fold(f32::INFINITY, f32::min);
                expect[layout.bounds_offset(p as usize, 0, head) + i] = T::from_f32(hi);
                expect[layout.bounds_offset(p as usize, 1, head) + i] = T::from_f32(lo);
            }
        }
    }
    for (i, (a, e)) in got.iter().zip(&expect).enumerate() {
        assert!(
            a.to_f32().to_bits() == e.to_f32().to_bits(),
            "bounds element {i}: got {a:?}, expected {e:?} (layout {layout:?})"
        );
    }
}

// ---- estimate_pages --------------------------------------------------------------------------------

/// Property 2: after a cache is filled by incremental `append_kv` + `update_bounds`,
/// * every page's stored bounds are the max/min of its filled keys (partly filled last pages too);
/// * each score is Quest's formula over those bounds (checked in f64);
/// * each score is never below the true `max_t q·k_t` over the page's stored keys (f64).
///
/// Slack: the kernel computes `Σ_i max(q_i M_i, q_i m_i)` in f32. Each product is rounded once
/// (relative 2^-24) and the d-term sum adds at most (d-1)·2^-24 relative to `Σ_i |q_i b_i|`, so the
/// total error is below d·2^-24·Σ|q_i|·max|k| ≈ 7.6e-6·Σ|q_i|·max|k| for d = 128. We allow 1e-4 of
/// that magnitude (room for a GPU's FMA and summation order), still far below what a wrong formula
/// costs (a wrong choice between M_i and m_i on one channel loses |q_i|·(M_i − m_i), order 1).
fn check_scores_bound_true_max<B: Backend, T: Half>(backend: &B, spec: &CacheSpec, seed: u64) {
    let mut r = rng(seed);
    let cache = build_cache::<B, T>(backend, &mut r, spec);
    let l = *cache.layout();
    let (hq, d, group) = (cache.shape.num_qo_heads, spec.head_dim, spec.group);
    let batch = cache.batch();
    let q = uniform(&mut r, batch * hq * d, -3.0, 3.0);
    let table = DevicePageTable::upload(backend, &cache.table, &l).unwrap();
    let nnz = cache.table.indices.len();
    let mut scores = up(backend, &poison(hq * nnz));
    backend
        .estimate_pages(
            &up(backend, &q),
            &cache.bounds,
            &cache.shape,
            &table,
            &mut scores,
        )
        .expect("estimate_pages");
    let scores = down(backend, &scores);
    assert_written("estimate_pages scores", &scores);

    for b in 0..batch {
        let start = cache.table.indptr[b] as usize;
        for (j, &page) in cache.table.row(b).iter().enumerate() {
            let page = page as usize;
            let fill = cache.page_fill(b, j);
            for g in 0..spec.num_kv_heads {
                let keys: Vec<Vec<f64>> = (0..fill)
                    .map(|s| stored_f64(&cache.kv_host, &l, page, 0, s, g))
                    .collect();
                for i in 0..d {
                    let hi = keys.iter().map(|k| k[i]).fold(f64::NEG_INFINITY, f64::max);
                    let lo = keys.iter().map(|k| k[i]).fold(f64::INFINITY, f64::min);
                    let at = l.bounds_offset(page, 0, g) + i;
                    let bt = l.bounds_offset(page, 1, g) + i;
                    assert_eq!(
                        cache.bounds_host[at].to_f32() as f64,
                        hi,
                        "max bound p{page} g{g} i{i}"
                    );
                    assert_eq!(
                        cache.bounds_host[bt].to_f32() as f64,
                        lo,
                        "min bound p{page} g{g} i{i}"
                    );
                }
                let max_k = keys.iter().flatten().fold(0f64, |m, &x| m.max(x.abs()));
                for h in g * group..(g + 1) * group {
                    let qh = &q[(b * hq + h) * d..][..d];
                    let qf: Vec<f64> = qh.iter().map(|&x| x as f64).collect();
                    let got = scores[h * nnz + start + j] as f64;
                    let true_max = keys
                        .iter()
                        .map(|k| dot_f64(&qf, k))
                        .fold(f64::NEG_INFINITY, f64::max);
                    let slack = 1e-4 * qf.iter().map(|x| x.abs()).sum::<f64>() * max_k;
                    assert!(
                        got >= true_max - slack,
                        "seq {b} page #{j} (id {page}) head {h}: score {got} below max q·k {true_max}"
                    );
                    let (want, mag) = score_ref(qh, &cache.bounds_host, &l, page, g);
                    assert!(
                        (got - want).abs() <= 1e-5 * mag,
                        "seq {b} page #{j} head {h}: score {got}, formula gives {want}"
                    );
                }
            }
        }
    }

    // Selection on these very scores (per query head: no sums, so no rounding-order question) keeps
    // what the reference keeps.
    let max_pages = (0..batch).map(|b| cache.table.row(b).len()).max().unwrap();
    let budget = r.random_range(1..=max_pages);
    let scores_buf = up(backend, &scores);
    let mut sel = poisoned_selection(backend, &cache.table.indptr, hq, budget);
    backend
        .select_top_pages(
            &scores_buf,
            &cache.shape,
            &table,
            SelectOptions::top_k(budget, TableRows::PerQoHead),
            &mut sel,
            None,
        )
        .expect("select_top_pages");
    let host = sel.to_host(backend).unwrap();
    for b in 0..batch {
        let start = cache.table.indptr[b] as usize;
        let seq = cache.table.row(b);
        for h in 0..hq {
            let row: Vec<f64> = (0..seq.len())
                .map(|j| scores[h * nnz + start + j] as f64)
                .collect();
            let want: Vec<i32> = top_k_ref(&row, budget).iter().map(|&j| seq[j]).collect();
            assert_eq!(
                host.row(b * hq + h),
                &want[..],
                "seq {b} head {h} budget {budget}"
            );
        }
    }
}

// ---- select_top_pages ------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct TopKCase {
    num_kv_heads: usize,
    group: usize,
    pages_per_seq: Vec<usize>,
    spare_pages: usize,
    budget: usize,
    /// Scores from {-2, ..., 2} (many ties) instead of multiples of 1/64 in [-8, 8].
    ties: bool,
    seed: u64,
}

fn top_k_case() -> impl Strategy<Value = TopKCase> {
    (
        1usize..=3,
        1usize..=4,
        prop::collection::vec(1usize..=24, 1..=4),
        0usize..=4,
        1usize..=26,
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(
            |(num_kv_heads, group, pages_per_seq, spare_pages, budget, ties, seed)| TopKCase {
                num_kv_heads,
                group,
                pages_per_seq,
                spare_pages,
                budget,
                ties,
                seed,
            },
        )
}

/// Property 3: for random scores, each selected row is exactly the reference selection (the last
/// page, plus the budget-1 best others by (−score, position), in table order); and, spelled out: no
/// excluded page scores strictly higher than an included one, an excluded page tying an included one
/// comes later in the table, the last page is last with the sequence's `last_page_len`.
/// Scores are multiples of 1/64 (or small integers), so the PerKvHead group sums are exact in f32
/// whatever order a backend adds them in, and the f64 reference sees the same numbers.
fn check_top_k<B: Backend>(backend: &B, case: &TopKCase) {
    let mut r = rng(case.seed);
    let hq = case.num_kv_heads * case.group;
    let total: usize = case.pages_per_seq.iter().sum();
    let layout = PagedLayout {
        num_pages: total + case.spare_pages,
        page_size: 16,
        num_kv_heads: case.num_kv_heads,
        head_dim: 64,
    };
    let shape = AttentionShape {
        num_qo_heads: hq,
        layout,
        sm_scale: 0.125,
    };
    let mut ids: Vec<i32> = (0..layout.num_pages as i32).collect();
    ids.shuffle(&mut r);
    let mut table = PageTable::new();
    let mut next = 0;
    for &n in &case.pages_per_seq {
        table.push_row(&ids[next..next + n], r.random_range(1..=16));
        next += n;
    }
    let scores: Vec<f32> = (0..hq * total)
        .map(|_| {
            if case.ties {
                r.random_range(-2i32..=2) as f32
            } else {
                r.random_range(-512i32..=512) as f32 / 64.0
            }
        })
        .collect();
    let dt = DevicePageTable::upload(backend, &table, &layout).unwrap();
    let scores_buf = up(backend, &scores);
    for rows in [TableRows::PerQoHead, TableRows::PerKvHead] {
        let heads = rows.count(1, hq, case.num_kv_heads);
        let group = hq / heads;
        let mut sel = poisoned_selection(backend, &table.indptr, heads, case.budget);
        backend
            .select_top_pages(
                &scores_buf,
                &shape,
                &dt,
                SelectOptions::top_k(case.budget, rows),
                &mut sel,
                None,
            )
            .expect("select_top_pages");
        let host = sel.to_host(backend).unwrap();
        for (b, &n) in case.pages_per_seq.iter().enumerate() {
            let start = table.indptr[b] as usize;
            let seq = table.row(b);
            for head in 0..heads {
                let row_scores: Vec<f64> = (0..n)
                    .map(|j| {
                        (head * group..(head + 1) * group)
                            .map(|h| scores[h * total + start + j] as f64)
                            .sum()
                    })
                    .collect();
                let out_row = b * heads + head;
                let got = host.row(out_row);
                let ctx = format!(
                    "{rows:?} seq {b} head {head} budget {} scores {row_scores:?}",
                    case.budget
                );
                assert_eq!(got.len(), n.min(case.budget), "{ctx}");
                assert_eq!(host.last_page_len[out_row], table.last_page_len[b], "{ctx}");
                assert_eq!(
                    *got.last().unwrap(),
                    seq[n - 1],
                    "{ctx}: last page not last"
                );
                // Map back to positions; they must be strictly increasing (table order).
                let pos: Vec<usize> = got
                    .iter()
                    .map(|p| {
                        seq.iter()
                            .position(|x| x == p)
                            .expect("page not in sequence")
                    })
                    .collect();
                assert!(
                    pos.windows(2).all(|w| w[0] < w[1]),
                    "{ctx}: not in table order {pos:?}"
                );
                for ex in (0..n - 1).filter(|j| !pos.contains(j)) {
                    for &inc in &pos[..pos.len() - 1] {
                        let (se, si) = (row_scores[ex], row_scores[inc]);
                        assert!(
                            se <= si,
                            "{ctx}: page {ex} ({se}) excluded, {inc} ({si}) kept"
                        );
                        assert!(
                            se < si || ex > inc,
                            "{ctx}: tie between {ex} and {inc} not resolved to the earlier page"
                        );
                    }
                }
                let want: Vec<i32> = top_k_ref(&row_scores, case.budget)
                    .iter()
                    .map(|&j| seq[j])
                    .collect();
                assert_eq!(got, &want[..], "{ctx}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn append_kv_reads_back_rounded(seed in any::<u64>(), dtype in 0u8..3) {
        match dtype {
            0 => check_append_reads_back::<_, f16>(&CpuBackend, seed),
            1 => check_append_reads_back::<_, bf16>(&CpuBackend, seed),
            _ => check_append_reads_back::<_, f32>(&CpuBackend, seed),
        }
    }

    #[test]
    fn update_bounds_equals_from_scratch(seed in any::<u64>(), dtype in 0u8..3) {
        match dtype {
            0 => check_bounds_from_scratch::<_, f16>(&CpuBackend, seed),
            1 => check_bounds_from_scratch::<_, bf16>(&CpuBackend, seed),
            _ => check_bounds_from_scratch::<_, f32>(&CpuBackend, seed),
        }
    }

    #[test]
    fn page_score_bounds_true_max_qk(
        spec in cache_spec(300),
        seed in any::<u64>(),
        use_bf16 in any::<bool>(),
    ) {
        if use_bf16 {
            check_scores_bound_true_max::<_, bf16>(&CpuBackend, &spec, seed);
        } else {
            check_scores_bound_true_max::<_, f16>(&CpuBackend, &spec, seed);
        }
    }

    #[test]
    fn top_k_keeps_exactly_the_best_pages(case in top_k_case()) {
        check_top_k(&CpuBackend, &case);
    }
}

// ---- edge cases of the ordering --------------------------------------------------------------------

/// One sequence of `scores.len()` pages with ids 10, 11, ...; one query head; PerQoHead selection.
fn select_one_row<B: Backend>(backend: &B, scores: &[f32], budget: usize) -> Vec<i32> {
    let n = scores.len();
    let layout = PagedLayout {
        num_pages: 10 + n,
        page_size: 4,
        num_kv_heads: 1,
        head_dim: 8,
    };
    let shape = AttentionShape {
        num_qo_heads: 1,
        layout,
        sm_scale: 1.0,
    };
    let mut table = PageTable::new();
    table.push_row(&(10..10 + n as i32).collect::<Vec<_>>(), 3);
    let dt = DevicePageTable::upload(backend, &table, &layout).unwrap();
    let mut sel = poisoned_selection(backend, &table.indptr, 1, budget);
    backend
        .select_top_pages(
            &up(backend, scores),
            &shape,
            &dt,
            SelectOptions::top_k(budget, TableRows::PerQoHead),
            &mut sel,
            None,
        )
        .expect("select_top_pages");
    let host = sel.to_host(backend).unwrap();
    assert_eq!(host.last_page_len, vec![3]);
    host.indices
}

fn check_selection_edge_cases<B: Backend>(backend: &B) {
    // Budget 1: only the last page, whatever the scores.
    assert_eq!(select_one_row(backend, &[9.0, 8.0, -1.0], 1), vec![12]);
    // The last page's own score does not matter and it is not double counted.
    assert_eq!(
        select_one_row(backend, &[1.0, 3.0, 2.0, 100.0], 3),
        vec![11, 12, 13]
    );
    // All equal: the earliest pages win.
    assert_eq!(select_one_row(backend, &[0.5; 6], 3), vec![10, 11, 15]);
    // -0.0 and +0.0 are equal scores: the tie goes to the earlier page.
    assert_eq!(
        select_one_row(backend, &[-0.0, 0.0, 0.0, 1.0], 2),
        vec![10, 13]
    );
    assert_eq!(
        select_one_row(backend, &[1.0, -0.0, 0.0, 0.0, 1.0], 3),
        vec![10, 11, 14]
    );
    // NaN never beats a number, not even -inf.
    let nan = f32::NAN;
    assert_eq!(
        select_one_row(backend, &[nan, -5.0, nan, 2.0, 0.0], 3),
        vec![11, 13, 14]
    );
    assert_eq!(
        select_one_row(backend, &[nan, f32::NEG_INFINITY, 0.0], 2),
        vec![11, 12]
    );
    // Infinities order like numbers.
    assert_eq!(
        select_one_row(backend, &[f32::NEG_INFINITY, f32::INFINITY, 1e30, 0.0], 3),
        vec![11, 12, 13]
    );
    // A row of exactly `budget` pages keeps them all.
    assert_eq!(
        select_one_row(backend, &[-1.0, -2.0, -3.0], 3),
        vec![10, 11, 12]
    );
}

#[test]
fn selection_edge_cases() {
    check_selection_edge_cases(&CpuBackend);
}

/// Forced pages (sink + recent window) are always selected when they fit in the budget, and
/// the rest of the budget goes to the best-scoring other pages.
#[test]
fn forced_pages_are_always_kept() {
    use quest_kernels::{
        AttentionShape, Backend, CpuBackend, DevicePageTable, PageTable, PagedLayout,
    };
    let c = CpuBackend;
    let layout = PagedLayout {
        num_pages: 64,
        page_size: 16,
        num_kv_heads: 1,
        head_dim: 8,
    };
    let shape = AttentionShape {
        num_qo_heads: 2,
        layout,
        sm_scale: 1.0,
    };
    let mut table = PageTable::new();
    table.push_row(&(10..30).collect::<Vec<i32>>(), 5);
    let t = DevicePageTable::upload(&c, &table, &layout).unwrap();
    // Page j scores j for head 0 and -j for head 1: head 0 prefers late pages, head 1 early ones.
    let mut scores: Vec<f32> = (0..20)
        .map(|j| j as f32)
        .chain((0..20).map(|j| -(j as f32)))
        .collect();
    c.force_pages(&mut scores, 2, &t, 1, 2).unwrap();
    let mut out = DevicePageTable::for_selection(&c, &table.indptr, 2, 6).unwrap();
    c.select_top_pages(
        &scores,
        &shape,
        &t,
        SelectOptions::top_k(6, TableRows::PerQoHead),
        &mut out,
        None,
    )
    .unwrap();
    let got = out.to_host(&c).unwrap();
    // Head 0: sink 10, recent 27 28, best others 25 26, last 29.
    assert_eq!(got.row(0), &[10, 25, 26, 27, 28, 29]);
    // Head 1: sink 10, best others 11 12, recent 27 28, last 29.
    assert_eq!(got.row(1), &[10, 11, 12, 27, 28, 29]);
    // A short row has nothing to force beyond its pages.
    let mut short = PageTable::new();
    short.push_row(&[3], 1);
    let ts = DevicePageTable::upload(&c, &short, &layout).unwrap();
    let mut s1 = vec![0.5f32, 0.25];
    c.force_pages(&mut s1, 2, &ts, 1, 4).unwrap();
    assert_eq!(s1, vec![0.5, 0.25], "the last page is never forced");
}
