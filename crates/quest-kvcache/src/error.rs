//! The one error type of the cache. Every refusal names the numbers involved, and every operation
//! that returns an error leaves the cache as it was (nothing half-allocated, nothing overwritten).

use quest_kernels::{BoundsFormat, KernelError};
use thiserror::Error;

use crate::cache::SeqId;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum CacheError {
    /// The page pool cannot satisfy an allocation; nothing was taken.
    #[error("KV page pool is full: needed {needed} pages but only {free} of {capacity} are free")]
    PoolExhausted {
        needed: usize,
        free: usize,
        capacity: usize,
    },

    /// The sequence was never handed out by this cache, or has been removed.
    #[error("unknown sequence: {0}")]
    UnknownSequence(SeqId),

    /// A page that is not currently allocated was freed: a double free, or a page id this pool
    /// never handed out.
    #[error("page {0} is not allocated (double free, or not a page of this pool)")]
    PageNotAllocated(u32),

    /// A [`CacheConfig`](crate::CacheConfig) the cache cannot be built with.
    #[error("invalid cache config: {0}")]
    InvalidConfig(String),

    /// A layer index outside `0..num_layers`.
    #[error("layer {layer} out of range: the cache has {num_layers} layers")]
    LayerOutOfRange { layer: usize, num_layers: usize },

    /// A step plan that cannot be built as asked, or that no longer matches the cache it is used
    /// with (built by another cache, or before a sequence was removed and its pages recycled).
    #[error("invalid step plan: {0}")]
    InvalidPlan(String),

    /// A buffer or a request whose size does not fit.
    #[error("shape mismatch: {0}")]
    Shape(String),

    /// The page bounds were asked for in a format the cache does not keep them in.
    #[error("the cache keeps {have} page bounds, not {want} (KvCache::set_bounds_format converts)")]
    BoundsFormat {
        have: BoundsFormat,
        want: BoundsFormat,
    },

    /// A backend op refused its inputs or failed on its device.
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

pub type Result<T> = std::result::Result<T, CacheError>;
