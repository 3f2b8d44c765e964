//! The page pool under arbitrary alloc / alloc_many / free / free_many sequences, checked against
//! an exact model: the free list is a stack (last freed, first reused), no page is ever handed
//! out twice, counts add up, and a refused operation changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quest_fuzz::Bytes;
use quest_kvcache::{CacheError, PagePool};

/// What the pool must hold: the free stack (top at the end) and who is handed out.
struct Model {
    free: Vec<u32>,
    allocated: Vec<bool>,
}

impl Model {
    fn check(&self, pool: &PagePool) {
        assert_eq!(pool.free_count(), self.free.len());
        assert_eq!(pool.capacity(), self.allocated.len());
        assert_eq!(pool.in_use() + pool.free_count(), pool.capacity());
        for (p, &a) in self.allocated.iter().enumerate() {
            assert_eq!(pool.is_allocated(p as u32), a, "page {p}");
        }
        assert!(!pool.is_allocated(self.allocated.len() as u32));
        assert!(!pool.is_allocated(u32::MAX));
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let capacity = b.range(0, 40) as u32;
    let mut pool = PagePool::new(capacity);
    let mut m = Model {
        free: (0..capacity).rev().collect(),
        allocated: vec![false; capacity as usize],
    };
    m.check(&pool);
    let mut steps = 0;
    while !b.is_empty() && steps < 2000 {
        steps += 1;
        // A page id: mostly inside the pool, sometimes just outside or far away.
        let page_id = |b: &mut Bytes| match b.u8() % 8 {
            0 => u32::MAX - b.u8() as u32,
            _ => b.below(capacity as usize + 3) as u32,
        };
        match b.u8() % 4 {
            0 => match pool.alloc() {
                Ok(p) => {
                    assert_eq!(m.free.pop(), Some(p));
                    assert!(!m.allocated[p as usize], "page {p} handed out twice");
                    m.allocated[p as usize] = true;
                }
                Err(e) => {
                    assert!(m.free.is_empty(), "alloc refused with free pages: {e}");
                    assert_eq!(
                        e,
                        CacheError::PoolExhausted {
                            needed: 1,
                            free: 0,
                            capacity: capacity as usize
                        }
                    );
                }
            },
            1 => {
                let n = b.below(capacity as usize + 4);
                match pool.alloc_many(n) {
                    Ok(pages) => {
                        assert_eq!(pages.len(), n);
                        for p in pages {
                            assert_eq!(m.free.pop(), Some(p));
                            assert!(!m.allocated[p as usize], "page {p} handed out twice");
                            m.allocated[p as usize] = true;
                        }
                    }
                    Err(e) => {
                        assert!(n > m.free.len(), "alloc_many({n}) refused: {e}");
                        assert_eq!(
                            e,
                            CacheError::PoolExhausted {
                                needed: n,
                                free: m.free.len(),
                                capacity: capacity as usize
                            }
                        );
                    }
                }
            }
            2 => {
                let p = page_id(&mut b);
                let owned = m.allocated.get(p as usize).copied().unwrap_or(false);
                match pool.free(p) {
                    Ok(()) => {
                        assert!(owned, "freed page {p} that was not allocated");
                        m.allocated[p as usize] = false;
                        m.free.push(p);
                    }
                    Err(e) => {
                        assert!(!owned, "refused to free allocated page {p}: {e}");
                        assert_eq!(e, CacheError::PageNotAllocated(p));
                    }
                }
            }
            _ => {
                let n = b.below(6);
                let pages: Vec<u32> = (0..n).map(|_| page_id(&mut b)).collect();
                // The first page that is not allocated, counting earlier entries as freed.
                let mut seen = Vec::new();
                let bad = pages.iter().copied().find(|&p| {
                    let ok =
                        m.allocated.get(p as usize).copied().unwrap_or(false) && !seen.contains(&p);
                    seen.push(p);
                    !ok
                });
                match pool.free_many(&pages) {
                    Ok(()) => {
                        assert_eq!(bad, None, "free_many({pages:?}) accepted a bad page");
                        for &p in pages.iter().rev() {
                            m.allocated[p as usize] = false;
                            m.free.push(p);
                        }
                    }
                    Err(e) => {
                        let bad = bad.expect("free_many refused a valid list");
                        assert_eq!(e, CacheError::PageNotAllocated(bad));
                    }
                }
            }
        }
        m.check(&pool);
    }
    // Whatever happened, freeing every handed-out page fills the pool again.
    let owned: Vec<u32> = (0..capacity).filter(|&p| m.allocated[p as usize]).collect();
    pool.free_many(&owned).expect("free every handed-out page");
    assert_eq!(pool.free_count(), capacity as usize);
    assert_eq!(
        pool.alloc_many(capacity as usize).map(|v| v.len()),
        Ok(capacity as usize)
    );
});
