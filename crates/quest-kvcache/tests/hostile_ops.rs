//! Hostile operation sequences on the cache: every refused operation leaves the whole observable
//! state — sequences, their lengths and pages, the pool, and every stored K/V and bound — exactly
//! as it was. (The `kv_cache` and `page_pool` fuzz targets check the same against a model on
//! arbitrary sequences; these are the cases written out.)

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use quest_kernels::{Backend, CpuBackend, CudaBackend, f16};
use quest_kvcache::{CacheConfig, CacheError, KvCache, PagePool, SeqId};

type Cache<B> = KvCache<B, f16>;

/// The GPU, or `None` after saying the test skipped.
fn gpu() -> Option<&'static CudaBackend> {
    static G: OnceLock<Result<CudaBackend, String>> = OnceLock::new();
    match G.get_or_init(|| CudaBackend::new(0).map_err(|e| e.to_string())) {
        Ok(g) => Some(g),
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
    }
}

const CFG: CacheConfig = CacheConfig {
    num_layers: 2,
    num_kv_heads: 2,
    head_dim: 4,
    page_size: 4,
    num_pages: 6,
};

/// Everything a caller can observe.
#[derive(Debug, PartialEq)]
struct Snapshot {
    seqs: Vec<(SeqId, usize, Vec<u32>)>,
    free: usize,
    kv: Vec<Vec<f16>>,
    bounds: Vec<Vec<f16>>,
}

fn snapshot<B: Backend>(c: &Cache<B>) -> Snapshot {
    Snapshot {
        seqs: c
            .sequences()
            .map(|s| (s, c.seq_len(s).unwrap(), c.seq_pages(s).unwrap().to_vec()))
            .collect(),
        free: c.free_pages(),
        kv: (0..CFG.num_layers)
            .map(|l| c.backend().download(c.kv(l).unwrap()).unwrap())
            .collect(),
        bounds: (0..CFG.num_layers)
            .map(|l| c.backend().download(c.bounds(l).unwrap()).unwrap())
            .collect(),
    }
}

fn up<B: Backend>(be: &B, v: &[f32]) -> B::Buf<f32> {
    be.upload(v).unwrap()
}

/// A cache with two sequences of 6 and 3 tokens, written on every layer with non-zero values.
fn filled<B: Backend>(be: &B) -> (Cache<B>, SeqId, SeqId) {
    let mut c = Cache::new(be, CFG).unwrap();
    let (a, b) = (c.add_sequence(), c.add_sequence());
    c.reserve(a, 6).unwrap();
    c.reserve(b, 3).unwrap();
    let plan = c.plan(&[(a, 6), (b, 3)]).unwrap();
    let n = plan.num_tokens() * 8;
    for l in 0..CFG.num_layers {
        let k: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37 + l as f32).sin()).collect();
        let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11 - l as f32).cos()).collect();
        let (k, v) = (up(be, &k), up(be, &v));
        c.write_kv(l, &plan, &k, &v).unwrap();
    }
    (c, a, b)
}

/// Runs `op`, which must fail, and checks that nothing observable changed.
fn refused<B: Backend, T: std::fmt::Debug>(
    c: &mut Cache<B>,
    op: impl FnOnce(&mut Cache<B>) -> Result<T, CacheError>,
) -> CacheError {
    let before = snapshot(c);
    let e = op(c).expect_err("a hostile operation succeeded");
    assert_eq!(
        snapshot(c),
        before,
        "refused operation changed the cache: {e}"
    );
    e
}

/// Each case takes the backend, so the CPU and the GPU caches get the same operations.
mod cases {
    use super::*;

    pub fn refused_reserves_change_nothing<B: Backend>(be: &B) {
        let (mut c, a, b) = filled(be);
        // 3 pages in use, 3 free: 15 more tokens for a (21 in all) need 4 more pages.
        let e = refused(&mut c, |c| c.reserve(a, 15));
        assert_eq!(
            e,
            CacheError::PoolExhausted {
                needed: 4,
                free: 3,
                capacity: 6
            }
        );
        let e = refused(&mut c, |c| c.reserve(b, usize::MAX));
        assert!(matches!(e, CacheError::Shape(_)), "{e}");
        let e = refused(&mut c, |c| c.reserve(b, usize::MAX - 3));
        assert!(matches!(e, CacheError::PoolExhausted { .. }), "{e}");
        // The exact remainder still fits afterwards: 2 free slots in a's page + 3 pages.
        c.reserve(a, 2 + 12).unwrap();
        assert_eq!(c.free_pages(), 0);
        assert!(matches!(
            refused(&mut c, |c| c.reserve(b, 2)),
            CacheError::PoolExhausted { .. }
        ));
    }

    pub fn refused_truncates_removes_and_plans_change_nothing<B: Backend>(be: &B) {
        let (mut c, a, b) = filled(be);
        assert!(matches!(
            refused(&mut c, |c| c.truncate(a, 7)),
            CacheError::Shape(_)
        ));
        assert!(matches!(
            refused(&mut c, |c| c.truncate(a, usize::MAX)),
            CacheError::Shape(_)
        ));
        let gone = c.add_sequence();
        c.remove_sequence(gone).unwrap();
        assert_eq!(
            refused(&mut c, |c| c.remove_sequence(gone)),
            CacheError::UnknownSequence(gone)
        );
        assert_eq!(
            refused(&mut c, |c| c.truncate(gone, 0)),
            CacheError::UnknownSequence(gone)
        );
        assert_eq!(
            refused(&mut c, |c| c.reserve(gone, 1)),
            CacheError::UnknownSequence(gone)
        );
        for bad in [
            vec![],
            vec![(a, 0)],
            vec![(a, 7)],
            vec![(a, 1), (a, 1)],
            vec![(b, 1), (gone, 1)],
        ] {
            let e = refused(&mut c, |c| c.plan(&bad).map(|p| p.num_tokens()));
            assert!(
                matches!(
                    e,
                    CacheError::InvalidPlan(_) | CacheError::UnknownSequence(_)
                ),
                "{bad:?}: {e}"
            );
        }
    }

    pub fn refused_writes_change_nothing<B: Backend>(be: &B) {
        let (mut c, a, b) = filled(be);
        c.reserve(a, 1).unwrap();
        let plan = c.plan(&[(a, 1)]).unwrap();
        let good = vec![0.5f32; 8];
        let good_buf = up(be, &good);
        for (k, v) in [
            (vec![0.5; 7], good.clone()),
            (good.clone(), vec![0.5; 9]),
            (vec![], vec![]),
        ] {
            assert!(matches!(
                refused(&mut c, |c| c.write_kv(0, &plan, &up(be, &k), &up(be, &v))),
                CacheError::Shape(_)
            ));
        }
        let e = refused(&mut c, |c| c.write_kv(2, &plan, &good_buf, &good_buf));
        assert_eq!(
            e,
            CacheError::LayerOutOfRange {
                layer: 2,
                num_layers: 2
            }
        );
        // A plan of another cache.
        let mut other = Cache::new(be, CFG).unwrap();
        let o = other.add_sequence();
        other.reserve(o, 1).unwrap();
        let foreign = other.plan(&[(o, 1)]).unwrap();
        assert!(matches!(
            refused(&mut c, |c| c.write_kv(0, &foreign, &good_buf, &good_buf)),
            CacheError::InvalidPlan(_)
        ));
        // A plan made before b was removed (b's pages may be someone else's now).
        let stale = c.plan(&[(a, 1), (b, 1)]).unwrap();
        c.remove_sequence(b).unwrap();
        let n = stale.num_tokens() * 8;
        let e = refused(&mut c, |c| {
            c.write_kv(0, &stale, &up(be, &vec![1.0; n]), &up(be, &vec![1.0; n]))
        });
        assert!(matches!(e, CacheError::InvalidPlan(_)), "{e}");
        // A plan made before a truncate.
        let stale = c.plan(&[(a, 1)]).unwrap();
        c.truncate(a, 7).unwrap();
        assert!(matches!(
            refused(&mut c, |c| c.write_kv(0, &stale, &good_buf, &good_buf)),
            CacheError::InvalidPlan(_)
        ));
        // The original plan is stale too; a fresh one works.
        assert!(matches!(
            refused(&mut c, |c| c.write_kv(0, &plan, &good_buf, &good_buf)),
            CacheError::InvalidPlan(_)
        ));
        let fresh = c.plan(&[(a, 1)]).unwrap();
        c.write_kv(0, &fresh, &good_buf, &good_buf).unwrap();
    }

    pub fn removing_everything_returns_every_page_after_any_failures<B: Backend>(be: &B) {
        let (mut c, a, b) = filled(be);
        let _ = c.reserve(a, 1000);
        let _ = c.truncate(b, 99);
        c.reserve(b, 5).unwrap();
        c.remove_sequence(a).unwrap();
        c.remove_sequence(b).unwrap();
        assert_eq!(
            (c.free_pages(), c.pages_in_use(), c.sequences().count()),
            (6, 0, 0)
        );
        // Every page can be handed out again, once.
        let s = c.add_sequence();
        c.reserve(s, 24).unwrap();
        let mut pages = c.seq_pages(s).unwrap().to_vec();
        pages.sort_unstable();
        assert_eq!(pages, (0..6).collect::<Vec<u32>>());
    }

    pub fn hostile_configs_are_refused_fast_without_allocating<B: Backend>(be: &B) {
        let huge = [
            CacheConfig {
                num_pages: 1 << 40,
                ..CFG
            },
            CacheConfig {
                page_size: 1 << 31,
                num_pages: 1,
                ..CFG
            },
            CacheConfig {
                num_kv_heads: usize::MAX / 2,
                ..CFG
            },
            CacheConfig {
                head_dim: usize::MAX - 1,
                ..CFG
            },
            CacheConfig {
                num_layers: 0,
                ..CFG
            },
            CacheConfig { head_dim: 3, ..CFG },
            CacheConfig {
                page_size: 0,
                ..CFG
            },
        ];
        for cfg in huge {
            let t0 = Instant::now();
            let e = Cache::new(be, cfg)
                .err()
                .expect("a hostile config was accepted");
            assert!(t0.elapsed() < Duration::from_millis(50), "{cfg:?}");
            assert!(matches!(e, CacheError::InvalidConfig(_)), "{cfg:?}: {e}");
        }
    }
}

/// One test per case on the CPU, and the same under `on_cuda::` on the GPU (skipped, saying so,
/// without one).
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                cases::$name(&CpuBackend);
            }
        )*
        mod on_cuda {
            $(
                #[test]
                fn $name() {
                    if let Some(g) = super::gpu() {
                        super::cases::$name(g);
                    }
                }
            )*
        }
    };
}

on_both_backends!(
    refused_reserves_change_nothing,
    refused_truncates_removes_and_plans_change_nothing,
    refused_writes_change_nothing,
    removing_everything_returns_every_page_after_any_failures,
    hostile_configs_are_refused_fast_without_allocating,
);

#[test]
fn pool_refuses_bad_frees_atomically() {
    let mut pool = PagePool::new(4);
    let pages = pool.alloc_many(3).unwrap();
    for bad in [
        vec![pages[0], pages[0]],
        vec![pages[1], 3],
        vec![pages[2], 99],
        vec![u32::MAX],
    ] {
        let free = pool.free_count();
        assert!(
            matches!(pool.free_many(&bad), Err(CacheError::PageNotAllocated(_))),
            "{bad:?}"
        );
        assert_eq!(pool.free_count(), free);
        assert!(
            pages.iter().all(|&p| pool.is_allocated(p)),
            "{bad:?} released a page"
        );
    }
    assert_eq!(
        pool.alloc_many(2),
        Err(CacheError::PoolExhausted {
            needed: 2,
            free: 1,
            capacity: 4
        })
    );
    pool.free_many(&pages).unwrap();
    assert_eq!(pool.free_count(), 4);
}
