//! Quest's criticality estimate and top-k page selection (`ptx/select.cu`), same checks and the
//! same (exact) results as [`crate::cpu::select`].

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{CudaFunction, DeviceRepr, LaunchConfig};

use super::{CudaBackend, CudaBuf, Family, check_rows, check_table, cuda_err, suffix};
use crate::backend::{AttentionShape, DevicePageTable, SelectOptions};
use crate::cpu::select::{check_estimate_io, check_heads};
use crate::dtype::Half;
use crate::error::{Result, arg_err, expect_len, shape_err};
use crate::layout::TableRows;

#[repr(C)]
#[derive(Clone, Copy)]
struct EstimateParams {
    batch: i32,
    num_qo_heads: i32,
    num_kv_heads: i32,
    head_dim: i32,
    nnz: i32,
    num_pages: i32,
}
// SAFETY: plain #[repr(C)] i32 fields, the same layout as `EstimateParams` in ptx/select.cu.
unsafe impl DeviceRepr for EstimateParams {}

#[repr(C)]
#[derive(Clone, Copy)]
struct SelectParams {
    num_qo_heads: i32,
    heads: i32,
    group: i32,
    nnz: i32,
    budget: i32,
    /// Adaptive budget threshold p (< 1; `select_top_pages_mass` only).
    mass: f32,
    /// `sm_scale / group`: the mass of a page is `exp(scale * (s - s_max))`.
    scale: f32,
    /// Candidates a row may keep in the launch's dynamic shared memory (longer rows re-read
    /// their keys from global memory on every radix pass).
    key_cap: i32,
}
// SAFETY: plain #[repr(C)] 4-byte fields, the same layout as `SelectParams` in ptx/select.cu.
unsafe impl DeviceRepr for SelectParams {}

/// The most winners (`budget_pages - 1`) a row may have in the adaptive-budget kernel, which sorts
/// them in shared memory (`MASS_CAP` in ptx/select.cu).
pub(super) const MASS_CAP: usize = 1024;

/// Candidates a top-k thread holds in registers (`TOPK_REG` in ptx/select.cu) x the block's 1024
/// threads: longer rows keep their keys in dynamic shared memory.
const REGISTER_KEYS: usize = 8 * 1024;

/// 32-bit words of shared memory for `cand` keys, one word of padding every 32 (`key_skew` in
/// ptx/select.cu).
fn key_words(cand: usize) -> usize {
    cand + cand / 32 + 1
}

/// The most candidates whose skewed keys fit in `room` words: the largest `c` with
/// `key_words(c) <= room` (`c + c / 32 <= room - 1` holds for `c = (room - 1) * 32 / 33`).
fn key_capacity(room_words: usize) -> usize {
    let mut c = room_words.saturating_sub(1) * 32 / 33;
    while key_words(c + 1) <= room_words {
        c += 1;
    }
    c
}

/// The dynamic shared memory (in 32-bit words) a top-k kernel may use beside its static shared
/// memory, up to the device's opt-in limit. Found once per backend and kernel, when the
/// function's limit is raised to it (always to the same value, so a launch on another thread
/// never finds it lowered).
fn key_room(be: &CudaBackend, f: &CudaFunction, adaptive: bool) -> Result<usize> {
    const OP: &str = "select_top_pages";
    let slot = &be.topk_key_room()[adaptive as usize];
    if let Some(&room) = slot.get() {
        return Ok(room);
    }
    let optin = be
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .map_err(|e| cuda_err(OP, e))?;
    // Also binds the context to this thread, which set_attribute does not do.
    let fixed = f.shared_size_bytes().map_err(|e| cuda_err(OP, e))?;
    let room = (optin - fixed).max(0) as usize / 4;
    f.set_attribute(
        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        (room * 4) as i32,
    )
    .map_err(|e| cuda_err(OP, e))?;
    let _ = slot.set(room);
    Ok(room)
}

/// [`CudaBackend::top_k_shared_key_capacity`].
pub(super) fn shared_key_capacity(be: &CudaBackend, adaptive: bool) -> Result<usize> {
    let name = if adaptive {
        "select_top_pages_mass"
    } else {
        "select_top_pages"
    };
    let f = be.func("select_top_pages", Family::Select, name)?;
    Ok(key_capacity(key_room(be, &f, adaptive)?))
}

/// The dynamic shared memory (bytes) and `key_cap` of a top-k launch whose rows that read keys
/// have `cands()` candidates each: sized for the longest of them over [`REGISTER_KEYS`]
/// that fits the device's room. Longer rows take the global-memory path.
fn key_smem<I: Iterator<Item = usize>>(
    be: &CudaBackend,
    f: &CudaFunction,
    adaptive: bool,
    cands: impl Fn() -> I,
) -> Result<(u32, i32)> {
    if cands().all(|c| c <= REGISTER_KEYS) {
        return Ok((0, 0));
    }
    let cap = key_capacity(key_room(be, f, adaptive)?);
    let need = cands().filter(|&c| c > REGISTER_KEYS && c <= cap).max();
    Ok(match need {
        Some(n) => (
            (key_words(n) * 4) as u32,
            i32_of("select_top_pages", "key_cap", n)?,
        ),
        None => (0, 0),
    })
}

/// The vectorised kernels give each lane 8 channels of a head, a team of `head_dim / 8` lanes
/// (a power of two up to a warp) per head.
pub(super) fn check_head_dim(op: &'static str, head_dim: usize) -> Result<()> {
    let team = head_dim / 8;
    if head_dim % 8 != 0 || !team.is_power_of_two() || team > 32 {
        return Err(arg_err(
            op,
            format!("the CUDA kernels support head_dim 8, 16, 32, 64, 128 or 256, not {head_dim}"),
        ));
    }
    Ok(())
}

/// Both estimate kernels count their teams in i32 and step past the last by less than one grid
/// of blocks (at most `teams` more, plus a block's 256 teams).
pub(super) fn check_estimate_teams(op: &'static str, teams: usize) -> Result<()> {
    i32_of(op, "estimate teams", 2 * teams + 256).map(|_| ())
}

pub(super) fn i32_of(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| arg_err(op, format!("{what} = {v} exceeds i32")))
}

pub(super) fn estimate_pages<T: Half>(
    be: &CudaBackend,
    q: &CudaBuf<f32>,
    bounds: &CudaBuf<T>,
    shape: &AttentionShape,
    table: &DevicePageTable<CudaBackend>,
    scores: &mut CudaBuf<f32>,
) -> Result<()> {
    const OP: &str = "estimate_pages";
    let layout = &shape.layout;
    check_heads(OP, shape)?;
    check_table(OP, table, layout)?;
    expect_len(OP, "bounds", bounds.len(), layout.bounds_len())?;
    let (hq, d) = (shape.num_qo_heads, layout.head_dim);
    let (batch, nnz) = (table.rows(), table.nnz());
    check_estimate_io(OP, shape, batch, nnz, q.len(), scores.len())?;
    check_head_dim(OP, d)?;
    if nnz == 0 {
        return Ok(());
    }
    let p = EstimateParams {
        batch: i32_of(OP, "batch", batch)?,
        num_qo_heads: i32_of(OP, "num_qo_heads", hq)?,
        num_kv_heads: i32_of(OP, "num_kv_heads", layout.num_kv_heads)?,
        head_dim: d as i32,
        nnz: i32_of(OP, "nnz", nnz)?,
        num_pages: i32_of(OP, "num_pages", layout.num_pages)?,
    };
    let f = be.func(
        OP,
        Family::Select,
        &format!("estimate_pages_{}", suffix::<T>(OP)?),
    )?;
    // EST_PPT (2) entries per team of d / 8 lanes; the kernel loops grid-stride over at most
    // the blocks resident at once (EST_MIN_BLOCKS = 4 per SM, its __launch_bounds__), so there is
    // no partial last wave. Chosen on the H100 from scripts/kernel-experiments/estimate_variants.cu.
    let teams = nnz.div_ceil(2) * layout.num_kv_heads;
    check_estimate_teams(OP, teams)?;
    let threads = teams * (d / 8);
    let blocks = threads.div_ceil(256).min(4 * be.num_sms() as usize);
    let cfg = LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let (qp, bp, ip, xp, sp) = (
        q.ptr(),
        bounds.ptr(),
        table.indptr.ptr(),
        table.indices.ptr(),
        scores.touched(),
    );
    let mut b = be.launch_builder(&f);
    b.arg(&qp).arg(&bp).arg(&ip).arg(&xp).arg(&sp).arg(&p);
    // SAFETY: matches `estimate_pages_*(const float*, const T*, const int*, const int*, float*,
    // EstimateParams)`; lengths checked above; page ids are range-checked in the kernel.
    unsafe { b.launch(cfg) }.map_err(|e| cuda_err(OP, e))?;
    Ok(())
}

pub(super) fn select_top_pages(
    be: &CudaBackend,
    scores: &CudaBuf<f32>,
    shape: &AttentionShape,
    table: &DevicePageTable<CudaBackend>,
    opts: SelectOptions,
    out: &mut DevicePageTable<CudaBackend>,
    kept: Option<&mut CudaBuf<u64>>,
) -> Result<()> {
    const OP: &str = "select_top_pages";
    check_heads(OP, shape)?;
    check_table(OP, table, &shape.layout)?;
    opts.validate(OP)?;
    let budget_pages = opts.budget_pages;
    let hq = shape.num_qo_heads;
    let nnz = table.nnz();
    expect_len(OP, "scores", scores.len(), hq * nnz)?;
    let (heads, group) = match opts.rows {
        TableRows::PerKvHead => (shape.layout.num_kv_heads, shape.group_size()),
        _ => (hq, 1),
    };
    let batch = table.rows();
    expect_len(OP, "output rows", out.rows(), batch * heads)?;
    let want =
        DevicePageTable::<CudaBackend>::selection_indptr(&table.indptr_host, heads, budget_pages);
    if out.indptr_host != want {
        return Err(shape_err(
            OP,
            "output table rows do not match the budget (build it with for_selection)",
        ));
    }
    // The device buffers of `out` (its indptr is read by the kernel) match its rows.
    check_rows(OP, "output table", out)?;
    if let Some(k) = &kept {
        expect_len(OP, "kept counter", k.len(), 1)?;
    }
    let trim = opts.trim();
    // The adaptive kernel sorts a row's winners in shared memory: at most MASS_CAP of them.
    let longest = table
        .indptr_host
        .windows(2)
        .map(|w| (w[1] - w[0]).max(0) as usize)
        .max()
        .unwrap_or(0);
    if trim.is_some() && budget_pages.min(longest).saturating_sub(1) > MASS_CAP {
        return Err(arg_err(
            OP,
            format!(
                "the adaptive budget (mass) supports at most {} pages a row on CUDA, not {}",
                MASS_CAP + 1,
                budget_pages.min(longest)
            ),
        ));
    }
    if batch * heads == 0 {
        return Ok(());
    }
    let p = SelectParams {
        num_qo_heads: i32_of(OP, "num_qo_heads", hq)?,
        heads: heads as i32,
        group: group as i32,
        nnz: i32_of(OP, "nnz", nnz)?,
        budget: i32_of(OP, "budget_pages", budget_pages)?,
        mass: trim.unwrap_or(1.0),
        scale: shape.sm_scale / group as f32,
        key_cap: 0,
    };
    let name = if trim.is_some() {
        "select_top_pages_mass"
    } else {
        "select_top_pages"
    };
    let f = be.func(OP, Family::Select, name)?;
    // The candidates of the rows that read keys: none at a budget of one page (only the last
    // page is kept); otherwise rows over the budget (the plain kernel copies the others), or of
    // two pages or more with an adaptive budget.
    let selecting = || {
        table
            .indptr_host
            .windows(2)
            .map(|w| (w[1] - w[0]).max(0) as usize)
            .filter(move |&n| {
                budget_pages > 1
                    && if trim.is_some() {
                        n > 1
                    } else {
                        n > budget_pages
                    }
            })
            .map(|n| n - 1)
    };
    let (smem, key_cap) = key_smem(be, &f, trim.is_some(), selecting)?;
    let p = SelectParams { key_cap, ..p };
    let (sp, ip, xp, lp) = (
        scores.ptr(),
        table.indptr.ptr(),
        table.indices.ptr(),
        table.last_page_len.ptr(),
    );
    let (oip, oxp, olp) = (
        out.indptr.ptr(),
        out.indices.touched(),
        out.last_page_len.touched(),
    );
    let kp: u64 = kept.map_or(0, |k| k.touched());
    let mut b = be.launch_builder(&f);
    b.arg(&sp)
        .arg(&ip)
        .arg(&xp)
        .arg(&lp)
        .arg(&oip)
        .arg(&oxp)
        .arg(&olp)
        .arg(&kp)
        .arg(&p);
    let cfg = LaunchConfig {
        grid_dim: ((batch * heads) as u32, 1, 1),
        block_dim: (1024, 1, 1),
        shared_mem_bytes: smem,
    };
    // SAFETY: matches `select_top_pages[_mass](const float*, const int* x4, int*, int*,
    // unsigned long long*, SelectParams)`; the output rows were checked to be
    // `selection_indptr` of the input, so every row's writes stay inside its `min(n, budget)`
    // slots; `kept` is null or one u64; the mass kernel's rows have at most MASS_CAP winners.
    unsafe { b.launch(cfg) }.map_err(|e| cuda_err(OP, e))?;
    Ok(())
}

pub(super) fn force_pages(
    be: &CudaBackend,
    scores: &mut CudaBuf<f32>,
    num_qo_heads: usize,
    table: &DevicePageTable<CudaBackend>,
    first: usize,
    recent: usize,
) -> Result<()> {
    const OP: &str = "force_pages";
    check_rows(OP, "page table", table)?;
    let nnz = table.nnz();
    expect_len(OP, "scores", scores.len(), num_qo_heads * nnz)?;
    let batch = table.rows();
    if batch == 0 || nnz == 0 || (first == 0 && recent == 0) {
        return Ok(());
    }
    let f = be.func(OP, Family::Select, "force_pages")?;
    let (sp, ip) = (scores.touched(), table.indptr.ptr());
    let (n, h) = (
        i32_of(OP, "nnz", nnz)?,
        i32_of(OP, "num_qo_heads", num_qo_heads)?,
    );
    let (fi, re) = (
        i32_of(OP, "first", first.min(i32::MAX as usize))?,
        i32_of(OP, "recent", recent.min(i32::MAX as usize))?,
    );
    let mut b = be.launch_builder(&f);
    b.arg(&sp).arg(&ip).arg(&n).arg(&h).arg(&fi).arg(&re);
    let cfg = LaunchConfig {
        grid_dim: (i32_of(OP, "batch", batch)? as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: matches `force_pages(float*, const int*, int, int, int, int)`; `scores` holds
    // num_qo_heads * nnz floats and every write is at h * nnz + j with j inside its row, which
    // check_rows made sure lies in 0..nnz (indptr from 0, never decreasing, ending at nnz).
    unsafe { b.launch(cfg) }.map_err(|e| cuda_err(OP, e))?;
    Ok(())
}
