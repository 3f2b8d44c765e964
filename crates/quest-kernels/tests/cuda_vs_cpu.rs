//! Every op of the CUDA backend against the CPU reference on random inputs (never zeros), outputs
//! poisoned (NaN / -1) first. Without a driver or GPU each test prints
//! `skipped: no CUDA device (<reason>)` to stderr and passes.
//!
//! Error bounds. Both backends read the *same stored values* (the f16/bf16 rounding of K/V,
//! weights and bounds happens once, in `append_kv`/upload, and is checked to be bit-identical), and
//! both compute in f32; they differ only in the order of f32 sums (tree reductions, split-K
//! merges, base-2 exponentials on the GPU). So one bound serves every storage dtype:
//! `‖cuda − cpu‖ / ‖cpu‖ ≤ 1e-5` per output row (f32 rounding over sums of ≤ 128K terms with
//! random signs grows like √n·2⁻²⁴ ≈ 2e-5 worst case per element but far less in norm), 3e-5 for
//! matmul with k > 1024. Integer outputs (stored K/V bits, bounds, argmax, top-k page lists) must
//! match exactly.
#![cfg(feature = "cuda")]

mod common;

use common::*;
use proptest::prelude::*;
use quest_kernels::{
    Backend, CpuBackend, CudaBackend, DevicePageTable, Half, KernelError, PageTable,
    SamplingParams, SelectOptions, TableRows, bf16, f16,
};
use rand::Rng;

const TOL: f64 = 1e-5;
/// Attention over long rows sums thousands of f32 terms in a different order on each backend
/// (split-K partials, block-level merges): about sqrt(n) * 2^-24 relative for n terms, so up to
/// ~1e-5 at 20K tokens with the odd row above; a wrong token or a lost split costs far more.
const ATT_TOL: f64 = 1e-4;

#[test]
fn new_without_device_is_an_error_not_a_panic() {
    match CudaBackend::new(0) {
        Err(KernelError::NoDevice(msg)) => {
            assert!(!CudaBackend::is_available());
            eprintln!("skipped: no CUDA device ({msg})");
        }
        Err(e) => panic!("expected NoDevice, got {e}"),
        Ok(_) => {
            assert!(CudaBackend::is_available());
            assert!(matches!(
                CudaBackend::new(4096),
                Err(KernelError::NoDevice(_))
            ));
        }
    }
}

// ---- dense ops ----------------------------------------------------------------------------------

fn dense_ops<T: Half>(g: &CudaBackend, seed: u64) {
    let c = CpuBackend;
    let mut r = rng(seed);
    let (vocab, hidden) = (r.random_range(5..300usize), 8 * r.random_range(1..40usize));
    let table = uniform_half::<T>(&mut r, vocab * hidden);
    let tokens: Vec<u32> = (0..r.random_range(1..6))
        .map(|_| r.random_range(0..vocab as u32))
        .collect();
    let n = tokens.len();
    let mut out_c = poison(n * hidden);
    c.embedding(&table, hidden, &tokens, &mut out_c).unwrap();
    let mut out_g = up(g, &poison(n * hidden));
    g.embedding(&up(g, &table), hidden, &up(g, &tokens), &mut out_g)
        .unwrap();
    assert_eq!(down(g, &out_g), out_c, "embedding");
    let bad = up(g, &[vocab as u32]);
    let mut one = up(g, &poison(hidden));
    assert!(matches!(
        g.embedding(&up(g, &table), hidden, &bad, &mut one),
        Err(KernelError::Index { .. })
    ));

    let x = uniform(&mut r, n * hidden, -2.0, 2.0);
    let w = uniform_half::<T>(&mut r, hidden);
    let mut out_c = poison(n * hidden);
    c.rms_norm(&x, &w, 1e-5, &mut out_c).unwrap();
    let mut out_g = up(g, &poison(n * hidden));
    g.rms_norm(&up(g, &x), &up(g, &w), 1e-5, &mut out_g)
        .unwrap();
    check_close("rms_norm", &down(g, &out_g), &out_c, hidden, TOL);
    // Residual add + norm in one launch against the CPU's add_assign then rms_norm.
    let y = uniform(&mut r, n * hidden, -2.0, 2.0);
    let (mut xc, mut out_c) = (x.clone(), poison(n * hidden));
    c.add_rms_norm(&mut xc, &y, &w, 1e-5, &mut out_c).unwrap();
    let (mut xg, mut out_g) = (up(g, &x), up(g, &poison(n * hidden)));
    g.add_rms_norm(&mut xg, &up(g, &y), &up(g, &w), 1e-5, &mut out_g)
        .unwrap();
    assert_eq!(down(g, &xg), xc, "add_rms_norm: x + y is exact in f32");
    check_close("add_rms_norm", &down(g, &out_g), &out_c, hidden, TOL);

    for &(n, k, m) in &[
        (1, 64, 40),
        (3, 136, 17),
        (8, 1024, 96),
        (1, 4096, 64),
        (17, 200, 70),
        (70, 13, 33),
        (2, 13, 9),
        (2, 1024, 33),
        (4, 512, 13),
        (5, 256, 7),
        (8, 4096, 19),
    ] {
        let x = uniform(&mut r, n * k, -1.0, 1.0);
        let w = uniform_half::<T>(&mut r, m * k);
        let mut out_c = poison(n * m);
        c.matmul(&x, &w, n, k, m, &mut out_c).unwrap();
        let mut out_g = up(g, &poison(n * m));
        g.matmul(&up(g, &x), &up(g, &w), n, k, m, &mut out_g)
            .unwrap();
        let tol = if k > 1024 { 3e-5 } else { TOL };
        check_close(
            &format!("matmul n={n} k={k} m={m}"),
            &down(g, &out_g),
            &out_c,
            m,
            tol,
        );
    }
}

/// `matmul_many` (q/k/v, gate/up in one launch) against one CPU matmul per matrix: every GEMV
/// variant (1, 2, 4 and 8 rows of x), row counts that are not multiples of a block's rows, and
/// more matrices than one launch takes (5: the fallback).
fn matmul_many_case<T: Half>(g: &CudaBackend, seed: u64) {
    let c = &CpuBackend;
    let mut r = rng(seed);
    for &(n, k, count) in &[
        (1usize, 512usize, 3usize),
        (2, 256, 2),
        (3, 1024, 3),
        (8, 128, 4),
        (1, 64, 5),
    ] {
        let x = uniform(&mut r, n * k, -1.0, 1.0);
        let ms: Vec<usize> = (0..count)
            .map(|i| 5 + 7 * i + (seed as usize % 3))
            .collect();
        let ws: Vec<Vec<T>> = ms
            .iter()
            .map(|&m| uniform_half::<T>(&mut r, m * k))
            .collect();
        let wg: Vec<_> = ws.iter().map(|w| up(g, w)).collect();
        let mut outs: Vec<_> = ms.iter().map(|&m| up(g, &poison(n * m))).collect();
        {
            let wrefs: Vec<_> = wg.iter().collect();
            let mut orefs: Vec<_> = outs.iter_mut().collect();
            g.matmul_many(&up(g, &x), &wrefs, n, k, &mut orefs).unwrap();
        }
        for (i, (&m, w)) in ms.iter().zip(&ws).enumerate() {
            let mut want = poison(n * m);
            c.matmul(&x, w, n, k, m, &mut want).unwrap();
            check_close(
                &format!("matmul_many n={n} k={k} matrix {i} of {count}"),
                &down(g, &outs[i]),
                &want,
                m,
                TOL,
            );
        }
    }
}

#[test]
fn matmul_many_matches_cpu() {
    let Some(g) = cuda() else { return };
    for seed in 0..3 {
        matmul_many_case::<f16>(g, seed);
        matmul_many_case::<bf16>(g, seed + 10);
        matmul_many_case::<f32>(g, seed + 20);
    }
}

#[test]
fn dense_ops_match_cpu() {
    let Some(g) = cuda() else { return };
    for seed in 0..4 {
        dense_ops::<f16>(g, seed);
        dense_ops::<bf16>(g, seed + 100);
        dense_ops::<f32>(g, seed + 200);
    }
}

#[test]
fn elementwise_rope_and_sampling_match_cpu() {
    let Some(g) = cuda() else { return };
    let c = CpuBackend;
    let mut r = rng(7);
    for _ in 0..4 {
        let (n, heads, hd) = (
            r.random_range(1..5usize),
            r.random_range(1..5usize),
            2 * r.random_range(1..65usize),
        );
        let x = uniform(&mut r, n * heads * hd, -2.0, 2.0);
        let pos: Vec<i32> = (0..n).map(|_| r.random_range(0..100_000)).collect();
        let inv: Vec<f32> = quest_kernels::RopeConfig {
            theta: 500000.0,
            head_dim: hd,
            scaling: None,
        }
        .inv_freq();
        let mut xc = x.clone();
        c.rope(&mut xc, &pos, &inv, hd).unwrap();
        let mut xg = up(g, &x);
        g.rope(&mut xg, &up(g, &pos), &up(g, &inv), hd).unwrap();
        // Angles up to 1e5 rad: f32 cos/sin of the same f32 angle agree to a few ulp.
        check_close("rope", &down(g, &xg), &xc, hd, 1e-5);
        // Queries and keys (GQA: fewer key heads) in one launch, against two CPU ropes.
        let kv_heads = r.random_range(1..=heads);
        let k = uniform(&mut r, n * kv_heads * hd, -2.0, 2.0);
        let (mut qc, mut kc) = (x.clone(), k.clone());
        c.rope_qk(&mut qc, &mut kc, &pos, &inv, hd).unwrap();
        let (mut qg, mut kg) = (up(g, &x), up(g, &k));
        g.rope_qk(&mut qg, &mut kg, &up(g, &pos), &up(g, &inv), hd)
            .unwrap();
        check_close("rope_qk q", &down(g, &qg), &qc, hd, 1e-5);
        check_close("rope_qk k", &down(g, &kg), &kc, hd, 1e-5);

        let len = r.random_range(1..5000usize);
        let (a, b) = (
            uniform(&mut r, len, -8.0, 8.0),
            uniform(&mut r, len, -3.0, 3.0),
        );
        let mut oc = poison(len);
        c.silu_mul(&a, &b, &mut oc).unwrap();
        let mut og = up(g, &poison(len));
        g.silu_mul(&up(g, &a), &up(g, &b), &mut og).unwrap();
        check_close("silu_mul", &down(g, &og), &oc, len, TOL);
        let mut ac = a.clone();
        c.add_assign(&mut ac, &b).unwrap();
        let mut ag = up(g, &a);
        g.add_assign(&mut ag, &up(g, &b)).unwrap();
        assert_eq!(down(g, &ag), ac, "add_assign");
    }
    for vocab in [7usize, 1000, 50_000] {
        let rows = 3;
        let mut logits = uniform(&mut r, rows * vocab, -10.0, 10.0);
        logits[vocab + 3] = f32::NAN; // NaN never wins
        logits[2 * vocab + vocab / 2] = 50.0; // a tie at the top: lowest index wins
        logits[2 * vocab + vocab - 1] = 50.0;
        let mut oc = vec![u32::MAX; rows];
        c.argmax(&logits, vocab, &mut oc).unwrap();
        let mut og = up(g, &vec![u32::MAX; rows]);
        g.argmax(&up(g, &logits), vocab, &mut og).unwrap();
        assert_eq!(down(g, &og), oc, "argmax vocab {vocab}");
        for &(t, p) in &[
            (0.0f32, 1.0f32),
            (1.0, 1.0),
            (0.7, 0.9),
            (1.3, 0.5),
            (2.0, 0.05),
        ] {
            let u: Vec<f32> = (0..rows).map(|_| r.random_range(0.0..1.0)).collect();
            let params = SamplingParams {
                temperature: t,
                top_p: p,
            };
            let mut oc = vec![u32::MAX; rows];
            c.sample(&logits, vocab, params, &u, &mut oc).unwrap();
            let mut og = up(g, &vec![u32::MAX; rows]);
            g.sample(&up(g, &logits), vocab, params, &up(g, &u), &mut og)
                .unwrap();
            let og = down(g, &og);
            for row in 0..rows {
                let lr = &logits[row * vocab..(row + 1) * vocab];
                check_sample(lr, params, u[row], og[row], oc[row]);
            }
        }
    }
}

/// The GPU's token must sit where the inverse CDF at `u` lands, up to f32 summation order: with
/// the list in (p desc, index asc) order and exact (f64) sums, the token's cumulative interval
/// [before, after] over the kept mass must contain u within 1e-4 (the CPU's sequential f32 sum
/// over 50K terms is itself only that accurate). Identical picks always pass.
fn check_sample(row: &[f32], params: SamplingParams, u: f32, got: u32, cpu: u32) {
    if got == cpu {
        return;
    }
    assert!(params.temperature > 0.0, "greedy pick {got} != cpu {cpu}");
    let max = row
        .iter()
        .copied()
        .filter(|x| !x.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(f32, u32)> = row
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            let p = ((l - max) / params.temperature).exp();
            (if p.is_nan() { 0.0 } else { p }, i as u32)
        })
        .collect();
    probs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let total: f64 = probs.iter().map(|p| p.0 as f64).sum();
    let mut acc = 0f64;
    let mut kept_mass = total;
    for &(p, _) in &probs {
        acc += p as f64;
        if acc >= params.top_p as f64 * total {
            kept_mass = acc;
            break;
        }
    }
    let mut before = 0f64;
    for &(p, i) in &probs {
        if i == got {
            let (lo, hi) = (before / kept_mass, (before + p as f64) / kept_mass);
            assert!(
                lo - 1e-4 <= u as f64 && u as f64 <= hi + 1e-4,
                "sample picked {got} (cdf {lo:.6}..{hi:.6}) for u {u}, cpu picked {cpu}"
            );
            return;
        }
        before += p as f64;
    }
    panic!("sample picked {got}, not a token");
}

// ---- paged cache, selection, attention ----------------------------------------------------------

/// The same cache built through both backends: stored K/V and bounds must be bit-identical.
fn both_caches<T: Half>(
    g: &CudaBackend,
    spec: &CacheSpec,
    seed: u64,
) -> (Cache<CpuBackend, T>, Cache<CudaBackend, T>) {
    let cc = build_cache::<CpuBackend, T>(&CpuBackend, &mut rng(seed), spec);
    let gc = build_cache::<CudaBackend, T>(g, &mut rng(seed), spec);
    assert!(cc.kv_host == gc.kv_host, "append_kv: stored K/V differ");
    assert!(
        cc.bounds_host == gc.bounds_host,
        "update_bounds: bounds differ"
    );
    assert_eq!(cc.table, gc.table);
    (cc, gc)
}

fn check_paged<T: Half>(g: &CudaBackend, spec: &CacheSpec, seed: u64, budget_extra: usize) {
    let c = CpuBackend;
    let (cc, gc) = both_caches::<T>(g, spec, seed);
    let mut r = rng(seed ^ 0x5eed);
    let (hq, hkv, d) = (cc.shape.num_qo_heads, spec.num_kv_heads, spec.head_dim);
    let batch = cc.batch();
    let q = uniform(&mut r, batch * hq * d, -3.0, 3.0);
    let (qc, qg) = (q.clone(), up(g, &q));
    let tc = DevicePageTable::upload(&c, &cc.table, cc.layout()).unwrap();
    let tg = DevicePageTable::upload(g, &gc.table, gc.layout()).unwrap();

    // Estimate.
    let nnz = cc.table.indices.len();
    let mut sc = poison(hq * nnz);
    c.estimate_pages(&qc, &cc.bounds, &cc.shape, &tc, &mut sc)
        .unwrap();
    let mut sg = up(g, &poison(hq * nnz));
    g.estimate_pages(&qg, &gc.bounds, &gc.shape, &tg, &mut sg)
        .unwrap();
    check_close("estimate_pages", &down(g, &sg), &sc, nnz.max(1), TOL);

    // Dense decode.
    let mut oc = poison(q.len());
    c.decode_attention(&qc, &cc.kv, &cc.shape, &tc, TableRows::PerSequence, &mut oc)
        .unwrap();
    let mut og = up(g, &poison(q.len()));
    g.decode_attention(&qg, &gc.kv, &gc.shape, &tg, TableRows::PerSequence, &mut og)
        .unwrap();
    check_close("decode dense", &down(g, &og), &oc, d, ATT_TOL);

    // Selection from the CPU's scores on both (exact), then sparse decode over that table.
    let max_pages = (0..batch).map(|b| cc.table.row(b).len()).max().unwrap_or(1);
    let budget = (max_pages / 2 + budget_extra).max(1);
    let sg_cpu = up(g, &sc);
    for rows in [TableRows::PerQoHead, TableRows::PerKvHead] {
        let heads = rows.count(1, hq, hkv);
        let mut selc = poisoned_selection(&c, &cc.table.indptr, heads, budget);
        c.select_top_pages(
            &sc,
            &cc.shape,
            &tc,
            SelectOptions::top_k(budget, rows),
            &mut selc,
            None,
        )
        .unwrap();
        let mut selg = poisoned_selection(g, &gc.table.indptr, heads, budget);
        g.select_top_pages(
            &sg_cpu,
            &gc.shape,
            &tg,
            SelectOptions::top_k(budget, rows),
            &mut selg,
            None,
        )
        .unwrap();
        let (hc, hg) = (selc.to_host(&c).unwrap(), selg.to_host(g).unwrap());
        assert_eq!(hc, hg, "select_top_pages {rows:?} budget {budget}");
        let mut oc = poison(q.len());
        c.decode_attention(&qc, &cc.kv, &cc.shape, &selc, rows, &mut oc)
            .unwrap();
        let mut og = up(g, &poison(q.len()));
        g.decode_attention(&qg, &gc.kv, &gc.shape, &selg, rows, &mut og)
            .unwrap();
        check_close(
            &format!("decode sparse {rows:?}"),
            &down(g, &og),
            &oc,
            d,
            ATT_TOL,
        );
    }

    // Prefill: a random number of trailing queries per sequence.
    let mut qo = vec![0i32];
    for &len in &cc.seq_lens {
        let n = r.random_range(0..=len.min(40)) as i32;
        qo.push(qo.last().copied().unwrap_or(0) + n);
    }
    let total = *qo.last().unwrap_or(&0) as usize;
    let qp = uniform(&mut r, total * hq * d, -3.0, 3.0);
    let mut oc = poison(qp.len());
    c.prefill_attention(&qp, &cc.kv, &cc.shape, &tc, &qo, &mut oc)
        .unwrap();
    let mut og = up(g, &poison(qp.len()));
    g.prefill_attention(&up(g, &qp), &gc.kv, &gc.shape, &tg, &qo, &mut og)
        .unwrap();
    check_close("prefill", &down(g, &og), &oc, d, ATT_TOL);
}

fn run_paged(spec: &CacheSpec, seed: u64, dtype: u8, extra: usize) {
    let Some(g) = cuda() else { return };
    match dtype {
        0 => check_paged::<f16>(g, spec, seed, extra),
        1 => check_paged::<bf16>(g, spec, seed, extra),
        _ => check_paged::<f32>(g, spec, seed, extra),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn paged_ops_match_cpu(spec in cache_spec(700), seed in any::<u64>(), dtype in 0u8..3, extra in 0usize..3) {
        run_paged(&spec, seed, dtype, extra);
    }
}

/// Long rows (split-K with many splits and the merge pass) and GQA groups of 4 and 8.
#[test]
fn long_contexts_split_k_and_gqa() {
    for (i, &(group, lens)) in [
        (4usize, &[9000usize, 300][..]),
        (8, &[20000][..]),
        (1, &[16384, 1, 5000][..]),
        (3, &[4099][..]),
    ]
    .iter()
    .enumerate()
    {
        let spec = CacheSpec {
            page_size: 16,
            head_dim: 128,
            num_kv_heads: 2,
            group,
            seq_lens: lens.to_vec(),
            spare_pages: 3,
        };
        run_paged(&spec, 1000 + i as u64, (i % 2) as u8, 4);
    }
}

/// Top-k with heavy exact ties (scores on a coarse grid): ties must go to the earlier page on
/// both backends, for both row kinds, and the sum over a GQA group must rank identically. The
/// last cases have rows longer than the kernel keeps in registers (8192 candidates), which keep
/// their keys in shared memory up to the device's capacity and re-read global memory past it,
/// with rows right at both limits.
#[test]
fn top_k_ties_match_exactly() {
    let Some(g) = cuda() else { return };
    let c = CpuBackend;
    let mut r = rng(42);
    let cap = g.top_k_shared_key_capacity(false).unwrap();
    eprintln!("top-k shared-memory key capacity: {cap} candidates");
    for case in 0..40 {
        let (hkv, group) = (r.random_range(1..4usize), r.random_range(1..4usize));
        let hq = hkv * group;
        let batch = if case >= 38 {
            3
        } else {
            r.random_range(1..4usize)
        };
        let layout = quest_kernels::PagedLayout {
            num_pages: 5000,
            page_size: 16,
            num_kv_heads: hkv,
            head_dim: 64,
        };
        let shape = quest_kernels::AttentionShape {
            num_qo_heads: hq,
            layout,
            sm_scale: 0.125,
        };
        let mut table = PageTable::new();
        for row in 0..batch {
            let n = match case {
                0..30 => r.random_range(1..3000usize),
                30..36 => r.random_range(7000..20000usize),
                // 8192 and 8193 candidates (the last page is not one): registers, then shared
                // memory.
                36 | 37 => [8193, 8194][case - 36],
                // One launch with rows on all three paths: registers, shared memory, and over
                // the shared-memory key capacity (55780 candidates on the H100), global memory.
                38 => [
                    r.random_range(1..3000usize),
                    r.random_range(9000..20000),
                    r.random_range(cap + 2..cap + 9000),
                ][row],
                // Exactly `cap` candidates (the longest row that fits) and one more.
                _ => [r.random_range(1..3000usize), cap + 1, cap + 2][row],
            };
            let pages: Vec<i32> = (0..n).map(|_| r.random_range(0..5000)).collect();
            table.push_row(&pages, r.random_range(1..=16));
        }
        let nnz = table.indices.len();
        let scores: Vec<f32> = (0..hq * nnz)
            .map(|_| match r.random_range(0..20) {
                0 => f32::NAN,
                1 => -0.0,
                2 => 0.0,
                3 => f32::NEG_INFINITY,
                _ => r.random_range(-8i32..8) as f32 * 0.5,
            })
            .collect();
        let budget = r.random_range(1..300usize);
        let tc = DevicePageTable::upload(&c, &table, &layout).unwrap();
        let tg = DevicePageTable::upload(g, &table, &layout).unwrap();
        // Every other case forces a sink and a recent window first (bit-identical on both).
        let scores = if case % 2 == 1 {
            let (first, recent) = (r.random_range(0..3usize), r.random_range(0..6usize));
            let mut fc = scores.clone();
            c.force_pages(&mut fc, hq, &tc, first, recent).unwrap();
            let mut fg = up(g, &scores);
            g.force_pages(&mut fg, hq, &tg, first, recent).unwrap();
            let fg = down(g, &fg);
            assert!(
                fc.iter().zip(&fg).all(|(a, b)| a.to_bits() == b.to_bits()),
                "force_pages case {case}"
            );
            fc
        } else {
            scores
        };
        for rows in [TableRows::PerQoHead, TableRows::PerKvHead] {
            let heads = rows.count(1, hq, hkv);
            let mut sc = poisoned_selection(&c, &table.indptr, heads, budget);
            c.select_top_pages(
                &scores,
                &shape,
                &tc,
                SelectOptions::top_k(budget, rows),
                &mut sc,
                None,
            )
            .unwrap();
            let mut sg = poisoned_selection(g, &table.indptr, heads, budget);
            g.select_top_pages(
                &up(g, &scores),
                &shape,
                &tg,
                SelectOptions::top_k(budget, rows),
                &mut sg,
                None,
            )
            .unwrap();
            assert_eq!(
                sc.to_host(&c).unwrap(),
                sg.to_host(g).unwrap(),
                "case {case} {rows:?}"
            );
        }
    }
}

// ---- synthetic data -----------------------------------------------------------------------------

fn fill_random_matches<T: Half>(g: &CudaBackend, len: usize, seed: u64, scale: f32) {
    let c = CpuBackend;
    let mut want: Vec<T> = vec![T::from_f32(f32::NAN); len];
    c.fill_random(&mut want, seed, scale).unwrap();
    let mut got = up(g, &vec![T::from_f32(f32::NAN); len]);
    g.fill_random(&mut got, seed, scale).unwrap();
    let got = down(g, &got);
    // Bit-identical: the uniforms are exact and both round `scale * u` and the storage
    // conversion the same way.
    let bits = |v: &[T]| v.iter().map(|x| x.to_f32().to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&got), bits(&want), "fill_random len {len} seed {seed}");
    assert!(got.iter().all(|x| x.to_f32().is_finite()));
    assert!(got.iter().any(|x| x.to_f32() != 0.0));
}

#[test]
fn fill_random_matches_cpu_bit_for_bit() {
    let Some(g) = cuda() else { return };
    // Lengths around the grid-stride limit (65535 * 4 blocks of 256) and odd tails.
    for &(len, seed, scale) in &[
        (1usize, 0u64, 1.0f32),
        (1000, 1, 0.02),
        (257, u64::MAX, -3.5),
        (65535 * 4 * 256 + 77, 42, 0.125),
    ] {
        fill_random_matches::<f16>(g, len, seed, scale);
        fill_random_matches::<bf16>(g, len, seed, scale);
        fill_random_matches::<f32>(g, len, seed, scale);
    }
    let mut buf = up(g, &[f16::ONE; 4]);
    assert!(matches!(
        g.fill_random(&mut buf, 0, 0.0),
        Err(KernelError::Argument { .. })
    ));
}
