//! Helpers for quest-model's integration tests: tiny random Llama checkpoints written to a
//! temporary directory, a safetensors serializer that can also write hostile headers, and a GGUF
//! writer (with F16, Q8_0 and Q4_1 quantizers) for import tests.
//!
//! Use from a test file with `mod common;`. A tiny model is
//!
//! ```ignore
//! let spec = common::TinySpec::default();          // 2 layers, 4 query / 2 KV heads of 8, ...
//! let dir = common::tiny_model(&spec);              // config.json + model.safetensors + tokenizer.json
//! let model = Llama::<CpuBackend, f16>::load(&CpuBackend, dir.path())?;
//! ```
//!
//! Weights are f16 values from a seeded generator (never all zeros; the same seed gives the same
//! files). The tokenizer is byte-level BPE over the 256 byte symbols with no merges plus one
//! special token `<|endoftext|>` (id 256), so any text encodes and `vocab_size >= 257`.
//! Not every test file uses every helper.
#![allow(dead_code)]

use std::path::Path;

use half::f16;
use serde_json::json;
use tempfile::TempDir;

/// The shape of a tiny random Llama.
#[derive(Clone, Debug)]
pub struct TinySpec {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub seed: u64,
}

impl Default for TinySpec {
    fn default() -> Self {
        TinySpec {
            hidden: 32,
            intermediate: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            vocab: 272,
            max_position_embeddings: 128,
            tie_word_embeddings: false,
            seed: 7,
        }
    }
}

impl TinySpec {
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// The `config.json` of this model.
    pub fn config_json(&self) -> serde_json::Value {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "vocab_size": self.vocab,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": 256,
            "eos_token_id": 256,
            "torch_dtype": "float16",
        })
    }

    /// Every tensor the config needs, with its shape, in the Hugging Face naming.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, v) = (self.hidden, self.intermediate, self.vocab);
        let (q, kv) = (
            self.heads * self.head_dim(),
            self.kv_heads * self.head_dim(),
        );
        let mut out = vec![
            ("model.embed_tokens.weight".to_owned(), vec![v, h]),
            ("model.norm.weight".to_owned(), vec![h]),
        ];
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_owned(), vec![v, h]));
        }
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            for (name, shape) in [
                ("input_layernorm.weight", vec![h]),
                ("self_attn.q_proj.weight", vec![q, h]),
                ("self_attn.k_proj.weight", vec![kv, h]),
                ("self_attn.v_proj.weight", vec![kv, h]),
                ("self_attn.o_proj.weight", vec![h, q]),
                ("post_attention_layernorm.weight", vec![h]),
                ("mlp.gate_proj.weight", vec![i, h]),
                ("mlp.up_proj.weight", vec![i, h]),
                ("mlp.down_proj.weight", vec![h, i]),
            ] {
                out.push((format!("{p}.{name}"), shape));
            }
        }
        out
    }

    /// The random f16 weights of this model, one entry per tensor of [`Self::tensor_shapes`].
    /// Norm weights are near 1, projections scaled by `1/sqrt(fan_in)`.
    pub fn tensors(&self) -> Vec<StTensor> {
        let mut rng = Rng::new(self.seed);
        self.tensor_shapes()
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let values: Vec<f32> = if shape.len() == 1 {
                    (0..n).map(|_| 1.0 + 0.1 * rng.uniform()).collect()
                } else {
                    let scale = 1.0 / (shape[1] as f32).sqrt();
                    (0..n).map(|_| scale * rng.uniform()).collect()
                };
                StTensor::f16(&name, shape, &values)
            })
            .collect()
    }
}

/// SplitMix64 with uniforms in `[-1, 1)`; seeded, so test files are reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[-1, 1)`.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    pub fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform()).collect()
    }
}

/// One tensor of a safetensors file: any dtype string, any shape, raw little-endian bytes (the
/// three need not agree: hostile files are written with this too).
#[derive(Clone, Debug)]
pub struct StTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl StTensor {
    pub fn f16(name: &str, shape: Vec<usize>, values: &[f32]) -> Self {
        let data = values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect();
        StTensor {
            name: name.into(),
            dtype: "F16".into(),
            shape,
            data,
        }
    }

    pub fn f32(name: &str, shape: Vec<usize>, values: &[f32]) -> Self {
        let data = values.iter().flat_map(|&v| v.to_le_bytes()).collect();
        StTensor {
            name: name.into(),
            dtype: "F32".into(),
            shape,
            data,
        }
    }
}

/// The bytes of a safetensors file holding `tensors` in order: u64 header length, the JSON
/// header (with `data_offsets` computed from the data lengths), then the data.
pub fn safetensors_bytes(tensors: &[StTensor]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0;
    for t in tensors {
        header.insert(
            t.name.clone(),
            json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.data.len()]}),
        );
        offset += t.data.len();
    }
    let header = serde_json::to_string(&header).unwrap();
    safetensors_raw(
        header.as_bytes(),
        &tensors
            .iter()
            .flat_map(|t| t.data.clone())
            .collect::<Vec<_>>(),
    )
}

/// A safetensors file from a literal header (padded with spaces to a multiple of 8) and data.
pub fn safetensors_raw(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut h = header.to_vec();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

/// A byte-level BPE `tokenizer.json` with no merges: the 256 byte symbols (ids 0..256) and the
/// special token `<|endoftext|>` (id 256).
pub fn tokenizer_json() -> String {
    use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{AddedToken, TokenizerBuilder};

    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    let vocab: tokenizers::models::bpe::Vocab = alphabet
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, Vec::new())
        .build()
        .unwrap();
    let mut tok: tokenizers::Tokenizer = TokenizerBuilder::new()
        .with_model(bpe)
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_decoder(Some(ByteLevelDecoder::default()))
        .with_normalizer(None::<tokenizers::NormalizerWrapper>)
        .with_post_processor(None::<tokenizers::PostProcessorWrapper>)
        .build()
        .unwrap()
        .into();
    tok.add_special_tokens(&[AddedToken::from("<|endoftext|>", true)]);
    tok.to_string(false).unwrap()
}

/// Writes `config.json`, `model.safetensors` (with `tensors`) and `tokenizer.json` into `dir`.
pub fn write_model(dir: &Path, config: &serde_json::Value, tensors: &[StTensor]) {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(config).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("model.safetensors"), safetensors_bytes(tensors)).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json()).unwrap();
}

/// A temporary checkpoint directory holding the tiny random model `spec`.
pub fn tiny_model(spec: &TinySpec) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &spec.config_json(), &spec.tensors());
    dir
}

// ---- GGUF ---------------------------------------------------------------------------------------

/// A GGUF metadata value as written (type id + payload). `Raw` writes any type id and bytes.
#[derive(Clone, Debug)]
pub enum GgufValue {
    U32(u32),
    U64(u64),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArray(Vec<String>),
    I32Array(Vec<i32>),
    Raw(u32, Vec<u8>),
}

fn gguf_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl GgufValue {
    fn write(&self, out: &mut Vec<u8>) {
        let (ty, payload): (u32, Vec<u8>) = match self {
            GgufValue::U32(v) => (4, v.to_le_bytes().to_vec()),
            GgufValue::I32(v) => (5, v.to_le_bytes().to_vec()),
            GgufValue::F32(v) => (6, v.to_le_bytes().to_vec()),
            GgufValue::Bool(v) => (7, vec![*v as u8]),
            GgufValue::Str(s) => {
                let mut p = Vec::new();
                gguf_string(&mut p, s);
                (8, p)
            }
            GgufValue::U64(v) => (10, v.to_le_bytes().to_vec()),
            GgufValue::StrArray(items) => {
                let mut p = 8u32.to_le_bytes().to_vec();
                p.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for s in items {
                    gguf_string(&mut p, s);
                }
                (9, p)
            }
            GgufValue::I32Array(items) => {
                let mut p = 5u32.to_le_bytes().to_vec();
                p.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for v in items {
                    p.extend_from_slice(&v.to_le_bytes());
                }
                (9, p)
            }
            GgufValue::Raw(ty, bytes) => (*ty, bytes.clone()),
        };
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&payload);
    }
}

/// GGML type ids the writer knows how to encode.
pub const GGML_F32: u32 = 0;
pub const GGML_F16: u32 = 1;
pub const GGML_Q4_1: u32 = 3;
pub const GGML_Q8_0: u32 = 8;
pub const GGML_Q4_K: u32 = 12;

/// One tensor of a GGUF: GGML dims (fastest first), type id, and its data bytes.
#[derive(Clone, Debug)]
pub struct GgufTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: u32,
    pub data: Vec<u8>,
}

impl GgufTensor {
    /// `values` (row-major over the reversed `dims`) encoded as `ty` (F32, F16, Q8_0 or Q4_1).
    pub fn encode(name: &str, dims: Vec<u64>, ty: u32, values: &[f32]) -> Self {
        let data = match ty {
            GGML_F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            GGML_F16 => values
                .iter()
                .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                .collect(),
            GGML_Q8_0 => quantize_q8_0(values),
            GGML_Q4_1 => quantize_q4_1(values),
            other => panic!("no encoder for GGML type {other}"),
        };
        GgufTensor {
            name: name.into(),
            dims,
            ty,
            data,
        }
    }
}

/// Q8_0 blocks of 32: f16 scale `d = max|x| / 127`, then 32 × i8 `round(x / d)`.
pub fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    assert_eq!(values.len() % 32, 0);
    let mut out = Vec::new();
    for block in values.chunks_exact(32) {
        let amax = block.iter().fold(0f32, |a, &x| a.max(x.abs()));
        let d = f16::from_f32(amax / 127.0);
        let inv = if d.to_f32() == 0.0 {
            0.0
        } else {
            1.0 / d.to_f32()
        };
        out.extend_from_slice(&d.to_le_bytes());
        out.extend(
            block
                .iter()
                .map(|&x| (x * inv).round().clamp(-127.0, 127.0) as i8 as u8),
        );
    }
    out
}

/// Q4_1 blocks of 32: f16 scale `d = (max - min) / 15` and min `m`, then 16 bytes whose low
/// nibble is element `j` and high nibble element `j + 16`, `q = round((x - m) / d)`.
pub fn quantize_q4_1(values: &[f32]) -> Vec<u8> {
    assert_eq!(values.len() % 32, 0);
    let mut out = Vec::new();
    for block in values.chunks_exact(32) {
        let lo = block.iter().fold(f32::INFINITY, |a, &x| a.min(x));
        let hi = block.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
        let (d, m) = (f16::from_f32((hi - lo) / 15.0), f16::from_f32(lo));
        let inv = if d.to_f32() == 0.0 {
            0.0
        } else {
            1.0 / d.to_f32()
        };
        out.extend_from_slice(&d.to_le_bytes());
        out.extend_from_slice(&m.to_le_bytes());
        let q = |x: f32| ((x - m.to_f32()) * inv).round().clamp(0.0, 15.0) as u8;
        out.extend((0..16).map(|j| q(block[j]) | (q(block[j + 16]) << 4)));
    }
    out
}

/// A GGUF file under construction. [`GgufFile::bytes`] lays it out: header, metadata, tensor infos,
/// padding to `alignment`, and each tensor's data at the next aligned offset.
#[derive(Clone, Debug)]
pub struct GgufFile {
    pub version: u32,
    pub alignment: u64,
    pub metadata: Vec<(String, GgufValue)>,
    pub tensors: Vec<GgufTensor>,
}

impl Default for GgufFile {
    fn default() -> Self {
        GgufFile {
            version: 3,
            alignment: 32,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }
}

impl GgufFile {
    pub fn meta(mut self, key: &str, value: GgufValue) -> Self {
        self.metadata.push((key.into(), value));
        self
    }

    pub fn tensor(mut self, t: GgufTensor) -> Self {
        self.tensors.push(t);
        self
    }

    /// The file's bytes, and the offset at which the tensor data section starts.
    pub fn bytes_and_data_start(&self) -> (Vec<u8>, usize) {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            gguf_string(&mut out, k);
            v.write(&mut out);
        }
        let align = self.alignment as usize;
        let mut offset = 0usize;
        let mut offsets = Vec::new();
        for t in &self.tensors {
            offsets.push(offset);
            offset = (offset + t.data.len()).div_ceil(align) * align;
        }
        for (t, &off) in self.tensors.iter().zip(&offsets) {
            gguf_string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.to_le_bytes());
            out.extend_from_slice(&(off as u64).to_le_bytes());
        }
        out.resize(out.len().div_ceil(align) * align, 0);
        let data_start = out.len();
        for (t, &off) in self.tensors.iter().zip(&offsets) {
            out.resize(data_start + off, 0);
            out.extend_from_slice(&t.data);
        }
        (out, data_start)
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.bytes_and_data_start().0
    }
}

/// The GPT-2 style tokenizer metadata of a GGUF: the 256 byte symbols, a few merges, and
/// `<|endoftext|>` (id 256, control type) as BOS and EOS.
pub fn gguf_tokenizer_metadata(file: GgufFile) -> GgufFile {
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    let mut tokens: Vec<String> = alphabet.iter().map(char::to_string).collect();
    tokens.push("<|endoftext|>".into());
    tokens.push("he".into());
    tokens.push("ll".into());
    let mut types = vec![1i32; tokens.len()];
    types[256] = 3;
    file.meta("tokenizer.ggml.model", GgufValue::Str("gpt2".into()))
        .meta("tokenizer.ggml.pre", GgufValue::Str("smollm".into()))
        .meta("tokenizer.ggml.tokens", GgufValue::StrArray(tokens))
        .meta("tokenizer.ggml.token_type", GgufValue::I32Array(types))
        .meta(
            "tokenizer.ggml.merges",
            GgufValue::StrArray(vec!["h e".into(), "l l".into()]),
        )
        .meta("tokenizer.ggml.bos_token_id", GgufValue::U32(256))
        .meta("tokenizer.ggml.eos_token_id", GgufValue::U32(256))
        .meta(
            "tokenizer.chat_template",
            GgufValue::Str(
                "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}".into(),
            ),
        )
}

/// A complete tiny Llama GGUF: 1 layer, hidden 32, 2 query / 1 KV head of 16, intermediate 64,
/// vocabulary 259, with F32 norms, an F16 embedding, Q8_0 attention and Q4_1 MLP weights (and an
/// F16 `output.weight` unless `tied`). Values are seeded random, never all zero.
pub fn tiny_llama_gguf(seed: u64, tied: bool) -> GgufFile {
    let (h, i, v, kv) = (32u64, 64u64, 259u64, 16u64);
    let mut rng = Rng::new(seed);
    let mut t = |name: &str, dims: Vec<u64>, ty: u32| {
        let n = dims.iter().product::<u64>() as usize;
        GgufTensor::encode(name, dims, ty, &rng.values(n))
    };
    let mut file = GgufFile::default()
        .meta("general.architecture", GgufValue::Str("llama".into()))
        .meta("general.alignment", GgufValue::U32(32))
        .meta("llama.block_count", GgufValue::U32(1))
        .meta("llama.context_length", GgufValue::U32(64))
        .meta("llama.embedding_length", GgufValue::U32(h as u32))
        .meta("llama.feed_forward_length", GgufValue::U32(i as u32))
        .meta("llama.attention.head_count", GgufValue::U32(2))
        .meta("llama.attention.head_count_kv", GgufValue::U32(1))
        .meta(
            "llama.attention.layer_norm_rms_epsilon",
            GgufValue::F32(1e-5),
        )
        .meta("llama.rope.freq_base", GgufValue::F32(10000.0))
        .meta("llama.vocab_size", GgufValue::U32(v as u32));
    file = gguf_tokenizer_metadata(file);
    let mut tensors = vec![
        t("token_embd.weight", vec![h, v], GGML_F16),
        t("output_norm.weight", vec![h], GGML_F32),
        t("blk.0.attn_norm.weight", vec![h], GGML_F32),
        t("blk.0.attn_q.weight", vec![h, h], GGML_Q8_0),
        t("blk.0.attn_k.weight", vec![h, kv], GGML_Q8_0),
        t("blk.0.attn_v.weight", vec![h, kv], GGML_Q8_0),
        t("blk.0.attn_output.weight", vec![h, h], GGML_Q8_0),
        t("blk.0.ffn_norm.weight", vec![h], GGML_F32),
        t("blk.0.ffn_gate.weight", vec![h, i], GGML_Q4_1),
        t("blk.0.ffn_up.weight", vec![h, i], GGML_Q4_1),
        t("blk.0.ffn_down.weight", vec![i, h], GGML_Q4_1),
    ];
    if !tied {
        tensors.push(t("output.weight", vec![h, v], GGML_F16));
    }
    file.tensors = tensors;
    file
}
