//! Llama on the quest backends: checkpoint import (GGUF) and loading (safetensors), tokenizer,
//! the model with its prefill and decode step, KV selection policies and sampling.

pub mod config;
pub mod convert;
pub mod error;
pub mod gguf;
pub mod tokenizer;

pub use config::LlamaConfig;
pub use convert::{ConvertSummary, convert_gguf};
pub use error::{ModelError, Result};
pub use tokenizer::{TextStream, Tokenizer};
