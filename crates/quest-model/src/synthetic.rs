//! Synthetic models for benchmarks: the shapes of real checkpoints with pseudo-random weights
//! generated on the backend itself ([`Backend::fill_random`]), so a 7B-shaped model needs no file
//! and no host-to-device copy of its 13 GB.

use quest_kernels::{Backend, Half};

use crate::config::{LlamaConfig, RopeScaling};
use crate::error::{ModelError, Result};
use crate::llama::{LayerWeights, Weights};

/// Model shapes the benchmarks know by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Llama-2-7B: 32 layers, hidden 4096, MLP 11008, 32 query and 32 KV heads of 128, vocab
    /// 32000, RoPE theta 10000.
    Llama2_7b,
    /// Llama-3-8B: 32 layers, hidden 4096, MLP 14336, 32 query and 8 KV heads of 128, vocab
    /// 128256, RoPE theta 500000 with Llama 3 frequency scaling (factor 8).
    Llama3_8b,
    /// SmolLM2-135M, as its config.json: 30 layers, hidden 576, MLP 1536, 9 query and 3 KV heads
    /// of 64, vocab 49152, tied embeddings.
    Smollm2_135m,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Llama2_7b => "llama2-7b",
            Shape::Llama3_8b => "llama3-8b",
            Shape::Smollm2_135m => "smollm2-135m",
        }
    }

    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "llama2-7b" => Ok(Shape::Llama2_7b),
            "llama3-8b" => Ok(Shape::Llama3_8b),
            "smollm2-135m" => Ok(Shape::Smollm2_135m),
            other => Err(ModelError::Argument(format!(
                "unknown shape {other:?} (llama2-7b, llama3-8b, smollm2-135m)"
            ))),
        }
    }

    /// The config of this shape. `max_position_embeddings` is raised to `min_context` when that
    /// is larger (a benchmark at 32K on the Llama-2 shape stands for a long-context fine-tune of
    /// it, such as the LongChat-7B the Quest paper used; the arithmetic per token is the same).
    pub fn config(self, min_context: usize) -> LlamaConfig {
        let base = |hidden, inter, layers, heads, kv, vocab, theta, max_pos| LlamaConfig {
            hidden_size: hidden,
            intermediate_size: inter,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv),
            head_dim: None,
            vocab_size: vocab,
            rms_norm_eps: 1e-5,
            rope_theta: theta,
            rope_scaling: None,
            max_position_embeddings: max_pos,
            tie_word_embeddings: false,
            bos_token_id: Some(1),
            eos_token_id: None,
            architectures: Some(vec!["LlamaForCausalLM".into()]),
            model_type: Some("llama".into()),
            torch_dtype: Some("float16".into()),
        };
        let mut c = match self {
            Shape::Llama2_7b => base(4096, 11008, 32, 32, 32, 32000, 10000.0, 4096),
            Shape::Llama3_8b => {
                let mut c = base(4096, 14336, 32, 32, 8, 128256, 500000.0, 131072);
                c.rope_scaling = Some(RopeScaling {
                    rope_type: "llama3".into(),
                    factor: 8.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 8192,
                });
                c
            }
            Shape::Smollm2_135m => {
                let mut c = base(576, 1536, 30, 9, 3, 49152, 100000.0, 8192);
                c.head_dim = Some(64);
                c.tie_word_embeddings = true;
                c
            }
        };
        c.max_position_embeddings = c.max_position_embeddings.max(min_context);
        c
    }
}

/// Parameters of a config, all weights included (the embedding counted once when tied).
pub fn parameter_count(cfg: &LlamaConfig) -> usize {
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (q, kv) = (
        cfg.num_attention_heads * cfg.head_dim(),
        cfg.num_kv_heads() * cfg.head_dim(),
    );
    let layer = 2 * h + h * q + 2 * h * kv + q * h + 3 * h * i;
    let head = if cfg.tie_word_embeddings { 0 } else { v * h };
    v * h + cfg.num_hidden_layers * layer + h + head
}

/// Bytes of weights one decode step reads, stored as `W`: every layer matrix and norm, the final
/// norm and the LM head, plus one embedding row per sequence of the batch.
pub fn decode_weight_bytes<W: Half>(cfg: &LlamaConfig, batch: usize) -> usize {
    let (h, v) = (cfg.hidden_size, cfg.vocab_size);
    let embed_rows = batch.min(v) * h;
    let all = parameter_count(cfg);
    // The tied case reads the embedding as the LM head: all of it. Untied: the embedding table
    // is read only at the rows of the batch's tokens.
    let read = if cfg.tie_word_embeddings {
        all
    } else {
        all - v * h + embed_rows
    };
    read * size_of::<W>()
}

impl<B: Backend, W: Half> Weights<B, W> {
    /// Weights of `cfg`'s shapes, generated on `backend` from `seed`: matrices uniform in
    /// `±1/sqrt(fan_in)` (so activations keep their scale through the layers), the embedding
    /// in `±1`, norm weights in `±1`. Each tensor has its own stream of the generator.
    pub fn random(backend: &B, cfg: &LlamaConfig, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (q_dim, kv_dim) = (
            cfg.num_attention_heads * cfg.head_dim(),
            cfg.num_kv_heads() * cfg.head_dim(),
        );
        let mut stream = 0u64;
        let mut gen_tensor = |len: usize, fan_in: usize| -> Result<B::Buf<W>> {
            stream += 1;
            let mut buf = backend.zeros::<W>(len)?;
            let scale = 1.0 / (fan_in as f32).sqrt();
            backend.fill_random(
                &mut buf,
                seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                scale,
            )?;
            Ok(buf)
        };
        let embed = gen_tensor(v * h, 1)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for _ in 0..cfg.num_hidden_layers {
            layers.push(LayerWeights {
                attn_norm: gen_tensor(h, 1)?,
                wq: gen_tensor(q_dim * h, h)?,
                wk: gen_tensor(kv_dim * h, h)?,
                wv: gen_tensor(kv_dim * h, h)?,
                wo: gen_tensor(h * q_dim, q_dim)?,
                ffn_norm: gen_tensor(h, 1)?,
                w_gate: gen_tensor(i * h, h)?,
                w_up: gen_tensor(i * h, h)?,
                w_down: gen_tensor(h * i, i)?,
            });
        }
        let norm = gen_tensor(h, 1)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(gen_tensor(v * h, h)?)
        };
        Ok(Weights {
            embed,
            layers,
            norm,
            lm_head,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llama::Llama;
    use crate::policy::Dense;
    use quest_kernels::{CpuBackend, f16};
    use quest_kvcache::KvCache;

    #[test]
    fn shapes_match_the_published_parameter_counts() {
        let p = |s: Shape| parameter_count(&s.config(0)) as f64 / 1e9;
        assert!(
            (p(Shape::Llama2_7b) - 6.738).abs() < 0.01,
            "{}",
            p(Shape::Llama2_7b)
        );
        assert!(
            (p(Shape::Llama3_8b) - 8.030).abs() < 0.01,
            "{}",
            p(Shape::Llama3_8b)
        );
        assert!((p(Shape::Smollm2_135m) - 0.1346).abs() < 0.001);
        for s in [Shape::Llama2_7b, Shape::Llama3_8b, Shape::Smollm2_135m] {
            s.config(0).validate().unwrap();
            assert_eq!(Shape::from_name(s.name()).unwrap(), s);
        }
        assert_eq!(
            Shape::Llama2_7b.config(32768).max_position_embeddings,
            32768
        );
        assert!(Shape::from_name("gpt2").is_err());
    }

    #[test]
    fn a_random_model_decodes_finite_logits_over_a_random_cache() {
        let mut cfg = Shape::Smollm2_135m.config(0);
        cfg.num_hidden_layers = 2;
        cfg.vocab_size = 300;
        let b = CpuBackend;
        let w = Weights::<CpuBackend, f16>::random(&b, &cfg, 1).unwrap();
        let model = Llama::new(&b, cfg, w).unwrap();
        let mut cache = KvCache::<CpuBackend, f16>::new(&b, model.cache_config(8, 16)).unwrap();
        let s = cache.add_sequence();
        cache.reserve(s, 40).unwrap();
        cache.fill_random(3, 1.0).unwrap();
        let f = model.forward(&mut cache, &[(s, &[7])], &mut Dense).unwrap();
        let logits = b.download(&f.logits).unwrap();
        assert_eq!(logits.len(), 300);
        assert!(logits.iter().all(|x| x.is_finite()));
        assert!(logits.iter().any(|&x| x != 0.0));
        assert_eq!(cache.seq_len(s).unwrap(), 41);
    }
}
