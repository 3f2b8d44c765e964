//! A cache keeping 8-bit page bounds (`BoundsFormat::Int8`) next to one keeping full bounds, fed
//! the same random steps (appends of random sizes to several sequences, truncations, removals):
//! after every step the 8-bit bounds are the encoding of each live page's current keys (never of
//! older codes), and the cache's estimate is `>=` the full-bounds estimate and `>=` every key's
//! `q·k` of its page. Converting a cache's format recomputes the bounds from the keys.

use proptest::prelude::*;
use quest_kernels::{
    AttentionShape, Backend, BoundsFormat, CpuBackend, DevicePageTable, PageTable, f16,
};
use quest_kvcache::{CacheConfig, CacheError, KvCache, LayerBounds, SeqId};

type Cache = KvCache<CpuBackend, f16>;

#[derive(Clone, Debug)]
enum Op {
    Add,
    /// Append `n` tokens to the picked sequence (`index % live`).
    Append(usize, usize, u64),
    Truncate(usize, usize),
    Remove(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Add),
        6 => (any::<usize>(), 1usize..=40, any::<u64>()).prop_map(|(i, n, s)| Op::Append(i, n, s)),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(i, n)| Op::Truncate(i, n)),
        1 => any::<usize>().prop_map(Op::Remove),
    ]
}

/// Keys with an outlier channel of one sign every 11 channels; values uniform.
fn kv_of(seed: u64, n: usize) -> Vec<f32> {
    let mut x = seed | 1;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            if i % 11 == 3 { 30.0 + 5.0 * u } else { 3.0 * u }
        })
        .collect()
}

/// The 8-bit bounds of `layer` as the CPU reference encodes them from the full cache's keys, for
/// the live pages only, compared with what the int8 cache holds.
fn check_layer(full: &Cache, int8: &Cache, layer: usize) {
    let c = CpuBackend;
    let l = *full.layout();
    let LayerBounds::Int8 { codes, params } = int8.layer_bounds(layer).unwrap() else {
        panic!("the int8 cache lost its format");
    };
    assert!(
        full.kv(layer).unwrap() == int8.kv(layer).unwrap(),
        "K/V differ"
    );
    let (mut want_c, mut want_p) = (codes.clone(), params.clone());
    let (mut pages, mut lens) = (Vec::new(), Vec::new());
    for s in full.sequences() {
        let n = full.seq_len(s).unwrap();
        for (i, &p) in full.seq_pages(s).unwrap().iter().enumerate() {
            pages.push(p as i32);
            lens.push((n - i * l.page_size).min(l.page_size) as i32);
        }
    }
    c.update_bounds_int8(
        full.kv(layer).unwrap(),
        &mut want_c,
        &mut want_p,
        &l,
        &pages,
        &lens,
    )
    .unwrap();
    for (&p, &len) in pages.iter().zip(&lens) {
        for g in 0..l.num_kv_heads {
            for which in 0..2 {
                let at = l.bounds_offset(p as usize, which, g);
                assert_eq!(
                    codes[at..at + l.head_dim],
                    want_c[at..at + l.head_dim],
                    "layer {layer} page {p} (len {len}) head {g}: codes are not the keys' encoding"
                );
            }
            let at = l.int8_params_offset(p as usize, g);
            assert_eq!(params[at..at + 4], want_p[at..at + 4], "page {p} params");
        }
    }
}

/// Scores of every live sequence from both caches: int8 >= full (same summation order), and
/// int8 >= max q·k over the page's keys.
fn check_scores(full: &Cache, int8: &Cache, layer: usize, seed: u64) {
    let seqs: Vec<SeqId> = full
        .sequences()
        .filter(|&s| full.seq_len(s).unwrap() > 0)
        .collect();
    if seqs.is_empty() {
        return;
    }
    let l = *full.layout();
    let (d, group) = (l.head_dim, 2);
    let shape = AttentionShape {
        num_qo_heads: l.num_kv_heads * group,
        layout: l,
        sm_scale: 1.0,
    };
    let table: PageTable = full.table(&seqs).unwrap();
    let dev = DevicePageTable::upload(&CpuBackend, &table, &l).unwrap();
    let hq = shape.num_qo_heads;
    let q = kv_of(seed, seqs.len() * hq * d);
    let nnz = table.indices.len();
    let (mut sf, mut s8) = (vec![f32::NAN; hq * nnz], vec![f32::NAN; hq * nnz]);
    full.estimate_pages(layer, &q, &shape, &dev, &mut sf)
        .unwrap();
    int8.estimate_pages(layer, &q, &shape, &dev, &mut s8)
        .unwrap();
    let kv = full.kv(layer).unwrap();
    for b in 0..seqs.len() {
        let row = table.row(b);
        for (j, &page) in row.iter().enumerate() {
            let fill = if j + 1 == row.len() {
                table.last_page_len[b] as usize
            } else {
                l.page_size
            };
            let e = table.indptr[b] as usize + j;
            for h in 0..hq {
                let qh = &q[(b * hq + h) * d..][..d];
                let true_max = (0..fill)
                    .map(|s| {
                        let k = &kv[l.kv_offset(page as usize, 0, s, h / group)..][..d];
                        qh.iter()
                            .zip(k)
                            .map(|(&a, &b)| a as f64 * b.to_f64())
                            .sum::<f64>()
                    })
                    .fold(f64::NEG_INFINITY, f64::max);
                let (got, exact) = (s8[h * nnz + e], sf[h * nnz + e]);
                assert!(
                    got >= exact,
                    "page {page} head {h}: int8 {got} < full {exact}"
                );
                // Terms are at most |q|·40 here: (d + 2)·2^-24 of that covers the f32 sum.
                let slack = (d as f64 + 2.0) / (1u64 << 24) as f64
                    * qh.iter().map(|x| x.abs() as f64 * 40.0).sum::<f64>();
                assert!(
                    got as f64 >= true_max - slack,
                    "page {page} head {h}: int8 score {got} below max q·k {true_max}"
                );
            }
        }
    }
}

fn run(config: CacheConfig, ops: &[Op]) {
    let c = CpuBackend;
    let mut full = Cache::new(&c, config).unwrap();
    let mut int8 = Cache::with_bounds(&c, config, BoundsFormat::Int8).unwrap();
    assert_eq!(int8.bounds_format(), BoundsFormat::Int8);
    let mut live: Vec<(SeqId, SeqId)> = Vec::new();
    let width = config.num_kv_heads * config.head_dim;
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Add => live.push((full.add_sequence(), int8.add_sequence())),
            Op::Append(i, n, seed) if !live.is_empty() => {
                let (a, b) = live[i % live.len()];
                let (ra, rb) = (full.reserve(a, n), int8.reserve(b, n));
                assert_eq!(ra.is_ok(), rb.is_ok());
                if ra.is_err() {
                    continue;
                }
                let (pa, pb) = (full.plan(&[(a, n)]).unwrap(), int8.plan(&[(b, n)]).unwrap());
                for layer in 0..config.num_layers {
                    let k = kv_of(seed ^ layer as u64, n * width);
                    let v = kv_of(!seed, n * width);
                    full.write_kv(layer, &pa, &k, &v).unwrap();
                    int8.write_kv(layer, &pb, &k, &v).unwrap();
                }
            }
            Op::Truncate(i, n) if !live.is_empty() => {
                let (a, b) = live[i % live.len()];
                let len = n % (full.seq_len(a).unwrap() + 1);
                full.truncate(a, len).unwrap();
                int8.truncate(b, len).unwrap();
                // A partly filled last page keeps bounds that cover dropped keys until the next
                // write, so the exact-encoding check below skips this step.
                continue;
            }
            Op::Remove(i) if !live.is_empty() => {
                let (a, b) = live.swap_remove(i % live.len());
                full.remove_sequence(a).unwrap();
                int8.remove_sequence(b).unwrap();
            }
            _ => continue,
        }
        if ops[..step].iter().any(|o| matches!(o, Op::Truncate(..))) {
            // Only the score property is guaranteed after a truncation (looser bounds).
            for layer in 0..config.num_layers {
                check_scores(&full, &int8, layer, step as u64);
            }
            continue;
        }
        for layer in 0..config.num_layers {
            check_layer(&full, &int8, layer);
            check_scores(&full, &int8, layer, step as u64);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn int8_cache_tracks_its_keys(
        (num_layers, num_kv_heads, head_dim, page_size, num_pages) in (
            1usize..=2, 1usize..=2, prop::sample::select(vec![16usize, 64]),
            prop::sample::select(vec![1usize, 4, 16]), 4usize..=24,
        ),
        ops in prop::collection::vec(op(), 1..30),
    ) {
        let config = CacheConfig { num_layers, num_kv_heads, head_dim, page_size, num_pages };
        run(config, &ops);
    }
}

#[test]
fn converting_the_format_recomputes_the_bounds() {
    let c = CpuBackend;
    let config = CacheConfig {
        num_layers: 2,
        num_kv_heads: 2,
        head_dim: 16,
        page_size: 4,
        num_pages: 12,
    };
    let ops = [
        Op::Add,
        Op::Add,
        Op::Append(0, 9, 1),
        Op::Append(1, 5, 2),
        Op::Append(0, 2, 3),
    ];
    // The same steps on a full cache, converted to int8 and back, and on an int8 cache.
    let mut full = Cache::new(&c, config).unwrap();
    let mut int8 = Cache::with_bounds(&c, config, BoundsFormat::Int8).unwrap();
    let mut seqs = Vec::new();
    for op in &ops {
        match *op {
            Op::Add => seqs.push((full.add_sequence(), int8.add_sequence())),
            Op::Append(i, n, seed) => {
                let (a, b) = seqs[i];
                full.reserve(a, n).unwrap();
                int8.reserve(b, n).unwrap();
                let (pa, pb) = (full.plan(&[(a, n)]).unwrap(), int8.plan(&[(b, n)]).unwrap());
                for layer in 0..2 {
                    let k = kv_of(seed + layer as u64, n * 32);
                    full.write_kv(layer, &pa, &k, &k).unwrap();
                    int8.write_kv(layer, &pb, &k, &k).unwrap();
                }
            }
            _ => unreachable!(),
        }
    }
    let before: Vec<Vec<f16>> = (0..2).map(|l| full.bounds(l).unwrap().clone()).collect();
    assert!(matches!(
        int8.bounds(0),
        Err(CacheError::BoundsFormat {
            have: BoundsFormat::Int8,
            want: BoundsFormat::Full
        })
    ));
    full.set_bounds_format(BoundsFormat::Int8).unwrap();
    assert_eq!(full.bounds_format(), BoundsFormat::Int8);
    for layer in 0..2 {
        check_layer(&full, &int8, layer);
    }
    full.set_bounds_format(BoundsFormat::Full).unwrap();
    for (layer, b) in before.iter().enumerate() {
        let now = full.bounds(layer).unwrap();
        // Live pages get their bounds back exactly; free pages are zero now.
        for s in full.sequences() {
            for &p in full.seq_pages(s).unwrap() {
                let at = full.layout().bounds_offset(p as usize, 0, 0);
                let n = 2 * full.layout().token_width();
                assert_eq!(now[at..at + n], b[at..at + n], "layer {layer} page {p}");
            }
        }
    }
    // An estimate over another geometry is refused.
    let other = AttentionShape {
        num_qo_heads: 2,
        layout: quest_kernels::PagedLayout {
            num_pages: 13,
            ..*full.layout()
        },
        sm_scale: 1.0,
    };
    let table = full.table(&[seqs[0].0]).unwrap();
    let dev = DevicePageTable::upload(&c, &table, full.layout()).unwrap();
    let mut scores = vec![0f32; 2 * table.indices.len()];
    assert!(matches!(
        full.estimate_pages(0, &vec![1.0; 32], &other, &dev, &mut scores),
        Err(CacheError::Shape(_))
    ));
}

#[test]
fn bounds_bytes_per_format() {
    let config = CacheConfig {
        num_layers: 3,
        num_kv_heads: 8,
        head_dim: 128,
        page_size: 16,
        num_pages: 10,
    };
    assert_eq!(config.bounds_bytes::<f16>(), 3 * 10 * 8 * 512);
    assert_eq!(
        config.bounds_bytes_in::<f16>(BoundsFormat::Full),
        3 * 10 * 8 * 512
    );
    assert_eq!(
        config.bounds_bytes_in::<f16>(BoundsFormat::Int8),
        3 * 10 * 8 * 272
    );
    let cache = Cache::with_bounds(&CpuBackend, config, BoundsFormat::Int8).unwrap();
    let LayerBounds::Int8 { codes, params } = cache.layer_bounds(2).unwrap() else {
        panic!("int8 expected");
    };
    assert_eq!(codes.len() + 4 * params.len(), 10 * 8 * 272);
}
