//! Finding the driver and the device without panicking, and the PTX modules embedded in the
//! crate (one per `ptx/*.cu` file).

use std::sync::Mutex;

use cudarc::driver::CudaContext;

use crate::error::{KernelError, Result};

/// The PTX modules, one per op family (see `ptx/`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Family {
    Dense,
    Paged,
    Select,
    BoundsInt8,
    Decode,
    Prefill,
    Sampling,
    Random,
}

/// The two PTX builds of every family (`ptx/build.sh`): `compute_80` for Ampere, and
/// `compute_90`, whose kernels also open with `griddepcontrol.wait` for programmatic dependent
/// launch (`launch.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum PtxArch {
    Sm80,
    Sm90,
}

macro_rules! ptx_pair {
    ($arch:expr, $name:literal) => {
        match $arch {
            PtxArch::Sm80 => include_str!(concat!("../../../../ptx/", $name, ".sm80.ptx")),
            PtxArch::Sm90 => include_str!(concat!("../../../../ptx/", $name, ".sm90.ptx")),
        }
    };
}

impl Family {
    pub(super) fn ptx(self, arch: PtxArch) -> &'static str {
        match self {
            Family::Dense => ptx_pair!(arch, "dense"),
            Family::Paged => ptx_pair!(arch, "paged"),
            Family::Select => ptx_pair!(arch, "select"),
            Family::BoundsInt8 => ptx_pair!(arch, "bounds_int8"),
            Family::Decode => ptx_pair!(arch, "decode_attention"),
            Family::Prefill => ptx_pair!(arch, "prefill_attention"),
            Family::Sampling => ptx_pair!(arch, "sampling"),
            Family::Random => ptx_pair!(arch, "random"),
        }
    }
}

/// Serialises the panic-hook swap in [`guarded`].
static HOOK_LOCK: Mutex<()> = Mutex::new(());

/// Runs `f`, turning a panic (cudarc panics when the driver library or a symbol is missing) into
/// `NoDevice`, with the default panic message silenced for the duration.
pub(super) fn guarded<R>(what: &str, f: impl FnOnce() -> R + std::panic::UnwindSafe) -> Result<R> {
    let _lock = HOOK_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(f);
    std::panic::set_hook(hook);
    r.map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        KernelError::NoDevice(format!("{what}: {msg}"))
    })
}

/// Checks that the driver library loads and that device `ordinal` exists.
pub(super) fn probe(ordinal: usize) -> Result<()> {
    // SAFETY: only tries to dlopen the usual libcuda names; nothing is called through them.
    let present = guarded("loading libcuda", || unsafe {
        cudarc::driver::sys::is_culib_present()
    })?;
    if !present {
        return Err(KernelError::NoDevice(
            "the NVIDIA driver library (libcuda.so.1) was not found; install the driver or use the CPU backend".into(),
        ));
    }
    let count = guarded("initialising the CUDA driver", CudaContext::device_count)?
        .map_err(|e| KernelError::NoDevice(format!("CUDA driver initialisation failed: {e}")))?;
    if count <= 0 {
        return Err(KernelError::NoDevice(
            "the driver reports no CUDA device".into(),
        ));
    }
    if ordinal >= count as usize {
        return Err(KernelError::NoDevice(format!(
            "device {ordinal} requested but only {count} CUDA device(s) present"
        )));
    }
    Ok(())
}
