//! Element types that buffers hold, and the 16-bit float storage types for weights and KV.

use half::{bf16, f16};

/// The runtime name of a storage type, for configs, file headers and error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    Bf16,
    I32,
    U32,
    /// Unsigned bytes: the codes of 8-bit page bounds ([`crate::layout::BoundsFormat::Int8`]).
    U8,
    /// 64-bit counters (the pages an adaptive selection kept, summed on the device).
    U64,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::U8 => 1,
            DType::F16 | DType::Bf16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::U64 => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
            DType::I32 => "i32",
            DType::U32 => "u32",
            DType::U8 => "u8",
            DType::U64 => "u64",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Anything a backend buffer can hold: plain old data with a runtime dtype.
pub trait Elem: Copy + Default + Send + Sync + std::fmt::Debug + PartialEq + 'static {
    const DTYPE: DType;
}

impl Elem for f32 {
    const DTYPE: DType = DType::F32;
}
impl Elem for f16 {
    const DTYPE: DType = DType::F16;
}
impl Elem for bf16 {
    const DTYPE: DType = DType::Bf16;
}
impl Elem for i32 {
    const DTYPE: DType = DType::I32;
}
impl Elem for u32 {
    const DTYPE: DType = DType::U32;
}
impl Elem for u8 {
    const DTYPE: DType = DType::U8;
}
impl Elem for u64 {
    const DTYPE: DType = DType::U64;
}

/// A storage type for weights and KV pages (f16 or bf16; f32 too, for tests and references).
/// Arithmetic always happens in f32 after `to_f32`.
pub trait Half: Elem + PartialOrd {
    fn to_f32(self) -> f32;
    fn from_f32(x: f32) -> Self;
    /// `dst[i] = src[i].to_f32()`, vectorized where the CPU allows.
    fn to_f32_slice(src: &[Self], dst: &mut [f32]);
}

impl Half for f16 {
    #[inline]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline]
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn to_f32_slice(src: &[Self], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
}

impl Half for bf16 {
    #[inline]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline]
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn to_f32_slice(src: &[Self], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
}

impl Half for f32 {
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline]
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32_slice(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}
