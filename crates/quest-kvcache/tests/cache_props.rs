//! Random multi-sequence workloads against a model of what was written: page ownership, stored
//! K/V, page bounds and all-or-nothing failures are checked after every operation.

use std::collections::{BTreeMap, HashSet};

use proptest::prelude::*;
use quest_kernels::{Backend, CpuBackend, Half, bf16, f16};
use quest_kvcache::{CacheConfig, CacheError, KvCache, SeqId};

#[derive(Clone, Debug)]
enum Op {
    Add,
    /// Reserve and write `n` new tokens for each picked sequence (`index % live`), in one plan.
    Step {
        picks: Vec<(usize, usize)>,
        seed: u64,
    },
    Remove(usize),
    /// Ask for more tokens than the pool can hold for the picked sequence.
    Overfill {
        pick: usize,
        extra: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Add),
        5 => (prop::collection::vec((any::<usize>(), 1usize..=40), 1..4), any::<u64>())
            .prop_map(|(picks, seed)| Op::Step { picks, seed }),
        1 => any::<usize>().prop_map(Op::Remove),
        1 => (any::<usize>(), 0usize..100).prop_map(|(pick, extra)| Op::Overfill { pick, extra }),
    ]
}

fn config() -> impl Strategy<Value = CacheConfig> {
    (
        1usize..=2,
        1usize..=2,
        prop::sample::select(vec![64usize, 128]),
        prop::sample::select(vec![8usize, 16, 32, 64]),
        2usize..=16,
    )
        .prop_map(
            |(num_layers, num_kv_heads, head_dim, page_size, num_pages)| CacheConfig {
                num_layers,
                num_kv_heads,
                head_dim,
                page_size,
                num_pages,
            },
        )
}

/// Uniform values in [-4, 4) from a seed (splitmix64), so the strategy stays small.
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0
    }
}

/// What one token holds in the model: per layer, its K and V across heads, already rounded to
/// the storage type.
struct TokenKv {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

type Model = BTreeMap<SeqId, Vec<TokenKv>>;

/// Sequence lengths and pages, and the pool counts: what a failed reserve must leave alone.
type Snapshot = (Vec<(SeqId, usize, Vec<u32>)>, usize, usize);

fn snapshot<T: Half>(cache: &KvCache<CpuBackend, T>) -> Snapshot {
    let seqs = cache
        .sequences()
        .map(|s| {
            let pages = cache.seq_pages(s).unwrap().to_vec();
            (s, cache.seq_len(s).unwrap(), pages)
        })
        .collect();
    (seqs, cache.free_pages(), cache.pages_in_use())
}

/// (a) pages are disjoint, sized to the lengths and exactly the pool's in-use pages; (b) stored
/// K/V equal the model; (c) bounds equal the max/min of each page's filled keys.
fn check<T: Half>(cache: &KvCache<CpuBackend, T>, model: &Model) -> Result<(), TestCaseError> {
    let cfg = *cache.config();
    let layout = *cache.layout();
    let ps = cfg.page_size;
    let width = layout.token_width();
    let live: Vec<SeqId> = cache.sequences().collect();
    prop_assert_eq!(&live, &model.keys().copied().collect::<Vec<_>>());

    let mut held = HashSet::new();
    for (&seq, tokens) in model {
        let pages = cache.seq_pages(seq)?;
        prop_assert_eq!(cache.seq_len(seq)?, tokens.len());
        prop_assert_eq!(pages.len(), tokens.len().div_ceil(ps));
        for &p in pages {
            prop_assert!(held.insert(p), "page {} held twice", p);
        }
    }
    let allocated: HashSet<u32> = (0..cfg.num_pages as u32)
        .filter(|&p| cache.pool().is_allocated(p))
        .collect();
    prop_assert_eq!(&held, &allocated);
    prop_assert_eq!(cache.pages_in_use(), held.len());
    prop_assert_eq!(cache.free_pages() + cache.pages_in_use(), cfg.num_pages);

    for layer in 0..cfg.num_layers {
        let kv = cache.backend().download(cache.kv(layer)?)?;
        let bounds = cache.backend().download(cache.bounds(layer)?)?;
        for (&seq, tokens) in model {
            let pages = cache.seq_pages(seq)?;
            for (pos, token) in tokens.iter().enumerate() {
                let (page, slot) = (pages[pos / ps] as usize, pos % ps);
                for (which, want) in [(0, &token.k[layer]), (1, &token.v[layer])] {
                    let at = layout.kv_offset(page, which, slot, 0);
                    let got: Vec<f32> = kv[at..at + width].iter().map(|x| x.to_f32()).collect();
                    prop_assert!(
                        &got == want,
                        "{} pos {} kv {} layer {}",
                        seq,
                        pos,
                        which,
                        layer
                    );
                }
            }
            for (idx, chunk) in tokens.chunks(ps).enumerate() {
                let page = pages[idx] as usize;
                let mut hi = vec![f32::NEG_INFINITY; width];
                let mut lo = vec![f32::INFINITY; width];
                for token in chunk {
                    for (c, &x) in token.k[layer].iter().enumerate() {
                        hi[c] = hi[c].max(x);
                        lo[c] = lo[c].min(x);
                    }
                }
                for (which, want) in [(0, &hi), (1, &lo)] {
                    let at = layout.bounds_offset(page, which, 0);
                    let got: Vec<f32> = bounds[at..at + width].iter().map(|x| x.to_f32()).collect();
                    prop_assert!(
                        &got == want,
                        "{} page #{} bound {} layer {}",
                        seq,
                        idx,
                        which,
                        layer
                    );
                }
            }
        }
    }
    Ok(())
}

fn run_ops<T: Half>(cfg: CacheConfig, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut cache = KvCache::<CpuBackend, T>::new(&CpuBackend, cfg)?;
    let mut model = Model::new();
    let width = cfg.num_kv_heads * cfg.head_dim;
    for op in ops {
        let live: Vec<SeqId> = cache.sequences().collect();
        match op {
            Op::Add => {
                model.insert(cache.add_sequence(), Vec::new());
            }
            Op::Remove(i) if !live.is_empty() => {
                let seq = live[i % live.len()];
                cache.remove_sequence(seq)?;
                model.remove(&seq);
                prop_assert!(matches!(
                    cache.seq_len(seq),
                    Err(CacheError::UnknownSequence(s)) if s == seq
                ));
            }
            Op::Overfill { pick, extra } if !live.is_empty() => {
                let seq = live[pick % live.len()];
                let before = snapshot(&cache);
                let slack = cache.seq_pages(seq)?.len() * cfg.page_size - cache.seq_len(seq)?;
                let n = slack + cache.free_pages() * cfg.page_size + 1 + extra;
                match cache.reserve(seq, n) {
                    Err(CacheError::PoolExhausted {
                        needed,
                        free,
                        capacity,
                    }) => {
                        prop_assert_eq!((free, capacity), (before.1, cfg.num_pages));
                        prop_assert!(needed > free);
                    }
                    other => prop_assert!(false, "overfill gave {:?}", other),
                }
                prop_assert_eq!(snapshot(&cache), before);
            }
            Op::Step { picks, seed } if !live.is_empty() => {
                let mut batch: Vec<(SeqId, usize)> = Vec::new();
                for &(i, n) in picks {
                    let seq = live[i % live.len()];
                    if batch.iter().any(|&(s, _)| s == seq) {
                        continue;
                    }
                    let before = snapshot(&cache);
                    match cache.reserve(seq, n) {
                        Ok(()) => batch.push((seq, n)),
                        Err(CacheError::PoolExhausted { .. }) => {
                            prop_assert_eq!(snapshot(&cache), before)
                        }
                        Err(e) => return Err(TestCaseError::fail(format!("reserve: {e}"))),
                    }
                }
                if batch.is_empty() {
                    continue;
                }
                let plan = cache.plan(&batch)?;
                let total: usize = batch.iter().map(|&(_, n)| n).sum();
                prop_assert_eq!(plan.num_tokens(), total);
                prop_assert_eq!(plan.batch(), batch.len());
                let seqs: Vec<SeqId> = batch.iter().map(|&(s, _)| s).collect();
                prop_assert_eq!(plan.host_table(), &cache.table(&seqs)?);
                prop_assert_eq!(&plan.table().to_host(cache.backend())?, plan.host_table());

                let mut rng = Rng(*seed);
                let mut fresh: Vec<TokenKv> = (0..total)
                    .map(|_| TokenKv {
                        k: Vec::new(),
                        v: Vec::new(),
                    })
                    .collect();
                for layer in 0..cfg.num_layers {
                    let k: Vec<f32> = (0..total * width).map(|_| rng.next_f32()).collect();
                    let v: Vec<f32> = (0..total * width).map(|_| rng.next_f32()).collect();
                    cache.write_kv(layer, &plan, &k, &v)?;
                    let rounded = |x: &[f32]| -> Vec<f32> {
                        x.iter().map(|&x| T::from_f32(x).to_f32()).collect()
                    };
                    for (t, token) in fresh.iter_mut().enumerate() {
                        token.k.push(rounded(&k[t * width..(t + 1) * width]));
                        token.v.push(rounded(&v[t * width..(t + 1) * width]));
                    }
                }
                let mut fresh = fresh.into_iter();
                for &(seq, n) in &batch {
                    model
                        .get_mut(&seq)
                        .ok_or_else(|| TestCaseError::fail("seq missing from model"))?
                        .extend(fresh.by_ref().take(n));
                }
            }
            // Ops on a sequence when there is none.
            _ => continue,
        }
        check(&cache, &model)?;
    }

    for seq in cache.sequences().collect::<Vec<_>>() {
        cache.remove_sequence(seq)?;
    }
    prop_assert_eq!(cache.free_pages(), cfg.num_pages);
    prop_assert_eq!(cache.pages_in_use(), 0);
    prop_assert_eq!(cache.sequences().count(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn cache_matches_model(
        cfg in config(),
        use_bf16 in any::<bool>(),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        if use_bf16 {
            run_ops::<bf16>(cfg, &ops)?;
        } else {
            run_ops::<f16>(cfg, &ops)?;
        }
    }
}
