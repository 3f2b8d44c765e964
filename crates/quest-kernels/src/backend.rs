//! The backend abstraction: one trait, implemented by the CPU reference and by CUDA, with the same
//! signatures and the same math. Buffers are the backend's own (`Vec<T>` on the CPU, device memory
//! on CUDA); ops write into caller-provided outputs so a decode step allocates nothing.
//!
//! Shapes are stated per op: activations are row-major f32, weights and KV pages are [`Half`]
//! storage (f16 or bf16) read into f32 arithmetic.

use crate::dtype::{Elem, Half};
use crate::error::{Result, arg_err};
use crate::layout::{PageTable, PagedLayout, TableRows};

/// Temperature and nucleus (top-p) sampling. `temperature == 0` means greedy (argmax).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: f32,
}

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    pub num_qo_heads: usize,
    pub layout: PagedLayout,
    /// Softmax scale, usually `1 / sqrt(head_dim)`.
    pub sm_scale: f32,
}

impl AttentionShape {
    pub fn group_size(&self) -> usize {
        self.num_qo_heads / self.layout.num_kv_heads
    }
}

/// What [`Backend::select_top_pages`] keeps in each row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SelectOptions {
    /// Slots per row, the sequence's last page included (at least 1): the cap.
    pub budget_pages: usize,
    /// Per query head ([`TableRows::PerQoHead`]) or per KV head ([`TableRows::PerKvHead`]).
    pub rows: TableRows,
    /// Adaptive budget: `Some(p)`, `0 < p <= 1`, keeps of each row's top-k only the shortest
    /// best-first prefix whose estimated softmax mass reaches `p` of the row's (see
    /// [`Backend::select_top_pages`]). `None` keeps the whole top-k.
    pub mass: Option<f32>,
}

impl SelectOptions {
    /// Plain top-k: the last page and the `budget_pages - 1` best others.
    pub fn top_k(budget_pages: usize, rows: TableRows) -> Self {
        SelectOptions {
            budget_pages,
            rows,
            mass: None,
        }
    }

    /// The same with the adaptive budget at `p` (`None`: off).
    pub fn with_mass(self, mass: Option<f32>) -> Self {
        SelectOptions { mass, ..self }
    }

    /// The threshold when it can trim anything: `p < 1` (at `p = 1` every page of the top-k is
    /// kept, pages whose mass underflows to 0 included).
    pub fn trim(&self) -> Option<f32> {
        self.mass.filter(|&p| p < 1.0)
    }

    /// Refuses a zero budget, per-sequence rows and a threshold outside `(0, 1]`.
    pub fn validate(&self, op: &'static str) -> Result<()> {
        if self.budget_pages == 0 {
            return Err(arg_err(
                op,
                "budget of 0 pages: the last page is always kept",
            ));
        }
        if self.rows == TableRows::PerSequence {
            return Err(arg_err(
                op,
                "selection rows must be per query or per KV head",
            ));
        }
        if let Some(p) = self.mass {
            if !(p > 0.0 && p <= 1.0) {
                return Err(arg_err(op, format!("mass threshold {p} outside (0, 1]")));
            }
        }
        Ok(())
    }
}

/// A page table resident on a backend, with its row structure (`indptr`) also kept on the host so
/// launches can be sized without a device round trip.
///
/// The fields are public for tests and tools; `indptr_host` must equal the contents of
/// `indptr`. The ops check every table's rows on the host copy before they launch, so a device
/// `indptr` changed behind it (through [`Backend::write`], say) is not caught. Build tables with
/// [`DevicePageTable::upload`] or [`DevicePageTable::for_selection`], which keep the two equal.
pub struct DevicePageTable<B: Backend> {
    pub indptr_host: Vec<i32>,
    pub indptr: B::Buf<i32>,
    pub indices: B::Buf<i32>,
    pub last_page_len: B::Buf<i32>,
}

impl<B: Backend> DevicePageTable<B> {
    /// Uploads a host table after validating it against `layout` (empty slots allowed, see
    /// [`PageTable::validate_sparse`]; the ops that refuse them check again).
    pub fn upload(backend: &B, table: &PageTable, layout: &PagedLayout) -> Result<Self> {
        table.validate_sparse("page table upload", layout)?;
        Ok(DevicePageTable {
            indptr_host: table.indptr.clone(),
            indptr: backend.upload(&table.indptr)?,
            indices: backend.upload(&table.indices)?,
            last_page_len: backend.upload(&table.last_page_len)?,
        })
    }

    /// The row structure of a selection output: for each sequence row of `input_indptr`,
    /// `heads` rows (query or KV heads) of `min(n_pages, budget_pages)` pages each.
    pub fn selection_indptr(input_indptr: &[i32], heads: usize, budget_pages: usize) -> Vec<i32> {
        let mut indptr = Vec::with_capacity(input_indptr.len().saturating_sub(1) * heads + 1);
        let mut end = 0i32;
        indptr.push(end);
        for w in input_indptr.windows(2) {
            let n = ((w[1] - w[0]).max(0) as usize).min(budget_pages) as i32;
            for _ in 0..heads {
                end += n;
                indptr.push(end);
            }
        }
        indptr
    }

    /// An output table for [`Backend::select_top_pages`], with the rows of
    /// [`selection_indptr`](Self::selection_indptr).
    pub fn for_selection(
        backend: &B,
        input_indptr: &[i32],
        heads: usize,
        budget_pages: usize,
    ) -> Result<Self> {
        let indptr = Self::selection_indptr(input_indptr, heads, budget_pages);
        let nnz = *indptr.last().unwrap_or(&0) as usize;
        let rows = indptr.len() - 1;
        Ok(DevicePageTable {
            indptr: backend.upload(&indptr)?,
            indptr_host: indptr,
            indices: backend.zeros(nnz)?,
            last_page_len: backend.zeros(rows)?,
        })
    }

    pub fn rows(&self) -> usize {
        self.indptr_host.len().saturating_sub(1)
    }

    /// Total pages over all rows.
    pub fn nnz(&self) -> usize {
        self.indptr_host.last().copied().unwrap_or(0).max(0) as usize
    }

    /// Copies the table back to the host (tests, debugging).
    pub fn to_host(&self, backend: &B) -> Result<PageTable> {
        Ok(PageTable {
            indptr: self.indptr_host.clone(),
            indices: backend.download(&self.indices)?,
            last_page_len: backend.download(&self.last_page_len)?,
        })
    }
}

/// A compute backend. Every method validates its shapes and returns an error (never panics) when
/// they do not fit.
pub trait Backend: Clone + Send + Sync + 'static {
    /// A buffer of `T` owned by this backend.
    type Buf<T: Elem>: Send + Sync;

    /// A short human-readable name, e.g. `cpu` or `cuda:0 (NVIDIA H100)`.
    fn name(&self) -> String;

    // ---- memory -------------------------------------------------------------------------------

    /// A buffer of `len` elements, all zero.
    fn zeros<T: Elem>(&self, len: usize) -> Result<Self::Buf<T>>;
    /// A buffer holding a copy of `data`.
    fn upload<T: Elem>(&self, data: &[T]) -> Result<Self::Buf<T>>;
    /// The buffer's contents copied to the host.
    fn download<T: Elem>(&self, buf: &Self::Buf<T>) -> Result<Vec<T>>;
    /// Overwrites `buf[offset..offset + data.len()]` with `data`.
    fn write<T: Elem>(&self, buf: &mut Self::Buf<T>, offset: usize, data: &[T]) -> Result<()>;
    /// Elements in `buf`.
    fn buf_len<T: Elem>(&self, buf: &Self::Buf<T>) -> usize;
    /// Waits for all queued work.
    fn synchronize(&self) -> Result<()>;

    /// Opens a branch: the ops queued from here to [`Backend::branch_end`] see everything queued
    /// before, and may run concurrently with the ops queued between `branch_end` and
    /// [`Backend::branch_join`]; ops queued after `branch_join` see both. The caller keeps the
    /// two sides apart (no buffer written on one side and used on the other before the join).
    /// Branches do not nest, and a branch belongs to the backend, not to a thread: open one only
    /// where a single thread drives the backend (every op of every clone goes to the branch
    /// while it is open). Close and join it on error paths too. A backend with one queue (the
    /// CPU) runs everything in order; the CUDA backend queues the branch on a second stream.
    fn branch_begin(&self) -> Result<()> {
        Ok(())
    }

    /// Closes the branch: later ops go to the main queue, without waiting for the branch.
    fn branch_end(&self) -> Result<()> {
        Ok(())
    }

    /// Makes the ops queued after this call wait for the closed branch.
    fn branch_join(&self) -> Result<()> {
        Ok(())
    }
    /// Fills `buf` with deterministic pseudo-random values, uniform in `[-|scale|, |scale|]` and
    /// non-zero before the rounding to `T` (so zeros are as rare as values under `T`'s smallest
    /// subnormal): `buf[i] = T::from_f32(scale * u)` with `u` from
    /// [`crate::cpu::hash_uniform`]`(seed, i)`. Every backend writes the same bits, so synthetic
    /// models and caches (benchmarks, tests) need no files and no host-to-device traffic.
    /// A scale that is zero or not finite is refused.
    fn fill_random<T: Half>(&self, buf: &mut Self::Buf<T>, seed: u64, scale: f32) -> Result<()>;

    // ---- dense ops ----------------------------------------------------------------------------

    /// `out[i, :] = table[tokens[i], :]`; table `[vocab, hidden]`, out `[n, hidden]`.
    fn embedding<W: Half>(
        &self,
        table: &Self::Buf<W>,
        hidden: usize,
        tokens: &Self::Buf<u32>,
        out: &mut Self::Buf<f32>,
    ) -> Result<()>;

    /// `out[i, :] = x[i, :] / sqrt(mean(x[i, :]^2) + eps) * weight`; rows of `weight.len()`.
    fn rms_norm<W: Half>(
        &self,
        x: &Self::Buf<f32>,
        weight: &Self::Buf<W>,
        eps: f32,
        out: &mut Self::Buf<f32>,
    ) -> Result<()>;

    /// `out[n, m] = x[n, k] · w[m, k]^T` (a linear layer with PyTorch's weight layout).
    fn matmul<W: Half>(
        &self,
        x: &Self::Buf<f32>,
        w: &Self::Buf<W>,
        n: usize,
        k: usize,
        m: usize,
        out: &mut Self::Buf<f32>,
    ) -> Result<()>;

    /// `x += y`, then `out = rms_norm(x) * weight` with the same rounding as
    /// [`Backend::add_assign`] followed by [`Backend::rms_norm`] (a backend may do both in one
    /// pass: the residual add that ends one sub-layer and the norm that starts the next).
    fn add_rms_norm<W: Half>(
        &self,
        x: &mut Self::Buf<f32>,
        y: &Self::Buf<f32>,
        weight: &Self::Buf<W>,
        eps: f32,
        out: &mut Self::Buf<f32>,
    ) -> Result<()> {
        self.add_assign(x, y)?;
        self.rms_norm(x, weight, eps, out)
    }

    /// Several linear layers of the same input: `outs[i][n, m_i] = x[n, k] · ws[i][m_i, k]^T`
    /// with `m_i = ws[i].len() / k` (Llama's q/k/v and gate/up projections). The result is that
    /// of calling [`Backend::matmul`] for each; a backend may read all the weights in one launch.
    fn matmul_many<W: Half>(
        &self,
        x: &Self::Buf<f32>,
        ws: &[&Self::Buf<W>],
        n: usize,
        k: usize,
        outs: &mut [&mut Self::Buf<f32>],
    ) -> Result<()> {
        check_matmul_many(ws.iter().map(|w| self.buf_len(*w)), outs.len(), k)?;
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            let m = self.buf_len(*w) / k;
            self.matmul(x, w, n, k, m, out)?;
        }
        Ok(())
    }

    /// A pre-norm projection: `outs[i] = rms_norm(x) · ws[i]^T` with the norm `weight` of `k`
    /// elements (what [`Backend::rms_norm`] then [`Backend::matmul_many`] compute; a backend may
    /// normalise x on the fly instead of writing it out). Llama's lm_head after its final norm.
    #[allow(clippy::too_many_arguments)]
    fn rms_norm_matmul_many<W: Half>(
        &self,
        x: &Self::Buf<f32>,
        norm: &Self::Buf<W>,
        eps: f32,
        ws: &[&Self::Buf<W>],
        n: usize,
        k: usize,
        outs: &mut [&mut Self::Buf<f32>],
    ) -> Result<()> {
        crate::fused::rms_norm_matmul_many(self, x, norm, eps, ws, n, k, outs)
    }

    /// Llama's attention input from the residual stream `x[n, k]`:
    /// `q, k, v = rms_norm(x) · (wq, wk, wv)^T`, then RoPE on q and k ([`Backend::rope_qk`]).
    #[allow(clippy::too_many_arguments)]
    fn qkv_projection<W: Half>(
        &self,
        x: &Self::Buf<f32>,
        norm: &Self::Buf<W>,
        eps: f32,
        w: [&Self::Buf<W>; 3],
        n: usize,
        k: usize,
        out: [&mut Self::Buf<f32>; 3],
        rope: &crate::fused::RopeInput<'_, Self>,
    ) -> Result<()> {
        crate::fused::qkv_projection(self, x, norm, eps, w, n, k, out, rope)
    }

    /// Llama's MLP input: `out = silu(rms_norm(x) · w_gate^T) * (rms_norm(x) · w_up^T)`.
    #[allow(clippy::too_many_arguments)]
    fn rms_norm_swiglu<W: Half>(
        &self,
        x: &Self::Buf<f32>,
        norm: &Self::Buf<W>,
        eps: f32,
        w_gate: &Self::Buf<W>,
        w_up: &Self::Buf<W>,
        n: usize,
        k: usize,
        out: &mut Self::Buf<f32>,
    ) -> Result<()> {
        crate::fused::rms_norm_swiglu(self, x, norm, eps, w_gate, w_up, n, k, out)
    }

    /// `out[n, m] += x[n, k] · w[m, k]^T`: an output projection and the residual add after it.
    fn matmul_add<W: Half>(
        &self,
        x: &Self::Buf<f32>,
        w: &Self::Buf<W>,
        n: usize,
        k: usize,
        m: usize,
        out: &mut Self::Buf<f32>,
    ) -> Result<()> {
        crate::fused::matmul_add(self, x, w, n, k, m, out)
    }

    /// Rotary embedding in place on `x[n, heads, head_dim]` (Hugging Face's rotate-half pairing:
    /// channel `i` with `i + head_dim/2`), angle `positions[t] * inv_freq[i]` for row `t`.
    /// `inv_freq` has `head_dim / 2` entries, see [`crate::rope`].
    fn rope(
        &self,
        x: &mut Self::Buf<f32>,
        positions: &Self::Buf<i32>,
        inv_freq: &Self::Buf<f32>,
        head_dim: usize,
    ) -> Result<()>;

    /// [`Backend::rope`] on the queries and the keys of the same tokens (one launch where the
    /// backend can).
    fn rope_qk(
        &self,
        q: &mut Self::Buf<f32>,
        k: &mut Self::Buf<f32>,
        positions: &Self::Buf<i32>,
        inv_freq: &Self::Buf<f32>,
        head_dim: usize,
    ) -> Result<()> {
        self.rope(q, positions, inv_freq, head_dim)?;
        self.rope(k, positions, inv_freq, head_dim)
    }

    /// `out = silu(gate) * up`, element-wise.
    fn silu_mul(
        &self,
        gate: &Self::Buf<f32>,
        up: &Self::Buf<f32>,
        out: &mut Self::Buf<f32>,
    ) -> Result<()>;

    /// `x += y`, element-wise.
    fn add_assign(&self, x: &mut Self::Buf<f32>, y: &Self::Buf<f32>) -> Result<()>;

    /// Index of the largest logit in each row of `logits[n, vocab]` (lowest index on ties).
    fn argmax(&self, logits: &Self::Buf<f32>, vocab: usize, out: &mut Self::Buf<u32>)
    -> Result<()>;

    /// One token per row of `logits[n, vocab]`: softmax at `temperature`, keep the smallest set of
    /// most likely tokens whose mass reaches `top_p` (ties by lower index), and invert the CDF of
    /// that set at `uniforms[i]` in `[0, 1)`. Greedy when `temperature == 0`.
    fn sample(
        &self,
        logits: &Self::Buf<f32>,
        vocab: usize,
        params: SamplingParams,
        uniforms: &Self::Buf<f32>,
        out: &mut Self::Buf<u32>,
    ) -> Result<()>;

    // ---- paged KV cache -----------------------------------------------------------------------

    /// Writes token `t`'s key `k[t, :, :]` and value `v[t, :, :]` (each `[n, num_kv_heads,
    /// head_dim]`) into slot `slots[t]` of the KV pages (see [`crate::layout`]).
    fn append_kv<T: Half>(
        &self,
        kv: &mut Self::Buf<T>,
        layout: &PagedLayout,
        k: &Self::Buf<f32>,
        v: &Self::Buf<f32>,
        slots: &Self::Buf<i32>,
    ) -> Result<()>;

    /// Recomputes the max/min bounds of each listed page over its first `page_lens[i]` keys.
    fn update_bounds<T: Half>(
        &self,
        kv: &Self::Buf<T>,
        bounds: &mut Self::Buf<T>,
        layout: &PagedLayout,
        pages: &Self::Buf<i32>,
        page_lens: &Self::Buf<i32>,
    ) -> Result<()>;

    /// [`update_bounds`](Backend::update_bounds) for 8-bit bounds
    /// ([`crate::BoundsFormat::Int8`]): for each listed page, the max and min of its first
    /// `page_lens[i]` keys per KV head and channel, encoded outward by [`crate::quant`] into
    /// `codes` (`[num_pages, 2, num_kv_heads, head_dim]`) and `params` (`[num_pages,
    /// num_kv_heads, 4]`). Always from the stored keys, never from older codes, so the bound
    /// holds after any number of appends.
    fn update_bounds_int8<T: Half>(
        &self,
        kv: &Self::Buf<T>,
        codes: &mut Self::Buf<u8>,
        params: &mut Self::Buf<f32>,
        layout: &PagedLayout,
        pages: &Self::Buf<i32>,
        page_lens: &Self::Buf<i32>,
    ) -> Result<()>;

    // ---- Quest selection ----------------------------------------------------------------------

    /// Criticality of every page of a per-sequence table for every query head:
    /// `scores[h, j] = Σ_i max(q[b, h, i] · max[p, g, i], q[b, h, i] · min[p, g, i])` for page
    /// `p = indices[j]` of row `b` and KV head `g = h / group_size`. `q` is `[batch, qo_heads,
    /// head_dim]`, `scores` is `[num_qo_heads, nnz]`.
    fn estimate_pages<T: Half>(
        &self,
        q: &Self::Buf<f32>,
        bounds: &Self::Buf<T>,
        shape: &AttentionShape,
        table: &DevicePageTable<Self>,
        scores: &mut Self::Buf<f32>,
    ) -> Result<()>;

    /// [`estimate_pages`](Backend::estimate_pages) over 8-bit bounds: the same score with
    /// `max[p, g, i]` and `min[p, g, i]` replaced by their dequantized codes
    /// ([`crate::quant::dequant`]), so never below the score of the exact bounds (up to f32
    /// summation order) and still an upper bound of every key's `q·k`.
    fn estimate_pages_int8(
        &self,
        q: &Self::Buf<f32>,
        codes: &Self::Buf<u8>,
        params: &Self::Buf<f32>,
        shape: &AttentionShape,
        table: &DevicePageTable<Self>,
        scores: &mut Self::Buf<f32>,
    ) -> Result<()>;

    /// Marks pages every head must keep: sets `scores[h, j] = +inf` for each query head and, in
    /// each sequence row of `n` pages of the per-sequence `table`, the first `first` pages (the
    /// attention sink) and the `recent` pages before the last. [`select_top_pages`] then keeps
    /// them ahead of every scored page, inside the budget.
    ///
    /// [`select_top_pages`]: Backend::select_top_pages
    fn force_pages(
        &self,
        scores: &mut Self::Buf<f32>,
        num_qo_heads: usize,
        table: &DevicePageTable<Self>,
        first: usize,
        recent: usize,
    ) -> Result<()>;

    /// Top-k page selection. For each row of the per-sequence `table` and each head of
    /// `opts.rows` ([`TableRows::PerQoHead`]: scores as given; [`TableRows::PerKvHead`]: scores
    /// summed over the query heads of each GQA group, in ascending head order), keeps the
    /// sequence's last page and the `budget_pages - 1` highest-scoring other pages (NaN below
    /// everything, ties to the earlier page), written in table order, the last page in the row's
    /// last slot. Rows with at most `budget_pages` pages keep all of them. `out` comes from
    /// [`DevicePageTable::for_selection`] with the matching head count and `budget_pages`.
    ///
    /// **Adaptive budget** (`opts.mass = Some(p)`, `p < 1`): of those pages, the ones with score
    /// `+inf` (forced by [`force_pages`]) are kept, and of the others only the best-first prefix
    /// (same order and ties as above) that is the shortest to reach `p` of the row's estimated
    /// mass. A candidate page `j` (every page but the last) with a finite score `s_j` has mass
    /// `m_j = exp(sm_scale / g * (s_j - s_max))`, where `g` is the group size for
    /// [`TableRows::PerKvHead`] rows (their scores are sums) and 1 otherwise, and `s_max` the
    /// row's largest finite candidate score; NaN and `-inf` scores have mass 0, and forced pages
    /// none. A non-forced page is kept while the mass of the non-forced pages before it is
    /// `< p * total` (`total`: all the row's non-forced candidates, f32 sums), so never more than
    /// the top-k. The row keeps its `min(n, budget_pages)` slots: the kept pages in table order,
    /// then [`crate::layout::EMPTY_PAGE`] (-1), then the last page. Rows within the budget are
    /// trimmed the same way. At `p = 1` nothing is trimmed (the plain top-k).
    ///
    /// `kept`, if given (one element), gets the number of pages written (empty slots not
    /// counted, over all rows) added to it, on the device.
    ///
    /// [`force_pages`]: Backend::force_pages
    fn select_top_pages(
        &self,
        scores: &Self::Buf<f32>,
        shape: &AttentionShape,
        table: &DevicePageTable<Self>,
        opts: SelectOptions,
        out: &mut DevicePageTable<Self>,
        kept: Option<&mut Self::Buf<u64>>,
    ) -> Result<()>;

    // ---- attention ----------------------------------------------------------------------------

    /// One query token per sequence: `out[b, h] = softmax(q[b, h] · K^T * sm_scale) · V` over the
    /// tokens of the pages in `table`'s row for `(b, h)` (see [`TableRows`]); empty slots
    /// ([`crate::layout::EMPTY_PAGE`]) hold no tokens and read nothing. `q`, `out`:
    /// `[batch, num_qo_heads, head_dim]`.
    fn decode_attention<T: Half>(
        &self,
        q: &Self::Buf<f32>,
        kv: &Self::Buf<T>,
        shape: &AttentionShape,
        table: &DevicePageTable<Self>,
        rows: TableRows,
        out: &mut Self::Buf<f32>,
    ) -> Result<()>;

    /// Causal attention for the last `qo_indptr[b+1] - qo_indptr[b]` tokens of each sequence `b`
    /// of a per-sequence `table` (whose K/V are already appended): query token `i` of a sequence
    /// of `L` tokens with `n` queries sits at position `L - n + i` and sees keys `0..=L - n + i`.
    /// `q`, `out`: `[total_queries, num_qo_heads, head_dim]`.
    fn prefill_attention<T: Half>(
        &self,
        q: &Self::Buf<f32>,
        kv: &Self::Buf<T>,
        shape: &AttentionShape,
        table: &DevicePageTable<Self>,
        qo_indptr: &[i32],
        out: &mut Self::Buf<f32>,
    ) -> Result<()>;
}

/// Checks `matmul_many`'s list: as many outputs as weights, each weight whole rows of `k`.
pub(crate) fn check_matmul_many(
    weight_lens: impl Iterator<Item = usize>,
    outs: usize,
    k: usize,
) -> Result<()> {
    const OP: &str = "matmul_many";
    let mut count = 0;
    for (i, len) in weight_lens.enumerate() {
        count += 1;
        if k == 0 || len % k != 0 {
            return Err(crate::error::shape_err(
                OP,
                format!("weight {i} of {len} elements is not rows of k = {k}"),
            ));
        }
    }
    if count != outs {
        return Err(crate::error::shape_err(
            OP,
            format!("{count} weights but {outs} outputs"),
        ));
    }
    Ok(())
}
