//! KV selection policies: which pages each head attends to in a decode step. All of them run
//! before the same paged attention kernel; prefill is always dense.

use quest_kernels::{
    AttentionShape, Backend, BoundsFormat, DevicePageTable, Half, SelectOptions, TableRows,
};
use quest_kvcache::{KvCache, StepPlan};

use crate::error::{ModelError, Result};

/// What a policy sees for one layer of one decode step.
pub struct SelectInput<'a, B: Backend, T: Half> {
    pub layer: usize,
    /// Queries after RoPE, `[batch, num_qo_heads, head_dim]`.
    pub q: &'a B::Buf<f32>,
    pub cache: &'a KvCache<B, T>,
    pub plan: &'a StepPlan<B>,
    pub shape: &'a AttentionShape,
}

/// A policy's answer.
pub enum Selection<'a, B: Backend> {
    /// Every page of every sequence (the plan's per-sequence table).
    Dense,
    /// The pages of this table, whose rows are of the given kind.
    Pages(&'a DevicePageTable<B>, TableRows),
    /// Like `Pages`, but slots may be empty ([`quest_kernels::EMPTY_PAGE`], the adaptive
    /// budget): how many pages the rows really hold is known on the device only, and the policy
    /// counts them ([`KvPolicy::page_reads`]).
    Adaptive(&'a DevicePageTable<B>, TableRows),
}

/// Pages a policy's selections held, over every selection since the policy was made: `rows`
/// head rows (one per row of every selection table), `slots` slots in them, of which `pages`
/// held a page (the rest were empty slots of the adaptive budget).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageReads {
    pub rows: u64,
    pub slots: u64,
    pub pages: u64,
}

impl PageReads {
    /// Pages read per selected row, on average (0 without rows).
    pub fn pages_per_row(&self) -> f64 {
        if self.rows == 0 {
            0.0
        } else {
            self.pages as f64 / self.rows as f64
        }
    }

    /// The sum of two counts (selections of several policies or batches).
    pub fn add(&self, other: &PageReads) -> PageReads {
        PageReads {
            rows: self.rows + other.rows,
            slots: self.slots + other.slots,
            pages: self.pages + other.pages,
        }
    }
}

/// Chooses the pages a decode step attends to.
pub trait KvPolicy<B: Backend, T: Half> {
    /// A short description, e.g. `quest(budget=512, page=16)`.
    fn name(&self) -> String;
    /// The pages layer `input.layer` attends to in this step.
    fn select<'s>(&'s mut self, input: SelectInput<'_, B, T>) -> Result<Selection<'s, B>>;

    /// The page-bound format this policy reads, if it reads bounds at all: the model converts
    /// the cache to it before a step ([`KvCache::set_bounds_format`], a no-op when it already
    /// matches). `None` (the default) leaves the cache as it is.
    fn bounds_format(&self) -> Option<BoundsFormat> {
        None
    }

    /// How many pages this policy's page selections held so far, if it counts them (`None`:
    /// it does not). May wait for the device (one small copy): call it when reporting, not
    /// in a decode loop.
    fn page_reads(&mut self) -> Result<Option<PageReads>> {
        Ok(None)
    }

    /// Whether, in a decode step of `layer`, this policy may select before (or while) the step's
    /// K/V are appended: true only if the selection never depends on the pages the step writes
    /// (each sequence's last page) nor on their keys. The model then runs the append and bounds
    /// update on a branch ([`Backend::branch_begin`]), concurrently with the selection. Default:
    /// false.
    fn selects_before_append(&self, _layer: usize) -> bool {
        false
    }
}

/// Full attention over the whole cache.
#[derive(Clone, Copy, Debug, Default)]
pub struct Dense;

impl<B: Backend, T: Half> KvPolicy<B, T> for Dense {
    fn name(&self) -> String {
        "dense".into()
    }

    fn select<'s>(&'s mut self, _: SelectInput<'_, B, T>) -> Result<Selection<'s, B>> {
        Ok(Selection::Dense)
    }
}

/// The page size [`QuestConfig::new`] is meant for (a property of the cache, not the policy):
/// half the paper's 16, so each selected page wastes fewer of the budget's tokens on keys that
/// do not matter.
pub const DEFAULT_PAGE_SIZE: usize = 8;

/// Options of [`Quest`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuestConfig {
    /// Tokens each head attends to (rounded down to whole pages, at least one page).
    pub budget: usize,
    /// Layers `< skip_layers` run dense (the paper's default: 2).
    pub skip_layers: usize,
    /// One page set per query head (the paper) or per KV head (shared by a GQA group).
    pub rows: TableRows,
    /// Pages at the start of each sequence always kept (the attention sink), inside the budget.
    pub sink_pages: usize,
    /// Pages before the last one always kept (a recent window), inside the budget.
    pub recent_pages: usize,
    /// How the page bounds the estimate reads are stored: exact in the KV type, or 8 bits
    /// rounded outward (about half the bytes; scores stay upper bounds, slightly looser).
    pub bounds: BoundsFormat,
    /// Adaptive budget: `Some(p)`, `0 < p <= 1`, keeps of each head's top-k only the best pages
    /// whose estimated softmax mass reaches `p` (forced pages always), so `budget` is a cap; see
    /// [`quest_kernels::Backend::select_top_pages`]. Contexts within the budget are then selected
    /// too (not run dense). `None`: the fixed budget.
    pub mass: Option<f32>,
}

impl QuestConfig {
    /// The default: the paper's selection plus the sink page and a two-page recent window, with
    /// 8-bit bounds. Meant for caches of [`DEFAULT_PAGE_SIZE`]-token pages: with them it keeps
    /// 94% of dense pass-key accuracy at ~7.5K tokens and a 1024-token budget on SmolLM2-135M
    /// (the paper's setting: 12%), while its estimate reads what the paper's f16 bounds of
    /// 16-token pages do (docs/accuracy.md).
    pub fn new(budget: usize) -> Self {
        QuestConfig {
            sink_pages: 1,
            recent_pages: 2,
            bounds: BoundsFormat::Int8,
            ..Self::paper(budget)
        }
    }

    /// The paper's setting: per-query-head pages, first two layers dense, nothing forced.
    pub fn paper(budget: usize) -> Self {
        QuestConfig {
            budget,
            skip_layers: 2,
            rows: TableRows::PerQoHead,
            sink_pages: 0,
            recent_pages: 0,
            bounds: BoundsFormat::Full,
            mass: None,
        }
    }
}

/// Quest: score every page by the upper bound `Σ_i max(q_i·max_i, q_i·min_i)` and attend to the
/// last page plus the best `budget/page_size - 1` others. Contexts within the budget and the first
/// `skip_layers` layers run dense.
pub struct Quest<B: Backend> {
    config: QuestConfig,
    scores: Option<B::Buf<f32>>,
    selected: Option<DevicePageTable<B>>,
    /// Rows and slots of every selection so far (host), and with the adaptive budget the pages
    /// they held (summed on the device by `select_top_pages`, read by `page_reads`).
    reads: PageReads,
    kept: Option<(B, B::Buf<u64>)>,
}

impl<B: Backend> Quest<B> {
    pub fn new(config: QuestConfig) -> Result<Self> {
        if config.rows == TableRows::PerSequence {
            return Err(ModelError::Argument(
                "Quest selects per query head or per KV head".into(),
            ));
        }
        if let Some(p) = config.mass {
            if !(p > 0.0 && p <= 1.0) {
                return Err(ModelError::Argument(format!(
                    "the adaptive budget's mass threshold must be in (0, 1], not {p}"
                )));
            }
        }
        Ok(Quest {
            config,
            scores: None,
            selected: None,
            reads: PageReads::default(),
            kept: None,
        })
    }

    pub fn config(&self) -> &QuestConfig {
        &self.config
    }

    /// Rows, slots and pages of every selection so far ([`KvPolicy::page_reads`]). With the
    /// adaptive budget the pages come from a counter on the device: one small copy, which waits
    /// for the queued work.
    pub fn page_reads(&self) -> Result<PageReads> {
        let mut reads = self.reads;
        if let Some((backend, kept)) = &self.kept {
            // Only the adaptive budget leaves slots empty; its kernel counted every selection's
            // real pages (every selection of this policy trims, so the count is the total).
            reads.pages = backend.download(kept)?.first().copied().unwrap_or(0);
        }
        Ok(reads)
    }
}

impl<B: Backend, T: Half> KvPolicy<B, T> for Quest<B> {
    fn name(&self) -> String {
        let c = &self.config;
        let mass = c.mass.map(|p| format!(", mass={p}")).unwrap_or_default();
        format!(
            "quest(budget={}, skip_layers={}, rows={:?}, sink_pages={}, recent_pages={}, bounds={}{mass})",
            c.budget, c.skip_layers, c.rows, c.sink_pages, c.recent_pages, c.bounds
        )
    }

    fn bounds_format(&self) -> Option<BoundsFormat> {
        Some(self.config.bounds)
    }

    fn page_reads(&mut self) -> Result<Option<PageReads>> {
        Quest::page_reads(self).map(Some)
    }

    /// Quest always keeps each sequence's last page and ranks only the others, whose bounds no
    /// decode step changes; forced pages are chosen by position. So its selection (estimate,
    /// top-k) can run while the step's append and bounds update run beside it.
    fn selects_before_append(&self, layer: usize) -> bool {
        layer >= self.config.skip_layers
    }

    fn select<'s>(&'s mut self, input: SelectInput<'_, B, T>) -> Result<Selection<'s, B>> {
        let page_size = input.shape.layout.page_size;
        let budget_pages = (self.config.budget / page_size).max(1);
        let table = input.plan.table();
        let longest = table
            .indptr_host
            .windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .max()
            .unwrap_or(0);
        // With the adaptive budget the budget is only a cap: short contexts are trimmed too.
        let fits = if self.config.mass.is_some() {
            longest <= 1
        } else {
            longest <= budget_pages
        };
        if input.layer < self.config.skip_layers || fits {
            return Ok(Selection::Dense);
        }
        let backend = input.cache.backend();
        let heads = match self.config.rows {
            TableRows::PerKvHead => input.shape.layout.num_kv_heads,
            _ => input.shape.num_qo_heads,
        };
        let n_scores = input.shape.num_qo_heads * table.nnz();
        let scores = match self.scores.take() {
            Some(s) if backend.buf_len(&s) == n_scores => s,
            _ => backend.zeros(n_scores)?,
        };
        let scores = self.scores.insert(scores);
        input
            .cache
            .estimate_pages(input.layer, input.q, input.shape, table, scores)?;
        if self.config.sink_pages > 0 || self.config.recent_pages > 0 {
            backend.force_pages(
                scores,
                input.shape.num_qo_heads,
                table,
                self.config.sink_pages,
                self.config.recent_pages,
            )?;
        }
        // The output table's rows depend only on the sequences' page counts: reuse it while they
        // stay the same (every layer of a step, and most steps).
        let want = DevicePageTable::<B>::selection_indptr(&table.indptr_host, heads, budget_pages);
        if self.selected.as_ref().is_none_or(|s| s.indptr_host != want) {
            self.selected = Some(DevicePageTable::for_selection(
                backend,
                &table.indptr_host,
                heads,
                budget_pages,
            )?);
        }
        let out = self
            .selected
            .as_mut()
            .ok_or_else(|| ModelError::Argument("no selection table".into()))?;
        let opts = SelectOptions::top_k(budget_pages, self.config.rows).with_mass(self.config.mass);
        // Empty slots only where the threshold can trim (p < 1); count their pages on the device.
        let trims = opts.trim().is_some();
        let kept = if trims {
            if self.kept.is_none() {
                self.kept = Some((backend.clone(), backend.zeros::<u64>(1)?));
            }
            self.kept.as_mut().map(|(_, k)| k)
        } else {
            None
        };
        backend.select_top_pages(scores, input.shape, table, opts, out, kept)?;
        self.reads.rows += out.rows() as u64;
        self.reads.slots += out.nnz() as u64;
        if !trims {
            self.reads.pages += out.nnz() as u64;
        }
        Ok(if trims {
            Selection::Adaptive(out, self.config.rows)
        } else {
            Selection::Pages(out, self.config.rows)
        })
    }
}
