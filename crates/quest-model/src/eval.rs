//! Pass-key retrieval (the long-context test of the Quest paper): a needle "The pass key is N"
//! hidden at some depth in repeated filler text, and a question at the end. Only the prompt's
//! prefix is prefilled densely; its last `tail` tokens and the answer go through the decode path,
//! so the KV policy decides what they attend to.

use quest_kernels::{Backend, Half, SamplingParams};
use quest_kvcache::KvCache;

use crate::error::{ModelError, Result};
use crate::generate::{GenerateParams, SplitMix64, generate};
use crate::llama::Llama;
use crate::policy::KvPolicy;
use crate::tokenizer::Tokenizer;

const INSTRUCTION: &str = "There is an important info hidden inside a lot of irrelevant text. \
Find it and memorize it. I will quiz you about the important information there.";
const FILLER: &str =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
const QUESTION: &str = "What is the pass key? The pass key is";

/// One pass-key prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct PasskeyPrompt {
    pub tokens: Vec<u32>,
    pub key: u32,
    /// Where the needle sits, 0 (start) to 1 (end of the filler).
    pub depth: f64,
}

/// The prompt closest to `target_tokens` tokens with `key` at `depth` of the filler.
pub fn passkey_prompt(
    tok: &Tokenizer,
    target_tokens: usize,
    key: u32,
    depth: f64,
) -> Result<PasskeyPrompt> {
    let needle = format!("The pass key is {key}. Remember it. {key} is the pass key.");
    let fixed = tok
        .encode(&format!("{INSTRUCTION} {needle} {QUESTION}"))?
        .len();
    let per_filler = tok.encode(&format!(" {FILLER}"))?.len().max(1);
    let n = target_tokens.saturating_sub(fixed) / per_filler;
    let at = ((n as f64) * depth.clamp(0.0, 1.0)).round() as usize;
    let mut text = String::from(INSTRUCTION);
    for i in 0..=n {
        if i == at {
            text.push(' ');
            text.push_str(&needle);
        }
        if i < n {
            text.push(' ');
            text.push_str(FILLER);
        }
    }
    text.push(' ');
    text.push_str(QUESTION);
    Ok(PasskeyPrompt {
        tokens: tok.encode(&text)?,
        key,
        depth,
    })
}

/// `count` prompts of about `length` tokens: random 5-digit keys from `seed`, depths spread
/// evenly over the filler.
pub fn passkey_prompts(
    tok: &Tokenizer,
    length: usize,
    count: usize,
    seed: u64,
) -> Result<Vec<PasskeyPrompt>> {
    let mut rng = SplitMix64::new(seed ^ (length as u64).wrapping_mul(0x9e37_79b9));
    (0..count)
        .map(|i| {
            let key = 10000 + (rng.next_u64() % 90000) as u32;
            let depth = if count > 1 {
                i as f64 / (count - 1) as f64
            } else {
                0.5
            };
            passkey_prompt(tok, length, key, depth)
        })
        .collect()
}

/// The first integer in `text`, if any.
pub fn first_integer(text: &str) -> Option<u64> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .take(18)
        .collect();
    digits.parse().ok()
}

/// What one prompt produced.
#[derive(Clone, Debug, PartialEq)]
pub struct PasskeyAnswer {
    pub key: u32,
    pub depth: f64,
    pub answer: String,
    pub correct: bool,
}

/// Runs `prompts` as one batch through `policy` (greedy, `tail` prompt tokens through the decode
/// path, 8 answer tokens) on a fresh cache of `page_size`.
pub fn run_passkey<B: Backend, W: Half>(
    model: &Llama<B, W>,
    tok: &Tokenizer,
    policy: &mut dyn KvPolicy<B, W>,
    prompts: &[PasskeyPrompt],
    page_size: usize,
    tail: usize,
) -> Result<Vec<PasskeyAnswer>> {
    const ANSWER_TOKENS: usize = 8;
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    let pages: usize = prompts
        .iter()
        .map(|p| (p.tokens.len() + ANSWER_TOKENS).div_ceil(page_size) + 1)
        .sum();
    let mut cache = KvCache::<B, W>::new(model.backend(), model.cache_config(pages, page_size))?;
    let params = GenerateParams {
        max_new_tokens: ANSWER_TOKENS,
        sampling: SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
        },
        seed: 0,
        stop_tokens: model.config().eos_tokens(),
        prefill_chunk: 512,
        decode_prompt_tail: tail,
    };
    let tokens: Vec<Vec<u32>> = prompts.iter().map(|p| p.tokens.clone()).collect();
    let (gens, _) = generate(model, &mut cache, policy, &tokens, &params, |_, _| {})?;
    prompts
        .iter()
        .zip(gens)
        .map(|(p, g)| {
            if let Some(e) = g.error {
                return Err(ModelError::Argument(format!("passkey prompt failed: {e}")));
            }
            let answer = tok.decode(&g.tokens)?;
            let correct = first_integer(&answer) == Some(p.key as u64);
            Ok(PasskeyAnswer {
                key: p.key,
                depth: p.depth,
                answer,
                correct,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::first_integer;

    #[test]
    fn first_integer_skips_text_and_stops_at_non_digits() {
        assert_eq!(first_integer(" 68213. Remember"), Some(68213));
        assert_eq!(first_integer("is: 7 and 8"), Some(7));
        assert_eq!(first_integer("none"), None);
    }
}
