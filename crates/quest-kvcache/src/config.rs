//! The geometry of a cache: how many layers, heads and pages, and how big a page is.

use quest_kernels::{BoundsFormat, Half, PagedLayout};

use crate::error::{CacheError, Result};

/// Shape of a [`KvCache`](crate::KvCache). Every layer has the same [`PagedLayout`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    pub num_layers: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Tokens per page. Any value `>= 1` is accepted; 8, 16, 32 and 64 are the sizes tested (and
    /// the ones the paper and FlashInfer use); GPU kernels are fastest with powers of two.
    pub page_size: usize,
    /// Pages in the pool, shared by all layers.
    pub num_pages: usize,
}

impl CacheConfig {
    /// Rejects a configuration the cache or the kernels cannot work with: any field zero, an odd
    /// `head_dim` (rotary embedding pairs channels), a slot count (`num_pages * page_size`) that
    /// does not fit the kernels' i32 indices, or buffers whose size overflows `usize`.
    pub fn validate(&self) -> Result<()> {
        let fields = [
            ("num_layers", self.num_layers),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("page_size", self.page_size),
            ("num_pages", self.num_pages),
        ];
        if let Some((name, _)) = fields.iter().find(|(_, v)| *v == 0) {
            return Err(CacheError::InvalidConfig(format!(
                "{name} must be > 0 in {self:?}"
            )));
        }
        if self.head_dim % 2 != 0 {
            return Err(CacheError::InvalidConfig(format!(
                "head_dim must be even, got {}",
                self.head_dim
            )));
        }
        // Slots, page ids and positions travel to the kernels as i32.
        let slots = self.num_pages.checked_mul(self.page_size);
        if slots.is_none_or(|s| s > i32::MAX as usize) {
            return Err(CacheError::InvalidConfig(format!(
                "num_pages * page_size = {} * {} does not fit in i32 slot indices",
                self.num_pages, self.page_size
            )));
        }
        let kv_elems = [2, self.page_size, self.num_kv_heads, self.head_dim]
            .iter()
            .try_fold(self.num_pages, |acc, &x| acc.checked_mul(x));
        if kv_elems.is_none() {
            return Err(CacheError::InvalidConfig(format!(
                "KV buffer size overflows usize for {self:?}"
            )));
        }
        Ok(())
    }

    /// The per-layer page geometry the kernels take.
    pub fn layout(&self) -> PagedLayout {
        PagedLayout {
            num_pages: self.num_pages,
            page_size: self.page_size,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
        }
    }

    /// Tokens the pool can hold in total, over all sequences.
    pub fn token_capacity(&self) -> usize {
        self.num_pages.saturating_mul(self.page_size)
    }

    /// Bytes one token's K and V take over all layers, stored as `T`.
    pub fn bytes_per_token<T: Half>(&self) -> usize {
        [2, self.num_kv_heads, self.head_dim, size_of::<T>()]
            .iter()
            .fold(self.num_layers, |acc, &x| acc.saturating_mul(x))
    }

    /// Bytes of the KV page buffers of all layers, stored as `T`.
    pub fn kv_bytes<T: Half>(&self) -> usize {
        self.bytes_per_token::<T>()
            .saturating_mul(self.token_capacity())
    }

    /// Bytes of the page-bounds buffers of all layers (max and min keys of every page), as `T`.
    pub fn bounds_bytes<T: Half>(&self) -> usize {
        self.bounds_bytes_in::<T>(BoundsFormat::Full)
    }

    /// Bytes of the page-bounds buffers of all layers kept in `format`, with the KV stored as `T`.
    pub fn bounds_bytes_in<T: Half>(&self, format: BoundsFormat) -> usize {
        format
            .bytes_per_page_head(self.head_dim, size_of::<T>())
            .saturating_mul(self.num_kv_heads)
            .saturating_mul(self.num_layers)
            .saturating_mul(self.num_pages)
    }
}
