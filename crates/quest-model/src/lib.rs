//! Llama on the quest backends: checkpoint import (GGUF) and loading (safetensors), tokenizer,
//! the model with its prefill and decode step, KV selection policies and sampling.

pub mod baselines;
pub mod checkpoint;
pub mod config;
pub mod convert;
pub mod error;
pub mod eval;
pub mod generate;
pub mod gguf;
pub mod llama;
pub mod policy;
pub mod ppl;
pub mod synthetic;
pub mod tokenizer;

pub use baselines::{H2o, StreamingLlm, Tova};
pub use config::LlamaConfig;
pub use convert::{ConvertSummary, convert_gguf};
pub use error::{ModelError, Result};
pub use eval::{PasskeyAnswer, PasskeyPrompt, passkey_prompts, run_passkey};
pub use generate::{GenerateObserver, GenerateParams, GenerateStats, Generation, generate};
pub use llama::{Forward, Llama, ReadStats, Weights};
pub use policy::{DEFAULT_PAGE_SIZE, Dense, KvPolicy, PageReads, Quest, QuestConfig, Selection};
pub use ppl::{Perplexity, PplOptions, read_text, run_ppl, text_windows};
pub use synthetic::Shape;
pub use tokenizer::{TextStream, Tokenizer};
