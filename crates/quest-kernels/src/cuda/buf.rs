//! The CUDA backend's buffer type and the host <-> device byte views it needs.

use std::any::TypeId;

use cudarc::driver::CudaSlice;
use half::{bf16, f16};

use crate::dtype::{DType, Elem};
use crate::error::{Result, arg_err};

/// Small integer buffers keep a host copy (see [`CudaBuf`]) up to this many elements.
pub(super) const MIRROR_MAX: usize = 1 << 20;

/// A typed buffer of device memory. Integer buffers written from the host (token ids, slots, page
/// tables) also keep a host mirror, so ops can validate indices exactly like the CPU reference
/// without a device round trip; a kernel that writes the buffer drops the mirror, and validation
/// then downloads.
pub struct CudaBuf<T: Elem> {
    pub(super) mem: Option<CudaSlice<u8>>,
    pub(super) ptr: u64,
    pub(super) len: usize,
    pub(super) mirror: Option<Vec<T>>,
}

impl<T: Elem> CudaBuf<T> {
    /// Elements in the buffer.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device address, for kernel arguments (0 for an empty buffer, which no kernel reads).
    pub(crate) fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Drops the host mirror, as a kernel writing the buffer would. Ops can then no longer check
    /// its contents on the host and rely on the kernels' own bounds checks; tests use this to
    /// hand kernels a corrupt page table.
    pub fn forget_host_mirror(&mut self) {
        self.mirror = None;
    }

    /// Marks the buffer as written on the device: the host mirror is stale.
    pub(crate) fn touched(&mut self) -> u64 {
        self.mirror = None;
        self.ptr
    }
}

/// Whether `T` is one of the plain-old-data element types (no padding, every bit pattern valid),
/// which makes viewing `[T]` as bytes sound.
fn is_pod<T: Elem>() -> bool {
    let id = TypeId::of::<T>();
    [
        TypeId::of::<f32>(),
        TypeId::of::<f16>(),
        TypeId::of::<bf16>(),
        TypeId::of::<i32>(),
        TypeId::of::<u32>(),
        TypeId::of::<u8>(),
        TypeId::of::<u64>(),
    ]
    .contains(&id)
        && std::mem::size_of::<T>() == T::DTYPE.size_in_bytes()
}

pub(super) fn check_pod<T: Elem>(op: &'static str) -> Result<()> {
    if is_pod::<T>() {
        Ok(())
    } else {
        Err(arg_err(
            op,
            format!("element type {} cannot live in device memory", T::DTYPE),
        ))
    }
}

pub(super) fn as_bytes<T: Elem>(data: &[T]) -> &[u8] {
    debug_assert!(is_pod::<T>());
    // SAFETY: callers checked `is_pod::<T>()`: T is f32/f16/bf16/i32/u32/u8/u64, which have no padding,
    // so every byte of the slice is initialised; u8 has alignment 1 and the length is exact.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data)) }
}

pub(super) fn as_bytes_mut<T: Elem>(data: &mut [T]) -> &mut [u8] {
    debug_assert!(is_pod::<T>());
    // SAFETY: as in `as_bytes`; additionally every bit pattern is a valid T, so writes of
    // arbitrary bytes through the view leave valid values.
    unsafe {
        std::slice::from_raw_parts_mut(data.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(data))
    }
}

pub(super) fn is_int<T: Elem>() -> bool {
    matches!(T::DTYPE, DType::I32 | DType::U32)
}
