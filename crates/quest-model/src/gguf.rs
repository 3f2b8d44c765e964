//! A GGUF v2/v3 reader: metadata, tensor infos and dequantization of F32, F16, Q8_0 and Q4_1.
//!
//! The file is untrusted. Every length and count read from it is checked against the bytes that
//! actually remain before anything is allocated from it, and every tensor's extent is checked
//! against the file, so a hostile file costs at most its own size in memory and gives an error
//! naming the problem.
//!
//! Layout: `"GGUF"`, version u32, tensor count u64, metadata count u64, metadata key/values,
//! tensor infos (name, n_dims u32, dims u64 × n_dims — fastest-varying first —, type u32, offset
//! u64), padding to `general.alignment` (default 32), then tensor data at the given offsets.

use std::collections::BTreeMap;

use half::f16;

use crate::error::{ModelError, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Dimensions a tensor may have (GGML's own limit).
const MAX_DIMS: u32 = 4;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// GGML tensor types this reader can dequantize; others are refused by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_1,
    Q8_0,
}

impl GgmlType {
    fn from_id(id: u32) -> Result<Self> {
        Ok(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            other => {
                return Err(ModelError::Format(format!(
                    "unsupported GGML tensor type {} ({other}); supported: F32, F16, Q4_1, Q8_0",
                    ggml_type_name(other)
                )));
            }
        })
    }

    /// (elements per block, bytes per block).
    fn block(self) -> (u64, u64) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 => (1, 2),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q8_0 => (32, 34),
        }
    }
}

fn ggml_type_name(id: u32) -> &'static str {
    match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        30 => "BF16",
        _ => "unknown",
    }
}

/// One tensor's description. `dims` are in GGML order (fastest first); [`TensorInfo::shape`]
/// gives the row-major (PyTorch) order.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Byte offset of the data from the start of the file (already checked to lie inside it).
    pub start: usize,
    pub byte_len: usize,
}

impl TensorInfo {
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    pub fn elements(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }
}

/// A parsed GGUF file borrowing its bytes.
#[derive(Debug)]
pub struct Gguf<'a> {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data: &'a [u8],
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(ModelError::Format(format!(
                "truncated file: {what} needs {n} bytes at offset {} but only {} remain",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count that must be satisfiable by the remaining bytes at `min_size` bytes per item.
    fn count(&mut self, min_size: usize, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        if n.saturating_mul(min_size as u64) > self.remaining() as u64 {
            return Err(ModelError::Format(format!(
                "{what} {n} is larger than the {} bytes left in the file",
                self.remaining()
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(1, what)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| ModelError::Format(format!("{what} is not valid UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(ModelError::Format(format!(
                        "metadata {key}: bool byte {b} is neither 0 nor 1"
                    )));
                }
            },
            8 => Value::String(self.string(key)?),
            9 => {
                if depth > 0 {
                    return Err(ModelError::Format(format!(
                        "metadata {key}: nested arrays are not supported"
                    )));
                }
                let elem = self.u32(key)?;
                let min_size = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => {
                        return Err(ModelError::Format(format!(
                            "metadata {key}: unknown array element type {other}"
                        )));
                    }
                };
                let n = self.count(min_size, key)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            other => {
                return Err(ModelError::Format(format!(
                    "metadata {key}: unknown value type {other}"
                )));
            }
        })
    }
}

impl<'a> Gguf<'a> {
    /// Parses the header and tensor table of `data` (the whole file).
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        let mut c = Cursor { buf: data, pos: 0 };
        if c.take(4, "magic")? != MAGIC {
            return Err(ModelError::Format("not a GGUF file (bad magic)".into()));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::Format(format!(
                "GGUF version {version} is not supported (2 or 3)"
            )));
        }
        // A tensor info is at least 8 (name len) + 4 (n_dims) + 4 (type) + 8 (offset) bytes.
        let n_tensors = c.count(24, "tensor count")?;
        // A key/value is at least 8 (key len) + 4 (type) + 1 bytes.
        let n_kv = c.count(13, "metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty = c.u32("metadata type")?;
            let value = c.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(ModelError::Format(format!("duplicate metadata key {key}")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(ModelError::Format(format!(
                        "general.alignment {v:?} is not a power of two"
                    )));
                }
            },
        };
        let mut raw = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32("tensor dims")?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(ModelError::Format(format!(
                    "tensor {name}: {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64("tensor dim")?);
            }
            let ty = c.u32("tensor type")?;
            let offset = c.u64("tensor offset")?;
            raw.push((name, dims, ty, offset));
        }
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(raw.len());
        let mut names = std::collections::HashSet::new();
        for (name, dims, ty, offset) in raw {
            let ggml_type = GgmlType::from_id(ty)
                .map_err(|e| ModelError::Format(format!("tensor {name}: {e}")))?;
            let elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&e| e > 0)
                .ok_or_else(|| {
                    ModelError::Format(format!(
                        "tensor {name}: dims {dims:?} are empty or overflow"
                    ))
                })?;
            let (block, block_bytes) = ggml_type.block();
            if dims[0] % block != 0 {
                return Err(ModelError::Format(format!(
                    "tensor {name}: row length {} is not a multiple of the {block}-element block",
                    dims[0]
                )));
            }
            let byte_len = (elements / block).checked_mul(block_bytes);
            let start = data_start.checked_add(offset);
            let end = start.zip(byte_len).and_then(|(s, l)| s.checked_add(l));
            let (Some(start), Some(byte_len), Some(end)) = (start, byte_len, end) else {
                return Err(ModelError::Format(format!(
                    "tensor {name}: extent overflows"
                )));
            };
            if end > data.len() as u64 {
                return Err(ModelError::Format(format!(
                    "tensor {name}: data [{start}, {end}) lies past the end of the file ({} bytes)",
                    data.len()
                )));
            }
            if offset % alignment != 0 {
                return Err(ModelError::Format(format!(
                    "tensor {name}: offset {offset} is not aligned to {alignment}"
                )));
            }
            if !names.insert(name.clone()) {
                return Err(ModelError::Format(format!("duplicate tensor {name}")));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                start: start as usize,
                byte_len: byte_len as usize,
            });
        }
        Ok(Gguf {
            version,
            metadata,
            tensors,
            data,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required unsigned integer metadata value.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key).and_then(Value::as_u64).ok_or_else(|| {
            ModelError::Format(format!("metadata {key} is missing or not an integer"))
        })
    }

    /// A required float metadata value.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| ModelError::Format(format!("metadata {key} is missing or not a number")))
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The tensor's values as f32, in row-major order of [`TensorInfo::shape`].
    pub fn dequantize(&self, info: &TensorInfo) -> Result<Vec<f32>> {
        // `TensorInfo`'s fields are public: check one built by hand before trusting it.
        let (block, block_bytes) = info.ggml_type.block();
        let elements = info.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let bytes = info
            .start
            .checked_add(info.byte_len)
            .and_then(|end| self.data.get(info.start..end))
            .filter(|b| {
                elements
                    .is_some_and(|e| e % block == 0 && e / block * block_bytes == b.len() as u64)
            })
            .ok_or_else(|| {
                ModelError::Format(format!(
                    "tensor {}: its extent or size does not match this file",
                    info.name
                ))
            })?;
        let mut out = vec![0f32; info.elements()];
        dequantize_into(info.ggml_type, bytes, &mut out);
        Ok(out)
    }
}

/// Dequantizes whole blocks of `bytes` into `out` (lengths already consistent).
fn dequantize_into(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let h = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
    match ty {
        GgmlType::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = h(b);
            }
        }
        GgmlType::Q8_0 => {
            // Block: f16 scale d, 32 × i8 q; x = d * q.
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(34)) {
                let d = h(&b[0..2]);
                for (x, &q) in o.iter_mut().zip(&b[2..34]) {
                    *x = d * (q as i8) as f32;
                }
            }
        }
        GgmlType::Q4_1 => {
            // Block: f16 scale d, f16 min m, 16 bytes of nibbles; element j < 16 is the low
            // nibble of byte j, element j + 16 its high nibble; x = d * q + m.
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(20)) {
                let (d, m) = (h(&b[0..2]), h(&b[2..4]));
                for (j, &q) in b[4..20].iter().enumerate() {
                    o[j] = d * (q & 0x0f) as f32 + m;
                    o[j + 16] = d * (q >> 4) as f32 + m;
                }
            }
        }
    }
}

/// Undoes llama.cpp's rotary row permutation of a Q or K projection (`[n_heads * head_dim,
/// cols]`, row-major): GGUF stores row `2i + s` of each head where Hugging Face has `s * head_dim/2
/// + i`.
pub fn unpermute_rotary_rows(w: &[f32], n_heads: usize, cols: usize) -> Result<Vec<f32>> {
    let rows = w.len() / cols.max(1);
    if cols == 0 || n_heads == 0 || rows * cols != w.len() || rows % (2 * n_heads) != 0 {
        return Err(ModelError::Shape(format!(
            "cannot unpermute {} values as {n_heads} heads of {cols} columns",
            w.len()
        )));
    }
    let head_dim = rows / n_heads;
    let half = head_dim / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for s in 0..2 {
                let src = h * head_dim + 2 * i + s;
                let dst = h * head_dim + s * half + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_and_q8_0_blocks_dequantize() {
        let mut q41 = Vec::new();
        q41.extend_from_slice(&f16::from_f32(0.5).to_le_bytes());
        q41.extend_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        q41.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = vec![0f32; 32];
        dequantize_into(GgmlType::Q4_1, &q41, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], 0.5 * j as f32 - 1.0);
            assert_eq!(out[j + 16], 0.5 * (15 - j) as f32 - 1.0);
        }
        let mut q8 = Vec::new();
        q8.extend_from_slice(&f16::from_f32(0.25).to_le_bytes());
        q8.extend((0..32i32).map(|j| (j - 16) as i8 as u8));
        dequantize_into(GgmlType::Q8_0, &q8, &mut out);
        for (j, &x) in out.iter().enumerate() {
            assert_eq!(x, 0.25 * (j as f32 - 16.0));
        }
    }

    #[test]
    fn unpermute_inverts_the_llama_cpp_permutation() {
        let (heads, head_dim, cols) = (2, 8, 3);
        let hf: Vec<f32> = (0..heads * head_dim * cols).map(|x| x as f32).collect();
        // llama.cpp's permutation: HF row s*half + i goes to GGUF row 2i + s.
        let half = head_dim / 2;
        let mut gg = vec![0f32; hf.len()];
        for h in 0..heads {
            for s in 0..2 {
                for i in 0..half {
                    let (src, dst) = (h * head_dim + s * half + i, h * head_dim + 2 * i + s);
                    gg[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_eq!(unpermute_rotary_rows(&gg, heads, cols).unwrap(), hf);
    }
}
