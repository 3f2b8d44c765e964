//! Safetensors loading: the input is `model.safetensors` of a checkpoint directory whose
//! `config.json` is a fixed tiny Llama. Every tensor the config wants is read with its expected
//! shape through `Checkpoint`, then the whole model is loaded with `Llama::load`; a model that
//! loads runs one forward pass on the CPU backend.
#![no_main]

use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use quest_kernels::{CpuBackend, f16};
use quest_kvcache::KvCache;
use quest_model::checkpoint::Checkpoint;
use quest_model::{Dense, Llama};

/// hidden 8, intermediate 16, 1 layer, 2 query heads and 1 KV head of 4, vocab 16, context 32.
const CONFIG: &str = r#"{"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
 "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 16,
 "max_position_embeddings": 32, "tie_word_embeddings": true, "model_type": "llama"}"#;

/// (name, shape) of every tensor the tiny config loads.
const TENSORS: &[(&str, &[usize])] = &[
    ("model.embed_tokens.weight", &[16, 8]),
    ("model.norm.weight", &[8]),
    ("lm_head.weight", &[16, 8]),
    ("model.layers.0.input_layernorm.weight", &[8]),
    ("model.layers.0.self_attn.q_proj.weight", &[8, 8]),
    ("model.layers.0.self_attn.k_proj.weight", &[4, 8]),
    ("model.layers.0.self_attn.v_proj.weight", &[4, 8]),
    ("model.layers.0.self_attn.o_proj.weight", &[8, 8]),
    ("model.layers.0.post_attention_layernorm.weight", &[8]),
    ("model.layers.0.mlp.gate_proj.weight", &[16, 8]),
    ("model.layers.0.mlp.up_proj.weight", &[16, 8]),
    ("model.layers.0.mlp.down_proj.weight", &[8, 16]),
];

fuzz_target!(|data: &[u8]| {
    let dir = quest_fuzz::scratch_dir();
    static CONFIG_WRITTEN: Once = Once::new();
    CONFIG_WRITTEN.call_once(|| quest_fuzz::write(dir, "config.json", CONFIG.as_bytes()));
    quest_fuzz::write(dir, "model.safetensors", data);

    let Ok(ckpt) = Checkpoint::open(dir) else {
        return;
    };
    for (name, shape) in TENSORS {
        if let Ok(values) = ckpt.tensor::<f16>(name, shape) {
            assert_eq!(values.len(), shape.iter().product::<usize>());
            assert!(
                values.iter().all(|v| v.is_finite()),
                "{name}: non-finite value accepted"
            );
        }
    }
    let Ok(model) = Llama::<CpuBackend, f16>::load(&CpuBackend, dir) else {
        return;
    };
    let mut cache = KvCache::<CpuBackend, f16>::new(&CpuBackend, model.cache_config(4, 4))
        .expect("a cache for the tiny model");
    let seq = cache.add_sequence();
    let f = model
        .forward(&mut cache, &[(seq, &[1, 2, 3])], &mut Dense)
        .expect("a forward pass of a loaded model");
    assert_eq!(f.logits.len(), 16);
});
