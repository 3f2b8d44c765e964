//! The CUDA kernels of 8-bit page bounds (`ptx/bounds_int8.cu`) against the CPU reference, on
//! random inputs (never zeros), outputs poisoned first (codes and params with random garbage,
//! scores with NaN). Without a driver or GPU each test prints `skipped: no CUDA device (<reason>)`
//! to stderr and passes.
//!
//! What must match. `update_bounds_int8` is bit-identical to the CPU (codes and params): both run
//! the same IEEE operations in the same order (quant.rs / the kernel's intrinsics). The estimate
//! differs from the CPU only in the order of its f32 sum (16 channels a lane, then a shuffle
//! tree), so per score `|gpu - cpu| <= 2·(d+1)·2^-24·Σ_i |q_i|·max(|H_i|, |L_i|)` (each within
//! `(d-1)·u·mag` of the exact sum of rounded products, plus the products' own rounding); a wrong
//! page, head, code or channel costs far more. Independently of the CPU, every GPU score must be
//! `>= max q·k` over its page's keys (f64, from the stored keys) up to `(d+2)·u·mag`.
#![cfg(feature = "cuda")]

mod common;

use common::*;
use proptest::prelude::*;
use quest_kernels::{
    AttentionShape, Backend, CpuBackend, CudaBackend, DevicePageTable, Half, KernelError,
    PageTable, PagedLayout, bf16, f16,
};
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

const U: f64 = 1.0 / (1u64 << 24) as f64;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Encodes the bounds of `pages` (lengths `lens`) on both backends from the same stored keys,
/// starting from the same garbage, and checks the results are bit-identical; returns them.
fn update_both<T: Half>(
    g: &CudaBackend,
    r: &mut StdRng,
    layout: &PagedLayout,
    kv: &[T],
    pages: &[i32],
    lens: &[i32],
) -> (Vec<u8>, Vec<f32>) {
    let c = CpuBackend;
    let codes0: Vec<u8> = (0..layout.bounds_len()).map(|_| r.random()).collect();
    let params0 = uniform(r, layout.int8_params_len(), -9.0, 9.0);
    let (mut cc, mut cp) = (codes0.clone(), params0.clone());
    c.update_bounds_int8(
        &kv.to_vec(),
        &mut cc,
        &mut cp,
        layout,
        &pages.to_vec(),
        &lens.to_vec(),
    )
    .unwrap();
    let (mut gc, mut gp) = (up(g, &codes0), up(g, &params0));
    g.update_bounds_int8(
        &up(g, kv),
        &mut gc,
        &mut gp,
        layout,
        &up(g, pages),
        &up(g, lens),
    )
    .unwrap();
    let (gc, gp) = (down(g, &gc), down(g, &gp));
    if let Some(i) = (0..cc.len()).find(|&i| cc[i] != gc[i]) {
        panic!(
            "update_bounds_int8: code {i} is {} on the GPU, {} on the CPU",
            gc[i], cc[i]
        );
    }
    if let Some(i) = (0..cp.len()).find(|&i| cp[i].to_bits() != gp[i].to_bits()) {
        panic!(
            "update_bounds_int8: param {i} is {} on the GPU, {} on the CPU",
            gp[i], cp[i]
        );
    }
    (cc, cp)
}

/// Runs the estimate on both backends over `table` and checks every GPU score against the CPU's
/// and against the true max `q·k` of its page (`fills[j]` keys for table entry `j`).
#[allow(clippy::too_many_arguments)]
fn estimate_both<T: Half>(
    g: &CudaBackend,
    r: &mut StdRng,
    shape: &AttentionShape,
    kv: &[T],
    codes: &[u8],
    params: &[f32],
    table: &PageTable,
    fills: &[usize],
) {
    let c = CpuBackend;
    let l = &shape.layout;
    let (hq, d) = (shape.num_qo_heads, l.head_dim);
    let group = shape.group_size();
    let batch = table.rows();
    let q = uniform(r, batch * hq * d, -3.0, 3.0);
    let nnz = table.indices.len();
    let tc = DevicePageTable::upload(&c, table, l).unwrap();
    let tg = DevicePageTable::upload(g, table, l).unwrap();
    let mut sc = poison(hq * nnz);
    c.estimate_pages_int8(&q, &codes.to_vec(), &params.to_vec(), shape, &tc, &mut sc)
        .unwrap();
    let mut sg = up(g, &poison(hq * nnz));
    g.estimate_pages_int8(
        &up(g, &q),
        &up(g, codes),
        &up(g, params),
        shape,
        &tg,
        &mut sg,
    )
    .unwrap();
    let sg = down(g, &sg);
    assert_written("estimate_pages_int8 (cuda)", &sg);
    for b in 0..batch {
        for j in table.indptr[b] as usize..table.indptr[b + 1] as usize {
            let page = table.indices[j] as usize;
            for h in 0..hq {
                let kvh = h / group;
                let qh = &q[(b * hq + h) * d..][..d];
                let (_, mag) = score_ref_int8(qh, codes, params, l, page, kvh);
                let (got, cpu) = (sg[h * nnz + j] as f64, sc[h * nnz + j] as f64);
                let at = format!("row {b} entry {j} (page {page}) head {h}");
                assert!(
                    (got - cpu).abs() <= 2.0 * (d as f64 + 1.0) * U * mag,
                    "{at}: cuda {got}, cpu {cpu}"
                );
                let qf: Vec<f64> = qh.iter().map(|&x| x as f64).collect();
                let true_max = (0..fills[j])
                    .map(|s| dot_f64(&qf, &stored_f64(kv, l, page, 0, s, kvh)))
                    .fold(f64::NEG_INFINITY, f64::max);
                assert!(
                    got >= true_max - (d as f64 + 2.0) * U * mag,
                    "{at}: cuda score {got} below max q·k {true_max}"
                );
            }
        }
    }
}

/// Keys with the odd special value: inf, NaN, subnormals, zeros of both signs, large values.
fn keys_with_specials<T: Half>(r: &mut StdRng, n: usize, specials: bool) -> Vec<T> {
    (0..n)
        .map(|_| {
            let x = if specials && r.random_range(0..50) == 0 {
                match r.random_range(0..7) {
                    0 => f32::INFINITY,
                    1 => f32::NEG_INFINITY,
                    2 => f32::NAN,
                    3 => 1e-7,
                    4 => -0.0,
                    5 => 0.0,
                    _ => 6e4,
                }
            } else if r.random_range(0..20) == 0 {
                r.random_range(-200.0..200.0) // outlier
            } else {
                r.random_range(-3.0..3.0)
            };
            T::from_f32(x)
        })
        .collect()
}

/// A pool of random keys encoded on both backends, then random tables over it (empty rows,
/// repeated pages, short rows so chunks of entries cross sequence boundaries, entry counts that
/// are no multiple of the kernel's entries per team), scored on both.
fn check_tables<T: Half>(
    g: &CudaBackend,
    seed: u64,
    head_dim: usize,
    group: usize,
    specials: bool,
) {
    let mut r = rng(seed);
    let layout = PagedLayout {
        num_pages: r.random_range(1..300),
        page_size: [1usize, 3, 16, 32][r.random_range(0..4)],
        num_kv_heads: r.random_range(1..=3),
        head_dim,
    };
    let shape = AttentionShape {
        num_qo_heads: layout.num_kv_heads * group,
        layout,
        sm_scale: 0.1,
    };
    let kv = keys_with_specials::<T>(&mut r, layout.kv_len(), specials);
    // Every page gets a random fill; a first call encodes a random subset of pages at shorter
    // lengths, a second all of them (each call starts from fresh garbage on both backends).
    let fill: Vec<i32> = (0..layout.num_pages)
        .map(|_| r.random_range(1..=layout.page_size as i32))
        .collect();
    let mut ids: Vec<i32> = (0..layout.num_pages as i32).collect();
    ids.shuffle(&mut r);
    let some = &ids[..r.random_range(0..=ids.len())];
    let some_lens: Vec<i32> = some
        .iter()
        .map(|&p| r.random_range(1..=fill[p as usize]))
        .collect();
    update_both(g, &mut r, &layout, &kv, some, &some_lens);
    let all_lens: Vec<i32> = ids.iter().map(|&p| fill[p as usize]).collect();
    let (codes, params) = update_both(g, &mut r, &layout, &kv, &ids, &all_lens);
    if specials {
        return; // scores of inf/NaN keys are not comparable; the encoding was checked above
    }
    for _ in 0..3 {
        let mut table = PageTable::new();
        let mut fills = Vec::new();
        for _ in 0..r.random_range(1..6) {
            let n = match r.random_range(0..4) {
                0 => 0,
                1 => r.random_range(1..4),
                _ => r.random_range(1..400),
            };
            let pages: Vec<i32> = (0..n)
                .map(|_| r.random_range(0..layout.num_pages as i32))
                .collect();
            // The last page's fill is the row's last_page_len; the others use their own fill,
            // which a real table would never do for a partial page, but scores do not care.
            let last = pages.last().map_or(1, |&p| fill[p as usize]);
            fills.extend(pages.iter().map(|&p| fill[p as usize] as usize));
            table.push_row(&pages, last);
        }
        estimate_both(g, &mut r, &shape, &kv, &codes, &params, &table, &fills);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// Caches built by appends through both backends: every round's update bit-identical, then
    /// the estimate over the caches' own tables.
    #[test]
    fn int8_cache_updates_and_estimate_match_cpu(
        spec in (
            prop::sample::select(vec![8usize, 16, 32]),
            prop::sample::select(vec![16usize, 32, 64, 128, 256]),
            1usize..=3,
            1usize..=9,
            prop::collection::vec(1usize..=300, 1..=4),
            0usize..=2,
        ).prop_map(|(page_size, head_dim, num_kv_heads, group, seq_lens, spare_pages)| CacheSpec {
            page_size, head_dim, num_kv_heads, group, seq_lens, spare_pages,
        }),
        seed in any::<u64>(),
        dtype in 0u8..3,
    ) {
        let Some(g) = cuda() else { return Ok(()) };
        match dtype {
            0 => check_cache::<f16>(g, &spec, seed),
            1 => check_cache::<bf16>(g, &spec, seed),
            _ => check_cache::<f32>(g, &spec, seed),
        }
    }

    #[test]
    fn int8_estimate_over_random_tables_matches_cpu(
        seed in any::<u64>(),
        head_dim in prop::sample::select(vec![16usize, 32, 64, 128, 256]),
        group in 1usize..=9,
        dtype in 0u8..2,
    ) {
        let Some(g) = cuda() else { return Ok(()) };
        if dtype == 0 {
            check_tables::<f16>(g, seed, head_dim, group, false);
        } else {
            check_tables::<bf16>(g, seed, head_dim, group, false);
        }
    }
}

fn check_cache<T: Half>(g: &CudaBackend, spec: &CacheSpec, seed: u64) {
    let keys = |r: &mut StdRng, n: usize, w: usize| -> Vec<f32> {
        (0..n * w)
            .map(|i| {
                if i % w % 13 == 5 {
                    40.0 + r.random_range(-5.0..5.0f32) // an outlier channel of one sign
                } else {
                    r.random_range(-3.0..3.0)
                }
            })
            .collect()
    };
    let cc = build_cache_with::<CpuBackend, T>(&CpuBackend, &mut rng(seed), spec, &keys, true);
    let gc = build_cache_with::<CudaBackend, T>(g, &mut rng(seed), spec, &keys, true);
    assert!(cc.kv_host == gc.kv_host, "append_kv: stored K/V differ");
    let (ci, gi) = (cc.int8.as_ref().unwrap(), gc.int8.as_ref().unwrap());
    assert!(
        ci.codes_host == gi.codes_host,
        "update_bounds_int8: codes differ"
    );
    assert_eq!(
        bits(&ci.params_host),
        bits(&gi.params_host),
        "update_bounds_int8: params differ"
    );
    let mut fills = Vec::new();
    for b in 0..cc.batch() {
        fills.extend((0..cc.table.row(b).len()).map(|j| cc.page_fill(b, j)));
    }
    let mut r = rng(seed ^ 0x1234);
    estimate_both(
        g,
        &mut r,
        &cc.shape,
        &cc.kv_host,
        &ci.codes_host,
        &ci.params_host,
        &cc.table,
        &fills,
    );
}

/// Special key values (inf, NaN, subnormals, ±0, large) encode bit-identically on both.
#[test]
fn int8_update_with_special_keys_matches_cpu() {
    let Some(g) = cuda() else { return };
    for seed in 0..24u64 {
        let hd = [16usize, 32, 64, 128, 256][seed as usize % 5];
        match seed % 3 {
            0 => check_tables::<f16>(g, seed, hd, 1 + seed as usize % 4, true),
            1 => check_tables::<bf16>(g, seed, hd, 2, true),
            _ => check_tables::<f32>(g, seed, hd, 3, true),
        }
    }
}

/// Long rows (many teams per sequence) with GQA groups of 1, 4 and 8 at head_dim 128, the shapes
/// the benchmark times.
#[test]
fn int8_long_rows() {
    let Some(g) = cuda() else { return };
    for (i, &(group, ref lens)) in [
        (1usize, vec![20000usize, 17]),
        (4, vec![9000, 300, 1]),
        (8, vec![16384]),
    ]
    .iter()
    .enumerate()
    {
        let spec = CacheSpec {
            page_size: 16,
            head_dim: 128,
            num_kv_heads: 2,
            group,
            seq_lens: lens.clone(),
            spare_pages: 3,
        };
        check_cache::<f16>(g, &spec, 500 + i as u64);
    }
}

/// Head dims the kernels do not support are refused before any launch.
#[test]
fn int8_unsupported_head_dim_is_an_error() {
    let Some(g) = cuda() else { return };
    for hd in [8usize, 48, 512] {
        let layout = PagedLayout {
            num_pages: 2,
            page_size: 4,
            num_kv_heads: 1,
            head_dim: hd,
        };
        let kv = up(g, &vec![f16::ONE; layout.kv_len()]);
        let mut codes = up(g, &vec![0u8; layout.bounds_len()]);
        let mut params = up(g, &vec![0f32; layout.int8_params_len()]);
        let e = g.update_bounds_int8(
            &kv,
            &mut codes,
            &mut params,
            &layout,
            &up(g, &[0]),
            &up(g, &[1]),
        );
        assert!(
            matches!(e, Err(KernelError::Argument { .. })),
            "head_dim {hd}: {e:?}"
        );
        let shape = AttentionShape {
            num_qo_heads: 1,
            layout,
            sm_scale: 1.0,
        };
        let mut t = PageTable::new();
        t.push_row(&[0, 1], 2);
        let table = DevicePageTable::upload(g, &t, &layout).unwrap();
        let mut scores = up(g, &poison(2));
        let e = g.estimate_pages_int8(
            &up(g, &vec![1f32; hd]),
            &codes,
            &params,
            &shape,
            &table,
            &mut scores,
        );
        assert!(
            matches!(e, Err(KernelError::Argument { .. })),
            "head_dim {hd}: {e:?}"
        );
    }
}
