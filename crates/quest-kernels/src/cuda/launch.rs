//! Kernel launches, with programmatic dependent launch (PDL) on sm_90 and newer.
//!
//! A decode step is hundreds of short kernels in one stream. Launched the plain way, each kernel's
//! blocks reach the SMs only after the previous kernel has drained: a gap of a few µs per launch.
//! With the `PROGRAMMATIC_STREAM_SERIALIZATION` attribute the next kernel's blocks may be placed
//! while the previous one finishes, and every kernel starts with `griddepcontrol.wait`
//! (`grid_dependency_sync` in `ptx/common.cuh`), which returns once the previous grid has
//! completed and its writes are visible. So the stream's ordering is unchanged; only the launch
//! latency overlaps the previous kernel's tail. On older GPUs (sm_80 PTX, no `griddepcontrol`)
//! launches carry no attribute. `QUEST_PDL=0` turns the attribute off, for A/B measurements.

use std::ffi::c_void;
use std::marker::PhantomData;

use cudarc::driver::sys;
use cudarc::driver::{CudaFunction, DeviceRepr, DriverError, LaunchConfig};

use super::CudaBackend;

/// Arguments of one kernel launch, pushed in the kernel's parameter order.
pub(crate) struct Launch<'a> {
    be: &'a CudaBackend,
    func: &'a CudaFunction,
    args: Vec<*mut c_void>,
    _args: PhantomData<&'a ()>,
}

impl CudaBackend {
    /// Starts a launch of `func` on this backend's stream.
    pub(crate) fn launch_builder<'a>(&'a self, func: &'a CudaFunction) -> Launch<'a> {
        Launch {
            be: self,
            func,
            args: Vec::with_capacity(12),
            _args: PhantomData,
        }
    }
}

impl<'a> Launch<'a> {
    /// Pushes the next kernel parameter (a plain value: device pointers travel as `u64`).
    pub(crate) fn arg<T: DeviceRepr>(&mut self, value: &'a T) -> &mut Self {
        self.args.push(value as *const T as *mut c_void);
        self
    }

    /// Queues the kernel on the backend's stream.
    ///
    /// # Safety
    /// The pushed arguments must match the kernel's parameter list in number, order and type,
    /// and the kernel must stay inside the buffers they point to.
    pub(crate) unsafe fn launch(&mut self, cfg: LaunchConfig) -> Result<(), DriverError> {
        self.be.context().bind_to_thread()?;
        // SAFETY: a zeroed attribute value is a valid union; only the field of `id` is read.
        let mut attr = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value: unsafe { std::mem::zeroed() },
        };
        attr.value.programmaticStreamSerializationAllowed = 1;
        let pdl = self.be.pdl();
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.be.queue().cu_stream(),
            attrs: if pdl { &mut attr } else { std::ptr::null_mut() },
            numAttrs: pdl as u32,
        };
        // SAFETY: `config` and `attr` outlive the call; the argument pointers point at values
        // borrowed for 'a; the caller vouches for their number and types.
        unsafe {
            sys::cuLaunchKernelEx(
                &config,
                self.func.cu_function(),
                self.args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
    }
}
