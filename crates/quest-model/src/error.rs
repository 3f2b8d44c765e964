use std::path::PathBuf;

use thiserror::Error;

/// Errors of model import, loading and generation. Each names the file, tensor or limit at fault.
#[derive(Debug, Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad model file: {0}")]
    Format(String),
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("invalid config: {0}")]
    Config(String),
    #[error("missing tensor {0}")]
    MissingTensor(String),
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("tensor {tensor} has dtype {dtype}, which is not supported (f32, f16, bf16)")]
    Dtype { tensor: String, dtype: String },
    #[error("tensor {0} contains NaN or infinite values")]
    NonFinite(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("prompt of {tokens} tokens plus {new} new tokens exceeds the context of {context}")]
    PromptTooLong {
        tokens: usize,
        new: usize,
        context: usize,
    },
    #[error("{seq}: {source}")]
    CacheFull {
        seq: quest_kvcache::SeqId,
        source: quest_kvcache::CacheError,
    },
    #[error("{path}: not UTF-8 text (invalid byte at offset {offset})")]
    NotUtf8 { path: PathBuf, offset: usize },
    #[error(
        "the text has {tokens} tokens; {windows} window(s) of {length} tokens need {}",
        .windows * .length
    )]
    TextTooShort {
        tokens: usize,
        length: usize,
        windows: usize,
    },
    #[error("invalid argument: {0}")]
    Argument(String),
    #[error(transparent)]
    Kernel(#[from] quest_kernels::KernelError),
    #[error(transparent)]
    Cache(#[from] quest_kvcache::CacheError),
}

pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
}
