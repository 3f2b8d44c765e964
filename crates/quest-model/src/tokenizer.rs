//! Tokenizers: building a Hugging Face `tokenizer.json` from a GGUF vocabulary, and loading one
//! (with the chat template of `tokenizer_config.json`) to encode prompts and decode tokens.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, TokenizerBuilder};

use crate::error::{ModelError, Result};
use crate::gguf::{Gguf, Value};

/// GGUF `tokenizer.ggml.token_type` values that mark special tokens.
const TOKEN_TYPE_CONTROL: u64 = 3;
const TOKEN_TYPE_USER_DEFINED: u64 = 4;

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

fn string_list(gguf: &Gguf, key: &str) -> Result<Vec<String>> {
    let arr = gguf
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| ModelError::Format(format!("metadata {key} is missing or not an array")))?;
    arr.iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| ModelError::Format(format!("metadata {key} holds a non-string")))
        })
        .collect()
}

/// Builds the byte-level BPE tokenizer that a GGUF of `tokenizer.ggml.model == "gpt2"` describes:
/// vocabulary, merges, special tokens (control and user-defined types) and the pre-tokenizer its
/// `tokenizer.ggml.pre` names.
pub fn tokenizer_from_gguf(gguf: &Gguf) -> Result<tokenizers::Tokenizer> {
    let model = gguf
        .get("tokenizer.ggml.model")
        .and_then(Value::as_str)
        .unwrap_or("");
    if model != "gpt2" {
        return Err(ModelError::Tokenizer(format!(
            "tokenizer model {model:?} is not supported (only byte-level BPE, \"gpt2\")"
        )));
    }
    let tokens = string_list(gguf, "tokenizer.ggml.tokens")?;
    let merges = string_list(gguf, "tokenizer.ggml.merges")?;
    let types: Vec<u64> = match gguf.get("tokenizer.ggml.token_type") {
        Some(Value::Array(a)) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
        _ => vec![1; tokens.len()],
    };
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    if vocab.len() != tokens.len() {
        return Err(ModelError::Tokenizer(
            "duplicate tokens in the vocabulary".into(),
        ));
    }
    let merges = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .ok_or_else(|| ModelError::Tokenizer(format!("merge {m:?} is not two tokens")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(tok_err)?;
    let pre = gguf
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("gpt2");
    let byte_level = ByteLevel::new(false, true, true);
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        // SmolLM splits every digit, then applies the GPT-2 byte-level split.
        "smollm" | "starcoder" => {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        }
        "gpt2" | "default" => byte_level.into(),
        other => {
            return Err(ModelError::Tokenizer(format!(
                "pre-tokenizer {other:?} is not supported (smollm, starcoder, gpt2)"
            )));
        }
    };
    let mut tok: tokenizers::Tokenizer = TokenizerBuilder::new()
        .with_model(bpe)
        .with_pre_tokenizer(Some(pre_tokenizer))
        .with_decoder(Some(ByteLevelDecoder::default()))
        .with_normalizer(None::<tokenizers::NormalizerWrapper>)
        .with_post_processor(None::<tokenizers::PostProcessorWrapper>)
        .build()
        .map_err(tok_err)?
        .into();
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, t)| matches!(**t, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED))
        .map(|(s, _)| AddedToken::from(s.clone(), true))
        .collect();
    tok.add_special_tokens(&special);
    Ok(tok)
}

/// A loaded tokenizer with its chat template and special token ids.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl Tokenizer {
    /// Loads `tokenizer.json` and, if present, `tokenizer_config.json` from `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(ModelError::Tokenizer(format!(
                "{} not found",
                path.display()
            )));
        }
        // tokenizers 0.22 panics on some malformed files (a syntax error inside "decoder" hits an
        // `expect`); a hostile file must give an error, not take the process down.
        let inner = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_file(&path))
            .map_err(|_| {
                ModelError::Tokenizer(format!(
                    "{}: malformed tokenizer (the tokenizers library panicked reading it)",
                    path.display()
                ))
            })?
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let (mut chat_template, mut bos_token, mut eos_token) = (None, None, None);
        if cfg_path.is_file() {
            let text =
                std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| ModelError::Json {
                    path: cfg_path.clone(),
                    source,
                })?;
            let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
            chat_template = s("chat_template");
            bos_token = s("bos_token");
            eos_token = s("eos_token");
        }
        Ok(Tokenizer {
            inner,
            chat_template,
            bos_token,
            eos_token,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`; special tokens written in the text are recognized.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(tok_err)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// Renders a single user message with the model's chat template, ready for generation.
    pub fn apply_chat_template(&self, user_message: &str) -> Result<String> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            ModelError::Tokenizer("this model has no chat template (tokenizer_config.json)".into())
        })?;
        let mut env = minijinja::Environment::new();
        env.add_template("chat", template).map_err(tok_err)?;
        let ctx = minijinja::context! {
            messages => vec![minijinja::context! { role => "user", content => user_message }],
            add_generation_prompt => true,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        };
        env.get_template("chat")
            .and_then(|t| t.render(ctx))
            .map_err(tok_err)
    }
}

/// Decodes a growing token list piece by piece for streaming, emitting only complete UTF-8 text.
pub struct TextStream {
    ids: Vec<u32>,
    emitted: usize,
}

impl Default for TextStream {
    fn default() -> Self {
        Self::new()
    }
}

impl TextStream {
    pub fn new() -> Self {
        TextStream {
            ids: Vec::new(),
            emitted: 0,
        }
    }

    /// Adds a token and returns the new text it completes, if any.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = tok.decode(&self.ids)?;
        if text.ends_with('\u{fffd}') || text.len() < self.emitted {
            return Ok(String::new());
        }
        let new = text.get(self.emitted..).unwrap_or("").to_owned();
        self.emitted = text.len();
        Ok(new)
    }
}
