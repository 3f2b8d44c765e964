//! Hostile GGUF files: every refusal names the problem, nothing panics, and no allocation is
//! made from a length the file cannot back.

mod common;

use std::time::{Duration, Instant};

use common::*;
use quest_kernels::{CpuBackend, f16};
use quest_model::convert::config_from_gguf;
use quest_model::gguf::Gguf;
use quest_model::tokenizer::tokenizer_from_gguf;
use quest_model::{Dense, GenerateParams, Llama, ModelError, Tokenizer, convert_gguf, generate};

fn parse_err(bytes: &[u8]) -> String {
    match Gguf::parse(bytes) {
        Ok(g) => panic!("parsed a hostile file: {} tensors", g.tensors.len()),
        Err(e) => e.to_string(),
    }
}

/// The fixed header: magic, version 3, tensor count, metadata count.
fn header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b
}

#[test]
fn tiny_llama_gguf_parses_and_dequantizes_close_to_its_values() {
    let file = tiny_llama_gguf(1, false);
    let bytes = file.bytes();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.tensors.len(), file.tensors.len());
    let mut rng = Rng::new(1);
    for t in &file.tensors {
        let n = t.dims.iter().product::<u64>() as usize;
        let want = rng.values(n);
        let info = g.tensor(&t.name).unwrap();
        let got = g.dequantize(info).unwrap();
        // Q4_1 steps are (max - min) / 15 <= 2/15 of a [-1, 1) block; half a step of error.
        let tol = match t.ty {
            GGML_F32 => 0.0,
            GGML_F16 => 1e-3,
            GGML_Q8_0 => 1.0 / 127.0,
            _ => 1.0 / 15.0 + 1e-3,
        };
        let worst = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= tol, "{}: error {worst} > {tol}", t.name);
    }
    let cfg = config_from_gguf(&g).unwrap();
    assert_eq!(
        (cfg.hidden_size, cfg.num_kv_heads(), cfg.vocab_size),
        (32, 1, 259)
    );
    assert!(!cfg.tie_word_embeddings);
    let tok = tokenizer_from_gguf(&g).unwrap();
    let ids = tok.encode("hello<|endoftext|>", false).unwrap();
    assert_eq!(ids.get_ids().last(), Some(&256), "special token recognized");
}

#[test]
fn every_truncation_of_a_valid_file_is_an_error_not_a_panic() {
    let bytes = tiny_llama_gguf(2, true).bytes();
    for len in 0..bytes.len() {
        let Err(e) = Gguf::parse(&bytes[..len]) else {
            panic!("a file cut to {len} of {} bytes parsed", bytes.len());
        };
        let msg = e.to_string();
        assert!(
            msg.contains("truncated")
                || msg.contains("past the end")
                || msg.contains("left in the file"),
            "cut at {len}: {msg}"
        );
    }
}

#[test]
fn counts_and_lengths_beyond_the_file_fail_fast_without_allocating() {
    let huge = 1u64 << 60;
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("tensor count", header(huge, 0)),
        ("metadata count", header(0, huge)),
        ("tensor count", header(u64::MAX, 0)),
    ];
    // A metadata key whose length is 2^60.
    let mut b = header(0, 1);
    b.extend_from_slice(&huge.to_le_bytes());
    b.extend_from_slice(&[b'a'; 16]);
    cases.push(("metadata key", b));
    // A string value of length 2^60.
    let mut b = header(0, 1);
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(b'k');
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&huge.to_le_bytes());
    cases.push(("k", b));
    // An array of 2^60 u8, and of 2^60 strings.
    for elem in [0u32, 8] {
        let mut b = header(0, 1);
        b.extend_from_slice(&1u64.to_le_bytes());
        b.push(b'k');
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&elem.to_le_bytes());
        b.extend_from_slice(&huge.to_le_bytes());
        b.extend_from_slice(&[0; 64]);
        cases.push(("k", b));
    }
    for (what, bytes) in cases {
        let t0 = Instant::now();
        let msg = parse_err(&bytes);
        assert!(
            t0.elapsed() < Duration::from_millis(100),
            "{what}: took {:?}",
            t0.elapsed()
        );
        assert!(msg.contains(what), "{what}: {msg}");
        assert!(
            msg.contains("left in the file") || msg.contains("truncated"),
            "{msg}"
        );
    }
}

#[test]
fn tensor_with_2_pow_60_elements_is_refused_by_its_extent() {
    let t = GgufTensor {
        name: "big".into(),
        dims: vec![1 << 30, 1 << 30],
        ty: GGML_F32,
        data: vec![0; 64],
    };
    let bytes = GgufFile::default().tensor(t).bytes();
    let t0 = Instant::now();
    let msg = parse_err(&bytes);
    assert!(t0.elapsed() < Duration::from_millis(100));
    assert!(
        msg.contains("big") && msg.contains("past the end of the file"),
        "{msg}"
    );
    // Dims whose product overflows u64.
    let t = GgufTensor {
        name: "ovf".into(),
        dims: vec![1 << 32, 1 << 32],
        ty: GGML_F32,
        data: vec![],
    };
    let msg = parse_err(&GgufFile::default().tensor(t).bytes());
    assert!(msg.contains("ovf") && msg.contains("overflow"), "{msg}");
}

#[test]
fn tensor_offset_past_the_end_is_refused_by_name() {
    let t = GgufTensor::encode("w", vec![32], GGML_F32, &[0.5; 32]);
    let mut bytes = GgufFile::default().tensor(t).bytes();
    // Header (24), name (8 + 1), n_dims (4), one dim (8), type (4), then the offset.
    let off_at = 24 + 9 + 4 + 8 + 4;
    assert_eq!(bytes[off_at - 4..off_at], GGML_F32.to_le_bytes());
    bytes[off_at..off_at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let msg = parse_err(&bytes);
    assert!(
        msg.contains("tensor w") && msg.contains("past the end of the file"),
        "{msg}"
    );
    bytes[off_at..off_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    let msg = parse_err(&bytes);
    assert!(
        msg.contains("tensor w") && msg.contains("overflows"),
        "{msg}"
    );
    bytes[off_at..off_at + 8].copy_from_slice(&4u64.to_le_bytes());
    bytes.extend_from_slice(&[0; 32]);
    let msg = parse_err(&bytes);
    assert!(msg.contains("not aligned"), "{msg}");
}

#[test]
fn unsupported_tensor_types_are_named() {
    for (id, name) in [
        (GGML_Q4_K, "Q4_K"),
        (2, "Q4_0"),
        (14, "Q6_K"),
        (30, "BF16"),
        (999, "unknown"),
    ] {
        let t = GgufTensor {
            name: "blk.0.attn_q.weight".into(),
            dims: vec![256],
            ty: id,
            data: vec![0; 1024],
        };
        let msg = parse_err(&GgufFile::default().tensor(t).bytes());
        assert!(
            msg.contains("blk.0.attn_q.weight") && msg.contains(name),
            "{id}: {msg}"
        );
        assert!(msg.contains(&format!("({id})")), "{msg}");
    }
}

#[test]
fn malformed_headers_are_refused_with_the_reason() {
    assert!(parse_err(b"").contains("magic"));
    assert!(parse_err(b"GGML\x03\0\0\0").contains("bad magic"));
    let mut v9 = b"GGUF".to_vec();
    v9.extend_from_slice(&9u32.to_le_bytes());
    v9.extend_from_slice(&[0; 16]);
    assert!(parse_err(&v9).contains("version 9"));
    let dup = GgufFile::default()
        .meta("a", GgufValue::U32(1))
        .meta("a", GgufValue::U32(2));
    assert!(parse_err(&dup.bytes()).contains("duplicate metadata key a"));
    let bad_bool = GgufFile::default().meta("flag", GgufValue::Raw(7, vec![2]));
    assert!(parse_err(&bad_bool.bytes()).contains("bool byte 2"));
    let bad_type = GgufFile::default().meta("x", GgufValue::Raw(13, vec![0; 8]));
    assert!(parse_err(&bad_type.bytes()).contains("unknown value type 13"));
    let mut nested = 9u32.to_le_bytes().to_vec();
    nested.extend_from_slice(&1u64.to_le_bytes());
    nested.extend_from_slice(&9u32.to_le_bytes());
    nested.extend_from_slice(&0u64.to_le_bytes());
    let nested = GgufFile::default().meta("n", GgufValue::Raw(9, nested));
    assert!(parse_err(&nested.bytes()).contains("nested arrays"));
    let bad_utf8 = GgufFile::default().meta(
        "s",
        GgufValue::Raw(8, [&2u64.to_le_bytes()[..], &[0xff, 0xfe]].concat()),
    );
    assert!(parse_err(&bad_utf8.bytes()).contains("UTF-8"));
    let align = GgufFile::default().meta("general.alignment", GgufValue::U32(24));
    assert!(parse_err(&align.bytes()).contains("power of two"));
    let t = GgufTensor::encode("w", vec![32], GGML_F32, &[1.0; 32]);
    let dup_t = GgufFile::default().tensor(t.clone()).tensor(t);
    assert!(parse_err(&dup_t.bytes()).contains("duplicate tensor w"));
    let q = GgufTensor {
        name: "q".into(),
        dims: vec![16],
        ty: GGML_Q8_0,
        data: vec![0; 34],
    };
    assert!(
        parse_err(&GgufFile::default().tensor(q).bytes())
            .contains("multiple of the 32-element block")
    );
    let z = GgufTensor {
        name: "z".into(),
        dims: vec![0],
        ty: GGML_F32,
        data: vec![],
    };
    assert!(parse_err(&GgufFile::default().tensor(z).bytes()).contains("empty"));
    let d5 = GgufTensor {
        name: "d5".into(),
        dims: vec![1; 5],
        ty: GGML_F32,
        data: vec![0; 4],
    };
    assert!(parse_err(&GgufFile::default().tensor(d5).bytes()).contains("5 dimensions"));
}

#[test]
fn import_refuses_non_finite_weights_by_tensor_name() {
    let mut file = tiny_llama_gguf(3, true);
    let t = file
        .tensors
        .iter_mut()
        .find(|t| t.name == "blk.0.ffn_norm.weight")
        .unwrap();
    t.data[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.gguf");
    std::fs::write(&src, file.bytes()).unwrap();
    let out = dir.path().join("out");
    let e = convert_gguf(&src, &out, |_, _| {}).unwrap_err();
    assert!(
        matches!(&e, ModelError::NonFinite(n) if n == "blk.0.ffn_norm.weight"),
        "{e}"
    );
    // An F32 value beyond f16's range is infinite once stored: refused too.
    let mut file = tiny_llama_gguf(3, true);
    let t = file
        .tensors
        .iter_mut()
        .find(|t| t.name == "output_norm.weight")
        .unwrap();
    t.data[0..4].copy_from_slice(&1e6f32.to_le_bytes());
    std::fs::write(&src, file.bytes()).unwrap();
    let e = convert_gguf(&src, &out, |_, _| {}).unwrap_err();
    assert!(
        matches!(&e, ModelError::NonFinite(n) if n == "output_norm.weight"),
        "{e}"
    );
}

#[test]
fn import_refuses_unknown_tensors_and_architectures() {
    let mut file = tiny_llama_gguf(4, true);
    file.tensors.push(GgufTensor::encode(
        "blk.7.attn_q.weight",
        vec![32],
        GGML_F32,
        &[1.0; 32],
    ));
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.gguf");
    std::fs::write(&src, file.bytes()).unwrap();
    let e = convert_gguf(&src, &dir.path().join("out"), |_, _| {}).unwrap_err();
    assert!(
        e.to_string()
            .contains("unexpected tensor blk.7.attn_q.weight"),
        "{e}"
    );
    let g = GgufFile::default().meta("general.architecture", GgufValue::Str("mamba".into()));
    let bytes = g.bytes();
    let e = config_from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap_err();
    assert!(e.to_string().contains("mamba"), "{e}");
    let e = tokenizer_from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap_err();
    assert!(e.to_string().contains("not supported"), "{e}");
}

#[test]
fn imported_tiny_gguf_loads_and_generates() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.gguf");
    std::fs::write(&src, tiny_llama_gguf(5, false).bytes()).unwrap();
    let out = dir.path().join("hf");
    let summary = convert_gguf(&src, &out, |_, _| {}).unwrap();
    assert_eq!(summary.tensors, 12);
    let model = Llama::<CpuBackend, f16>::load(&CpuBackend, &out).unwrap();
    let tok = Tokenizer::from_dir(&out).unwrap();
    assert!(tok.has_chat_template());
    let prompt = tok.encode("hello").unwrap();
    let mut cache = quest_kvcache::KvCache::new(&CpuBackend, model.cache_config(8, 4)).unwrap();
    let params = GenerateParams {
        max_new_tokens: 4,
        ..Default::default()
    };
    let (gens, _) = generate(
        &model,
        &mut cache,
        &mut Dense,
        &[prompt],
        &params,
        |_, _| {},
    )
    .unwrap();
    assert_eq!(gens[0].tokens.len(), 4);
    assert!(gens[0].error.is_none());
    assert_eq!(cache.pages_in_use(), 0);
}

#[test]
fn two_gguf_tensors_for_one_checkpoint_tensor_are_refused() {
    // "blk.00" and "blk.0" name the same layer: the import must not keep one silently.
    let mut file = tiny_llama_gguf(6, true);
    let norm = file
        .tensors
        .iter()
        .find(|t| t.name == "blk.0.attn_norm.weight")
        .unwrap()
        .clone();
    file.tensors.push(GgufTensor {
        name: "blk.00.attn_norm.weight".into(),
        ..norm
    });
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.gguf");
    std::fs::write(&src, file.bytes()).unwrap();
    let e = convert_gguf(&src, &dir.path().join("out"), |_, _| {}).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("blk.00.attn_norm.weight")
            && msg.contains("model.layers.0.input_layernorm.weight"),
        "{msg}"
    );
}

#[test]
fn dequantize_refuses_a_tensor_info_that_does_not_fit_the_file() {
    let file = GgufFile::default().tensor(GgufTensor::encode("w", vec![32], GGML_F32, &[1.0; 32]));
    let bytes = file.bytes();
    let g = Gguf::parse(&bytes).unwrap();
    let good = g.tensor("w").unwrap().clone();
    assert_eq!(g.dequantize(&good).unwrap(), vec![1.0; 32]);
    let cases = [
        quest_model::gguf::TensorInfo {
            start: bytes.len() - 4,
            ..good.clone()
        },
        quest_model::gguf::TensorInfo {
            start: usize::MAX,
            ..good.clone()
        },
        quest_model::gguf::TensorInfo {
            dims: vec![1 << 40],
            ..good.clone()
        },
        quest_model::gguf::TensorInfo {
            byte_len: 64,
            ..good.clone()
        },
    ];
    for info in cases {
        let e = g.dequantize(&info).unwrap_err();
        assert!(e.to_string().contains("tensor w"), "{e}");
    }
}
