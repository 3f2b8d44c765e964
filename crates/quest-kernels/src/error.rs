use thiserror::Error;

/// Every way an op can refuse its inputs or fail on its device. Ops never panic on bad shapes
/// or indices: they return one of these, naming the op and the problem.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum KernelError {
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },
    #[error("{op}: {msg}")]
    Index { op: &'static str, msg: String },
    #[error("{op}: invalid argument: {msg}")]
    Argument { op: &'static str, msg: String },
    #[error("CUDA is not available: {0}")]
    NoDevice(String),
    #[error("CUDA error in {op}: {msg}")]
    Cuda { op: &'static str, msg: String },
}

pub type Result<T> = std::result::Result<T, KernelError>;

pub(crate) fn shape_err(op: &'static str, msg: impl Into<String>) -> KernelError {
    KernelError::Shape {
        op,
        msg: msg.into(),
    }
}

pub(crate) fn index_err(op: &'static str, msg: impl Into<String>) -> KernelError {
    KernelError::Index {
        op,
        msg: msg.into(),
    }
}

pub(crate) fn arg_err(op: &'static str, msg: impl Into<String>) -> KernelError {
    KernelError::Argument {
        op,
        msg: msg.into(),
    }
}

/// `Ok(())` when `got == want`, else a shape error naming the buffer.
pub(crate) fn expect_len(op: &'static str, what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(shape_err(
            op,
            format!("{what} has {got} elements, expected {want}"),
        ))
    }
}
