//! Reading a Hugging Face checkpoint's safetensors: one `model.safetensors`, or several files
//! listed by `model.safetensors.index.json`. Files are memory-mapped; each tensor's header entry
//! is validated by the `safetensors` crate (offsets inside the file, sizes matching shapes), and
//! we check its shape against the config and its values for NaN/Inf before converting.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use quest_kernels::Half;
use safetensors::{Dtype, SafeTensors};

use crate::error::{ModelError, Result};

/// The safetensors files of a checkpoint directory, mapped.
pub struct Checkpoint {
    files: Vec<(PathBuf, Mmap)>,
    /// Tensor name → index into `files`.
    index: BTreeMap<String, usize>,
}

fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: the map is read-only and private to this process; its bytes are treated as
    // untrusted input and every access is bounds-checked by the safetensors parser. Truncating
    // the file while it is mapped is outside what we defend against (as for every mmap reader).
    unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))
}

fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes)
        .map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))
}

impl Checkpoint {
    /// Opens `dir/model.safetensors`, or the files of `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let names: Vec<PathBuf> = if single.is_file() {
            vec![single]
        } else if index_path.is_file() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| ModelError::Json {
                    path: index_path.clone(),
                    source,
                })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    ModelError::Format(format!("{}: no weight_map", index_path.display()))
                })?;
            let mut files: Vec<PathBuf> = Vec::new();
            for f in map.values() {
                let f = f.as_str().ok_or_else(|| {
                    ModelError::Format(format!("{}: bad file name", index_path.display()))
                })?;
                // Only plain file names inside the checkpoint directory.
                if f.contains('/') || f.contains('\\') || f.starts_with('.') {
                    return Err(ModelError::Format(format!(
                        "{}: file name {f:?} leaves the checkpoint directory",
                        index_path.display()
                    )));
                }
                let p = dir.join(f);
                if !files.contains(&p) {
                    files.push(p);
                }
            }
            files
        } else {
            return Err(ModelError::Format(format!(
                "{}: no model.safetensors or model.safetensors.index.json",
                dir.display()
            )));
        };
        let mut files_mapped = Vec::with_capacity(names.len());
        let mut index = BTreeMap::new();
        for (i, path) in names.into_iter().enumerate() {
            let map = map_file(&path)?;
            for name in parse(&path, &map)?.names() {
                if index.insert(name.to_owned(), i).is_some() {
                    return Err(ModelError::Format(format!(
                        "tensor {name} appears in two files"
                    )));
                }
            }
            files_mapped.push((path, map));
        }
        Ok(Checkpoint {
            files: files_mapped,
            index,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Tensor `name`, which must have `shape`, converted to `W`.
    pub fn tensor<W: Half>(&self, name: &str, shape: &[usize]) -> Result<Vec<W>> {
        let &i = self
            .index
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_owned()))?;
        let (path, map) = &self.files[i];
        let st = parse(path, map)?;
        let view = st
            .tensor(name)
            .map_err(|e| ModelError::Format(format!("{}: {name}: {e}", path.display())))?;
        if view.shape() != shape {
            return Err(ModelError::Shape(format!(
                "tensor {name} has shape {:?}, the config needs {shape:?}",
                view.shape()
            )));
        }
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::Dtype {
                    tensor: name.to_owned(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        let mut out = Vec::with_capacity(values.len());
        for v in values {
            let w = W::from_f32(v);
            if !w.to_f32().is_finite() {
                return Err(ModelError::NonFinite(name.to_owned()));
            }
            out.push(w);
        }
        Ok(out)
    }
}
