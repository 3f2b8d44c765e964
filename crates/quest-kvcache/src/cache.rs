//! The paged KV cache: per-layer KV and bounds buffers on a backend, one page pool shared by all
//! layers, and the page list of every sequence.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use quest_kernels::{
    AttentionShape, Backend, BoundsFormat, DevicePageTable, Half, PageTable, PagedLayout,
};

use crate::config::CacheConfig;
use crate::error::{CacheError, Result};
use crate::plan::StepPlan;
use crate::pool::PagePool;

/// A sequence of a [`KvCache`], handed out by [`KvCache::add_sequence`]. Ids are never reused by
/// the cache that made them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(u64);

impl SeqId {
    /// The number behind the id (for logs and maps keyed by integers).
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SeqId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seq {}", self.0)
    }
}

/// What the cache knows of one sequence. Invariant: `pages.len() == ceil(len / page_size)`, so
/// every page is full except the last, which holds `1..=page_size` tokens.
#[derive(Clone, Debug, Default)]
struct SeqState {
    pages: Vec<u32>,
    len: usize,
}

impl SeqState {
    /// Tokens in the last page (0 for an empty sequence).
    fn last_page_len(&self, page_size: usize) -> usize {
        match self.pages.len() {
            0 => 0,
            n => self.len - (n - 1) * page_size,
        }
    }

    /// Appends this sequence as a row of a per-sequence page table.
    fn push_row(&self, table: &mut PageTable, page_size: usize) {
        // Page ids fit in i32: `CacheConfig::validate` bounds num_pages * page_size by i32::MAX.
        let pages: Vec<i32> = self.pages.iter().map(|&p| p as i32).collect();
        table.push_row(&pages, self.last_page_len(page_size) as i32);
    }
}

/// One layer's page bounds, in the cache's [`BoundsFormat`] (layouts in
/// [`quest_kernels::layout`]).
pub enum LayerBounds<B: Backend, T: Half> {
    /// Max then min key of every page, `[num_pages, 2, num_kv_heads, head_dim]` of `T`.
    Full(B::Buf<T>),
    /// 8-bit codes `[num_pages, 2, num_kv_heads, head_dim]` and their f32 `(base, step)` params
    /// `[num_pages, num_kv_heads, 4]`, rounded outward.
    Int8 {
        codes: B::Buf<u8>,
        params: B::Buf<f32>,
    },
}

impl<B: Backend, T: Half> LayerBounds<B, T> {
    /// Zeroed buffers of `format` for one layer of `layout`.
    fn zeros(backend: &B, layout: &PagedLayout, format: BoundsFormat) -> Result<Self> {
        Ok(match format {
            BoundsFormat::Full => LayerBounds::Full(backend.zeros(layout.bounds_len())?),
            BoundsFormat::Int8 => LayerBounds::Int8 {
                codes: backend.zeros(layout.bounds_len())?,
                params: backend.zeros(layout.int8_params_len())?,
            },
        })
    }

    pub fn format(&self) -> BoundsFormat {
        match self {
            LayerBounds::Full(_) => BoundsFormat::Full,
            LayerBounds::Int8 { .. } => BoundsFormat::Int8,
        }
    }

    /// Recomputes the bounds of `pages` (their first `lens` keys) from the stored keys `kv`.
    fn update(
        &mut self,
        backend: &B,
        kv: &B::Buf<T>,
        layout: &PagedLayout,
        pages: &B::Buf<i32>,
        lens: &B::Buf<i32>,
    ) -> Result<()> {
        match self {
            LayerBounds::Full(b) => backend.update_bounds(kv, b, layout, pages, lens)?,
            LayerBounds::Int8 { codes, params } => {
                backend.update_bounds_int8(kv, codes, params, layout, pages, lens)?
            }
        }
        Ok(())
    }
}

/// Distinguishes caches, so a plan made by one cannot be used to write into another.
static NEXT_CACHE_ID: AtomicU64 = AtomicU64::new(0);

/// A paged KV cache of `T` (f16 or bf16) on backend `B`, with per-page key bounds for Quest.
///
/// Per layer it holds one KV buffer `[num_pages, 2, page_size, num_kv_heads, head_dim]` and the
/// page bounds in the cache's [`BoundsFormat`]: one buffer `[num_pages, 2, num_kv_heads,
/// head_dim]` of `T` (full), or 8-bit codes of that shape and their params (int8), laid out as
/// [`quest_kernels::layout`] describes. Page ids come from one [`PagePool`] shared by all
/// layers: page `p` is page `p` of every layer's buffers.
///
/// A step is: [`reserve`](Self::reserve) room for each sequence's new tokens,
/// [`plan`](Self::plan) them once, then on every layer [`write_kv`](Self::write_kv) their K/V and
/// run attention over [`StepPlan::table`].
pub struct KvCache<B: Backend, T: Half> {
    backend: B,
    config: CacheConfig,
    layout: PagedLayout,
    kv: Vec<B::Buf<T>>,
    bounds: Vec<LayerBounds<B, T>>,
    pool: PagePool,
    seqs: BTreeMap<SeqId, SeqState>,
    next_seq: u64,
    cache_id: u64,
    /// Bumped whenever pages leave a sequence, which makes older plans stale.
    epoch: u64,
}

impl<B: Backend, T: Half> KvCache<B, T> {
    /// A cache with every page free, its buffers allocated (zeroed) on `backend`, bounds kept in
    /// the KV storage type ([`BoundsFormat::Full`]).
    pub fn new(backend: &B, config: CacheConfig) -> Result<Self> {
        Self::with_bounds(backend, config, BoundsFormat::Full)
    }

    /// [`new`](Self::new) with the page bounds kept in `format` ([`BoundsFormat::Int8`]: about
    /// half the bytes for Quest's estimate to read; see [`set_bounds_format`](
    /// Self::set_bounds_format) to change it later).
    pub fn with_bounds(backend: &B, config: CacheConfig, format: BoundsFormat) -> Result<Self> {
        config.validate()?;
        let layout = config.layout();
        layout.validate("KvCache::new")?;
        let capacity = u32::try_from(config.num_pages).map_err(|_| {
            CacheError::InvalidConfig(format!("num_pages {} exceeds u32", config.num_pages))
        })?;
        let mut kv = Vec::with_capacity(config.num_layers);
        let mut bounds = Vec::with_capacity(config.num_layers);
        for _ in 0..config.num_layers {
            kv.push(backend.zeros::<T>(layout.kv_len())?);
            bounds.push(LayerBounds::zeros(backend, &layout, format)?);
        }
        Ok(KvCache {
            backend: backend.clone(),
            config,
            layout,
            kv,
            bounds,
            pool: PagePool::new(capacity),
            seqs: BTreeMap::new(),
            next_seq: 0,
            cache_id: NEXT_CACHE_ID.fetch_add(1, Ordering::Relaxed),
            epoch: 0,
        })
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// How the page bounds are stored.
    pub fn bounds_format(&self) -> BoundsFormat {
        self.bounds
            .first()
            .map_or(BoundsFormat::Full, LayerBounds::format)
    }

    /// Keeps the page bounds in `format` from now on: when it differs, every layer's bounds are
    /// recomputed in it from the stored keys of every page of every live sequence. On an error
    /// (out of device memory) the cache keeps its old bounds.
    pub fn set_bounds_format(&mut self, format: BoundsFormat) -> Result<()> {
        if format == self.bounds_format() {
            return Ok(());
        }
        let live = self.live_pages()?;
        let mut fresh = Vec::with_capacity(self.config.num_layers);
        for kv in &self.kv {
            let mut b = LayerBounds::zeros(&self.backend, &self.layout, format)?;
            if let Some((pages, lens)) = &live {
                b.update(&self.backend, kv, &self.layout, pages, lens)?;
            }
            fresh.push(b);
        }
        self.bounds = fresh;
        Ok(())
    }

    /// The page geometry of every layer, as the kernels take it.
    pub fn layout(&self) -> &PagedLayout {
        &self.layout
    }

    /// The page pool (read-only: pages change hands only through sequences).
    pub fn pool(&self) -> &PagePool {
        &self.pool
    }

    pub fn free_pages(&self) -> usize {
        self.pool.free_count()
    }

    pub fn pages_in_use(&self) -> usize {
        self.pool.in_use()
    }

    // ---- sequences ------------------------------------------------------------------------------

    /// A new, empty sequence (it holds no pages until [`reserve`](Self::reserve)).
    pub fn add_sequence(&mut self) -> SeqId {
        let id = SeqId(self.next_seq);
        self.next_seq += 1;
        self.seqs.insert(id, SeqState::default());
        id
    }

    /// Forgets `seq` and returns all its pages to the pool. Plans made before this are stale.
    pub fn remove_sequence(&mut self, seq: SeqId) -> Result<()> {
        let state = self
            .seqs
            .get(&seq)
            .ok_or(CacheError::UnknownSequence(seq))?;
        self.pool.free_many(&state.pages)?;
        self.seqs.remove(&seq);
        self.epoch += 1;
        Ok(())
    }

    /// Shortens `seq` to its first `len` tokens and returns the pages it no longer needs. Used
    /// to roll back tokens that were reserved but could not be computed. The bounds of a now
    /// partly filled last page still cover the dropped keys (an upper bound stays an upper bound)
    /// until the next write to that page recomputes them. Plans made before this are stale.
    pub fn truncate(&mut self, seq: SeqId, len: usize) -> Result<()> {
        let page_size = self.config.page_size;
        let state = self
            .seqs
            .get_mut(&seq)
            .ok_or(CacheError::UnknownSequence(seq))?;
        if len > state.len {
            return Err(CacheError::Shape(format!(
                "cannot truncate {seq} of {} tokens to {len}",
                state.len
            )));
        }
        let keep = len.div_ceil(page_size);
        self.pool.free_many(&state.pages[keep..])?;
        state.pages.truncate(keep);
        state.len = len;
        self.epoch += 1;
        Ok(())
    }

    /// The live sequences, in the order they were added.
    pub fn sequences(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.seqs.keys().copied()
    }

    /// Tokens reserved for `seq`.
    pub fn seq_len(&self, seq: SeqId) -> Result<usize> {
        Ok(self.state(seq)?.len)
    }

    /// The pages of `seq`, in token order.
    pub fn seq_pages(&self, seq: SeqId) -> Result<&[u32]> {
        Ok(&self.state(seq)?.pages)
    }

    /// Grows `seq` by `n_tokens`, filling the free slots of its last page first and allocating
    /// exactly the pages the rest needs. All or nothing: when the pool cannot supply them, this
    /// returns [`CacheError::PoolExhausted`] and neither the sequence nor the pool changes.
    ///
    /// Reserved tokens hold garbage until their K/V are written on **every** layer with
    /// [`write_kv`](Self::write_kv) (through a [`plan`](Self::plan) covering them); attention must
    /// not read them before that.
    pub fn reserve(&mut self, seq: SeqId, n_tokens: usize) -> Result<()> {
        let page_size = self.config.page_size;
        let state = self
            .seqs
            .get_mut(&seq)
            .ok_or(CacheError::UnknownSequence(seq))?;
        let new_len = state.len.checked_add(n_tokens).ok_or_else(|| {
            CacheError::Shape(format!(
                "reserving {n_tokens} tokens overflows {seq}'s length"
            ))
        })?;
        let needed = new_len.div_ceil(page_size) - state.pages.len();
        // The only fallible step, taken before the sequence changes.
        state.pages.extend(self.pool.alloc_many(needed)?);
        state.len = new_len;
        Ok(())
    }

    /// A host page table (per-sequence CSR) over all pages of `seqs`, row `b` for `seqs[b]`.
    pub fn table(&self, seqs: &[SeqId]) -> Result<PageTable> {
        let mut table = PageTable::new();
        for &seq in seqs {
            self.state(seq)?.push_row(&mut table, self.config.page_size);
        }
        Ok(table)
    }

    // ---- a step -----------------------------------------------------------------------------

    /// Plans the last `n` tokens of each `(seq, n)` of `new_tokens`, which must already be
    /// reserved: their positions and slots, the pages they touch, the query layout and the page
    /// table of the batch, uploaded to the backend. Refused when the list is empty, a sequence is
    /// unknown or listed twice, or `n` is 0 or more than the sequence's length.
    pub fn plan(&self, new_tokens: &[(SeqId, usize)]) -> Result<StepPlan<B>> {
        if new_tokens.is_empty() {
            return Err(CacheError::InvalidPlan("no sequences to plan".into()));
        }
        let page_size = self.config.page_size;
        let mut seen = HashSet::with_capacity(new_tokens.len());
        let mut seqs = Vec::with_capacity(new_tokens.len());
        let mut positions = Vec::new();
        let mut slots = Vec::new();
        let mut touched_pages = Vec::new();
        let mut touched_lens = Vec::new();
        let mut qo_indptr = Vec::with_capacity(new_tokens.len() + 1);
        qo_indptr.push(0i32);
        let mut table = PageTable::new();

        for &(seq, n) in new_tokens {
            let state = self.state(seq)?;
            if !seen.insert(seq) {
                return Err(CacheError::InvalidPlan(format!("{seq} is listed twice")));
            }
            if n == 0 || n > state.len {
                return Err(CacheError::InvalidPlan(format!(
                    "{seq} has {} reserved tokens, cannot plan its last {n}",
                    state.len
                )));
            }
            let first = state.len - n;
            // Positions and slots fit in i32: validate() bounds num_pages * page_size by i32::MAX.
            for pos in first..state.len {
                let page = state.pages[pos / page_size] as usize;
                positions.push(pos as i32);
                slots.push((page * page_size + pos % page_size) as i32);
            }
            // Sequences own disjoint pages and none is listed twice, so no page repeats.
            for idx in first / page_size..state.len.div_ceil(page_size) {
                touched_pages.push(state.pages[idx] as i32);
                touched_lens.push((state.len - idx * page_size).min(page_size) as i32);
            }
            qo_indptr.push(positions.len() as i32);
            state.push_row(&mut table, page_size);
            seqs.push(seq);
        }

        let backend = &self.backend;
        Ok(StepPlan {
            cache_id: self.cache_id,
            epoch: self.epoch,
            seqs,
            positions_dev: backend.upload(&positions)?,
            positions,
            slots_dev: backend.upload(&slots)?,
            slots,
            touched_pages_dev: backend.upload(&touched_pages)?,
            touched_pages,
            touched_lens_dev: backend.upload(&touched_lens)?,
            touched_lens,
            qo_indptr,
            table: DevicePageTable::upload(backend, &table, &self.layout)?,
            host_table: table,
        })
    }

    /// Writes the K/V of `plan`'s tokens into `layer` and refreshes the max/min key bounds of
    /// every page they touch (a partly filled last page's bounds cover only its filled tokens).
    /// `k` and `v` are `[plan.num_tokens(), num_kv_heads, head_dim]`, f32, post-RoPE for `k`.
    pub fn write_kv(
        &mut self,
        layer: usize,
        plan: &StepPlan<B>,
        k: &B::Buf<f32>,
        v: &B::Buf<f32>,
    ) -> Result<()> {
        self.check_layer(layer)?;
        if plan.cache_id != self.cache_id {
            return Err(CacheError::InvalidPlan(
                "the plan was made by another cache".into(),
            ));
        }
        if plan.epoch != self.epoch {
            return Err(CacheError::InvalidPlan(
                "a sequence was removed since the plan was made; plan again".into(),
            ));
        }
        let want = plan.num_tokens() * self.layout.token_width();
        for (name, buf) in [("k", k), ("v", v)] {
            let got = self.backend.buf_len(buf);
            if got != want {
                return Err(CacheError::Shape(format!(
                    "{name} has {got} elements, expected {} tokens x {} heads x {} = {want}",
                    plan.num_tokens(),
                    self.config.num_kv_heads,
                    self.config.head_dim
                )));
            }
        }
        let (kv, bounds) = (&mut self.kv[layer], &mut self.bounds[layer]);
        self.backend
            .append_kv(kv, &self.layout, k, v, &plan.slots_dev)?;
        bounds.update(
            &self.backend,
            kv,
            &self.layout,
            &plan.touched_pages_dev,
            &plan.touched_lens_dev,
        )
    }

    /// Writes synthetic K/V into every layer (the whole buffer, pseudo-random and uniform in
    /// `[-|scale|, |scale|]`, from [`Backend::fill_random`] with one stream per layer derived from
    /// `seed`) and recomputes the bounds of every page of every live sequence, so all reserved
    /// tokens hold valid K/V. For benchmarks and tests that need a long context without paying for
    /// its prefill: the values are not what any model would compute, but every kernel reads them
    /// exactly as it would read real ones.
    pub fn fill_random(&mut self, seed: u64, scale: f32) -> Result<()> {
        let live = self.live_pages()?;
        for (layer, (kv, bounds)) in self.kv.iter_mut().zip(&mut self.bounds).enumerate() {
            let layer_seed = seed ^ (layer as u64 + 1).wrapping_mul(0xd1b5_4a32_d192_ed03);
            self.backend.fill_random(kv, layer_seed, scale)?;
            if let Some((pages, lens)) = &live {
                bounds.update(&self.backend, kv, &self.layout, pages, lens)?;
            }
        }
        Ok(())
    }

    /// Every page of every live sequence and its filled length, uploaded (`None` when there is
    /// none).
    #[allow(clippy::type_complexity)]
    fn live_pages(&self) -> Result<Option<(B::Buf<i32>, B::Buf<i32>)>> {
        let page_size = self.config.page_size;
        let (mut pages, mut lens) = (Vec::new(), Vec::new());
        for state in self.seqs.values() {
            for (i, &p) in state.pages.iter().enumerate() {
                pages.push(p as i32);
                lens.push((state.len - i * page_size).min(page_size) as i32);
            }
        }
        if pages.is_empty() {
            return Ok(None);
        }
        Ok(Some((
            self.backend.upload(&pages)?,
            self.backend.upload(&lens)?,
        )))
    }

    /// The KV pages of `layer`.
    pub fn kv(&self, layer: usize) -> Result<&B::Buf<T>> {
        self.check_layer(layer)?;
        Ok(&self.kv[layer])
    }

    /// The page bounds (max then min key of every page) of `layer`, when they are kept in the KV
    /// storage type; [`CacheError::BoundsFormat`] for 8-bit bounds (see
    /// [`layer_bounds`](Self::layer_bounds)).
    pub fn bounds(&self, layer: usize) -> Result<&B::Buf<T>> {
        match self.layer_bounds(layer)? {
            LayerBounds::Full(b) => Ok(b),
            other => Err(CacheError::BoundsFormat {
                have: other.format(),
                want: BoundsFormat::Full,
            }),
        }
    }

    /// The page bounds of `layer`, in whichever format the cache keeps them.
    pub fn layer_bounds(&self, layer: usize) -> Result<&LayerBounds<B, T>> {
        self.check_layer(layer)?;
        Ok(&self.bounds[layer])
    }

    /// Quest's criticality estimate of `layer` in the cache's bounds format:
    /// [`Backend::estimate_pages`] or [`Backend::estimate_pages_int8`] over `table` (a
    /// per-sequence table of this cache's pages), `q` `[batch, num_qo_heads, head_dim]`, `scores`
    /// `[num_qo_heads, nnz]`.
    pub fn estimate_pages(
        &self,
        layer: usize,
        q: &B::Buf<f32>,
        shape: &AttentionShape,
        table: &DevicePageTable<B>,
        scores: &mut B::Buf<f32>,
    ) -> Result<()> {
        if shape.layout != self.layout {
            return Err(CacheError::Shape(format!(
                "estimate over layout {:?}, the cache has {:?}",
                shape.layout, self.layout
            )));
        }
        let be = &self.backend;
        match self.layer_bounds(layer)? {
            LayerBounds::Full(b) => be.estimate_pages(q, b, shape, table, scores)?,
            LayerBounds::Int8 { codes, params } => {
                be.estimate_pages_int8(q, codes, params, shape, table, scores)?
            }
        }
        Ok(())
    }

    // ---- helpers ----------------------------------------------------------------------------

    fn state(&self, seq: SeqId) -> Result<&SeqState> {
        self.seqs.get(&seq).ok_or(CacheError::UnknownSequence(seq))
    }

    fn check_layer(&self, layer: usize) -> Result<()> {
        if layer < self.config.num_layers {
            Ok(())
        } else {
            Err(CacheError::LayerOutOfRange {
                layer,
                num_layers: self.config.num_layers,
            })
        }
    }
}
