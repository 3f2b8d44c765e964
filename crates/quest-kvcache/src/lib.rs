//! Paged KV cache with per-page key bounds.
