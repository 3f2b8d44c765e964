//! Paged KV cache with per-page key bounds, for Quest query-aware sparse attention
//! (Tang et al., ICML 2024).
//!
//! The cache keeps, per layer, K/V pages in FlashInfer's NHD layout and, for every page, the
//! element-wise max and min of its keys, which Quest uses to score pages against a query (see
//! [`quest_kernels::layout`] for the exact layouts). Pages come from one [`PagePool`] shared by
//! all layers; each sequence owns a list of pages. Buffers live on a [`quest_kernels::Backend`]
//! (the CPU reference now, CUDA later) and are written only through backend ops, so the same code
//! drives either.
//!
//! A step, for a batch of sequences:
//!
//! ```
//! use quest_kernels::{CpuBackend, f16};
//! use quest_kvcache::{CacheConfig, KvCache};
//!
//! let config = CacheConfig { num_layers: 2, num_kv_heads: 1, head_dim: 4, page_size: 16, num_pages: 8 };
//! let mut cache = KvCache::<CpuBackend, f16>::new(&CpuBackend, config)?;
//! let a = cache.add_sequence();
//! let b = cache.add_sequence();
//! cache.reserve(a, 20)?; // a prompt of 20 tokens: 2 pages
//! cache.reserve(b, 1)?;  // one token: 1 page
//! let plan = cache.plan(&[(a, 20), (b, 1)])?;
//! assert_eq!(plan.qo_indptr(), &[0, 20, 21]);
//! for layer in 0..config.num_layers {
//!     let k = vec![0.5f32; plan.num_tokens() * 4]; // from the model, post-RoPE
//!     let v = vec![1.0f32; plan.num_tokens() * 4];
//!     cache.write_kv(layer, &plan, &k, &v)?;
//!     // ... attention over cache.kv(layer)? with plan.table() ...
//! }
//! cache.remove_sequence(a)?;
//! assert_eq!(cache.pages_in_use(), 1);
//! # Ok::<(), quest_kvcache::CacheError>(())
//! ```

mod cache;
mod config;
mod error;
mod plan;
mod pool;

pub use cache::{KvCache, LayerBounds, SeqId};
pub use config::CacheConfig;
pub use error::{CacheError, Result};
pub use plan::StepPlan;
pub use pool::PagePool;
pub use quest_kernels::BoundsFormat;
