//! GGUF → Hugging Face checkpoint directory: `model.safetensors` (f16), `config.json`,
//! `tokenizer.json` and `tokenizer_config.json`, the files a Llama checkpoint has.

use std::collections::HashMap;
use std::path::Path;

use half::f16;
use safetensors::{Dtype, tensor::TensorView};

use crate::config::{LlamaConfig, TokenIds};
use crate::error::{ModelError, Result};
use crate::gguf::{Gguf, TensorInfo, Value, unpermute_rotary_rows};
use crate::tokenizer::tokenizer_from_gguf;

/// What an import wrote.
#[derive(Debug, Clone)]
pub struct ConvertSummary {
    pub config: LlamaConfig,
    pub tensors: usize,
    pub parameters: usize,
}

/// The Llama config a GGUF's `llama.*` metadata describes.
pub fn config_from_gguf(g: &Gguf) -> Result<LlamaConfig> {
    let arch = g
        .get("general.architecture")
        .and_then(Value::as_str)
        .unwrap_or("");
    if arch != "llama" {
        return Err(ModelError::Format(format!(
            "architecture {arch:?} is not supported (llama)"
        )));
    }
    let u = |k: &str| g.get_u64(&format!("llama.{k}")).map(|v| v as usize);
    let heads = u("attention.head_count")?;
    let hidden = u("embedding_length")?;
    let vocab = match g.get_u64("llama.vocab_size") {
        Ok(v) => v as usize,
        Err(_) => g
            .get("tokenizer.ggml.tokens")
            .and_then(Value::as_array)
            .map(<[Value]>::len)
            .ok_or_else(|| ModelError::Format("vocabulary size is missing".into()))?,
    };
    let head_dim = match g.get_u64("llama.rope.dimension_count") {
        Ok(d) => d as usize,
        Err(_) => hidden / heads.max(1),
    };
    let cfg = LlamaConfig {
        hidden_size: hidden,
        intermediate_size: u("feed_forward_length")?,
        num_hidden_layers: u("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: Some(u("attention.head_count_kv").unwrap_or(heads)),
        head_dim: Some(head_dim),
        vocab_size: vocab,
        rms_norm_eps: g.get_f64("llama.attention.layer_norm_rms_epsilon")? as f32,
        rope_theta: g.get_f64("llama.rope.freq_base").unwrap_or(10000.0) as f32,
        rope_scaling: None,
        max_position_embeddings: u("context_length")?,
        tie_word_embeddings: g.tensor("output.weight").is_none(),
        bos_token_id: g
            .get_u64("tokenizer.ggml.bos_token_id")
            .ok()
            .map(|v| v as u32),
        eos_token_id: g
            .get_u64("tokenizer.ggml.eos_token_id")
            .ok()
            .map(|v| TokenIds::One(v as u32)),
        architectures: Some(vec!["LlamaForCausalLM".into()]),
        model_type: Some("llama".into()),
        torch_dtype: Some("float16".into()),
    };
    cfg.validate()?;
    Ok(cfg)
}

/// The Hugging Face name of a GGUF tensor, and for Q/K projections the head count to unpermute.
fn hf_name(name: &str, cfg: &LlamaConfig) -> Option<(String, Option<usize>)> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some((f.to_owned(), None));
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    if layer >= cfg.num_hidden_layers {
        return None;
    }
    let (hf, heads) = match part {
        "attn_norm.weight" => ("input_layernorm.weight", None),
        "ffn_norm.weight" => ("post_attention_layernorm.weight", None),
        "attn_q.weight" => ("self_attn.q_proj.weight", Some(cfg.num_attention_heads)),
        "attn_k.weight" => ("self_attn.k_proj.weight", Some(cfg.num_kv_heads())),
        "attn_v.weight" => ("self_attn.v_proj.weight", None),
        "attn_output.weight" => ("self_attn.o_proj.weight", None),
        "ffn_gate.weight" => ("mlp.gate_proj.weight", None),
        "ffn_up.weight" => ("mlp.up_proj.weight", None),
        "ffn_down.weight" => ("mlp.down_proj.weight", None),
        _ => return None,
    };
    Some((format!("model.layers.{layer}.{hf}"), heads))
}

/// Dequantizes, unpermutes and rounds one tensor to f16 little-endian bytes.
fn convert_tensor(g: &Gguf, info: &TensorInfo, heads: Option<usize>) -> Result<Vec<u8>> {
    let mut values = g.dequantize(info)?;
    if let Some(heads) = heads {
        let cols = info.dims[0] as usize;
        values = unpermute_rotary_rows(&values, heads, cols)?;
    }
    let mut bytes = Vec::with_capacity(values.len() * 2);
    for &v in &values {
        let h = f16::from_f32(v);
        if !h.is_finite() {
            return Err(ModelError::NonFinite(info.name.clone()));
        }
        bytes.extend_from_slice(&h.to_le_bytes());
    }
    Ok(bytes)
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|source| ModelError::Json {
        path: path.into(),
        source,
    })?;
    std::fs::write(path, text).map_err(|e| ModelError::io(path, e))
}

/// Imports the GGUF file at `gguf_path` into the checkpoint directory `out_dir` (created).
/// `progress` is called with (tensors done, tensors total).
pub fn convert_gguf(
    gguf_path: &Path,
    out_dir: &Path,
    mut progress: impl FnMut(usize, usize),
) -> Result<ConvertSummary> {
    let bytes = std::fs::read(gguf_path).map_err(|e| ModelError::io(gguf_path, e))?;
    let g = Gguf::parse(&bytes)?;
    let cfg = config_from_gguf(&g)?;
    let tokenizer = tokenizer_from_gguf(&g)?;

    // (checkpoint name, shape, f16 bytes, GGUF name)
    let mut converted: Vec<(String, Vec<usize>, Vec<u8>, String)> =
        Vec::with_capacity(g.tensors.len());
    let mut parameters = 0;
    for (i, info) in g.tensors.iter().enumerate() {
        let (name, heads) = hf_name(&info.name, &cfg).ok_or_else(|| {
            ModelError::Format(format!("unexpected tensor {} in a llama GGUF", info.name))
        })?;
        // Two GGUF names can map to one checkpoint name ("blk.0" and "blk.00"); the safetensors
        // writer panics on duplicates, and keeping either one silently would be wrong.
        if let Some((_, _, _, first)) = converted.iter().find(|(n, ..)| *n == name) {
            return Err(ModelError::Format(format!(
                "tensors {first} and {} both map to {name}",
                info.name
            )));
        }
        parameters += info.elements();
        let data = convert_tensor(&g, info, heads)?;
        converted.push((name, info.shape(), data, info.name.clone()));
        progress(i + 1, g.tensors.len());
    }

    std::fs::create_dir_all(out_dir).map_err(|e| ModelError::io(out_dir, e))?;
    let views = converted
        .iter()
        .map(|(name, shape, data, _)| {
            TensorView::new(Dtype::F16, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| ModelError::Format(format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta: HashMap<String, String> = [("format".to_owned(), "pt".to_owned())].into();
    let st_path = out_dir.join("model.safetensors");
    safetensors::serialize_to_file(views, Some(meta), &st_path)
        .map_err(|e| ModelError::Format(format!("{}: {e}", st_path.display())))?;

    write_json(&out_dir.join("config.json"), &cfg)?;

    let tok_path = out_dir.join("tokenizer.json");
    tokenizer
        .save(&tok_path, false)
        .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", tok_path.display())))?;
    let token = |key: &str| -> Option<String> {
        let id = g.get_u64(key).ok()? as u32;
        tokenizer.id_to_token(id)
    };
    let tok_cfg = serde_json::json!({
        "chat_template": g.get("tokenizer.chat_template").and_then(Value::as_str),
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "add_bos_token": g.get("tokenizer.ggml.add_bos_token") == Some(&Value::Bool(true)),
        "model_max_length": cfg.max_position_embeddings,
    });
    write_json(&out_dir.join("tokenizer_config.json"), &tok_cfg)?;
    Ok(ConvertSummary {
        config: cfg,
        tensors: converted.len(),
        parameters,
    })
}
