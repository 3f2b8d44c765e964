//! Timing on the backend's stream with CUDA events, and the copy bandwidth every speed in
//! `docs/benchmarks.md` is judged against.

use cudarc::driver::CudaEvent;
use cudarc::driver::sys::CUevent_flags;

use super::{CudaBackend, cuda_err};
use crate::error::Result;

/// A pair of timing events on the backend's stream.
pub struct CudaTimer {
    start: CudaEvent,
    end: CudaEvent,
    stream: std::sync::Arc<cudarc::driver::CudaStream>,
}

impl CudaTimer {
    pub fn new(be: &CudaBackend) -> Result<Self> {
        let ev = || {
            be.context()
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| cuda_err("timer", e))
        };
        Ok(CudaTimer {
            start: ev()?,
            end: ev()?,
            stream: be.stream().clone(),
        })
    }

    /// Marks the start of the timed region (queued on the stream).
    pub fn start(&self) -> Result<()> {
        self.start
            .record(&self.stream)
            .map_err(|e| cuda_err("timer", e))
    }

    /// Marks the end of the region and waits for it: milliseconds of device time between the marks.
    pub fn stop(&self) -> Result<f32> {
        self.end
            .record(&self.stream)
            .map_err(|e| cuda_err("timer", e))?;
        self.start
            .elapsed_ms(&self.end)
            .map_err(|e| cuda_err("timer", e))
    }
}

impl CudaBackend {
    /// Device-to-device copy bandwidth in bytes per second, counting bytes read plus bytes
    /// written (the convention of `docs/benchmarks.md`): the median of `reps` copies of `bytes`
    /// bytes after one warm-up copy. The two buffers are filled with random data first.
    pub fn copy_bandwidth(&self, bytes: usize, reps: usize) -> Result<f64> {
        const OP: &str = "copy_bandwidth";
        let bytes = bytes.max(1 << 20) & !255;
        let mut src = self
            .stream()
            .alloc_zeros::<u8>(bytes)
            .map_err(|e| cuda_err(OP, e))?;
        let mut dst = self
            .stream()
            .alloc_zeros::<u8>(bytes)
            .map_err(|e| cuda_err(OP, e))?;
        {
            // Random contents (never zeros): fill through a typed view of the same memory.
            let mut view = crate::cuda::CudaBuf::<f32> {
                mem: None,
                ptr: cudarc::driver::DevicePtr::device_ptr(&src, self.stream()).0,
                len: bytes / 4,
                mirror: None,
            };
            super::random::fill_random(self, &mut view, 0x5eed, 1.0)?;
        }
        let timer = CudaTimer::new(self)?;
        let mut times = Vec::with_capacity(reps);
        for i in 0..=reps {
            timer.start()?;
            self.stream()
                .memcpy_dtod(&src, &mut dst)
                .map_err(|e| cuda_err(OP, e))?;
            let ms = timer.stop()?;
            if i > 0 {
                times.push(ms as f64);
            }
            std::mem::swap(&mut src, &mut dst);
        }
        times.sort_by(f64::total_cmp);
        let med = times[times.len() / 2].max(1e-6);
        Ok(2.0 * bytes as f64 / (med * 1e-3))
    }
}
