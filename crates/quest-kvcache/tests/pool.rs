//! The page pool against a model of its owned pages, plus unit tests of its contract.

use std::collections::HashSet;

use proptest::prelude::*;
use quest_kvcache::{CacheError, PagePool};

#[test]
fn hands_out_every_page_once_then_refuses() {
    let mut pool = PagePool::new(3);
    let pages: Vec<u32> = (0..3).map(|_| pool.alloc().unwrap()).collect();
    assert_eq!(pages, vec![0, 1, 2]);
    assert_eq!(
        pool.alloc(),
        Err(CacheError::PoolExhausted {
            needed: 1,
            free: 0,
            capacity: 3
        })
    );
    assert_eq!((pool.in_use(), pool.free_count()), (3, 0));
}

#[test]
fn recently_freed_page_is_reused_first() {
    let mut pool = PagePool::new(8);
    let pages = pool.alloc_many(5).unwrap();
    assert_eq!(pages, vec![0, 1, 2, 3, 4]);
    pool.free(3).unwrap();
    pool.free(1).unwrap();
    assert_eq!(pool.alloc().unwrap(), 1);
    assert_eq!(pool.alloc().unwrap(), 3);
    assert_eq!(pool.alloc().unwrap(), 5);
}

#[test]
fn double_free_and_foreign_page_are_refused_without_change() {
    let mut pool = PagePool::new(4);
    let p = pool.alloc().unwrap();
    pool.free(p).unwrap();
    assert_eq!(pool.free(p), Err(CacheError::PageNotAllocated(p)));
    assert_eq!(pool.free(4), Err(CacheError::PageNotAllocated(4)));
    assert_eq!(
        pool.free(u32::MAX),
        Err(CacheError::PageNotAllocated(u32::MAX))
    );
    assert_eq!((pool.in_use(), pool.free_count()), (0, 4));
    // The free list still holds each page once: all four come out, distinct, then it is empty.
    let all: HashSet<u32> = pool.alloc_many(4).unwrap().into_iter().collect();
    assert_eq!(all.len(), 4);
    assert!(pool.alloc().is_err());
}

#[test]
fn alloc_many_is_all_or_nothing() {
    let mut pool = PagePool::new(5);
    pool.alloc_many(2).unwrap();
    let err = pool.alloc_many(4).unwrap_err();
    assert_eq!(
        err,
        CacheError::PoolExhausted {
            needed: 4,
            free: 3,
            capacity: 5
        }
    );
    assert_eq!((pool.in_use(), pool.free_count()), (2, 3));
    assert_eq!(pool.alloc_many(0).unwrap(), Vec::<u32>::new());
    assert_eq!(pool.alloc_many(3).unwrap().len(), 3);
}

#[test]
fn free_many_is_all_or_nothing() {
    let mut pool = PagePool::new(6);
    let pages = pool.alloc_many(4).unwrap();
    // A duplicate in the list fails the whole call.
    assert_eq!(
        pool.free_many(&[pages[0], pages[1], pages[0]]),
        Err(CacheError::PageNotAllocated(pages[0]))
    );
    assert_eq!(pool.in_use(), 4);
    assert!(pages.iter().all(|&p| pool.is_allocated(p)));
    // So does a page that is not allocated.
    assert_eq!(
        pool.free_many(&[pages[2], 5]),
        Err(CacheError::PageNotAllocated(5))
    );
    assert!(pool.is_allocated(pages[2]));
    pool.free_many(&pages).unwrap();
    assert_eq!((pool.in_use(), pool.free_count()), (0, 6));
}

#[derive(Clone, Debug)]
enum PoolOp {
    Alloc,
    AllocMany(usize),
    /// Frees the `i % owned`-th owned page (in sorted order), if any.
    FreeOwned(usize),
    /// Frees an arbitrary id: fails unless the model owns it.
    Free(u32),
    FreeMany(Vec<u32>),
}

fn pool_op(capacity: u32) -> impl Strategy<Value = PoolOp> {
    let id = 0..capacity + 4;
    prop_oneof![
        3 => Just(PoolOp::Alloc),
        2 => (0..=capacity as usize + 3).prop_map(PoolOp::AllocMany),
        3 => any::<usize>().prop_map(PoolOp::FreeOwned),
        2 => id.clone().prop_map(PoolOp::Free),
        1 => prop::collection::vec(id, 0..5).prop_map(PoolOp::FreeMany),
    ]
}

fn pool_case() -> impl Strategy<Value = (u32, Vec<PoolOp>)> {
    (0u32..=16).prop_flat_map(|cap| (Just(cap), prop::collection::vec(pool_op(cap), 1..60)))
}

/// The pool agrees with the model on every id in and just outside its range.
fn check_pool(pool: &PagePool, owned: &HashSet<u32>, cap: u32) -> Result<(), TestCaseError> {
    prop_assert_eq!(pool.capacity(), cap as usize);
    prop_assert_eq!(pool.in_use(), owned.len());
    prop_assert_eq!(pool.in_use() + pool.free_count(), pool.capacity());
    for p in 0..cap + 4 {
        prop_assert_eq!(pool.is_allocated(p), owned.contains(&p), "page {}", p);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn pool_matches_model((cap, ops) in pool_case()) {
        let mut pool = PagePool::new(cap);
        let mut owned: HashSet<u32> = HashSet::new();
        // The page most recently freed on its own, which the next `alloc` must return.
        let mut last_freed: Option<u32> = None;
        for op in ops {
            match op {
                PoolOp::Alloc => match pool.alloc() {
                    Ok(p) => {
                        prop_assert!(owned.len() < cap as usize);
                        prop_assert!(p < cap);
                        prop_assert!(owned.insert(p), "page {} handed out twice", p);
                        if let Some(expected) = last_freed {
                            prop_assert_eq!(p, expected, "the last freed page is reused first");
                        }
                    }
                    Err(e) => {
                        prop_assert_eq!(owned.len(), cap as usize);
                        let full = CacheError::PoolExhausted {
                            needed: 1,
                            free: 0,
                            capacity: cap as usize,
                        };
                        prop_assert_eq!(e, full);
                    }
                },
                PoolOp::AllocMany(n) => {
                    let free = cap as usize - owned.len();
                    match pool.alloc_many(n) {
                        Ok(pages) => {
                            prop_assert!(n <= free);
                            prop_assert_eq!(pages.len(), n);
                            for p in pages {
                                prop_assert!(p < cap);
                                prop_assert!(owned.insert(p), "page {} handed out twice", p);
                            }
                        }
                        Err(e) => {
                            prop_assert!(n > free);
                            let full = CacheError::PoolExhausted {
                                needed: n,
                                free,
                                capacity: cap as usize,
                            };
                            prop_assert_eq!(e, full);
                        }
                    }
                }
                PoolOp::FreeOwned(i) => {
                    let mut sorted: Vec<u32> = owned.iter().copied().collect();
                    sorted.sort_unstable();
                    if let Some(&p) = sorted.get(i % sorted.len().max(1)) {
                        pool.free(p)?;
                        owned.remove(&p);
                        check_pool(&pool, &owned, cap)?;
                        last_freed = Some(p);
                        continue;
                    }
                }
                PoolOp::Free(p) => {
                    let result = pool.free(p);
                    if owned.remove(&p) {
                        prop_assert_eq!(result, Ok(()));
                        check_pool(&pool, &owned, cap)?;
                        last_freed = Some(p);
                        continue;
                    }
                    prop_assert_eq!(result, Err(CacheError::PageNotAllocated(p)));
                }
                PoolOp::FreeMany(pages) => {
                    let distinct: HashSet<u32> = pages.iter().copied().collect();
                    let valid = distinct.len() == pages.len()
                        && pages.iter().all(|p| owned.contains(p));
                    let result = pool.free_many(&pages);
                    prop_assert_eq!(result.is_ok(), valid, "free_many({:?})", pages);
                    if valid {
                        for p in &pages {
                            owned.remove(p);
                        }
                    }
                }
            }
            last_freed = None;
            check_pool(&pool, &owned, cap)?;
        }
        // Give everything back: the pool is whole again and can hand out every page once more.
        let all: Vec<u32> = owned.drain().collect();
        pool.free_many(&all)?;
        check_pool(&pool, &owned, cap)?;
        prop_assert_eq!(pool.free_count(), cap as usize);
        let again: HashSet<u32> = pool.alloc_many(cap as usize)?.into_iter().collect();
        prop_assert_eq!(again, (0..cap).collect::<HashSet<u32>>());
    }
}
