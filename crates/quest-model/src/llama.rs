//! Llama, in the order of the computation: config → weights → attention → MLP → block → model.
//!
//! One [`Llama::forward`] runs the new tokens of a batch of sequences through every layer: a
//! prefill (any number of tokens per sequence, dense causal attention) or a decode step (one token
//! per sequence, attention over the pages the [`KvPolicy`] selects). K/V go into the paged
//! [`KvCache`], whose per-page key bounds are what Quest scores.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use quest_kernels::{AttentionShape, Backend, Half, RopeInput, TableRows};
use quest_kvcache::{CacheConfig, CacheError, KvCache, SeqId, StepPlan};

use crate::checkpoint::Checkpoint;
use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::policy::{KvPolicy, SelectInput, Selection};

// ---- weights ------------------------------------------------------------------------------------

/// One transformer block's weights, in PyTorch's `[out, in]` layout.
pub struct LayerWeights<B: Backend, W: Half> {
    pub attn_norm: B::Buf<W>,
    pub wq: B::Buf<W>,
    pub wk: B::Buf<W>,
    pub wv: B::Buf<W>,
    pub wo: B::Buf<W>,
    pub ffn_norm: B::Buf<W>,
    pub w_gate: B::Buf<W>,
    pub w_up: B::Buf<W>,
    pub w_down: B::Buf<W>,
}

/// All weights of the model. `lm_head` is `None` when tied to the embedding.
pub struct Weights<B: Backend, W: Half> {
    pub embed: B::Buf<W>,
    pub layers: Vec<LayerWeights<B, W>>,
    pub norm: B::Buf<W>,
    pub lm_head: Option<B::Buf<W>>,
}

impl<B: Backend, W: Half> Weights<B, W> {
    /// Loads and checks every tensor of `cfg` from a checkpoint, uploading as it goes.
    pub fn load(backend: &B, cfg: &LlamaConfig, ckpt: &Checkpoint) -> Result<Self> {
        let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (q_dim, kv_dim) = (
            cfg.num_attention_heads * cfg.head_dim(),
            cfg.num_kv_heads() * cfg.head_dim(),
        );
        let get = |name: &str, shape: &[usize]| -> Result<B::Buf<W>> {
            Ok(backend.upload(&ckpt.tensor::<W>(name, shape)?)?)
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| {
                let p = format!("model.layers.{l}");
                Ok(LayerWeights {
                    attn_norm: get(&format!("{p}.input_layernorm.weight"), &[h])?,
                    wq: get(&format!("{p}.self_attn.q_proj.weight"), &[q_dim, h])?,
                    wk: get(&format!("{p}.self_attn.k_proj.weight"), &[kv_dim, h])?,
                    wv: get(&format!("{p}.self_attn.v_proj.weight"), &[kv_dim, h])?,
                    wo: get(&format!("{p}.self_attn.o_proj.weight"), &[h, q_dim])?,
                    ffn_norm: get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                    w_gate: get(&format!("{p}.mlp.gate_proj.weight"), &[i, h])?,
                    w_up: get(&format!("{p}.mlp.up_proj.weight"), &[i, h])?,
                    w_down: get(&format!("{p}.mlp.down_proj.weight"), &[h, i])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if cfg.tie_word_embeddings && !ckpt.contains("lm_head.weight") {
            None
        } else {
            Some(get("lm_head.weight", &[v, h])?)
        };
        Ok(Weights {
            embed: get("model.embed_tokens.weight", &[v, h])?,
            layers,
            norm: get("model.norm.weight", &[h])?,
            lm_head,
        })
    }
}

// ---- model --------------------------------------------------------------------------------------

/// Bytes a step's attention read from the cache, against what dense attention would read.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ReadStats {
    /// K and V bytes the attention kernel read, summed over layers, except the pages of
    /// adaptive selections ([`Selection::Adaptive`]), which only the policy counts (on the
    /// device, see [`ReadStats::kv_bytes_with`]).
    pub kv_bytes: usize,
    /// Page-bound bytes the selection read, summed over layers.
    pub bounds_bytes: usize,
    /// K and V bytes dense attention reads over the same cache.
    pub dense_kv_bytes: usize,
    /// Slots of adaptive selections (an upper bound of their pages: empty slots read nothing).
    pub adaptive_slots: usize,
    /// K and V bytes of one page of one row (`page_size` tokens of one KV head).
    pub page_kv_bytes: usize,
}

impl ReadStats {
    /// Adds another step's counts.
    pub fn accumulate(&mut self, other: &ReadStats) {
        self.kv_bytes += other.kv_bytes;
        self.bounds_bytes += other.bounds_bytes;
        self.dense_kv_bytes += other.dense_kv_bytes;
        self.adaptive_slots += other.adaptive_slots;
        self.page_kv_bytes = self.page_kv_bytes.max(other.page_kv_bytes);
    }

    /// K and V bytes read, the adaptive selections' `pages` (from the policy's
    /// [`KvPolicy::page_reads`] over the same steps) included.
    pub fn kv_bytes_with(&self, adaptive_pages: u64) -> usize {
        self.kv_bytes + adaptive_pages as usize * self.page_kv_bytes
    }

    /// K and V bytes read with every adaptive slot counted as a full page: an upper bound,
    /// exact when no selection was adaptive.
    pub fn kv_bytes_upper(&self) -> usize {
        self.kv_bytes + self.adaptive_slots * self.page_kv_bytes
    }
}

/// The output of one forward pass.
pub struct Forward<B: Backend> {
    /// `[batch, vocab]`: the logits of each sequence's last new token.
    pub logits: B::Buf<f32>,
    pub stats: ReadStats,
}

/// A Llama model on backend `B` with weights (and KV cache) stored as `W`.
pub struct Llama<B: Backend, W: Half> {
    config: LlamaConfig,
    backend: B,
    weights: Weights<B, W>,
    inv_freq: B::Buf<f32>,
    /// The activation buffers of the last forward pass, reused by the next one of the same width
    /// (every decode step of a batch), so a decode step allocates only its logits.
    workspace: Mutex<Option<Scratch<B>>>,
    /// Whether `workspace` is kept between passes (see [`Llama::set_workspace_reuse`]).
    reuse_workspace: AtomicBool,
}

/// Activations of one forward pass, `n` tokens wide, for `rows` sequences.
struct Scratch<B: Backend> {
    n: usize,
    rows: usize,
    tokens: B::Buf<u32>,
    x_last: B::Buf<f32>,
    x: B::Buf<f32>,
    q: B::Buf<f32>,
    k: B::Buf<f32>,
    v: B::Buf<f32>,
    attn: B::Buf<f32>,
    act: B::Buf<f32>,
}

impl<B: Backend, W: Half> Llama<B, W> {
    /// Loads `config.json` and the safetensors of a checkpoint directory.
    pub fn load(backend: &B, dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::Argument(format!(
                "model directory {} does not exist",
                dir.display()
            )));
        }
        let config = LlamaConfig::from_file(&dir.join("config.json"))?;
        let ckpt = Checkpoint::open(dir)?;
        let weights = Weights::load(backend, &config, &ckpt)?;
        Self::new(backend, config, weights)
    }

    pub fn new(backend: &B, config: LlamaConfig, weights: Weights<B, W>) -> Result<Self> {
        config.validate()?;
        let inv_freq = backend.upload(&config.rope().inv_freq())?;
        Ok(Llama {
            config,
            backend: backend.clone(),
            weights,
            inv_freq,
            workspace: Mutex::new(None),
            reuse_workspace: AtomicBool::new(true),
        })
    }

    /// Keep the activation buffers between forward passes (the default), or allocate them afresh
    /// in every pass (for measuring what the reuse saves).
    pub fn set_workspace_reuse(&self, on: bool) {
        self.reuse_workspace.store(on, Ordering::Relaxed);
        if !on {
            *self.workspace.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// Activation buffers for `n` tokens of `rows` sequences: the cached ones when they have that
    /// shape, else fresh ones (the cache is refilled when the pass ends).
    fn take_scratch(&self, n: usize, rows: usize) -> Result<Scratch<B>> {
        let cached = self
            .workspace
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(s) = cached.filter(|s| s.n == n && s.rows == rows) {
            return Ok(s);
        }
        let b = &self.backend;
        let c = &self.config;
        let (hidden, hd) = (c.hidden_size, c.head_dim());
        let (q_dim, kv_dim) = (c.num_attention_heads * hd, c.num_kv_heads() * hd);
        Ok(Scratch {
            n,
            rows,
            tokens: b.zeros(n)?,
            x_last: b.zeros(rows * hidden)?,
            x: b.zeros(n * hidden)?,
            q: b.zeros(n * q_dim)?,
            k: b.zeros(n * kv_dim)?,
            v: b.zeros(n * kv_dim)?,
            attn: b.zeros(n * q_dim)?,
            act: b.zeros(n * c.intermediate_size)?,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// A cache for this model holding `num_pages` pages of `page_size` tokens.
    pub fn cache_config(&self, num_pages: usize, page_size: usize) -> CacheConfig {
        CacheConfig {
            num_layers: self.config.num_hidden_layers,
            num_kv_heads: self.config.num_kv_heads(),
            head_dim: self.config.head_dim(),
            page_size,
            num_pages,
        }
    }

    fn attention_shape(&self, cache: &KvCache<B, W>) -> AttentionShape {
        AttentionShape {
            num_qo_heads: self.config.num_attention_heads,
            layout: *cache.layout(),
            sm_scale: 1.0 / (self.config.head_dim() as f32).sqrt(),
        }
    }

    // ---- attention ------------------------------------------------------------------------------

    /// `s.x += attention(rms_norm(s.x)) @ Wo` for one layer; appends this layer's K/V.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: usize,
        w: &LayerWeights<B, W>,
        s: &mut Scratch<B>,
        cache: &mut KvCache<B, W>,
        plan: &StepPlan<B>,
        policy: &mut dyn KvPolicy<B, W>,
        decode: bool,
        stats: &mut ReadStats,
    ) -> Result<()> {
        let b = &self.backend;
        let c = &self.config;
        let n = plan.num_tokens();
        let (hidden, hd) = (c.hidden_size, c.head_dim());
        let q_dim = c.num_attention_heads * hd;
        let shape = self.attention_shape(cache);
        // q, k, v = rope(attn_norm(x) @ [Wq, Wk, Wv]): one pass over the three weights (one
        // launch when decoding, with the norm and the rotation folded in).
        let rope = RopeInput {
            positions: plan.positions_device(),
            inv_freq: &self.inv_freq,
            head_dim: hd,
        };
        b.qkv_projection(
            &s.x,
            &w.attn_norm,
            c.rms_norm_eps,
            [&w.wq, &w.wk, &w.wv],
            n,
            hidden,
            [&mut s.q, &mut s.k, &mut s.v],
            &rope,
        )?;
        // A policy whose selection ignores the pages this step writes selects while the append
        // and bounds update run beside it, on a branch: the selection (estimate, top-k: a chain
        // of short kernels) is the step's critical path, so it stays on the main stream, chained
        // to the projection before it and the attention after it without a cross-stream wait.
        let early = decode && policy.selects_before_append(layer);
        let mut early_selection = None;
        if early {
            b.branch_begin()?;
            let written = cache.write_kv(layer, plan, &s.k, &s.v);
            let ended = b.branch_end();
            if written.is_err() || ended.is_err() {
                // Nothing queued after this may free what the branch still uses.
                let _ = b.branch_join();
            }
            ended?;
            written?;
            let selected = policy.select(SelectInput {
                layer,
                q: &s.q,
                cache,
                plan,
                shape: &shape,
            });
            b.branch_join()?; // before any error return: the plan and tables outlive the branch
            early_selection = Some(selected?);
        } else {
            cache.write_kv(layer, plan, &s.k, &s.v)?;
        }

        let elem = std::mem::size_of::<W>();
        let token_bytes = 2 * hd * elem; // one head's K and V
        let dense_tokens: usize = (0..plan.batch())
            .map(|r| plan.host_table().row_tokens(r, shape.layout.page_size))
            .sum();
        stats.dense_kv_bytes += dense_tokens * c.num_kv_heads() * token_bytes;
        if !decode {
            stats.kv_bytes += dense_tokens * c.num_kv_heads() * token_bytes;
            b.prefill_attention(
                &s.q,
                cache.kv(layer)?,
                &shape,
                plan.table(),
                plan.qo_indptr(),
                &mut s.attn,
            )?;
        } else {
            let selection = match early_selection {
                Some(selection) => selection,
                None => policy.select(SelectInput {
                    layer,
                    q: &s.q,
                    cache,
                    plan,
                    shape: &shape,
                })?,
            };
            let adaptive = matches!(selection, Selection::Adaptive(..));
            match selection {
                Selection::Dense => {
                    stats.kv_bytes += dense_tokens * c.num_kv_heads() * token_bytes;
                    b.decode_attention(
                        &s.q,
                        cache.kv(layer)?,
                        &shape,
                        plan.table(),
                        TableRows::PerSequence,
                        &mut s.attn,
                    )?;
                }
                Selection::Pages(table, rows) | Selection::Adaptive(table, rows) => {
                    // Bounds: every page of every sequence, per KV head, max and min (and the
                    // base and step of each in 8-bit bounds).
                    let page_head = cache.bounds_format().bytes_per_page_head(hd, elem);
                    stats.bounds_bytes += plan.table().nnz() * c.num_kv_heads() * page_head;
                    // A row reads its pages for each of the heads it serves... a per-query-head
                    // row serves one query head but its KV head's pages; count them once per row,
                    // as the kernel reads them. Adaptive tables may hold empty slots, which read
                    // nothing: their pages are counted by the policy, on the device.
                    let page_bytes = shape.layout.page_size * token_bytes;
                    stats.page_kv_bytes = page_bytes;
                    if adaptive {
                        stats.adaptive_slots += table.nnz();
                    } else {
                        stats.kv_bytes += table.nnz() * page_bytes;
                    }
                    b.decode_attention(&s.q, cache.kv(layer)?, &shape, table, rows, &mut s.attn)?;
                }
            }
        }
        b.matmul_add(&s.attn, &w.wo, n, q_dim, hidden, &mut s.x)?; // the residual add
        Ok(())
    }

    // ---- MLP ------------------------------------------------------------------------------------

    /// `s.x += (silu(h @ Wg) * (h @ Wu)) @ Wd` with `h = ffn_norm(s.x)`.
    fn mlp(&self, w: &LayerWeights<B, W>, s: &mut Scratch<B>, n: usize) -> Result<()> {
        let b = &self.backend;
        let c = &self.config;
        let (hidden, inter) = (c.hidden_size, c.intermediate_size);
        let eps = c.rms_norm_eps;
        b.rms_norm_swiglu(
            &s.x,
            &w.ffn_norm,
            eps,
            &w.w_gate,
            &w.w_up,
            n,
            hidden,
            &mut s.act,
        )?;
        b.matmul_add(&s.act, &w.w_down, n, inter, hidden, &mut s.x)?; // the residual add
        Ok(())
    }

    // ---- block and model ------------------------------------------------------------------------

    /// Runs the new tokens of each `(sequence, tokens)` through the model and returns the logits
    /// of each sequence's last new token. A batch of one token per sequence is a decode step
    /// (attention over the pages `policy` selects); anything else is a prefill (dense causal
    /// attention; the policy is not asked). The tokens are appended to the cache; if the pool
    /// cannot hold them, nothing is appended and the error names the sequence.
    pub fn forward(
        &self,
        cache: &mut KvCache<B, W>,
        batch: &[(SeqId, &[u32])],
        policy: &mut dyn KvPolicy<B, W>,
    ) -> Result<Forward<B>> {
        let c = &self.config;
        if batch.is_empty() || batch.iter().any(|(_, t)| t.is_empty()) {
            return Err(ModelError::Argument(
                "forward needs at least one token per sequence".into(),
            ));
        }
        for (seq, toks) in batch {
            let len = cache.seq_len(*seq)?;
            if len + toks.len() > c.max_position_embeddings {
                return Err(ModelError::PromptTooLong {
                    tokens: len + toks.len(),
                    new: 0,
                    context: c.max_position_embeddings,
                });
            }
            if let Some(&bad) = toks.iter().find(|&&t| t as usize >= c.vocab_size) {
                return Err(ModelError::Argument(format!(
                    "token id {bad} is outside the vocabulary of {}",
                    c.vocab_size
                )));
            }
        }
        if let Some(format) = policy.bounds_format() {
            cache.set_bounds_format(format)?; // a no-op unless the policy reads another format
        }
        self.reserve_all(cache, batch)?;
        let result = self.forward_reserved(cache, batch, policy);
        if result.is_err() {
            // Roll back so the cache holds only tokens whose K/V were written on every layer.
            for (seq, toks) in batch {
                let len = cache.seq_len(*seq)?;
                cache.truncate(*seq, len - toks.len())?;
            }
        }
        result
    }

    /// Reserves every sequence's new tokens, or none of them.
    fn reserve_all(&self, cache: &mut KvCache<B, W>, batch: &[(SeqId, &[u32])]) -> Result<()> {
        for (i, (seq, toks)) in batch.iter().enumerate() {
            if let Err(e) = cache.reserve(*seq, toks.len()) {
                for (done, dt) in &batch[..i] {
                    let len = cache.seq_len(*done)?;
                    cache.truncate(*done, len - dt.len())?;
                }
                return Err(match e {
                    CacheError::PoolExhausted { .. } => ModelError::CacheFull {
                        seq: *seq,
                        source: e,
                    },
                    other => other.into(),
                });
            }
        }
        Ok(())
    }

    fn forward_reserved(
        &self,
        cache: &mut KvCache<B, W>,
        batch: &[(SeqId, &[u32])],
        policy: &mut dyn KvPolicy<B, W>,
    ) -> Result<Forward<B>> {
        let b = &self.backend;
        let c = &self.config;
        let plan_input: Vec<(SeqId, usize)> = batch.iter().map(|(s, t)| (*s, t.len())).collect();
        let plan = cache.plan(&plan_input)?;
        let n = plan.num_tokens();
        let decode = batch.iter().all(|(_, t)| t.len() == 1);
        let hidden = c.hidden_size;
        let tokens: Vec<u32> = batch.iter().flat_map(|(_, t)| t.iter().copied()).collect();
        let rows = batch.len();
        let mut s = self.take_scratch(n, rows)?;
        let mut stats = ReadStats::default();

        b.write(&mut s.tokens, 0, &tokens)?;
        b.embedding(&self.weights.embed, hidden, &s.tokens, &mut s.x)?;
        // The residual stream s.x: each sub-layer reads its norm of x and adds its output back.
        for (layer, w) in self.weights.layers.iter().enumerate() {
            self.attention(layer, w, &mut s, cache, &plan, policy, decode, &mut stats)?;
            self.mlp(w, &mut s, n)?;
        }

        // logits = norm(x) @ lm_head. Only each sequence's last token needs logits. In a decode
        // step that is every row; otherwise gather those rows first.
        let head = self.weights.lm_head.as_ref().unwrap_or(&self.weights.embed);
        let mut logits = b.zeros(rows * c.vocab_size)?;
        let last_rows = if n == rows {
            &s.x
        } else {
            let last: Vec<u32> = plan.qo_indptr()[1..]
                .iter()
                .map(|&e| e as u32 - 1)
                .collect();
            b.embedding(&s.x, hidden, &b.upload(&last)?, &mut s.x_last)?;
            &s.x_last
        };
        let (norm, eps) = (&self.weights.norm, c.rms_norm_eps);
        b.rms_norm_matmul_many(
            last_rows,
            norm,
            eps,
            &[head],
            rows,
            hidden,
            &mut [&mut logits],
        )?;
        if self.reuse_workspace.load(Ordering::Relaxed) {
            *self.workspace.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
        }
        Ok(Forward { logits, stats })
    }
}
