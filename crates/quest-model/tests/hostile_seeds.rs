//! Writes the seed corpus of the fuzz targets (`fuzz/corpus/<target>/`) from the test helpers:
//! small valid files and edge cases. Ignored by default; regenerate with
//! `cargo test -p quest-model --test hostile_seeds -- --ignored`.
//! The non-ignored test checks that the valid seeds still load, so the corpus cannot rot.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use quest_model::gguf::Gguf;

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// The fuzz `safetensors` target's fixed config, as a spec.
fn fuzz_spec(tied: bool) -> TinySpec {
    TinySpec {
        hidden: 8,
        intermediate: 16,
        layers: 1,
        heads: 2,
        kv_heads: 1,
        vocab: 16,
        max_position_embeddings: 32,
        tie_word_embeddings: tied,
        seed: 11,
    }
}

fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut out: Vec<(&str, &str, Vec<u8>)> = Vec::new();
    // ---- gguf
    let tiny = tiny_llama_gguf(21, false).bytes();
    out.push(("gguf", "tiny_llama.gguf", tiny.clone()));
    out.push((
        "gguf",
        "tiny_llama_truncated.gguf",
        tiny[..tiny.len() / 2].to_vec(),
    ));
    out.push((
        "gguf",
        "tiny_llama_tied.gguf",
        tiny_llama_gguf(22, true).bytes(),
    ));
    out.push((
        "gguf",
        "tokenizer_only.gguf",
        gguf_tokenizer_metadata(GgufFile::default()).bytes(),
    ));
    let values: Vec<f32> = Rng::new(23).values(64);
    let mut all = GgufFile {
        alignment: 64,
        ..Default::default()
    }
    .meta("general.alignment", GgufValue::U32(64));
    for (name, ty) in [
        ("f32", GGML_F32),
        ("f16", GGML_F16),
        ("q8_0", GGML_Q8_0),
        ("q4_1", GGML_Q4_1),
    ] {
        all = all.tensor(GgufTensor::encode(name, vec![32, 2], ty, &values));
    }
    out.push(("gguf", "all_types.gguf", all.bytes()));
    let q4k = GgufTensor {
        name: "k".into(),
        dims: vec![256],
        ty: GGML_Q4_K,
        data: vec![0; 144],
    };
    out.push(("gguf", "q4_k.gguf", GgufFile::default().tensor(q4k).bytes()));
    out.push(("gguf", "empty", Vec::new()));
    out.push(("gguf", "magic_only", b"GGUF".to_vec()));
    let mut huge = b"GGUF\x03\0\0\0".to_vec();
    huge.extend_from_slice(&(1u64 << 60).to_le_bytes());
    huge.extend_from_slice(&0u64.to_le_bytes());
    out.push(("gguf", "huge_count", huge));
    // ---- safetensors
    out.push((
        "safetensors",
        "tiny_tied.safetensors",
        safetensors_bytes(&fuzz_spec(true).tensors()),
    ));
    let untied = safetensors_bytes(&fuzz_spec(false).tensors());
    out.push(("safetensors", "tiny_untied.safetensors", untied.clone()));
    out.push((
        "safetensors",
        "truncated.safetensors",
        untied[..untied.len() - 7].to_vec(),
    ));
    let f32s: Vec<StTensor> = fuzz_spec(true)
        .tensors()
        .into_iter()
        .map(|t| {
            let v: Vec<f32> = t
                .data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect();
            StTensor::f32(&t.name, t.shape, &v)
        })
        .collect();
    out.push((
        "safetensors",
        "tiny_f32.safetensors",
        safetensors_bytes(&f32s),
    ));
    let i64s = StTensor {
        name: "model.norm.weight".into(),
        dtype: "I64".into(),
        shape: vec![8],
        data: vec![1; 64],
    };
    out.push(("safetensors", "i64.safetensors", safetensors_bytes(&[i64s])));
    out.push((
        "safetensors",
        "empty_header.safetensors",
        safetensors_raw(b"{}", &[]),
    ));
    out.push(("safetensors", "empty", Vec::new()));
    // ---- config_json
    out.push((
        "config_json",
        "tiny.json",
        serde_json::to_vec_pretty(&TinySpec::default().config_json()).unwrap(),
    ));
    out.push((
        "config_json",
        "llama3.json",
        br#"{"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
 "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
 "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 131072,
 "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
 "eos_token_id": [128001, 128008, 128009], "bos_token_id": 128000, "model_type": "llama",
 "head_dim": 128, "tie_word_embeddings": false, "torch_dtype": "bfloat16"}"#
            .to_vec(),
    ));
    out.push((
        "config_json",
        "missing_fields.json",
        br#"{"hidden_size": 64}"#.to_vec(),
    ));
    out.push(("config_json", "empty", Vec::new()));
    // ---- tokenizer_json (tokenizer.json, then optionally NUL and tokenizer_config.json)
    let tok = tokenizer_json().into_bytes();
    out.push(("tokenizer_json", "byte_level_bpe.json", tok.clone()));
    let mut with_cfg = tok.clone();
    with_cfg.push(0);
    with_cfg.extend_from_slice(
        br#"{"chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}"#,
    );
    out.push(("tokenizer_json", "with_chat_template", with_cfg));
    out.push((
        "tokenizer_json",
        "word_level.json",
        br#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[{"id":3,"content":"<|im_end|>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],"normalizer":{"type":"Lowercase"},"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,"model":{"type":"WordLevel","vocab":{"<unk>":0,"hello":1,"world":2,"<|im_end|>":3},"unk_token":"<unk>"}}"#.to_vec(),
    ));
    out.push(("tokenizer_json", "empty_object.json", b"{}".to_vec()));
    out.push(("tokenizer_json", "empty", Vec::new()));
    // ---- page_pool and kv_cache: operation streams
    let mut rng = Rng::new(31);
    for i in 0..4 {
        let bytes: Vec<u8> = (0..64 + 64 * i).map(|_| rng.next_u64() as u8).collect();
        out.push((
            "page_pool",
            ["ops0", "ops1", "ops2", "ops3"][i],
            bytes.clone(),
        ));
        out.push(("kv_cache", ["ops0", "ops1", "ops2", "ops3"][i], bytes));
    }
    // kv_cache: config bytes, then add, reserve 5, plan 5, write layer 0.
    out.push((
        "kv_cache",
        "add_reserve_plan_write",
        vec![
            0, 0, 0, 0, 0, 0, 1, 0, 4, 0, 8, 0, 0, 0, 0, 0, 1, 0, 0, 5, 0, 5, 1, 0, 0, 0, 5, 0, 7,
            0, 0, 1, 0, 9, 9, 9, 9,
        ],
    ));
    out.push(("page_pool", "empty", Vec::new()));
    out
}

#[test]
#[ignore = "writes fuzz/corpus; run with --ignored to regenerate the seed corpus"]
fn write_seed_corpus() {
    for (target, name, bytes) in seeds() {
        let dir = corpus(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn valid_seeds_parse() {
    for (target, name, bytes) in seeds() {
        match (target, name) {
            ("gguf", n) if n.starts_with("tiny_llama.") || n.starts_with("all_types") => {
                Gguf::parse(&bytes).unwrap();
            }
            ("config_json", n) if n.ends_with(".json") && !n.starts_with("missing") => {
                quest_model::LlamaConfig::from_json(std::str::from_utf8(&bytes).unwrap()).unwrap();
            }
            _ => {}
        }
    }
}
