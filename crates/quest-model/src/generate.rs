//! Generation: prefill the prompts (in chunks), then decode one token per sequence per step with
//! the chosen policy and sampler, until EOS or the token limit.

use std::time::{Duration, Instant};

use quest_kernels::{Backend, Half, SamplingParams};
use quest_kvcache::{KvCache, SeqId};

use crate::error::{ModelError, Result};
use crate::llama::{Llama, ReadStats};
use crate::policy::KvPolicy;

/// Options of [`generate`].
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateParams {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    pub seed: u64,
    /// Stop a sequence at any of these tokens (the token itself is kept in the output).
    pub stop_tokens: Vec<u32>,
    /// Prompt tokens per prefill pass; bounds the activations' memory.
    pub prefill_chunk: usize,
    /// The last this-many prompt tokens go through the decode path one at a time (so the policy
    /// decides what they attend to), as the passkey evaluation needs; 0 prefills the whole prompt.
    pub decode_prompt_tail: usize,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_new_tokens: 64,
            sampling: SamplingParams {
                temperature: 0.0,
                top_p: 1.0,
            },
            seed: 0,
            stop_tokens: Vec::new(),
            prefill_chunk: 512,
            decode_prompt_tail: 0,
        }
    }
}

/// What one prompt produced.
#[derive(Clone, Debug, Default)]
pub struct Generation {
    pub tokens: Vec<u32>,
    /// Set when this sequence stopped with an error (e.g. the KV pool was full); the others go on.
    pub error: Option<String>,
}

/// Timings and cache traffic of a [`generate`] call.
#[derive(Clone, Debug, Default)]
pub struct GenerateStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
    pub decode_steps: usize,
    /// Summed over decode steps.
    pub decode_reads: ReadStats,
    /// KV pages in use when generation ended (before the sequences were freed).
    pub pages_in_use: usize,
}

/// SplitMix64: a small, seeded, reproducible source of uniforms for sampling.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Hooks into a [`generate`] call. A closure `FnMut(prompt_index, token)` is an observer that
/// only sees tokens.
pub trait GenerateObserver {
    /// Prompt tokens prefilled so far, over all prompts.
    fn prefill_progress(&mut self, _done: usize, _total: usize) {}
    /// Token `token` was chosen for prompt `prompt`.
    fn token(&mut self, prompt: usize, token: u32);
}

impl<F: FnMut(usize, u32)> GenerateObserver for F {
    fn token(&mut self, prompt: usize, token: u32) {
        self(prompt, token)
    }
}

/// Generates a continuation of each prompt, telling `observer` of each token as it is chosen. Sequences are added to `cache` and removed at the end. A sequence that fails (pool
/// full) stops with its error recorded; the others continue.
pub fn generate<B: Backend, W: Half>(
    model: &Llama<B, W>,
    cache: &mut KvCache<B, W>,
    policy: &mut dyn KvPolicy<B, W>,
    prompts: &[Vec<u32>],
    params: &GenerateParams,
    observer: impl GenerateObserver,
) -> Result<(Vec<Generation>, GenerateStats)> {
    let context = model.config().max_position_embeddings;
    for p in prompts {
        if p.is_empty() {
            return Err(ModelError::Argument("empty prompt".into()));
        }
        if p.len() + params.max_new_tokens > context {
            return Err(ModelError::PromptTooLong {
                tokens: p.len(),
                new: params.max_new_tokens,
                context,
            });
        }
        // Checked here, before any sequence is added, so a bad id stores nothing.
        let vocab = model.config().vocab_size;
        if let Some(&bad) = p.iter().find(|&&t| t as usize >= vocab) {
            return Err(ModelError::Argument(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
    }
    if params.prefill_chunk == 0 {
        return Err(ModelError::Argument("prefill_chunk must be > 0".into()));
    }
    let seqs: Vec<SeqId> = prompts.iter().map(|_| cache.add_sequence()).collect();
    let result = generate_on(model, cache, policy, prompts, params, observer, &seqs);
    // The sequences leave the cache however generation ended, so an error loses no pages.
    for &s in &seqs {
        cache.remove_sequence(s)?;
    }
    result
}

/// The body of [`generate`] for sequences already added to the cache (and removed by the caller).
fn generate_on<B: Backend, W: Half>(
    model: &Llama<B, W>,
    cache: &mut KvCache<B, W>,
    policy: &mut dyn KvPolicy<B, W>,
    prompts: &[Vec<u32>],
    params: &GenerateParams,
    mut observer: impl GenerateObserver,
    seqs: &[SeqId],
) -> Result<(Vec<Generation>, GenerateStats)> {
    let backend = model.backend().clone();
    let vocab = model.config().vocab_size;
    let mut rng = SplitMix64::new(params.seed);
    let mut stats = GenerateStats {
        prompt_tokens: prompts.iter().map(Vec::len).sum(),
        ..Default::default()
    };
    let mut out: Vec<Generation> = vec![Generation::default(); prompts.len()];
    let mut alive: Vec<usize> = (0..prompts.len()).collect();
    let mut last_logits: Vec<Vec<f32>> = vec![Vec::new(); prompts.len()];

    // Prefill, chunk by chunk; all sequences advance together while they have prompt left. Then
    // the prompt tail, if any, one token per sequence per step: decode steps.
    let t0 = Instant::now();
    let mut done = vec![0usize; prompts.len()];
    let tail_start: Vec<usize> = prompts
        .iter()
        .map(|p| p.len() - params.decode_prompt_tail.min(p.len() - 1))
        .collect();
    let all_of: Vec<usize> = prompts.iter().map(Vec::len).collect();
    for (ends, chunk) in [(&tail_start, params.prefill_chunk), (&all_of, 1)] {
        loop {
            let batch: Vec<(usize, &[u32])> = alive
                .iter()
                .filter(|&&i| done[i] < ends[i])
                .map(|&i| {
                    let end = (done[i] + chunk).min(ends[i]);
                    (i, &prompts[i][done[i]..end])
                })
                .collect();
            if batch.is_empty() {
                break;
            }
            let items: Vec<(SeqId, &[u32])> = batch.iter().map(|&(i, t)| (seqs[i], t)).collect();
            match model.forward(cache, &items, policy) {
                Ok(f) => {
                    let logits = backend.download(&f.logits)?;
                    for (row, &(i, t)) in batch.iter().enumerate() {
                        done[i] += t.len();
                        observer.prefill_progress(done.iter().sum(), stats.prompt_tokens);
                        last_logits[i] = logits[row * vocab..(row + 1) * vocab].to_vec();
                    }
                }
                Err(ModelError::CacheFull { seq, source }) => {
                    let i = seqs.iter().position(|&s| s == seq);
                    if let Some(i) = i {
                        out[i].error = Some(source.to_string());
                    }
                    alive.retain(|&a| Some(a) != i);
                }
                Err(e) => return Err(e),
            }
        }
    }
    stats.prefill_time = t0.elapsed();

    // Decode.
    let t1 = Instant::now();
    let mut next: Vec<u32> = vec![0; prompts.len()];
    for &i in &alive {
        next[i] = sample_one(&backend, &last_logits[i], vocab, params, &mut rng)?;
    }
    loop {
        // Record the chosen tokens; drop finished sequences.
        alive.retain(|&i| {
            out[i].tokens.push(next[i]);
            observer.token(i, next[i]);
            stats.generated_tokens += 1;
            !(params.stop_tokens.contains(&next[i]) || out[i].tokens.len() >= params.max_new_tokens)
        });
        if alive.is_empty() {
            break;
        }
        let Some(f) = decode_step(model, cache, policy, seqs, &mut alive, &next, &mut out)? else {
            break;
        };
        stats.decode_steps += 1;
        stats.decode_reads.accumulate(&f.stats);
        let uniforms: Vec<f32> = alive.iter().map(|_| rng.next_f32()).collect();
        let mut chosen = backend.zeros::<u32>(alive.len())?;
        backend.sample(
            &f.logits,
            vocab,
            params.sampling,
            &backend.upload(&uniforms)?,
            &mut chosen,
        )?;
        for (&i, t) in alive.iter().zip(backend.download(&chosen)?) {
            next[i] = t;
        }
    }
    stats.decode_time = t1.elapsed();
    stats.pages_in_use = cache.pages_in_use();
    Ok((out, stats))
}

/// One decode step over the `alive` sequences. A sequence the pool cannot grow is dropped with
/// its error recorded and the step retried for the rest; `None` when none is left.
fn decode_step<B: Backend, W: Half>(
    model: &Llama<B, W>,
    cache: &mut KvCache<B, W>,
    policy: &mut dyn KvPolicy<B, W>,
    seqs: &[SeqId],
    alive: &mut Vec<usize>,
    next: &[u32],
    out: &mut [Generation],
) -> Result<Option<crate::llama::Forward<B>>> {
    while !alive.is_empty() {
        let toks: Vec<[u32; 1]> = alive.iter().map(|&i| [next[i]]).collect();
        let items: Vec<(SeqId, &[u32])> = alive
            .iter()
            .zip(&toks)
            .map(|(&i, t)| (seqs[i], &t[..]))
            .collect();
        match model.forward(cache, &items, policy) {
            Ok(f) => return Ok(Some(f)),
            Err(ModelError::CacheFull { seq, source }) => {
                let i = seqs.iter().position(|&s| s == seq);
                if let Some(i) = i {
                    out[i].error = Some(source.to_string());
                }
                alive.retain(|&a| Some(a) != i);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

fn sample_one<B: Backend>(
    backend: &B,
    logits: &[f32],
    vocab: usize,
    params: &GenerateParams,
    rng: &mut SplitMix64,
) -> Result<u32> {
    let mut out = backend.zeros::<u32>(1)?;
    backend.sample(
        &backend.upload(logits)?,
        vocab,
        params.sampling,
        &backend.upload(&[rng.next_f32()])?,
        &mut out,
    )?;
    Ok(backend.download(&out)?[0])
}
