//! Ops for Quest sparse-attention decoding, with a CPU reference backend and (behind the same
//! [`Backend`] trait) a CUDA backend.
//!
//! The paged KV layout every op uses is described once, in [`layout`].

pub mod backend;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dtype;
pub mod error;
pub mod fused;
pub mod layout;
pub mod quant;
pub mod rope;

pub use backend::{AttentionShape, Backend, DevicePageTable, SamplingParams, SelectOptions};
pub use cpu::CpuBackend;
#[cfg(feature = "cuda")]
pub use cuda::{CudaBackend, CudaBuf, CudaTimer};
/// The CUDA driver bindings the backend is built on (streams, events), for benchmarks that time
/// kernels themselves.
#[cfg(feature = "cuda")]
pub use cudarc;
pub use dtype::{DType, Elem, Half};
pub use error::{KernelError, Result};
pub use fused::RopeInput;
pub use half::{bf16, f16};
pub use layout::{BoundsFormat, EMPTY_PAGE, PageTable, PagedLayout, TableRows};
pub use rope::{Llama3Scaling, RopeConfig};
