//! Unit tests of the cache's contract: page counts, plans, bounds and every refusal.

use quest_kernels::{Backend, CpuBackend, PageTable, bf16, f16};
use quest_kvcache::{CacheConfig, CacheError, KvCache};

fn config(page_size: usize, num_pages: usize) -> CacheConfig {
    CacheConfig {
        num_layers: 2,
        num_kv_heads: 2,
        head_dim: 4,
        page_size,
        num_pages,
    }
}

fn new_cache(page_size: usize, num_pages: usize) -> KvCache<CpuBackend, f16> {
    KvCache::new(&CpuBackend, config(page_size, num_pages)).unwrap()
}

#[test]
fn pool_exhausted_names_the_numbers_and_changes_nothing() {
    let mut cache = new_cache(8, 3);
    let a = cache.add_sequence();
    cache.reserve(a, 5).unwrap();
    let err = cache.reserve(a, 3 + 2 * 8 + 1).unwrap_err();
    assert_eq!(
        err,
        CacheError::PoolExhausted {
            needed: 3,
            free: 2,
            capacity: 3
        }
    );
    assert_eq!(
        err.to_string(),
        "KV page pool is full: needed 3 pages but only 2 of 3 are free"
    );
    assert_eq!(cache.seq_len(a).unwrap(), 5);
    assert_eq!(cache.seq_pages(a).unwrap(), &[0]);
    assert_eq!((cache.free_pages(), cache.pages_in_use()), (2, 1));
    // Exactly what is left still fits.
    cache.reserve(a, 3 + 2 * 8).unwrap();
    assert_eq!((cache.free_pages(), cache.seq_len(a).unwrap()), (0, 24));
}

#[test]
fn reserve_allocates_ceil_pages() {
    let mut cache = new_cache(16, 16);
    let a = cache.add_sequence();
    let expect = |cache: &KvCache<CpuBackend, f16>, len: usize, pages: usize| {
        assert_eq!(cache.seq_len(a).unwrap(), len);
        assert_eq!(cache.seq_pages(a).unwrap().len(), pages);
        assert_eq!(cache.pages_in_use(), pages);
    };
    cache.reserve(a, 0).unwrap();
    expect(&cache, 0, 0);
    cache.reserve(a, 1).unwrap();
    expect(&cache, 1, 1);
    cache.reserve(a, 15).unwrap(); // fills the first page exactly
    expect(&cache, 16, 1);
    cache.reserve(a, 1).unwrap(); // crosses into a second page
    expect(&cache, 17, 2);
    cache.reserve(a, 33).unwrap(); // 50 tokens: ceil(50 / 16) = 4 pages
    expect(&cache, 50, 4);
    cache.reserve(a, 14).unwrap(); // 64 tokens: still 4
    expect(&cache, 64, 4);
    assert!(matches!(
        cache.reserve(a, usize::MAX),
        Err(CacheError::Shape(_))
    ));
    expect(&cache, 64, 4);
}

#[test]
fn plan_for_two_sequences_of_different_lengths() {
    let mut cache = new_cache(8, 8);
    let a = cache.add_sequence();
    let b = cache.add_sequence();
    cache.reserve(a, 10).unwrap(); // pages 0, 1
    cache.reserve(b, 3).unwrap(); // page 2
    let plan = cache.plan(&[(a, 10), (b, 3)]).unwrap();
    assert_eq!(plan.seqs(), &[a, b]);
    assert_eq!((plan.batch(), plan.num_tokens()), (2, 13));
    assert_eq!(
        (plan.new_tokens(0), plan.new_tokens(1), plan.new_tokens(2)),
        (Some(10), Some(3), None)
    );
    let positions: Vec<i32> = (0..10).chain(0..3).collect();
    assert_eq!(plan.positions(), positions.as_slice());
    let slots: Vec<i32> = (0..10).chain(16..19).collect();
    assert_eq!(plan.slots(), slots.as_slice());
    assert_eq!(plan.qo_indptr(), &[0, 10, 13]);
    assert_eq!(plan.touched_pages(), &[0, 1, 2]);
    assert_eq!(plan.touched_page_lens(), &[8, 2, 3]);
    let table = PageTable {
        indptr: vec![0, 2, 3],
        indices: vec![0, 1, 2],
        last_page_len: vec![2, 3],
    };
    assert_eq!(plan.host_table(), &table);
    assert_eq!(plan.table().to_host(&CpuBackend).unwrap(), table);
    assert_eq!(plan.table().rows(), 2);
    let backend = cache.backend();
    assert_eq!(
        backend.download(plan.positions_device()).unwrap(),
        positions
    );
    assert_eq!(backend.download(plan.slots_device()).unwrap(), slots);
    assert_eq!(
        backend.download(plan.touched_pages_device()).unwrap(),
        vec![0, 1, 2]
    );
    assert_eq!(
        backend.download(plan.touched_page_lens_device()).unwrap(),
        vec![8, 2, 3]
    );

    // A decode step, listed in the other order: one token each.
    cache.reserve(a, 1).unwrap();
    cache.reserve(b, 6).unwrap(); // 9 tokens: b's page 2 fills, page 3 is new
    let plan = cache.plan(&[(b, 6), (a, 1)]).unwrap();
    assert_eq!(plan.positions(), &[3, 4, 5, 6, 7, 8, 10]);
    assert_eq!(plan.slots(), &[19, 20, 21, 22, 23, 24, 10]);
    assert_eq!(plan.qo_indptr(), &[0, 6, 7]);
    assert_eq!(plan.touched_pages(), &[2, 3, 1]);
    assert_eq!(plan.touched_page_lens(), &[8, 1, 3]);
    let table = PageTable {
        indptr: vec![0, 2, 4],
        indices: vec![2, 3, 0, 1],
        last_page_len: vec![1, 3],
    };
    assert_eq!(plan.host_table(), &table);
    assert_eq!(cache.table(&[b, a]).unwrap(), table);
}

#[test]
fn bounds_of_a_reused_partly_filled_page_cover_only_its_tokens() {
    let cfg = CacheConfig {
        num_layers: 1,
        num_kv_heads: 1,
        head_dim: 2,
        page_size: 4,
        num_pages: 2,
    };
    let mut cache = KvCache::<CpuBackend, bf16>::new(&CpuBackend, cfg).unwrap();
    // Fill page 0 with large keys, then free it.
    let a = cache.add_sequence();
    cache.reserve(a, 4).unwrap();
    let plan = cache.plan(&[(a, 4)]).unwrap();
    cache
        .write_kv(0, &plan, &vec![100.0; 8], &vec![1.0; 8])
        .unwrap();
    cache.remove_sequence(a).unwrap();
    // The next sequence gets the same page back and writes two small keys.
    let b = cache.add_sequence();
    cache.reserve(b, 2).unwrap();
    assert_eq!(cache.seq_pages(b).unwrap(), &[0]);
    let plan = cache.plan(&[(b, 2)]).unwrap();
    cache
        .write_kv(0, &plan, &vec![1.0, -2.0, 3.0, -0.5], &vec![0.0; 4])
        .unwrap();
    let bounds: Vec<f32> = cache
        .bounds(0)
        .unwrap()
        .iter()
        .map(|x| x.to_f32())
        .collect();
    let layout = cache.layout();
    let (hi, lo) = (layout.bounds_offset(0, 0, 0), layout.bounds_offset(0, 1, 0));
    assert_eq!(&bounds[hi..hi + 2], &[3.0, -0.5]);
    assert_eq!(&bounds[lo..lo + 2], &[1.0, -2.0]);
    // One more token in the same page widens the bounds.
    cache.reserve(b, 1).unwrap();
    let plan = cache.plan(&[(b, 1)]).unwrap();
    cache
        .write_kv(0, &plan, &vec![-7.0, 9.0], &vec![0.0; 2])
        .unwrap();
    let bounds: Vec<f32> = cache
        .bounds(0)
        .unwrap()
        .iter()
        .map(|x| x.to_f32())
        .collect();
    assert_eq!(&bounds[hi..hi + 2], &[3.0, 9.0]);
    assert_eq!(&bounds[lo..lo + 2], &[-7.0, -2.0]);
}

#[test]
fn unknown_sequence_is_refused_everywhere() {
    let mut cache = new_cache(8, 4);
    let gone = cache.add_sequence();
    let live = cache.add_sequence();
    cache.reserve(live, 3).unwrap();
    cache.remove_sequence(gone).unwrap();
    let unknown = CacheError::UnknownSequence(gone);
    assert_eq!(
        unknown.to_string(),
        format!("unknown sequence: seq {}", gone.get())
    );
    assert_eq!(cache.remove_sequence(gone), Err(unknown.clone()));
    assert_eq!(cache.reserve(gone, 1), Err(unknown.clone()));
    assert_eq!(cache.seq_len(gone), Err(unknown.clone()));
    assert_eq!(cache.seq_pages(gone).unwrap_err(), unknown);
    assert_eq!(cache.table(&[live, gone]).unwrap_err(), unknown);
    assert_eq!(cache.plan(&[(live, 1), (gone, 1)]).err(), Some(unknown));
    assert_eq!(cache.pages_in_use(), 1);
    assert_eq!(cache.sequences().collect::<Vec<_>>(), vec![live]);
}

#[test]
fn bad_layer_and_bad_buffers_are_refused() {
    let mut cache = new_cache(8, 4);
    let a = cache.add_sequence();
    cache.reserve(a, 3).unwrap();
    let plan = cache.plan(&[(a, 3)]).unwrap();
    let kv = vec![1.5f32; 3 * 8];
    let bad_layer = CacheError::LayerOutOfRange {
        layer: 2,
        num_layers: 2,
    };
    assert_eq!(cache.write_kv(2, &plan, &kv, &kv), Err(bad_layer.clone()));
    assert_eq!(cache.kv(2).err(), Some(bad_layer.clone()));
    assert_eq!(
        cache.bounds(usize::MAX).err().map(|e| e.to_string()),
        Some(format!(
            "layer {} out of range: the cache has 2 layers",
            usize::MAX
        ))
    );
    let short = vec![1.5f32; 3 * 8 - 1];
    assert!(matches!(
        cache.write_kv(0, &plan, &short, &kv),
        Err(CacheError::Shape(_))
    ));
    assert!(matches!(
        cache.write_kv(0, &plan, &kv, &short),
        Err(CacheError::Shape(_))
    ));
    // Nothing was written by the refused calls.
    assert!(cache.kv(0).unwrap().iter().all(|x| x.to_f32() == 0.0));
    cache.write_kv(0, &plan, &kv, &kv).unwrap();
}

fn invalid<T>(result: Result<T, CacheError>) -> bool {
    matches!(result, Err(CacheError::InvalidPlan(_)))
}

#[test]
fn bad_plans_are_refused() {
    let mut cache = new_cache(8, 4);
    let a = cache.add_sequence();
    let b = cache.add_sequence();
    cache.reserve(a, 3).unwrap();
    assert!(invalid(cache.plan(&[])));
    assert!(invalid(cache.plan(&[(a, 0)])));
    assert!(invalid(cache.plan(&[(a, 4)])));
    assert!(invalid(cache.plan(&[(b, 1)]))); // nothing reserved
    assert!(invalid(cache.plan(&[(a, 1), (a, 1)])));

    // A plan from another cache, and a plan made before a removal, cannot write.
    let mut other = new_cache(8, 4);
    let c = other.add_sequence();
    other.reserve(c, 3).unwrap();
    let foreign = other.plan(&[(c, 3)]).unwrap();
    let kv = vec![1.0f32; 3 * 8];
    assert!(invalid(cache.write_kv(0, &foreign, &kv, &kv)));
    let plan = cache.plan(&[(a, 3)]).unwrap();
    cache.remove_sequence(b).unwrap();
    assert!(invalid(cache.write_kv(0, &plan, &kv, &kv)));
    let plan = cache.plan(&[(a, 3)]).unwrap();
    cache.write_kv(0, &plan, &kv, &kv).unwrap();
}

#[test]
fn config_validation() {
    let good = config(16, 4);
    good.validate().unwrap();
    for page_size in [1, 3, 8, 16, 32, 64, 128] {
        config(page_size, 4).validate().unwrap();
    }
    let bad = [
        CacheConfig {
            num_layers: 0,
            ..good
        },
        CacheConfig {
            num_kv_heads: 0,
            ..good
        },
        CacheConfig {
            head_dim: 0,
            ..good
        },
        CacheConfig {
            head_dim: 3,
            ..good
        },
        CacheConfig {
            page_size: 0,
            ..good
        },
        CacheConfig {
            num_pages: 0,
            ..good
        },
        CacheConfig {
            num_pages: (i32::MAX as usize) / 16 + 1,
            ..good
        },
        CacheConfig {
            num_pages: usize::MAX,
            ..good
        },
    ];
    for cfg in bad {
        assert!(
            matches!(cfg.validate(), Err(CacheError::InvalidConfig(_))),
            "{cfg:?}"
        );
        assert!(matches!(
            KvCache::<CpuBackend, f16>::new(&CpuBackend, cfg),
            Err(CacheError::InvalidConfig(_))
        ));
    }
}

#[test]
fn sizes_and_buffers() {
    let cfg = CacheConfig {
        num_layers: 3,
        num_kv_heads: 2,
        head_dim: 8,
        page_size: 16,
        num_pages: 5,
    };
    // K and V, 3 layers, 2 heads x 8 channels, 2 bytes each.
    assert_eq!(cfg.bytes_per_token::<f16>(), 2 * 3 * 2 * 8 * 2);
    assert_eq!(cfg.kv_bytes::<bf16>(), 2 * 3 * 2 * 8 * 2 * 16 * 5);
    assert_eq!(cfg.bounds_bytes::<f16>(), 2 * 3 * 2 * 8 * 2 * 5);
    assert_eq!(cfg.token_capacity(), 80);
    let cache = KvCache::<CpuBackend, f16>::new(&CpuBackend, cfg).unwrap();
    assert_eq!(cache.layout(), &cfg.layout());
    for layer in 0..3 {
        assert_eq!(cache.kv(layer).unwrap().len(), cfg.layout().kv_len());
        assert_eq!(
            cache.bounds(layer).unwrap().len(),
            cfg.layout().bounds_len()
        );
    }
    assert_eq!(cache.kv(0).unwrap().len() * 2 * 3, cfg.kv_bytes::<f16>());
    assert_eq!((cache.free_pages(), cache.pages_in_use()), (5, 0));
    assert_eq!(cache.pool().capacity(), 5);
}

#[test]
fn truncate_returns_pages_and_refuses_growth() {
    let backend = quest_kernels::CpuBackend;
    let cfg = quest_kvcache::CacheConfig {
        num_layers: 1,
        num_kv_heads: 1,
        head_dim: 8,
        page_size: 4,
        num_pages: 8,
    };
    let mut cache = quest_kvcache::KvCache::<_, quest_kernels::f16>::new(&backend, cfg).unwrap();
    let s = cache.add_sequence();
    cache.reserve(s, 10).unwrap();
    assert_eq!(cache.pages_in_use(), 3);
    let stale = cache.plan(&[(s, 10)]).unwrap();
    cache.truncate(s, 5).unwrap();
    assert_eq!(cache.seq_len(s).unwrap(), 5);
    assert_eq!(cache.pages_in_use(), 2);
    let k = vec![1.0f32; 10 * 8];
    assert!(
        cache.write_kv(0, &stale, &k, &k).is_err(),
        "a plan made before truncate is stale"
    );
    assert!(cache.truncate(s, 6).is_err());
    cache.truncate(s, 0).unwrap();
    assert_eq!(cache.pages_in_use(), 0);
    assert_eq!(cache.seq_len(s).unwrap(), 0);
}
