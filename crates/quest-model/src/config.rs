//! `config.json` of a Hugging Face Llama checkpoint.

use std::path::Path;

use quest_kernels::{Llama3Scaling, RopeConfig};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// `rope_scaling` as Llama 3 writes it; other types are refused by name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    pub factor: f32,
    #[serde(default = "one")]
    pub low_freq_factor: f32,
    #[serde(default = "four")]
    pub high_freq_factor: f32,
    #[serde(default = "default_original")]
    pub original_max_position_embeddings: usize,
}

fn one() -> f32 {
    1.0
}
fn four() -> f32 {
    4.0
}
fn default_original() -> usize {
    8192
}
fn default_theta() -> f32 {
    10000.0
}
fn default_eps() -> f32 {
    1e-6
}

/// A token id or a list of them (`eos_token_id` is either).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(t) => vec![*t],
            TokenIds::Many(v) => v.clone(),
        }
    }
}

/// The fields of a Llama `config.json` this engine uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f32,
    #[serde(default = "default_theta")]
    pub rope_theta: f32,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub torch_dtype: Option<String>,
}

/// Upper limits that keep a hostile config from asking for absurd allocations.
const MAX_DIM: usize = 1 << 20;

impl LlamaConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json(&text).map_err(|e| match e {
            ModelError::Json { source, .. } => ModelError::Json {
                path: path.into(),
                source,
            },
            other => other,
        })
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: LlamaConfig = serde_json::from_str(text).map_err(|source| ModelError::Json {
            path: "config.json".into(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    pub fn eos_tokens(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }

    pub fn rope(&self) -> RopeConfig {
        RopeConfig {
            theta: self.rope_theta,
            head_dim: self.head_dim(),
            scaling: self.rope_scaling.as_ref().map(|s| Llama3Scaling {
                factor: s.factor,
                low_freq_factor: s.low_freq_factor,
                high_freq_factor: s.high_freq_factor,
                original_max_position_embeddings: s.original_max_position_embeddings,
            }),
        }
    }

    /// Checks that the numbers describe a Llama this engine can run.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_kv_heads()),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("head_dim", self.head_dim()),
        ] {
            if v == 0 || v > MAX_DIM * 16 {
                return bad(format!("{name} = {v} is out of range"));
            }
        }
        if self.num_attention_heads % self.num_kv_heads() != 0 {
            return bad(format!(
                "{} attention heads are not a multiple of {} KV heads",
                self.num_attention_heads,
                self.num_kv_heads()
            ));
        }
        if self.head_dim() % 2 != 0 {
            return bad(format!(
                "head_dim {} must be even for RoPE",
                self.head_dim()
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return bad(format!(
                "rms_norm_eps {} must be positive",
                self.rms_norm_eps
            ));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return bad(format!("rope_theta {} must be positive", self.rope_theta));
        }
        if let Some(s) = &self.rope_scaling {
            if s.rope_type != "llama3" {
                return bad(format!(
                    "rope_scaling type {:?} is not supported (only llama3)",
                    s.rope_type
                ));
            }
            if !(s.factor >= 1.0 && s.high_freq_factor > s.low_freq_factor) {
                return bad("rope_scaling factors are inconsistent".into());
            }
            // Infinite factors (JSON numbers past f32's range) or a non-positive low factor give
            // meaningless or zero frequencies; an infinite factor also breaks a JSON round trip.
            if ![s.factor, s.low_freq_factor, s.high_freq_factor]
                .iter()
                .all(|f| f.is_finite())
                || s.low_freq_factor <= 0.0
                || s.original_max_position_embeddings == 0
            {
                return bad(format!(
                    "rope_scaling factors must be finite, low_freq_factor > 0 and \
                     original_max_position_embeddings > 0, got {s:?}"
                ));
            }
        }
        if let Some(m) = &self.model_type {
            if m != "llama" {
                return bad(format!("model_type {m:?} is not llama"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_gqa_llama3_config() {
        let c = LlamaConfig::from_json(
            r#"{"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
            "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 131072,
            "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192, "rope_type": "llama3"},
            "eos_token_id": [128001, 128008, 128009], "model_type": "llama"}"#,
        )
        .unwrap();
        assert_eq!(c.num_kv_heads(), 8);
        assert_eq!(c.head_dim(), 128);
        assert_eq!(c.eos_tokens(), vec![128001, 128008, 128009]);
        assert!(c.rope().scaling.is_some());
        assert!(!c.tie_word_embeddings);
    }

    #[test]
    fn refuses_inconsistent_heads_and_unknown_scaling() {
        let base = r#""hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "vocab_size": 100, "max_position_embeddings": 256"#;
        let e = LlamaConfig::from_json(&format!(
            r#"{{{base}, "num_attention_heads": 6, "num_key_value_heads": 4}}"#
        ))
        .unwrap_err();
        assert!(e.to_string().contains("not a multiple"), "{e}");
        let e = LlamaConfig::from_json(&format!(
            r#"{{{base}, "num_attention_heads": 4, "rope_scaling": {{"type": "yarn", "factor": 4.0}}}}"#
        ))
        .unwrap_err();
        assert!(e.to_string().contains("yarn"), "{e}");
        let e = LlamaConfig::from_json(r#"{"hidden_size": 64}"#).unwrap_err();
        assert!(e.to_string().contains("missing field"), "{e}");
    }
}
