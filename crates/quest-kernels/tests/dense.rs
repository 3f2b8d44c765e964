//! The dense ops of a Llama layer against f64 references: embedding, RMSNorm, matmul, RoPE,
//! SiLU·mul, residual add, argmax and sampling. Outputs are poisoned with NaN before every call.

mod common;

use common::*;
use proptest::prelude::*;
use quest_kernels::{Backend, CpuBackend, Half, RopeConfig, SamplingParams, bf16, f16};
use rand::Rng;

// ---- embedding, rms_norm, matmul ----------------------------------------------------------------------

fn check_embedding<B: Backend, W: Half>(
    backend: &B,
    seed: u64,
    vocab: usize,
    hidden: usize,
    n: usize,
) {
    let mut r = rng(seed);
    let table = uniform_half::<W>(&mut r, vocab * hidden);
    let tokens: Vec<u32> = (0..n).map(|_| r.random_range(0..vocab as u32)).collect();
    let mut out = up(backend, &poison(n * hidden));
    backend
        .embedding(
            &up(backend, &table),
            hidden,
            &up(backend, &tokens),
            &mut out,
        )
        .expect("embedding");
    let out = down(backend, &out);
    assert_written("embedding out", &out);
    for (i, &t) in tokens.iter().enumerate() {
        for c in 0..hidden {
            let want = table[t as usize * hidden + c].to_f32();
            assert_eq!(
                out[i * hidden + c].to_bits(),
                want.to_bits(),
                "row {i} token {t} col {c}"
            );
        }
    }
}

fn check_rms_norm<B: Backend, W: Half>(
    backend: &B,
    seed: u64,
    rows: usize,
    dim: usize,
    tiny: bool,
) {
    let mut r = rng(seed);
    // `tiny` rows make eps matter.
    let scale = if tiny { 1e-3 } else { 1.0 };
    let x: Vec<f32> = uniform(&mut r, rows * dim, -3.0, 3.0)
        .iter()
        .map(|v| v * scale)
        .collect();
    let w = uniform_half::<W>(&mut r, dim);
    let eps = if r.random_bool(0.5) { 1e-5 } else { 1e-6 };
    let mut out = up(backend, &poison(rows * dim));
    backend
        .rms_norm(&up(backend, &x), &up(backend, &w), eps, &mut out)
        .expect("rms_norm");
    let out = down(backend, &out);
    assert_written("rms_norm out", &out);
    let mut want = Vec::with_capacity(out.len());
    for xr in x.chunks(dim) {
        let ms = xr.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / dim as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        want.extend(
            xr.iter()
                .zip(&w)
                .map(|(&v, g)| v as f64 * inv * g.to_f32() as f64),
        );
    }
    let (err, row) = max_row_rel_err(&out, &want, dim);
    assert!(err < 1e-5, "rms_norm row {row}: relative error {err:e}");
}

fn check_matmul<B: Backend, W: Half>(backend: &B, seed: u64, n: usize, k: usize, m: usize) {
    let mut r = rng(seed);
    let x = uniform(&mut r, n * k, -3.0, 3.0);
    let w = uniform_half::<W>(&mut r, m * k);
    let mut out = up(backend, &poison(n * m));
    backend
        .matmul(&up(backend, &x), &up(backend, &w), n, k, m, &mut out)
        .expect("matmul");
    let out = down(backend, &out);
    assert_written("matmul out", &out);
    for i in 0..n {
        for j in 0..m {
            let (mut want, mut mag) = (0f64, 0f64);
            for c in 0..k {
                let p = x[i * k + c] as f64 * w[j * k + c].to_f32() as f64;
                want += p;
                mag += p.abs();
            }
            let got = out[i * m + j] as f64;
            // f32 accumulation error is bounded by a multiple of Σ|x w|, not of |Σ x w|.
            assert!(
                (got - want).abs() <= 1e-5 * mag,
                "matmul [{n}x{k}]·[{m}x{k}]^T at ({i}, {j}): {got} vs {want}"
            );
        }
    }
}

// ---- rope ---------------------------------------------------------------------------------------------

/// RoPE against a direct f64 rotate-half with the same f32 angle rule (`pos as f32 * inv_freq[i]`,
/// rounded to f32, then cos/sin): within 2e-6 of each pair's norm (a correctly rounded f32 cos/sin
/// is within 6e-8 of the f64 value of the same f32 angle). Also: each (i, i + d/2) pair keeps its
/// norm, and position 0 is exactly the identity.
fn check_rope<B: Backend>(
    backend: &B,
    seed: u64,
    n: usize,
    heads: usize,
    head_dim: usize,
    theta: f32,
    max_pos: i32,
) {
    let mut r = rng(seed);
    let x = uniform(&mut r, n * heads * head_dim, -3.0, 3.0);
    let mut positions: Vec<i32> = (0..n).map(|_| r.random_range(0..=max_pos)).collect();
    positions[0] = 0;
    let inv_freq = RopeConfig {
        theta,
        head_dim,
        scaling: None,
    }
    .inv_freq();
    let mut buf = up(backend, &x);
    backend
        .rope(
            &mut buf,
            &up(backend, &positions),
            &up(backend, &inv_freq),
            head_dim,
        )
        .expect("rope");
    let got = down(backend, &buf);
    assert_written("rope x", &got);
    let half = head_dim / 2;
    for (t, &pos) in positions.iter().enumerate() {
        for h in 0..heads {
            let base = (t * heads + h) * head_dim;
            for i in 0..half {
                let (a, b) = (x[base + i] as f64, x[base + half + i] as f64);
                let (ga, gb) = (got[base + i] as f64, got[base + half + i] as f64);
                let norm = (a * a + b * b).sqrt();
                if pos == 0 {
                    assert_eq!(
                        (got[base + i].to_bits(), got[base + half + i].to_bits()),
                        (x[base + i].to_bits(), x[base + half + i].to_bits()),
                        "position 0 must be the identity (token {t} head {h} pair {i})"
                    );
                }
                let angle = (pos as f32 * inv_freq[i]) as f64;
                let (wa, wb) = (
                    a * angle.cos() - b * angle.sin(),
                    b * angle.cos() + a * angle.sin(),
                );
                let err = ((ga - wa).powi(2) + (gb - wb).powi(2)).sqrt();
                assert!(
                    err <= 2e-6 * norm,
                    "token {t} (pos {pos}) head {h} pair {i}: ({ga}, {gb}) vs ({wa}, {wb})"
                );
                let gnorm = (ga * ga + gb * gb).sqrt();
                assert!(
                    (gnorm - norm).abs() <= 1e-6 * norm,
                    "pair norm {norm} became {gnorm}"
                );
            }
        }
    }
}

// ---- silu_mul, add_assign -------------------------------------------------------------------------------

fn check_silu_mul_and_add<B: Backend>(backend: &B, seed: u64, len: usize) {
    let mut r = rng(seed);
    let mut gate = uniform(&mut r, len, -20.0, 20.0);
    // A few extreme gates: exp(-g) overflows / underflows in f32.
    for g in gate.iter_mut() {
        if r.random_bool(0.05) {
            *g = *[-200.0f32, -90.0, 90.0, 200.0]
                .get(r.random_range(0..4))
                .unwrap();
        }
    }
    let upv = uniform(&mut r, len, -3.0, 3.0);
    let mut out = up(backend, &poison(len));
    backend
        .silu_mul(&up(backend, &gate), &up(backend, &upv), &mut out)
        .expect("silu_mul");
    let out = down(backend, &out);
    assert_written("silu_mul out", &out);
    for i in 0..len {
        let g = gate[i] as f64;
        let want = g / (1.0 + (-g).exp()) * upv[i] as f64;
        let got = out[i] as f64;
        assert!(
            (got - want).abs() <= 1e-5 * want.abs() + 1e-30,
            "silu_mul({}, {}) = {got}, expected {want}",
            gate[i],
            upv[i]
        );
    }

    let y = uniform(&mut r, len, -3.0, 3.0);
    let mut x = up(backend, &upv);
    backend
        .add_assign(&mut x, &up(backend, &y))
        .expect("add_assign");
    let x = down(backend, &x);
    for i in 0..len {
        assert_eq!(
            x[i].to_bits(),
            (upv[i] + y[i]).to_bits(),
            "add_assign element {i}"
        );
    }
}

// ---- argmax, sample -------------------------------------------------------------------------------------

/// Lowest index of the largest non-NaN value; `None` for an all-NaN row.
fn argmax_ref(row: &[f32]) -> Option<u32> {
    let mut best: Option<usize> = None;
    for (i, &v) in row.iter().enumerate() {
        if !v.is_nan() && best.is_none_or(|b| v > row[b]) {
            best = Some(i);
        }
    }
    best.map(|b| b as u32)
}

/// Rows drawn from a small set (ties), with NaNs and infinities sprinkled in.
fn tie_heavy_logits(r: &mut rand::rngs::StdRng, n: usize, vocab: usize) -> Vec<f32> {
    (0..n * vocab)
        .map(|_| match r.random_range(0..20) {
            0 => f32::NAN,
            1 => f32::NEG_INFINITY,
            2 if r.random_bool(0.2) => f32::INFINITY,
            _ => r.random_range(-3i32..=3) as f32 * 0.5,
        })
        .collect()
}

fn run_argmax<B: Backend>(backend: &B, logits: &[f32], vocab: usize) -> Vec<u32> {
    let rows = logits.len() / vocab;
    let mut out = up(backend, &vec![u32::MAX; rows]);
    backend
        .argmax(&up(backend, logits), vocab, &mut out)
        .expect("argmax");
    down(backend, &out)
}

fn run_sample<B: Backend>(
    backend: &B,
    logits: &[f32],
    vocab: usize,
    params: SamplingParams,
    uniforms: &[f32],
) -> Vec<u32> {
    let mut out = up(backend, &vec![u32::MAX; uniforms.len()]);
    backend
        .sample(
            &up(backend, logits),
            vocab,
            params,
            &up(backend, uniforms),
            &mut out,
        )
        .expect("sample");
    down(backend, &out)
}

fn check_argmax_and_greedy<B: Backend>(backend: &B, seed: u64, n: usize, vocab: usize) {
    let mut r = rng(seed);
    let logits = tie_heavy_logits(&mut r, n, vocab);
    let got = run_argmax(backend, &logits, vocab);
    for (i, row) in logits.chunks(vocab).enumerate() {
        match argmax_ref(row) {
            Some(want) => assert_eq!(got[i], want, "argmax of {row:?}"),
            None => assert!((got[i] as usize) < vocab, "all-NaN row gave {}", got[i]),
        }
    }
    // Greedy sampling and a vanishing nucleus both give the argmax, whatever the uniforms.
    let uniforms: Vec<f32> = (0..n).map(|_| r.random_range(0.0..1.0)).collect();
    let greedy = SamplingParams {
        temperature: 0.0,
        top_p: 1.0,
    };
    assert_eq!(
        run_sample(backend, &logits, vocab, greedy, &uniforms),
        got,
        "temperature 0"
    );
    let finite: Vec<f32> = uniform(&mut r, n * vocab, -4.0, 4.0)
        .iter()
        .map(|v| (v * 4.0).round() / 4.0) // ties
        .collect();
    let temperature = r.random_range(0.2f32..3.0);
    let narrow = SamplingParams {
        temperature,
        top_p: 1e-6,
    };
    assert_eq!(
        run_sample(backend, &finite, vocab, narrow, &uniforms),
        run_argmax(backend, &finite, vocab),
        "top_p 1e-6 at temperature {temperature}"
    );
}

/// Empirical frequencies over a stratified sweep of uniforms `(k + 0.5) / N` match the softmax at
/// `temperature` restricted to the top-p nucleus and renormalized (within 2/N + 1e-4, the sweep's
/// resolution plus f32 rounding), and tokens outside the nucleus are never sampled. The nucleus is
/// the smallest set of most likely tokens (ties by lower index) whose f64 mass reaches `top_p`;
/// cases where `top_p` falls within 1e-4 of a cumulative mass are nudged off the boundary.
fn check_sample_distribution<B: Backend>(backend: &B, seed: u64, vocab: usize, full: bool) {
    const N: usize = 4000;
    let mut r = rng(seed);
    let logits = uniform(&mut r, vocab, -3.0, 3.0);
    let temperature = r.random_range(0.3f32..2.5);
    let mut top_p = if full {
        1.0
    } else {
        r.random_range(0.2f32..1.0)
    };

    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let w: Vec<f64> = logits
        .iter()
        .map(|&l| ((l as f64 - max) / temperature as f64).exp())
        .collect();
    let total: f64 = w.iter().sum();
    let p: Vec<f64> = w.iter().map(|x| x / total).collect();
    let mut order: Vec<usize> = (0..vocab).collect();
    order.sort_by(|&a, &b| p[b].partial_cmp(&p[a]).unwrap().then(a.cmp(&b)));
    let cums: Vec<f64> = order
        .iter()
        .scan(0.0, |c, &i| {
            *c += p[i];
            Some(*c)
        })
        .collect();
    if !full && cums.iter().any(|&c| (c - top_p as f64).abs() < 1e-4) {
        top_p = (top_p - 2e-4).max(0.1);
    }
    let kept = if full {
        vocab
    } else {
        cums.iter().position(|&c| c >= top_p as f64).unwrap() + 1
    };
    let nucleus = &order[..kept];
    let mass = cums[kept - 1];

    let uniforms: Vec<f32> = (0..N)
        .map(|k| ((k as f64 + 0.5) / N as f64) as f32)
        .collect();
    let logits_rep: Vec<f32> = (0..N).flat_map(|_| logits.iter().copied()).collect();
    let params = SamplingParams { temperature, top_p };
    let got = run_sample(backend, &logits_rep, vocab, params, &uniforms);
    let mut counts = vec![0usize; vocab];
    for &t in &got {
        assert!(
            (t as usize) < vocab,
            "sampled token {t} outside vocab {vocab}"
        );
        counts[t as usize] += 1;
    }
    for tok in 0..vocab {
        let freq = counts[tok] as f64 / N as f64;
        let want = if nucleus.contains(&tok) {
            p[tok] / mass
        } else {
            0.0
        };
        if want == 0.0 {
            assert_eq!(
                counts[tok], 0,
                "token {tok} outside the top-{top_p} nucleus {nucleus:?} sampled"
            );
        }
        assert!(
            (freq - want).abs() <= 2.0 / N as f64 + 1e-4,
            "token {tok}: frequency {freq} vs {want} (T {temperature}, top_p {top_p}, logits {logits:?})"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn embedding_copies_rows(
        seed in any::<u64>(), vocab in 1usize..50, hidden in 1usize..100, n in 0usize..8,
        dtype in 0u8..3,
    ) {
        match dtype {
            0 => check_embedding::<_, f16>(&CpuBackend, seed, vocab, hidden, n),
            1 => check_embedding::<_, bf16>(&CpuBackend, seed, vocab, hidden, n),
            _ => check_embedding::<_, f32>(&CpuBackend, seed, vocab, hidden, n),
        }
    }

    #[test]
    fn rms_norm_matches_f64(
        seed in any::<u64>(), rows in 1usize..5, dim in 1usize..300, tiny in any::<bool>(),
        use_bf16 in any::<bool>(),
    ) {
        if use_bf16 {
            check_rms_norm::<_, bf16>(&CpuBackend, seed, rows, dim, tiny);
        } else {
            check_rms_norm::<_, f16>(&CpuBackend, seed, rows, dim, tiny);
        }
    }

    #[test]
    fn matmul_matches_f64(
        seed in any::<u64>(),
        n in prop_oneof![Just(1usize), 2usize..6],
        k in 1usize..200,
        m in 1usize..70,
        dtype in 0u8..3,
    ) {
        match dtype {
            0 => check_matmul::<_, f16>(&CpuBackend, seed, n, k, m),
            1 => check_matmul::<_, bf16>(&CpuBackend, seed, n, k, m),
            _ => check_matmul::<_, f32>(&CpuBackend, seed, n, k, m),
        }
    }

    #[test]
    fn rope_rotates_pairs(
        seed in any::<u64>(),
        n in 1usize..5,
        heads in 1usize..5,
        head_dim in prop_oneof![Just(64usize), Just(128), (1usize..40).prop_map(|h| 2 * h)],
        theta in prop_oneof![Just(10000.0f32), Just(500000.0)],
        max_pos in prop_oneof![Just(10i32), Just(8192), Just(200_000)],
    ) {
        check_rope(&CpuBackend, seed, n, heads, head_dim, theta, max_pos);
    }

    #[test]
    fn silu_mul_and_add_assign_match_f64(seed in any::<u64>(), len in 1usize..600) {
        check_silu_mul_and_add(&CpuBackend, seed, len);
    }

    #[test]
    fn argmax_lowest_index_nan_never_wins(seed in any::<u64>(), n in 1usize..6, vocab in 1usize..40) {
        check_argmax_and_greedy(&CpuBackend, seed, n, vocab);
    }

    #[test]
    fn sample_follows_softmax_within_nucleus(
        seed in any::<u64>(), vocab in 2usize..9, full in any::<bool>(),
    ) {
        check_sample_distribution(&CpuBackend, seed, vocab, full);
    }
}

fn check_argmax_edge_cases<B: Backend>(backend: &B) {
    let nan = f32::NAN;
    let inf = f32::INFINITY;
    let rows: &[(&[f32], u32)] = &[
        (&[nan, f32::NEG_INFINITY], 1),
        (&[nan, nan, 3.0, 3.0], 2),
        (&[f32::NEG_INFINITY; 3], 0),
        (&[1.0, inf, nan, inf], 1),
        (&[-0.0, 0.0], 0),
        (&[2.0, nan, 5.0, nan], 2),
    ];
    for &(row, want) in rows {
        assert_eq!(
            run_argmax(backend, row, row.len()),
            vec![want],
            "argmax of {row:?}"
        );
        let greedy = SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
        };
        assert_eq!(
            run_sample(backend, row, row.len(), greedy, &[0.5]),
            vec![want],
            "greedy {row:?}"
        );
    }
}

#[test]
fn argmax_edge_cases() {
    check_argmax_edge_cases(&CpuBackend);
}

/// Inverting the nucleus CDF: with logits giving probabilities 1/2, 1/4, 1/8, 1/8 at T = 1, the
/// uniforms map to tokens by cumulative mass in probability order (ties by index).
fn check_sample_cdf<B: Backend>(backend: &B) {
    let l = [
        (0.125f32).ln(),
        (0.5f32).ln(),
        (0.125f32).ln(),
        (0.25f32).ln(),
    ];
    let params = SamplingParams {
        temperature: 1.0,
        top_p: 1.0,
    };
    let cases = [
        (0.0, 1),
        (0.49, 1),
        (0.51, 3),
        (0.74, 3),
        (0.76, 0),
        (0.874, 0),
        (0.876, 2),
        (0.999, 2),
    ];
    for (u, want) in cases {
        assert_eq!(
            run_sample(backend, &l, 4, params, &[u]),
            vec![want],
            "u = {u}"
        );
    }
    // top_p 0.7 keeps {1, 3} (mass 0.75): u scales over that mass.
    let params = SamplingParams {
        temperature: 1.0,
        top_p: 0.7,
    };
    let cases = [(0.0, 1), (0.6, 1), (0.7, 3), (0.999, 3)];
    for (u, want) in cases {
        assert_eq!(
            run_sample(backend, &l, 4, params, &[u]),
            vec![want],
            "top_p 0.7, u = {u}"
        );
    }
}

#[test]
fn sample_inverts_the_nucleus_cdf() {
    check_sample_cdf(&CpuBackend);
}

/// Rows of several tokens at once are independent and all written.
#[test]
fn sample_writes_every_row() {
    let backend = CpuBackend;
    let mut r = rng(3);
    let (n, vocab) = (33, 17);
    let logits = uniform(&mut r, n * vocab, -3.0, 3.0);
    let uniforms: Vec<f32> = (0..n).map(|_| r.random_range(0.0..1.0)).collect();
    let params = SamplingParams {
        temperature: 0.8,
        top_p: 0.9,
    };
    let all = run_sample(&backend, &logits, vocab, params, &uniforms);
    for i in 0..n {
        let one = run_sample(
            &backend,
            &logits[i * vocab..(i + 1) * vocab],
            vocab,
            params,
            &uniforms[i..i + 1],
        );
        assert_eq!(all[i], one[0], "row {i}");
    }
}

// ---- fused decode projections ---------------------------------------------------------------------

/// The fused projections (`qkv_projection`, `rms_norm_swiglu`, `rms_norm_matmul_many`,
/// `matmul_add`) are, on the CPU, exactly the plain ops they stand for: RoPE on q and k but not v,
/// SiLU on the gate and not the up projection, the residual added, not replaced. A norm weight
/// that is not the projection's whole input row is refused, not applied piecewise.
#[test]
fn fused_projections_are_the_plain_ops() {
    let c = &CpuBackend;
    let mut r = rng(11);
    let (n, k, hd, eps) = (3usize, 48usize, 8usize, 1e-5f32);
    let x = uniform(&mut r, n * k, -2.0, 2.0);
    let norm = uniform_half::<f16>(&mut r, k);
    let (mq, mk, mv, mi) = (4 * hd, 2 * hd, 2 * hd, 40usize);
    let [wq, wk, wv] = [mq, mk, mv].map(|m| uniform_half::<f16>(&mut r, m * k));
    let positions: Vec<i32> = (0..n as i32).map(|i| 7 + 100 * i).collect();
    let inv_freq = RopeConfig {
        theta: 10000.0,
        head_dim: hd,
        scaling: None,
    }
    .inv_freq();
    let mut h = vec![0f32; n * k];
    c.rms_norm(&x, &norm, eps, &mut h).unwrap();
    let plain = |w: &Vec<f16>, m: usize| {
        let mut o = vec![0f32; n * m];
        c.matmul(&h, w, n, k, m, &mut o).unwrap();
        o
    };
    let (mut q, mut kk, v) = (plain(&wq, mq), plain(&wk, mk), plain(&wv, mv));
    c.rope_qk(&mut q, &mut kk, &positions, &inv_freq, hd)
        .unwrap();
    let mut got = [poison(n * mq), poison(n * mk), poison(n * mv)];
    let rope = quest_kernels::RopeInput {
        positions: &positions,
        inv_freq: &inv_freq,
        head_dim: hd,
    };
    let [gq, gk, gv] = &mut got;
    c.qkv_projection(&x, &norm, eps, [&wq, &wk, &wv], n, k, [gq, gk, gv], &rope)
        .unwrap();
    assert_eq!(got, [q, kk, v], "qkv_projection");

    let (wg, wu) = (
        uniform_half::<f16>(&mut r, mi * k),
        uniform_half::<f16>(&mut r, mi * k),
    );
    let mut want = vec![0f32; n * mi];
    c.silu_mul(&plain(&wg, mi), &plain(&wu, mi), &mut want)
        .unwrap();
    let mut got = poison(n * mi);
    c.rms_norm_swiglu(&x, &norm, eps, &wg, &wu, n, k, &mut got)
        .unwrap();
    assert_eq!(got, want, "rms_norm_swiglu");

    let mut got = poison(n * mi);
    c.rms_norm_matmul_many(&x, &norm, eps, &[&wg], n, k, &mut [&mut got])
        .unwrap();
    assert_eq!(got, plain(&wg, mi), "rms_norm_matmul_many");

    let act = uniform(&mut r, n * mi, -1.0, 1.0);
    let wd = uniform_half::<f16>(&mut r, k * mi);
    let mut resid = x.clone();
    c.matmul_add(&act, &wd, n, mi, k, &mut resid).unwrap();
    let mut y = vec![0f32; n * k];
    c.matmul(&act, &wd, n, mi, k, &mut y).unwrap();
    let want: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
    assert_eq!(resid, want, "matmul_add");

    let half_norm = uniform_half::<f16>(&mut r, k / 2);
    let err = c
        .rms_norm_matmul_many(&x, &half_norm, eps, &[&wg], n, k, &mut [&mut got])
        .unwrap_err();
    assert!(
        err.to_string().contains("norm weight of 24 elements"),
        "{err}"
    );
}
