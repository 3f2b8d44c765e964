//! Helpers shared by the fuzz targets: a reader that turns fuzz bytes into small numbers and
//! choices (never failing: an exhausted input reads as zeros), and a scratch directory reused by
//! every run of a target that has to go through the file system.

use std::path::Path;
use std::sync::OnceLock;

/// Reads fuzz input as a stream of small decisions.
pub struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data, pos: 0 }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        self.u16() as usize % n
    }

    /// A value in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// A finite, non-zero-ish f32 from one byte.
    pub fn value(&mut self) -> f32 {
        (self.u8() as i8) as f32 / 8.0
    }

    /// The rest of the input.
    pub fn rest(&mut self) -> &'a [u8] {
        let r = self.data.get(self.pos..).unwrap_or(&[]);
        self.pos = self.data.len();
        r
    }
}

/// A temporary directory that lives as long as the fuzzing process (one per process: libFuzzer
/// runs one input at a time, so the files in it are rewritten by each run).
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("create a scratch directory"))
        .path()
}

/// Writes `bytes` to `dir/name`, replacing what was there.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).expect("write a scratch file");
}

/// Removes `dir/name` if it exists.
pub fn remove(dir: &Path, name: &str) {
    let _ = std::fs::remove_file(dir.join(name));
}
