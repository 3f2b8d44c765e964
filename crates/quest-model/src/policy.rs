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
}

impl QuestConfig {
    /// The default: the paper's selection plus the sink page and a two-page recent window, which
    /// scored higher than the paper's setting on pass-key retrieval at every budget of 128 tokens
    /// and more and every length measured (docs/accuracy.md).
    pub fn new(budget: usize) -> Self {
        QuestConfig {
            sink_pages: 1,
            recent_pages: 2,
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
}

impl<B: Backend> Quest<B> {
    pub fn new(config: QuestConfig) -> Result<Self> {
        if config.rows == TableRows::PerSequence {
            return Err(ModelError::Argument(
                "Quest selects per query head or per KV head".into(),
            ));
        }
        Ok(Quest {
            config,
            scores: None,
            selected: None,
        })
    }

    pub fn config(&self) -> &QuestConfig {
        &self.config
    }
}

impl<B: Backend, T: Half> KvPolicy<B, T> for Quest<B> {
    fn name(&self) -> String {
        let c = &self.config;
        format!(
            "quest(budget={}, skip_layers={}, rows={:?}, sink_pages={}, recent_pages={}, bounds={})",
            c.budget, c.skip_layers, c.rows, c.sink_pages, c.recent_pages, c.bounds
        )
    }

    fn bounds_format(&self) -> Option<BoundsFormat> {
        Some(self.config.bounds)
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
        if input.layer < self.config.skip_layers || longest <= budget_pages {
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
        backend.select_top_pages(
            scores,
            input.shape,
            table,
            SelectOptions::top_k(budget_pages, self.config.rows),
            out,
            None,
        )?;
        Ok(Selection::Pages(out, self.config.rows))
    }
}
