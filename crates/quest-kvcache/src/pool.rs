//! The page pool: host-side bookkeeping of which KV pages are free. It owns no memory; a page id
//! names the same page in every layer's KV and bounds buffers, so one pool serves all layers.

use crate::error::{CacheError, Result};

/// A fixed set of page ids `0..capacity`, handed out from a free list.
///
/// The free list is a stack, so the most recently freed page is reused first (its lines are the
/// likeliest to still be in cache). An ownership flag per page rejects double frees and frees of
/// ids the pool never handed out, so the free list can never hold a page twice and no page is ever
/// handed out twice.
#[derive(Clone, Debug)]
pub struct PagePool {
    /// Free page ids; the top of the stack (the end) is handed out next.
    free: Vec<u32>,
    /// `allocated[p]` is true while page `p` is handed out.
    allocated: Vec<bool>,
}

impl PagePool {
    /// A pool of pages `0..capacity`, all free. Pages are first handed out in increasing order.
    pub fn new(capacity: u32) -> Self {
        PagePool {
            free: (0..capacity).rev().collect(),
            allocated: vec![false; capacity as usize],
        }
    }

    /// Total pages, free or not.
    pub fn capacity(&self) -> usize {
        self.allocated.len()
    }

    /// Pages that can be allocated now.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Pages currently handed out.
    pub fn in_use(&self) -> usize {
        self.capacity() - self.free_count()
    }

    /// Whether `page` is currently handed out (false for ids outside the pool).
    pub fn is_allocated(&self, page: u32) -> bool {
        self.allocated.get(page as usize).copied().unwrap_or(false)
    }

    /// One page, or [`CacheError::PoolExhausted`] when none is free.
    pub fn alloc(&mut self) -> Result<u32> {
        let page = self.free.pop().ok_or(CacheError::PoolExhausted {
            needed: 1,
            free: 0,
            capacity: self.capacity(),
        })?;
        self.allocated[page as usize] = true;
        Ok(page)
    }

    /// `n` pages, or none: when fewer than `n` are free this returns
    /// [`CacheError::PoolExhausted`] and takes nothing.
    pub fn alloc_many(&mut self, n: usize) -> Result<Vec<u32>> {
        if n > self.free.len() {
            return Err(CacheError::PoolExhausted {
                needed: n,
                free: self.free.len(),
                capacity: self.capacity(),
            });
        }
        let pages = self.free.split_off(self.free.len() - n);
        for &p in &pages {
            self.allocated[p as usize] = true;
        }
        // `split_off` keeps the stack's bottom-to-top order; reverse so the pages come out in the
        // order `n` calls to `alloc` would have returned them.
        Ok(pages.into_iter().rev().collect())
    }

    /// Returns `page` to the pool. A page that is not currently allocated (already freed, or
    /// outside the pool) is refused with [`CacheError::PageNotAllocated`] and nothing changes.
    pub fn free(&mut self, page: u32) -> Result<()> {
        match self.allocated.get_mut(page as usize) {
            Some(owned) if *owned => {
                *owned = false;
                self.free.push(page);
                Ok(())
            }
            _ => Err(CacheError::PageNotAllocated(page)),
        }
    }

    /// Returns every page of `pages` to the pool, or none: if any is not allocated (or appears
    /// twice) this returns [`CacheError::PageNotAllocated`] for it and nothing changes.
    pub fn free_many(&mut self, pages: &[u32]) -> Result<()> {
        // Clear ownership as we go, so a page listed twice fails the second time; on failure,
        // restore the flags already cleared.
        for (i, &page) in pages.iter().enumerate() {
            match self.allocated.get_mut(page as usize) {
                Some(owned) if *owned => *owned = false,
                _ => {
                    for &done in &pages[..i] {
                        self.allocated[done as usize] = true;
                    }
                    return Err(CacheError::PageNotAllocated(page));
                }
            }
        }
        // Pushed in reverse so the sequence's first page is reused first.
        self.free.extend(pages.iter().rev());
        Ok(())
    }
}
