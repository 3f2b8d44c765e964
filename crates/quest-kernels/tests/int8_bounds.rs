//! 8-bit page bounds (`BoundsFormat::Int8`) on the CPU reference: the encoder rounds outward and
//! as tightly as its step allows, `update_bounds_int8` after any sequence of appends equals the
//! encoding of the final keys, and the page score from 8-bit bounds is an upper bound of every
//! key's `q·k` (the acceptance property), never below the score from exact bounds and at most a
//! step per channel above it.
//!
//! Tolerance of the upper-bound check. The score is an f32 sum of `d` f32 terms
//! `t_i = max(q_i·H_i, q_i·L_i)`; the exact (real) sum of the exact products is `>= q·k` for every
//! key `k` of the page, because `L_i <= k_i <= H_i` holds exactly (checked here too). Rounding each
//! product costs at most `u·|t_i|` and a recursive sum of `d` terms at most `(d-1)·u·Σ|t_i|` (Higham,
//! γ_{d-1}), `u = 2^-24`, so `score >= max_k q·k - (d+1)·u·Σ_i |q_i|·max(|H_i|, |L_i|)`, to first
//! order; the check allows `(d+2)·u·mag`. The reference `q·k` is in f64 from the stored keys: its
//! products are exact (24 + 11 bits) and its sum's error (`d·2^-53` relative) is far below that.

mod common;

use common::*;
use proptest::prelude::*;
use quest_kernels::quant::{dequant, encode_down, encode_up};
use quest_kernels::{
    Backend, CpuBackend, DevicePageTable, Half, KernelError, PagedLayout, bf16, f16,
};
use rand::Rng;
use rand::rngs::StdRng;

const U: f64 = 1.0 / (1u64 << 24) as f64;

// ---- the encoder ----------------------------------------------------------------------------------

/// Values of every kind: ordinary, tiny (subnormal), huge, signed zeros, infinities and NaN.
fn any_value() -> impl Strategy<Value = f32> {
    prop_oneof![
        8 => -3.0f32..3.0,
        2 => -1e-38f32..1e-38,
        2 => prop::num::f32::NORMAL,
        1 => prop::num::f32::SUBNORMAL,
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
        1 => Just(f32::MAX),
        1 => Just(-f32::MAX),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(f32::NAN),
    ]
}

/// A vector of one of the shapes that matter: any values, finite values of one magnitude, or one
/// value repeated.
fn bound_vector() -> impl Strategy<Value = Vec<f32>> {
    prop_oneof![
        prop::collection::vec(any_value(), 1..300),
        (1usize..300, -30i32..30).prop_flat_map(|(n, e)| {
            let m = 2f32.powi(e);
            prop::collection::vec(-m..m, n)
        }),
        (1usize..300, any_value()).prop_map(|(n, v)| vec![v; n]),
    ]
}

/// Checks one encoding of `v` in `direction` (+1 up, -1 down): the bound, minimal codes, and a
/// step no larger than the range needs.
fn check_encoding(v: &[f32], direction: f32) {
    let mut codes = vec![0u8; v.len()];
    let (base, step) = if direction > 0.0 {
        encode_up(v, &mut codes)
    } else {
        encode_down(v, &mut codes)
    };
    // Work in the upward frame: w = direction * v, e = direction * dequant.
    let w: Vec<f32> = v.iter().map(|&x| direction * x).collect();
    let e = |c: u8| direction * dequant(c, base, step);
    let unbounded = w.iter().any(|x| x.is_nan() || *x == f32::INFINITY);
    if unbounded {
        assert_eq!(
            (direction * base, step),
            (f32::INFINITY, 0.0 * direction),
            "{v:?}"
        );
        return;
    }
    let clamped: Vec<f32> = w.iter().map(|x| x.max(-f32::MAX)).collect();
    for (i, (&x, &c)) in clamped.iter().zip(&codes).enumerate() {
        assert!(e(c) >= x, "channel {i}: code {c} -> {} below {x}", e(c));
        assert!(
            c == 0 || e(c - 1) < x,
            "channel {i}: code {c} is not the smallest (code {} -> {} also covers {x})",
            c - 1,
            e(c - 1)
        );
    }
    let a = clamped.iter().copied().fold(f32::INFINITY, f32::min) as f64;
    let b = clamped.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    assert_eq!(
        direction as f64 * base as f64,
        a,
        "base is the extreme value"
    );
    let ideal = (b - a) / 255.0;
    let s = (direction * step) as f64;
    assert!(
        s >= 0.0 && s <= ideal * (1.0 + 1e-6) + 1e-42,
        "step {s} for a range needing {ideal}"
    );
    if a == b {
        assert!(codes.iter().all(|&c| c == 0) && e(0) as f64 == a);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn encoder_rounds_outward_tightly(v in bound_vector()) {
        check_encoding(&v, 1.0);
        check_encoding(&v, -1.0);
    }
}

#[test]
fn encoder_edge_cases() {
    // The extremes are exact, a constant vector is exact, ±0 are both fine.
    for v in [
        vec![1.5f32],
        vec![-0.0, 0.0],
        vec![f32::MAX, -f32::MAX, 0.0],
        vec![1e-45, -1e-45, 0.0],
        vec![f32::NEG_INFINITY, 2.0],
        vec![f32::INFINITY, -2.0],
        vec![f32::NAN, 1.0],
        vec![65504.0, -65504.0, 1e-7, 3.0],
    ] {
        check_encoding(&v, 1.0);
        check_encoding(&v, -1.0);
    }
    let mut codes = [0u8; 3];
    let (b, s) = encode_up(&[2.0, -1.0, 0.5], &mut codes);
    assert_eq!(
        (dequant(codes[0], b, s), dequant(codes[1], b, s)),
        (2.0, -1.0)
    );
    let (b, s) = encode_down(&[2.0, -1.0, 0.5], &mut codes);
    assert_eq!(
        (dequant(codes[0], b, s), dequant(codes[1], b, s)),
        (2.0, -1.0)
    );
    assert!(dequant(codes[2], b, s) <= 0.5 && s < 0.0);
}

// ---- keys of every shape, through update_bounds_int8 ---------------------------------------------

/// How the keys of a test cache are drawn, per channel of the token width.
#[derive(Clone, Copy, Debug)]
enum Keys {
    /// Uniform in ±3.
    Uniform,
    /// ±1, with about one channel in 16 an outlier of magnitude 20–200 biased to one sign.
    Outliers,
    /// Each channel its own magnitude, 1e-5 to 1e3, and its own sign bias.
    Magnitudes,
    /// Every channel of one sign (all positive or all negative).
    OneSided,
    /// Every token the same vector: all pages all-equal.
    Constant,
}

fn keys_strategy() -> impl Strategy<Value = Keys> {
    prop::sample::select(vec![
        Keys::Uniform,
        Keys::Outliers,
        Keys::Magnitudes,
        Keys::OneSided,
        Keys::Constant,
    ])
}

/// Per-channel (scale, shift) for `keys`; a token's channel `c` is `shift + scale * u`, `u` in ±1.
fn channel_params(r: &mut StdRng, keys: Keys, width: usize) -> Vec<(f32, f32)> {
    (0..width)
        .map(|_| match keys {
            Keys::Uniform | Keys::Constant => (3.0, 0.0),
            Keys::Outliers => {
                if r.random_range(0..16) == 0 {
                    let m = r.random_range(20.0..200.0f32);
                    (m * 0.3, if r.random() { m } else { -m })
                } else {
                    (1.0, 0.0)
                }
            }
            Keys::Magnitudes => {
                let m = 10f32.powf(r.random_range(-5.0..3.0));
                (m, m * r.random_range(-1.0..1.0f32))
            }
            Keys::OneSided => {
                let m = r.random_range(0.1..4.0f32);
                (m * 0.5, if r.random() { m } else { -m })
            }
        })
        .collect()
}

/// A cache of `spec` with keys drawn as `keys` says and 8-bit bounds kept up to date after every
/// round of appends.
fn int8_cache<T: Half>(spec: &CacheSpec, keys: Keys, seed: u64) -> Cache<CpuBackend, T> {
    let mut r = rng(seed);
    let width = spec.num_kv_heads * spec.head_dim;
    let params = channel_params(&mut r, keys, width);
    let constant: Vec<f32> = params
        .iter()
        .map(|&(m, s)| s + m * r.random_range(-1.0..1.0f32))
        .collect();
    let draw = move |r: &mut StdRng, n: usize, w: usize| -> Vec<f32> {
        (0..n * w)
            .map(|i| match keys {
                Keys::Constant => constant[i % w],
                _ => {
                    let (m, s) = params[i % w];
                    s + m * r.random_range(-1.0..1.0f32)
                }
            })
            .collect()
    };
    build_cache_with::<CpuBackend, T>(&CpuBackend, &mut r, spec, &draw, true)
}

/// Head dims the CUDA kernels support, small pages and partly filled last pages.
fn int8_spec() -> impl Strategy<Value = CacheSpec> {
    (
        prop::sample::select(vec![1usize, 4, 16, 32]),
        prop::sample::select(vec![16usize, 32, 64, 128]),
        1usize..=3,
        1usize..=5,
        prop::collection::vec(1usize..=200, 1..=3),
        0usize..=2,
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

fn check_int8_scores<T: Half>(spec: &CacheSpec, keys: Keys, seed: u64) {
    let c = CpuBackend;
    let cache = int8_cache::<T>(spec, keys, seed);
    let l: PagedLayout = *cache.layout();
    let int8 = cache.int8.as_ref().expect("int8 bounds");
    let (codes, params) = (&int8.codes_host, &int8.params_host);

    // Incremental updates equal one encoding of the final keys (never built from older codes).
    let (mut codes2, mut params2) = (codes.clone(), params.clone());
    let (pages, lens): (Vec<i32>, Vec<i32>) = (0..cache.batch())
        .flat_map(|b| {
            let row = cache.table.row(b).to_vec();
            (0..row.len()).map(move |j| (b, j, row[j]))
        })
        .map(|(b, j, p)| (p, cache.page_fill(b, j) as i32))
        .unzip();
    c.update_bounds_int8(&cache.kv_host, &mut codes2, &mut params2, &l, &pages, &lens)
        .unwrap();
    assert!(
        &codes2 == codes && &params2 == params,
        "incremental != from scratch"
    );

    let mut r = rng(seed ^ 0xabc);
    let (hq, d, group) = (cache.shape.num_qo_heads, spec.head_dim, spec.group);
    let batch = cache.batch();
    let q: Vec<f32> = (0..batch * hq * d)
        .map(|i| match (keys, i % 7) {
            (_, 0) => 0.0,
            (Keys::Outliers, 1) => r.random_range(-40.0..40.0),
            _ => r.random_range(-3.0..3.0),
        })
        .collect();
    let table = DevicePageTable::upload(&c, &cache.table, &l).unwrap();
    let nnz = cache.table.indices.len();
    let mut s8 = poison(hq * nnz);
    c.estimate_pages_int8(&q, codes, params, &cache.shape, &table, &mut s8)
        .unwrap();
    assert_written("estimate_pages_int8", &s8);
    let mut sf = poison(hq * nnz);
    c.estimate_pages(&q, &cache.bounds, &cache.shape, &table, &mut sf)
        .unwrap();

    for b in 0..batch {
        let start = cache.table.indptr[b] as usize;
        for (j, &page) in cache.table.row(b).iter().enumerate() {
            let page = page as usize;
            let fill = cache.page_fill(b, j);
            for g in 0..spec.num_kv_heads {
                let keys: Vec<Vec<f64>> = (0..fill)
                    .map(|s| stored_f64(&cache.kv_host, &l, page, 0, s, g))
                    .collect();
                let hi = dequant_bounds(codes, params, &l, page, 0, g);
                let lo = dequant_bounds(codes, params, &l, page, 1, g);
                for (i, (&h, &m)) in hi.iter().zip(&lo).enumerate() {
                    for k in &keys {
                        assert!(
                            m as f64 <= k[i] && k[i] <= h as f64,
                            "page {page} head {g} channel {i}: key {} outside [{m}, {h}]",
                            k[i]
                        );
                    }
                }
                let pr = &params[l.int8_params_offset(page, g)..][..4];
                for h in g * group..(g + 1) * group {
                    let qh = &q[(b * hq + h) * d..][..d];
                    let qf: Vec<f64> = qh.iter().map(|&x| x as f64).collect();
                    let got = s8[h * nnz + start + j];
                    let exact = sf[h * nnz + start + j];
                    let (want, mag) = score_ref_int8(qh, codes, params, &l, page, g);
                    let true_max = keys
                        .iter()
                        .map(|k| dot_f64(&qf, k))
                        .fold(f64::NEG_INFINITY, f64::max);
                    let slack = (d as f64 + 2.0) * U * mag;
                    let at = format!("seq {b} page #{j} (id {page}) head {h}");
                    assert!(
                        got as f64 >= true_max - slack,
                        "{at}: int8 score {got} below max q·k {true_max} (slack {slack:e})"
                    );
                    assert!(
                        (got as f64 - want).abs() <= slack,
                        "{at}: score {got}, the formula gives {want}"
                    );
                    // Same summation order as the exact-bounds estimate, every term no smaller.
                    assert!(got >= exact, "{at}: int8 {got} below exact-bounds {exact}");
                    let qsum: f64 = qf.iter().map(|x| x.abs()).sum();
                    let loose = qsum * (pr[1] as f64 + (pr[3] as f64).abs()) * 1.001 + 2.0 * slack;
                    assert!(
                        (got - exact) as f64 <= loose,
                        "{at}: int8 {got} exceeds exact {exact} by more than a step a channel"
                    );
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn int8_page_score_bounds_true_max_qk(
        spec in int8_spec(),
        keys in keys_strategy(),
        seed in any::<u64>(),
        dtype in 0u8..3,
    ) {
        match dtype {
            0 => check_int8_scores::<f16>(&spec, keys, seed),
            1 => check_int8_scores::<bf16>(&spec, keys, seed),
            _ => check_int8_scores::<f32>(&spec, keys, seed),
        }
    }
}

/// Any head_dim works on the CPU, down to 1 channel.
#[test]
fn odd_head_dims_on_the_cpu() {
    for (head_dim, page_size) in [(1usize, 3usize), (2, 1), (6, 16), (8, 5), (40, 16)] {
        let spec = CacheSpec {
            page_size,
            head_dim,
            num_kv_heads: 2,
            group: 3,
            seq_lens: vec![37, 1, 16],
            spare_pages: 1,
        };
        for (i, keys) in [Keys::Uniform, Keys::Outliers, Keys::Constant]
            .into_iter()
            .enumerate()
        {
            check_int8_scores::<f16>(&spec, keys, 77 + i as u64);
        }
    }
}

// ---- refusals --------------------------------------------------------------------------------------

#[test]
fn bad_inputs_are_refused_and_nothing_is_written() {
    let c = CpuBackend;
    let l = PagedLayout {
        num_pages: 4,
        page_size: 8,
        num_kv_heads: 2,
        head_dim: 16,
    };
    let kv = vec![f16::from_f32(0.5); l.kv_len()];
    let (codes0, params0) = (vec![7u8; l.bounds_len()], vec![9.0f32; l.int8_params_len()]);
    let (mut codes, mut params) = (codes0.clone(), params0.clone());
    let cases: [(&[i32], &[i32]); 4] = [
        (&[0, 4], &[1, 1]),
        (&[1, -1], &[8, 1]),
        (&[2], &[0]),
        (&[3], &[9]),
    ];
    for (pages, lens) in cases {
        let e = c.update_bounds_int8(
            &kv,
            &mut codes,
            &mut params,
            &l,
            &pages.to_vec(),
            &lens.to_vec(),
        );
        assert!(
            matches!(e, Err(KernelError::Index { .. })),
            "{pages:?} {lens:?}: {e:?}"
        );
    }
    assert!(
        codes == codes0 && params == params0,
        "a refused update wrote something"
    );
    let mut short = vec![0u8; l.bounds_len() - 1];
    let e = c.update_bounds_int8(&kv, &mut short, &mut params, &l, &vec![0], &vec![1]);
    assert!(matches!(e, Err(KernelError::Shape { .. })), "{e:?}");
    let mut short = vec![0f32; l.int8_params_len() + 4];
    let e = c.update_bounds_int8(&kv, &mut codes, &mut short, &l, &vec![0], &vec![1]);
    assert!(matches!(e, Err(KernelError::Shape { .. })), "{e:?}");

    let shape = quest_kernels::AttentionShape {
        num_qo_heads: 4,
        layout: l,
        sm_scale: 0.25,
    };
    let mut t = quest_kernels::PageTable::new();
    t.push_row(&[0, 1], 3);
    let table = DevicePageTable::upload(&c, &t, &l).unwrap();
    let q = vec![1.0f32; 4 * 16];
    let mut scores = vec![0f32; 4 * 2];
    c.estimate_pages_int8(&q, &codes, &params, &shape, &table, &mut scores)
        .unwrap();
    let mut wrong = vec![0f32; 4 * 2 + 1];
    let e = c.estimate_pages_int8(&q, &codes, &params, &shape, &table, &mut wrong);
    assert!(matches!(e, Err(KernelError::Shape { .. })), "{e:?}");
    let e = c.estimate_pages_int8(
        &q,
        &codes[1..].to_vec(),
        &params,
        &shape,
        &table,
        &mut scores,
    );
    assert!(matches!(e, Err(KernelError::Shape { .. })), "{e:?}");
    let odd = quest_kernels::AttentionShape {
        num_qo_heads: 3,
        ..shape
    };
    let e = c.estimate_pages_int8(&q, &codes, &params, &odd, &table, &mut scores);
    assert!(matches!(e, Err(KernelError::Shape { .. })), "{e:?}");
}
