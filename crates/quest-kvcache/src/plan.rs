//! A step plan: everything the kernels need to write and attend over the new tokens of one batch,
//! computed once on the host and uploaded once, then used by every layer.

use quest_kernels::{Backend, DevicePageTable, PageTable};

use crate::cache::SeqId;

/// The new tokens of a batch of sequences, made by [`KvCache::plan`](crate::KvCache::plan).
///
/// Token `t` of the plan (in the order the sequences were listed, each sequence's new tokens in
/// order) sits at `positions()[t]` in its sequence and is written to `slots()[t]`. The plan holds
/// host copies (for sizing launches and for tests) and device copies (for the kernels) of each
/// array. A plan stays valid until a sequence is removed from the cache that made it; using it
/// after that is refused, because the pages it names may belong to someone else by then.
pub struct StepPlan<B: Backend> {
    pub(crate) cache_id: u64,
    pub(crate) epoch: u64,
    pub(crate) seqs: Vec<SeqId>,
    pub(crate) positions: Vec<i32>,
    pub(crate) positions_dev: B::Buf<i32>,
    pub(crate) slots: Vec<i32>,
    pub(crate) slots_dev: B::Buf<i32>,
    pub(crate) touched_pages: Vec<i32>,
    pub(crate) touched_pages_dev: B::Buf<i32>,
    pub(crate) touched_lens: Vec<i32>,
    pub(crate) touched_lens_dev: B::Buf<i32>,
    pub(crate) qo_indptr: Vec<i32>,
    pub(crate) host_table: PageTable,
    pub(crate) table: DevicePageTable<B>,
}

impl<B: Backend> StepPlan<B> {
    /// The sequences of the batch, in the order given to `plan`; row `b` of every per-sequence
    /// array is `seqs()[b]`.
    pub fn seqs(&self) -> &[SeqId] {
        &self.seqs
    }

    /// Sequences in the batch.
    pub fn batch(&self) -> usize {
        self.seqs.len()
    }

    /// New tokens over the whole batch.
    pub fn num_tokens(&self) -> usize {
        self.positions.len()
    }

    /// New tokens of row `b`, or `None` when `b >= batch()`.
    pub fn new_tokens(&self, b: usize) -> Option<usize> {
        let (start, end) = (*self.qo_indptr.get(b)?, *self.qo_indptr.get(b + 1)?);
        Some((end - start) as usize)
    }

    /// Position of each new token in its sequence (0-based), for rotary embedding.
    pub fn positions(&self) -> &[i32] {
        &self.positions
    }

    pub fn positions_device(&self) -> &B::Buf<i32> {
        &self.positions_dev
    }

    /// Slot of each new token: `page * page_size + offset`, as `append_kv` takes it.
    pub fn slots(&self) -> &[i32] {
        &self.slots
    }

    pub fn slots_device(&self) -> &B::Buf<i32> {
        &self.slots_dev
    }

    /// The pages the new tokens land in, each once, as `update_bounds` takes them.
    pub fn touched_pages(&self) -> &[i32] {
        &self.touched_pages
    }

    pub fn touched_pages_device(&self) -> &B::Buf<i32> {
        &self.touched_pages_dev
    }

    /// Filled tokens of each touched page once the new tokens are written (`1..=page_size`).
    pub fn touched_page_lens(&self) -> &[i32] {
        &self.touched_lens
    }

    pub fn touched_page_lens_device(&self) -> &B::Buf<i32> {
        &self.touched_lens_dev
    }

    /// `batch + 1` prefix sums of the new-token counts: row `b`'s tokens are
    /// `qo_indptr[b]..qo_indptr[b + 1]` (the query layout of `prefill_attention`).
    pub fn qo_indptr(&self) -> &[i32] {
        &self.qo_indptr
    }

    /// Host copy of [`table`](Self::table).
    pub fn host_table(&self) -> &PageTable {
        &self.host_table
    }

    /// Per-sequence CSR page table over all pages of every sequence of the batch, new tokens
    /// included (row `b` is `seqs()[b]`).
    pub fn table(&self) -> &DevicePageTable<B> {
        &self.table
    }
}
