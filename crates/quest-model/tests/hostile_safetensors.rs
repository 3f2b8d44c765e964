//! Hostile checkpoints: safetensors headers and data, config.json and tokenizer.json. Every
//! refusal names the file, tensor or field at fault; nothing panics.

mod common;

use std::path::Path;

use common::*;
use quest_kernels::{CpuBackend, f16};
use quest_model::checkpoint::Checkpoint;
use quest_model::{Llama, LlamaConfig, ModelError, Tokenizer};

fn load(dir: &Path) -> Result<Llama<CpuBackend, f16>, ModelError> {
    Llama::<CpuBackend, f16>::load(&CpuBackend, dir)
}

fn load_err(dir: &Path) -> String {
    match load(dir) {
        Ok(_) => panic!("a hostile checkpoint loaded"),
        Err(e) => e.to_string(),
    }
}

/// A tiny model directory whose `model.safetensors` is replaced by `bytes`.
fn with_safetensors(bytes: &[u8]) -> tempfile::TempDir {
    let dir = tiny_model(&TinySpec::default());
    std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
    dir
}

#[test]
fn the_tiny_model_loads() {
    let spec = TinySpec::default();
    let dir = tiny_model(&spec);
    let model = load(dir.path()).unwrap();
    assert_eq!(model.config().num_kv_heads(), 2);
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    for (name, shape) in spec.tensor_shapes() {
        let w = ckpt.tensor::<f16>(&name, &shape).unwrap();
        assert!(w.iter().any(|x| x.to_f32() != 0.0), "{name} is all zeros");
    }
}

#[test]
fn every_truncation_of_a_valid_file_is_refused() {
    let spec = TinySpec {
        layers: 1,
        vocab: 16,
        ..Default::default()
    };
    let bytes = safetensors_bytes(&spec.tensors());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    for len in (0..bytes.len())
        .step_by(7)
        .chain(bytes.len() - 8..bytes.len())
    {
        std::fs::write(&path, &bytes[..len]).unwrap();
        let Err(e) = Checkpoint::open(dir.path()) else {
            panic!("a file cut to {len} of {} bytes opened", bytes.len());
        };
        let msg = e.to_string();
        assert!(msg.contains("model.safetensors"), "cut at {len}: {msg}");
    }
}

#[test]
fn header_lengths_beyond_the_file_are_refused() {
    for n in [u64::MAX, 1 << 60, 1 << 40, 4096] {
        let mut bytes = n.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}      ");
        let dir = with_safetensors(&bytes);
        let msg = load_err(dir.path());
        assert!(
            msg.contains("model.safetensors") && msg.to_lowercase().contains("header"),
            "{n}: {msg}"
        );
    }
    // A header that is not JSON, and one that is JSON but not a map of tensors.
    for header in [
        &b"not json"[..],
        b"[1, 2, 3]",
        b"{\"w\": {\"dtype\": \"F16\"}}",
    ] {
        let dir = with_safetensors(&safetensors_raw(header, &[]));
        let msg = load_err(dir.path());
        assert!(msg.contains("model.safetensors"), "{msg}");
    }
}

#[test]
fn data_offsets_past_the_end_or_inconsistent_are_refused() {
    let data = vec![0u8; 16];
    for (offsets, shape) in [
        ("[0, 4096]", "[2048]"),
        ("[8, 4]", "[2]"),
        ("[0, 16]", "[4]"),
        ("[0, 8]", "[3]"),
    ] {
        let header = format!(
            r#"{{"model.norm.weight": {{"dtype": "F16", "shape": {shape}, "data_offsets": {offsets}}}}}"#
        );
        let dir = with_safetensors(&safetensors_raw(header.as_bytes(), &data));
        let msg = load_err(dir.path());
        assert!(
            msg.contains("model.safetensors"),
            "{offsets} {shape}: {msg}"
        );
    }
    // A shape whose element count overflows.
    let header = br#"{"w": {"dtype": "F16", "shape": [4294967296, 4294967296, 4294967296], "data_offsets": [0, 16]}}"#;
    let dir = with_safetensors(&safetensors_raw(header, &data));
    assert!(load_err(dir.path()).contains("model.safetensors"));
}

#[test]
fn shape_mismatch_with_the_config_is_named() {
    let spec = TinySpec::default();
    let mut tensors = spec.tensors();
    let t = tensors
        .iter_mut()
        .find(|t| t.name == "model.layers.1.self_attn.k_proj.weight")
        .unwrap();
    t.shape = vec![t.shape[1], t.shape[0]];
    let dir = tiny_model(&spec);
    write_model(dir.path(), &spec.config_json(), &tensors);
    let msg = load_err(dir.path());
    assert!(
        msg.contains("model.layers.1.self_attn.k_proj.weight") && msg.contains("[32, 16]"),
        "{msg}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let spec = TinySpec::default();
    let tensors: Vec<_> = spec
        .tensors()
        .into_iter()
        .filter(|t| t.name != "model.layers.0.mlp.up_proj.weight")
        .collect();
    let dir = tiny_model(&spec);
    write_model(dir.path(), &spec.config_json(), &tensors);
    let e = load(dir.path()).err().unwrap();
    assert!(
        matches!(&e, ModelError::MissingTensor(n) if n == "model.layers.0.mlp.up_proj.weight"),
        "{e}"
    );
}

#[test]
fn unsupported_dtypes_are_named() {
    let spec = TinySpec::default();
    for (dtype, width) in [("I64", 8), ("I32", 4), ("U8", 1), ("F64", 8), ("BOOL", 1)] {
        let mut tensors = spec.tensors();
        let t = tensors
            .iter_mut()
            .find(|t| t.name == "model.norm.weight")
            .unwrap();
        t.dtype = dtype.into();
        t.data = vec![0; 32 * width];
        let dir = tiny_model(&spec);
        write_model(dir.path(), &spec.config_json(), &tensors);
        let e = load(dir.path()).err().unwrap();
        assert!(
            matches!(&e, ModelError::Dtype { tensor, dtype: d } if tensor == "model.norm.weight" && d == dtype),
            "{dtype}: {e}"
        );
    }
    // A dtype safetensors itself does not know.
    let mut tensors = spec.tensors();
    tensors[0].dtype = "Q4_K".into();
    let dir = tiny_model(&spec);
    write_model(dir.path(), &spec.config_json(), &tensors);
    assert!(load_err(dir.path()).contains("model.safetensors"));
}

#[test]
fn nan_and_inf_weights_are_reported_by_tensor_name() {
    let spec = TinySpec::default();
    for (bad, name) in [
        (f32::NAN, "model.layers.1.mlp.down_proj.weight"),
        (f32::INFINITY, "model.embed_tokens.weight"),
        (f32::NEG_INFINITY, "model.layers.0.input_layernorm.weight"),
    ] {
        let mut tensors = spec.tensors();
        let t = tensors.iter_mut().find(|t| t.name == name).unwrap();
        t.data[6..8].copy_from_slice(&f16::from_f32(bad).to_le_bytes());
        let dir = tiny_model(&spec);
        write_model(dir.path(), &spec.config_json(), &tensors);
        let e = load(dir.path()).err().unwrap();
        assert!(
            matches!(&e, ModelError::NonFinite(n) if n == name),
            "{bad}: {e}"
        );
        assert!(e.to_string().contains(name));
    }
    // F32 values finite in f32 but infinite in f16 are refused too.
    let mut tensors = spec.tensors();
    let t = tensors
        .iter_mut()
        .find(|t| t.name == "model.norm.weight")
        .unwrap();
    let mut v = vec![1.0f32; 32];
    v[3] = 1e6;
    *t = StTensor::f32("model.norm.weight", vec![32], &v);
    let dir = tiny_model(&spec);
    write_model(dir.path(), &spec.config_json(), &tensors);
    let e = load(dir.path()).err().unwrap();
    assert!(
        matches!(&e, ModelError::NonFinite(n) if n == "model.norm.weight"),
        "{e}"
    );
}

#[test]
fn sharded_index_cannot_leave_the_directory_or_duplicate_tensors() {
    let spec = TinySpec::default();
    let dir = tiny_model(&spec);
    let p = dir.path();
    std::fs::remove_file(p.join("model.safetensors")).unwrap();
    for file in ["../model.safetensors", "/etc/passwd", ".hidden", "a\\b"] {
        let index = serde_json::json!({"weight_map": {"model.norm.weight": file}});
        std::fs::write(p.join("model.safetensors.index.json"), index.to_string()).unwrap();
        let msg = load_err(p);
        assert!(
            msg.contains("leaves the checkpoint directory"),
            "{file}: {msg}"
        );
    }
    std::fs::write(
        p.join("model.safetensors.index.json"),
        "{\"weight_map\": 3}",
    )
    .unwrap();
    assert!(load_err(p).contains("no weight_map"));
    std::fs::write(p.join("model.safetensors.index.json"), "{not json").unwrap();
    assert!(load_err(p).contains("invalid JSON"));
    // Two shards that both hold a tensor.
    let tensors = spec.tensors();
    std::fs::write(p.join("a.safetensors"), safetensors_bytes(&tensors[..3])).unwrap();
    std::fs::write(p.join("b.safetensors"), safetensors_bytes(&tensors[2..])).unwrap();
    let index = serde_json::json!({"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}});
    std::fs::write(p.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let msg = load_err(p);
    assert!(
        msg.contains(&tensors[2].name) && msg.contains("two files"),
        "{msg}"
    );
    // A shard that does not exist is named.
    let index = serde_json::json!({"weight_map": {"x": "missing.safetensors"}});
    std::fs::write(p.join("model.safetensors.index.json"), index.to_string()).unwrap();
    assert!(load_err(p).contains("missing.safetensors"));
    std::fs::remove_file(p.join("model.safetensors.index.json")).unwrap();
    assert!(load_err(p).contains("no model.safetensors"));
    assert!(load_err(&p.join("nope")).contains("does not exist"));
}

#[test]
fn hostile_configs_are_refused_by_field() {
    let base = TinySpec::default().config_json();
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("hidden_size", serde_json::json!(0), "hidden_size = 0"),
        (
            "num_hidden_layers",
            serde_json::json!(1u64 << 40),
            "num_hidden_layers",
        ),
        (
            "num_key_value_heads",
            serde_json::json!(3),
            "not a multiple",
        ),
        ("vocab_size", serde_json::json!(-1), "invalid JSON"),
        ("rms_norm_eps", serde_json::json!(0.0), "rms_norm_eps"),
        ("rope_theta", serde_json::json!(1e39), "rope_theta"),
        ("model_type", serde_json::json!("mistral"), "mistral"),
        ("head_dim", serde_json::json!(7), "even"),
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "yarn", "factor": 2.0}),
            "yarn",
        ),
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "llama3", "factor": 0.5}),
            "inconsistent",
        ),
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "llama3", "factor": 1e39}),
            "rope_scaling",
        ),
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": -1.0}),
            "rope_scaling",
        ),
    ];
    for (field, value, want) in cases {
        let mut cfg = base.clone();
        cfg[field] = value.clone();
        let e = LlamaConfig::from_json(&cfg.to_string()).unwrap_err();
        assert!(e.to_string().contains(want), "{field} = {value}: {e}");
    }
    for text in ["", "null", "[]", "{", "{\"hidden_size\": \"big\"}"] {
        assert!(LlamaConfig::from_json(text).is_err(), "{text:?}");
    }
    // From a directory: the path is named.
    let dir = tiny_model(&TinySpec::default());
    std::fs::write(dir.path().join("config.json"), "{").unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("config.json") && msg.contains("invalid JSON"),
        "{msg}"
    );
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    assert!(load_err(dir.path()).contains("config.json"));
}

#[test]
fn hostile_tokenizers_are_refused_with_the_path() {
    let dir = tiny_model(&TinySpec::default());
    let p = dir.path();
    assert_eq!(Tokenizer::from_dir(p).unwrap().vocab_size(), 257);
    for text in ["", "{}", "{\"model\": 3}", "[", "\u{0}"] {
        std::fs::write(p.join("tokenizer.json"), text).unwrap();
        let msg = Tokenizer::from_dir(p).err().unwrap().to_string();
        assert!(msg.contains("tokenizer.json"), "{text:?}: {msg}");
    }
    std::fs::remove_file(p.join("tokenizer.json")).unwrap();
    assert!(
        Tokenizer::from_dir(p)
            .err()
            .unwrap()
            .to_string()
            .contains("not found")
    );
    std::fs::write(p.join("tokenizer.json"), tokenizer_json()).unwrap();
    std::fs::write(p.join("tokenizer_config.json"), "{oops").unwrap();
    let msg = Tokenizer::from_dir(p).err().unwrap().to_string();
    assert!(msg.contains("tokenizer_config.json"), "{msg}");
    // A chat template that does not compile is an error when applied, not at load.
    std::fs::write(
        p.join("tokenizer_config.json"),
        r#"{"chat_template": "{% for %}"}"#,
    )
    .unwrap();
    let tok = Tokenizer::from_dir(p).unwrap();
    assert!(tok.apply_chat_template("hi").is_err());
    // Decoding ids outside the vocabulary does not panic.
    let _ = tok.decode(&[u32::MAX, 5, 1 << 20]);
}

/// Found by the `tokenizer_json` fuzz target: a JSON syntax error inside `"decoder"` made
/// tokenizers 0.22 panic (`expect("Helper")`) instead of returning an error.
#[test]
fn tokenizer_json_that_panics_the_tokenizers_library_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = tokenizer_json();
    let at = text.find("\"decoder\":").unwrap() + "\"decoder\":".len();
    text.insert_str(at, "{\"type\":\"ByteLevel\",\"x\":\"\u{1}\"},\"junk\":");
    for bad in [
        text.as_str(),
        "{\"decoder\":{\"a\":\"\u{1}\"}}",
        "{\"decoder\":{\"a\":",
    ] {
        std::fs::write(dir.path().join("tokenizer.json"), bad).unwrap();
        let msg = Tokenizer::from_dir(dir.path()).err().unwrap().to_string();
        assert!(msg.contains("tokenizer.json"), "{msg}");
    }
}
