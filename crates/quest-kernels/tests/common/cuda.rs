//! The CUDA side of the GPU tests: one backend per test binary, or the reason there is none.

use std::sync::OnceLock;

use quest_kernels::{Backend, CudaBackend};

use super::{assert_written, max_row_rel_err};

/// The device every test of the binary shares; `None` (after printing `skipped: no CUDA device
/// (<reason>)` to stderr) without a driver or GPU, so each test returns early and says why.
pub fn cuda() -> Option<&'static CudaBackend> {
    static B: OnceLock<Result<CudaBackend, String>> = OnceLock::new();
    let b = B.get_or_init(|| {
        let b = CudaBackend::new(0).map_err(|e| e.to_string());
        if let Ok(b) = &b {
            eprintln!("running on {}", b.name());
        }
        b
    });
    match b {
        Ok(b) => Some(b),
        Err(reason) => {
            eprintln!("skipped: no CUDA device ({reason})");
            None
        }
    }
}

/// Every element written, and each row of `width` within `tol` relative error (in norm) of the
/// reference.
pub fn check_close(what: &str, got: &[f32], want: &[f32], width: usize, tol: f64) {
    assert_written(what, got);
    let want64: Vec<f64> = want.iter().map(|&x| x as f64).collect();
    let (e, row) = max_row_rel_err(got, &want64, width.max(1));
    assert!(
        e <= tol,
        "{what}: row {row} relative error {e:.3e} > {tol:.0e}"
    );
}
