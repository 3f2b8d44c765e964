//! Perplexity of a long text through the decode path: windows of the tokenized text are fed one
//! token per step (a batch of windows per step), so every prediction is made by a decode step whose
//! attention the [`KvPolicy`] chose, and the negative log-likelihood of each next token is taken
//! from that step's logits (log-softmax in f64 on the host).
//!
//! An optional dense prefix (`PplOptions::prefill`) is prefilled instead; its tokens are context
//! only (a prefill returns the logits of its last token alone), so the scored tokens are those
//! after it.

use std::path::Path;

use quest_kernels::{Backend, Half};
use quest_kvcache::{KvCache, SeqId};
use rayon::prelude::*;

use crate::error::{ModelError, Result};
use crate::llama::Llama;
use crate::policy::KvPolicy;

/// Reads a UTF-8 text file; a missing file or one that is not UTF-8 is an error naming it.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| ModelError::NotUtf8 {
        path: path.to_path_buf(),
        offset: e.utf8_error().valid_up_to(),
    })
}

/// `count` windows of `length` tokens, window `i` starting at `i * (tokens.len() / count)`: one
/// from the start of each `count`-th part of the text, so they never overlap.
pub fn text_windows(tokens: &[u32], length: usize, count: usize) -> Result<Vec<&[u32]>> {
    if length < 2 || count == 0 {
        return Err(ModelError::Argument(format!(
            "perplexity needs windows of at least 2 tokens and at least one window \
             (got length {length}, {count} windows)"
        )));
    }
    let needed = length.saturating_mul(count);
    if tokens.len() < needed {
        return Err(ModelError::TextTooShort {
            tokens: tokens.len(),
            length,
            windows: count,
        });
    }
    let stride = tokens.len() / count;
    Ok((0..count)
        .map(|i| &tokens[i * stride..i * stride + length])
        .collect())
}

/// Options of [`run_ppl`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PplOptions {
    /// Tokens per KV page (1 for the token-level baselines).
    pub page_size: usize,
    /// The first this-many tokens of each window are prefilled densely (context, not scored);
    /// 0 feeds every token through the decode path.
    pub prefill: usize,
    /// Tokens per prefill pass.
    pub prefill_chunk: usize,
}

impl PplOptions {
    /// Every token through the decode path, on pages of `page_size`.
    pub fn new(page_size: usize) -> Self {
        PplOptions {
            page_size,
            prefill: 0,
            prefill_chunk: 512,
        }
    }
}

/// The negative log-likelihoods of a [`run_ppl`] call.
#[derive(Clone, Debug, PartialEq)]
pub struct Perplexity {
    /// Tokens per window.
    pub length: usize,
    /// Position (in the window) of the first predicted token: `max(prefill, 1)`.
    pub first: usize,
    /// `nll[w][i]`: the NLL in nats of token `first + i` of window `w`.
    pub nll: Vec<Vec<f64>>,
}

impl Perplexity {
    /// Predicted tokens, over all windows.
    pub fn tokens(&self) -> usize {
        self.nll.iter().map(Vec::len).sum()
    }

    /// `exp(mean NLL)` over the predictions of tokens at positions `from..to` of every window.
    pub fn ppl_range(&self, from: usize, to: usize) -> f64 {
        let lo = from.max(self.first) - self.first;
        let hi = to.min(self.length).max(self.first) - self.first;
        let (mut sum, mut n) = (0.0, 0usize);
        for w in &self.nll {
            if lo < hi {
                sum += w[lo..hi].iter().sum::<f64>();
                n += hi - lo;
            }
        }
        if n == 0 {
            f64::NAN
        } else {
            (sum / n as f64).exp()
        }
    }

    /// Perplexity over every predicted token.
    pub fn ppl(&self) -> f64 {
        self.ppl_range(0, self.length)
    }

    /// Perplexity over the second half of each window (positions `length/2..`), where the
    /// context is longest and a sparse policy drops the most.
    pub fn ppl_last_half(&self) -> f64 {
        self.ppl_range(self.length / 2, self.length)
    }

    /// Perplexity of each window alone.
    pub fn window_ppl(&self) -> Vec<f64> {
        self.nll
            .iter()
            .map(|w| (w.iter().sum::<f64>() / w.len() as f64).exp())
            .collect()
    }

    /// `(start, ppl)` over consecutive position ranges of `size` tokens, all windows together.
    pub fn segment_ppl(&self, size: usize) -> Vec<(usize, f64)> {
        let size = size.max(1);
        (0..self.length.div_ceil(size))
            .map(|s| (s * size, self.ppl_range(s * size, (s + 1) * size)))
            .filter(|(_, p)| !p.is_nan())
            .collect()
    }
}

/// NLL (nats) of `target` under the logits `row`: `logsumexp(row) - row[target]`, in f64.
pub fn token_nll(row: &[f32], target: u32) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    match row.get(target as usize) {
        Some(&t) => max + sum.ln() - t as f64,
        None => f64::NAN,
    }
}

/// Feeds `windows` (all of one length, run as one batch of sequences) through `model` with
/// `policy` and returns the NLL of every next token. `progress(done, total)` is told of each
/// forward pass. The policy should be fresh: the baselines key their state by sequence id, and ids
/// restart with each cache.
pub fn run_ppl<B: Backend, W: Half>(
    model: &Llama<B, W>,
    policy: &mut dyn KvPolicy<B, W>,
    windows: &[&[u32]],
    opts: &PplOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<Perplexity> {
    let Some(length) = windows.first().map(|w| w.len()) else {
        return Err(ModelError::Argument(
            "perplexity needs at least one window".into(),
        ));
    };
    if length < 2 || windows.iter().any(|w| w.len() != length) {
        return Err(ModelError::Argument(
            "perplexity windows must all have the same length, at least 2 tokens".into(),
        ));
    }
    if opts.page_size == 0 || opts.prefill_chunk == 0 {
        return Err(ModelError::Argument(
            "page_size and prefill_chunk must be positive".into(),
        ));
    }
    if opts.prefill >= length {
        return Err(ModelError::Argument(format!(
            "a dense prefix of {} tokens leaves nothing to predict in windows of {length}",
            opts.prefill
        )));
    }
    let context = model.config().max_position_embeddings;
    // The last token of a window is only predicted, never fed.
    if length - 1 > context {
        return Err(ModelError::PromptTooLong {
            tokens: length - 1,
            new: 0,
            context,
        });
    }
    let vocab = model.config().vocab_size;
    if let Some(&bad) = windows
        .iter()
        .flat_map(|w| w.iter())
        .find(|&&t| t as usize >= vocab)
    {
        return Err(ModelError::Argument(format!(
            "token id {bad} is outside the vocabulary of {vocab}"
        )));
    }

    let pages = windows.len() * (length.div_ceil(opts.page_size) + 1);
    let mut cache =
        KvCache::<B, W>::new(model.backend(), model.cache_config(pages, opts.page_size))?;
    let seqs: Vec<SeqId> = windows.iter().map(|_| cache.add_sequence()).collect();
    let first = opts.prefill.max(1);
    let mut nll: Vec<Vec<f64>> = vec![Vec::with_capacity(length - first); windows.len()];
    let prefill_passes = opts.prefill.div_ceil(opts.prefill_chunk);
    let total = prefill_passes + (length - 1 - opts.prefill);
    let mut passes = 0;

    // Feeds tokens `from..to` of every window; when `to` is the position of a token to predict,
    // scores it with the logits of the pass.
    let mut feed = |cache: &mut KvCache<B, W>, from: usize, to: usize| -> Result<()> {
        let batch: Vec<(SeqId, &[u32])> = seqs
            .iter()
            .zip(windows)
            .map(|(&s, w)| (s, &w[from..to]))
            .collect();
        let f = model.forward(cache, &batch, policy)?;
        if to >= first {
            let logits = model.backend().download(&f.logits)?;
            let scored: Vec<f64> = logits
                .par_chunks(vocab)
                .zip(windows.par_iter())
                .map(|(row, w)| token_nll(row, w[to]))
                .collect();
            for (wi, (out, x)) in nll.iter_mut().zip(scored).enumerate() {
                if !x.is_finite() {
                    return Err(ModelError::NonFinite(format!(
                        "logits (window {wi}, predicting position {to})"
                    )));
                }
                out.push(x);
            }
        }
        passes += 1;
        progress(passes, total);
        Ok(())
    };
    let mut done = 0;
    while done < opts.prefill {
        let to = (done + opts.prefill_chunk).min(opts.prefill);
        feed(&mut cache, done, to)?;
        done = to;
    }
    while done < length - 1 {
        feed(&mut cache, done, done + 1)?;
        done += 1;
    }
    Ok(Perplexity { length, first, nll })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_nll_is_the_log_softmax() {
        let row = [1.0f32, 2.0, 3.0];
        let z: f64 = row.iter().map(|&x| (x as f64).exp()).sum();
        for t in 0..3 {
            let want = z.ln() - row[t] as f64;
            assert!((token_nll(&row, t as u32) - want).abs() < 1e-12);
        }
        assert!(token_nll(&row, 3).is_nan());
        assert!(token_nll(&[f32::NAN, 1.0], 1).is_nan());
        assert!(!token_nll(&[f32::INFINITY, 1.0], 1).is_finite());
    }

    #[test]
    fn windows_are_spread_and_a_short_text_is_refused() {
        let toks: Vec<u32> = (0..100).collect();
        let w = text_windows(&toks, 10, 3).unwrap();
        assert_eq!(w.len(), 3);
        assert_eq!(w[0][0], 0);
        assert_eq!(w[1][0], 33);
        assert_eq!(w[2][0], 66);
        assert!(w.iter().all(|w| w.len() == 10));
        assert!(matches!(
            text_windows(&toks, 51, 2),
            Err(ModelError::TextTooShort {
                tokens: 100,
                length: 51,
                windows: 2
            })
        ));
        assert!(text_windows(&toks, 1, 1).is_err());
        assert!(text_windows(&toks, 10, 0).is_err());
    }

    #[test]
    fn ranges_and_segments_average_the_right_tokens() {
        let p = Perplexity {
            length: 5,
            first: 1,
            nll: vec![vec![1.0, 2.0, 3.0, 4.0], vec![1.0, 2.0, 3.0, 4.0]],
        };
        assert_eq!(p.tokens(), 8);
        assert!((p.ppl() - 2.5f64.exp()).abs() < 1e-12);
        assert!((p.ppl_last_half() - 3.0f64.exp()).abs() < 1e-12);
        assert!((p.ppl_range(0, 2) - 1.0f64.exp()).abs() < 1e-12);
        assert!(p.ppl_range(5, 9).is_nan());
        let s = p.segment_ppl(2);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].0, 0);
        assert!((s[0].1 - 1.0f64.exp()).abs() < 1e-12);
        assert!((s[2].1 - 4.0f64.exp()).abs() < 1e-12);
        assert_eq!(p.window_ppl().len(), 2);
    }
}
