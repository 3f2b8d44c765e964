//! The paper's baselines, as token-level KV policies: StreamingLLM, H2O and TOVA. They choose
//! tokens, so they run on a cache with `page_size == 1` (a page is a token) and hand the same
//! `decode_attention` kernel a table of the tokens they keep. Like the paper, the first
//! `skip_layers` layers stay dense.
//!
//! H2O and TOVA rank tokens by attention. The exact logits `q·k` of every kept token come from
//! `estimate_pages`: on one-token pages max = min = k, so the page score
//! `Σ_i max(q_i·max_i, q_i·min_i)` is `q·k` itself. Both use the current query to decide what
//! to evict before attending (as Quest uses it to select), and both evict for good: state lives
//! here, per sequence and layer, and is dropped once its sequence leaves the cache.

use std::collections::HashMap;

use quest_kernels::{Backend, BoundsFormat, DevicePageTable, Half, PageTable, TableRows};
use quest_kvcache::SeqId;

use crate::error::{ModelError, Result};
use crate::policy::{KvPolicy, SelectInput, Selection};

/// Attention sinks StreamingLLM keeps (the paper's 4).
const SINK_TOKENS: usize = 4;

fn require_token_pages<B: Backend, T: Half>(
    name: &str,
    input: &SelectInput<'_, B, T>,
) -> Result<()> {
    if input.shape.layout.page_size != 1 {
        return Err(ModelError::Argument(format!(
            "{name} selects tokens and needs a cache with page_size 1, not {}",
            input.shape.layout.page_size
        )));
    }
    Ok(())
}

/// Sequence lengths (tokens = pages) of the plan's rows.
fn row_lens(input_indptr: &[i32]) -> Vec<usize> {
    input_indptr
        .windows(2)
        .map(|w| (w[1] - w[0]).max(0) as usize)
        .collect()
}

/// A table whose row `r` reads the tokens `kept[r]` (positions, ascending) of the plan's row
/// `seq_row[r]`; every page holds one token.
fn token_table<B: Backend>(
    backend: &B,
    plan_table: &PageTable,
    rows: &[(usize, &[u32])],
    layout: &quest_kernels::PagedLayout,
) -> Result<DevicePageTable<B>> {
    let mut t = PageTable::new();
    let mut pages = Vec::new();
    for &(seq_row, kept) in rows {
        let all = plan_table.row(seq_row);
        pages.clear();
        pages.extend(kept.iter().map(|&p| all[p as usize]));
        t.push_row(&pages, 1);
    }
    Ok(DevicePageTable::upload(backend, &t, layout)?)
}

/// Uploads the kept tokens into `slot` and selects that table: row `r` reads the tokens
/// `kept[r]` of the plan's sequence `r / rows_per_seq`.
fn select_kept<'s, B: Backend, T: Half>(
    slot: &'s mut Option<DevicePageTable<B>>,
    input: &SelectInput<'_, B, T>,
    kept: &[Vec<u32>],
    rows_per_seq: usize,
    kind: TableRows,
) -> Result<Selection<'s, B>> {
    let rows: Vec<(usize, &[u32])> = kept
        .iter()
        .enumerate()
        .map(|(r, k)| (r / rows_per_seq, &k[..]))
        .collect();
    let table = token_table(
        input.cache.backend(),
        input.plan.host_table(),
        &rows,
        &input.shape.layout,
    )?;
    Ok(Selection::Pages(slot.insert(table), kind))
}

/// `softmax(scale * logits)` over `logits`, in f64 for a stable ranking.
fn softmax(logits: impl Iterator<Item = f32>, scale: f32) -> Vec<f64> {
    let l: Vec<f64> = logits.map(|x| (x * scale) as f64).collect();
    let max = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = l.iter().map(|x| (x - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|x| x / sum).collect()
}

/// `q·k` of every query head for every token of `table` (one-token pages), `[hq][nnz]`.
fn exact_logits<B: Backend, T: Half>(
    input: &SelectInput<'_, B, T>,
    table: &DevicePageTable<B>,
) -> Result<Vec<f32>> {
    let backend = input.cache.backend();
    let mut scores = backend.zeros::<f32>(input.shape.num_qo_heads * table.nnz())?;
    backend.estimate_pages(
        input.q,
        input.cache.bounds(input.layer)?,
        input.shape,
        table,
        &mut scores,
    )?;
    Ok(backend.download(&scores)?)
}

// ---- StreamingLLM -------------------------------------------------------------------------------

/// StreamingLLM: the first 4 tokens (attention sinks) and the most recent `budget - 4`.
pub struct StreamingLlm<B: Backend> {
    pub budget: usize,
    pub skip_layers: usize,
    table: Option<DevicePageTable<B>>,
}

impl<B: Backend> StreamingLlm<B> {
    pub fn new(budget: usize, skip_layers: usize) -> Self {
        StreamingLlm {
            budget: budget.max(SINK_TOKENS + 1),
            skip_layers,
            table: None,
        }
    }
}

impl<B: Backend, T: Half> KvPolicy<B, T> for StreamingLlm<B> {
    fn name(&self) -> String {
        format!("streaming(budget={})", self.budget)
    }

    fn select<'s>(&'s mut self, input: SelectInput<'_, B, T>) -> Result<Selection<'s, B>> {
        require_token_pages("StreamingLLM", &input)?;
        let lens = row_lens(&input.plan.table().indptr_host);
        if input.layer < self.skip_layers || lens.iter().all(|&n| n <= self.budget) {
            return Ok(Selection::Dense);
        }
        // The same tokens on every layer of a step: build the table on the first sparse layer.
        if input.layer == self.skip_layers || self.table.is_none() {
            let recent = self.budget - SINK_TOKENS;
            let kept: Vec<Vec<u32>> = lens
                .iter()
                .map(|&n| {
                    if n <= self.budget {
                        (0..n as u32).collect()
                    } else {
                        (0..SINK_TOKENS as u32)
                            .chain((n - recent) as u32..n as u32)
                            .collect()
                    }
                })
                .collect();
            return select_kept(&mut self.table, &input, &kept, 1, TableRows::PerSequence);
        }
        let table = self
            .table
            .as_ref()
            .ok_or_else(|| ModelError::Argument("no StreamingLLM table".into()))?;
        Ok(Selection::Pages(table, TableRows::PerSequence))
    }
}

// ---- H2O ----------------------------------------------------------------------------------------

/// Per sequence and layer: for each query head, the kept positions and their accumulated
/// attention.
type HeadState = Vec<(Vec<u32>, Vec<f64>)>;

/// H2O: per query head, the most recent `budget/2` tokens plus the `budget - budget/2` "heavy
/// hitters" with the largest attention accumulated over the decode steps they were kept for.
pub struct H2o<B: Backend> {
    pub budget: usize,
    pub skip_layers: usize,
    state: HashMap<(SeqId, usize), HeadState>,
    table: Option<DevicePageTable<B>>,
}

impl<B: Backend> H2o<B> {
    pub fn new(budget: usize, skip_layers: usize) -> Self {
        H2o {
            budget: budget.max(2),
            skip_layers,
            state: HashMap::new(),
            table: None,
        }
    }
}

/// Drops the state of sequences that left the cache.
fn prune<V, B: Backend, T: Half>(
    state: &mut HashMap<(SeqId, usize), V>,
    input: &SelectInput<'_, B, T>,
) {
    if input.layer == 0 {
        state.retain(|(s, _), _| input.cache.seq_len(*s).is_ok());
    }
}

impl<B: Backend, T: Half> KvPolicy<B, T> for H2o<B> {
    fn name(&self) -> String {
        format!("h2o(budget={})", self.budget)
    }

    /// Ranks tokens by exact `q·k`, which one-token pages give only with full bounds (max = min
    /// = k).
    fn bounds_format(&self) -> Option<BoundsFormat> {
        Some(BoundsFormat::Full)
    }

    fn select<'s>(&'s mut self, input: SelectInput<'_, B, T>) -> Result<Selection<'s, B>> {
        require_token_pages("H2O", &input)?;
        prune(&mut self.state, &input);
        let lens = row_lens(&input.plan.table().indptr_host);
        if input.layer < self.skip_layers {
            return Ok(Selection::Dense);
        }
        let hq = input.shape.num_qo_heads;
        let scale = input.shape.sm_scale;
        // Every head's kept set (plus the new token) of every sequence, as one row per head.
        let mut kept_rows: Vec<Vec<u32>> = Vec::with_capacity(lens.len() * hq);
        for (b, &n) in lens.iter().enumerate() {
            let seq = input.plan.seqs()[b];
            let heads = self
                .state
                .entry((seq, input.layer))
                .or_insert_with(|| vec![((0..n as u32).collect(), vec![0.0; n]); hq]);
            for (kept, acc) in heads.iter_mut() {
                // Tokens appended since the last step (one in decode) join the kept set.
                let newest = kept.last().map_or(0, |&p| p as usize + 1);
                for p in newest..n {
                    kept.push(p as u32);
                    acc.push(0.0);
                }
                kept_rows.push(kept.clone());
            }
        }
        // Score each head's kept tokens with the current query (one estimate over the union of
        // each sequence's kept sets), accumulate, evict to the budget.
        let logits = exact_logits(&input, &per_seq_union(&input, &kept_rows, hq)?)?;
        let union = union_positions(&kept_rows, hq);
        let total: usize = union.iter().map(Vec::len).sum();
        let mut offsets = vec![0usize];
        for u in &union {
            offsets.push(offsets.last().copied().unwrap_or(0) + u.len());
        }
        let mut new_rows: Vec<Vec<u32>> = Vec::with_capacity(kept_rows.len());
        for (b, _) in lens.iter().enumerate() {
            let seq = input.plan.seqs()[b];
            let heads = self
                .state
                .get_mut(&(seq, input.layer))
                .ok_or_else(|| ModelError::Argument("H2O lost its state".into()))?;
            for (h, (kept, acc)) in heads.iter_mut().enumerate() {
                let logit = |p: u32| -> f32 {
                    let j = union[b].binary_search(&p).unwrap_or(0);
                    logits[h * total + offsets[b] + j]
                };
                let probs = softmax(kept.iter().map(|&p| logit(p)), scale);
                for (a, p) in acc.iter_mut().zip(&probs) {
                    *a += p;
                }
                if kept.len() > self.budget {
                    evict_h2o(kept, acc, self.budget);
                }
                new_rows.push(kept.clone());
            }
        }
        select_kept(&mut self.table, &input, &new_rows, hq, TableRows::PerQoHead)
    }
}

/// Keeps the `budget/2` most recent positions and the best of the rest by accumulated attention
/// (ties to the earlier token), preserving position order.
fn evict_h2o(kept: &mut Vec<u32>, acc: &mut Vec<f64>, budget: usize) {
    let recent = budget / 2;
    let heavy = budget - recent;
    let n = kept.len();
    let older = n - recent;
    let mut order: Vec<usize> = (0..older).collect();
    order.sort_by(|&a, &b| acc[b].total_cmp(&acc[a]).then(a.cmp(&b)));
    order.truncate(heavy);
    order.sort_unstable();
    order.extend(older..n);
    *kept = order.iter().map(|&i| kept[i]).collect();
    *acc = order.iter().map(|&i| acc[i]).collect();
}

/// Per sequence, the sorted union of its heads' kept positions.
fn union_positions(kept_rows: &[Vec<u32>], hq: usize) -> Vec<Vec<u32>> {
    kept_rows
        .chunks(hq)
        .map(|heads| {
            let mut u: Vec<u32> = heads.iter().flatten().copied().collect();
            u.sort_unstable();
            u.dedup();
            u
        })
        .collect()
}

/// A per-sequence table over the union of each sequence's kept positions.
fn per_seq_union<B: Backend, T: Half>(
    input: &SelectInput<'_, B, T>,
    kept_rows: &[Vec<u32>],
    hq: usize,
) -> Result<DevicePageTable<B>> {
    let union = union_positions(kept_rows, hq);
    let rows: Vec<(usize, &[u32])> = union.iter().enumerate().map(|(b, u)| (b, &u[..])).collect();
    token_table(
        input.cache.backend(),
        input.plan.host_table(),
        &rows,
        &input.shape.layout,
    )
}

// ---- TOVA ---------------------------------------------------------------------------------------

/// TOVA: keep `budget` tokens; whenever there are more, evict those with the lowest attention of
/// the current query, averaged over the layer's heads.
pub struct Tova<B: Backend> {
    pub budget: usize,
    pub skip_layers: usize,
    state: HashMap<(SeqId, usize), Vec<u32>>,
    table: Option<DevicePageTable<B>>,
}

impl<B: Backend> Tova<B> {
    pub fn new(budget: usize, skip_layers: usize) -> Self {
        Tova {
            budget: budget.max(1),
            skip_layers,
            state: HashMap::new(),
            table: None,
        }
    }
}

impl<B: Backend, T: Half> KvPolicy<B, T> for Tova<B> {
    fn name(&self) -> String {
        format!("tova(budget={})", self.budget)
    }

    /// Ranks tokens by exact `q·k`, which one-token pages give only with full bounds (max = min
    /// = k).
    fn bounds_format(&self) -> Option<BoundsFormat> {
        Some(BoundsFormat::Full)
    }

    fn select<'s>(&'s mut self, input: SelectInput<'_, B, T>) -> Result<Selection<'s, B>> {
        require_token_pages("TOVA", &input)?;
        prune(&mut self.state, &input);
        let lens = row_lens(&input.plan.table().indptr_host);
        if input.layer < self.skip_layers {
            return Ok(Selection::Dense);
        }
        let hq = input.shape.num_qo_heads;
        let plan_table = input.plan.host_table();
        let mut kept_rows: Vec<Vec<u32>> = Vec::with_capacity(lens.len());
        for (b, &n) in lens.iter().enumerate() {
            let kept = self
                .state
                .entry((input.plan.seqs()[b], input.layer))
                .or_insert_with(|| (0..n as u32).collect());
            let newest = kept.last().map_or(0, |&p| p as usize + 1);
            kept.extend(newest as u32..n as u32);
            kept_rows.push(kept.clone());
        }
        if kept_rows.iter().any(|k| k.len() > self.budget) {
            let rows: Vec<(usize, &[u32])> = kept_rows
                .iter()
                .enumerate()
                .map(|(b, k)| (b, &k[..]))
                .collect();
            let table = token_table(
                input.cache.backend(),
                plan_table,
                &rows,
                &input.shape.layout,
            )?;
            let logits = exact_logits(&input, &table)?;
            let nnz = table.nnz();
            let mut start = 0;
            for (b, kept) in kept_rows.iter_mut().enumerate() {
                let n = kept.len();
                if n > self.budget {
                    // Mean over heads of each head's softmax over the kept tokens.
                    let mut mean = vec![0f64; n];
                    for h in 0..hq {
                        let row = &logits[h * nnz + start..h * nnz + start + n];
                        for (m, p) in mean
                            .iter_mut()
                            .zip(softmax(row.iter().copied(), input.shape.sm_scale))
                        {
                            *m += p / hq as f64;
                        }
                    }
                    // The newest token is the query's own: never evict it.
                    mean[n - 1] = f64::INFINITY;
                    let mut order: Vec<usize> = (0..n).collect();
                    order.sort_by(|&a, &b| mean[b].total_cmp(&mean[a]).then(a.cmp(&b)));
                    order.truncate(self.budget);
                    order.sort_unstable();
                    *kept = order.iter().map(|&i| kept[i]).collect();
                    self.state
                        .insert((input.plan.seqs()[b], input.layer), kept.clone());
                }
                start += n;
            }
        }
        select_kept(
            &mut self.table,
            &input,
            &kept_rows,
            1,
            TableRows::PerSequence,
        )
    }
}
