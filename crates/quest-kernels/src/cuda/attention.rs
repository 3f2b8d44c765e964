//! Paged decode and causal prefill attention (`ptx/decode_attention.cu`,
//! `ptx/prefill_attention.cu`, kernel in `ptx/attention.cuh`); checks as in
//! [`crate::cpu::attention`]. This file sizes the launch: the kernel (CUDA cores, or tensor cores
//! for grouped heads, `ptx/attention_mma.cuh`), the GQA head chunk per block and the split-K
//! factor that fills the GPU.

use cudarc::driver::{CudaFunction, DeviceRepr, LaunchConfig};

use super::select::{check_head_dim, i32_of};
use super::{CudaBackend, CudaBuf, Family, check_table, check_table_sparse, cuda_err, suffix};
use crate::backend::{AttentionShape, Backend, DevicePageTable};
use crate::cpu::select::check_heads;
use crate::dtype::{DType, Half};
use crate::error::{Result, expect_len, shape_err};
use crate::layout::TableRows;

const THREADS: u32 = 128;
const TOKENS_PER_STEP_PER_TEAM: usize = 2; // ATT_U in ptx/attention.cuh
/// Tensor-core decode (ptx/attention_mma.cuh): MMA_WARPS warps a block, one page of 16 tokens
/// per warp step, so a block step is 8 pages.
const MMA_THREADS: u32 = 8 * 32;
const MMA_STEP_TOKENS: usize = 8 * 16;
/// The tensor-core kernel's smallest split on rows of at least `MMA_LONG_ROW_TOKENS`: at 8K
/// tokens (8 KV heads) 512-token chunks (16 splits) beat 256 (32 splits), 22.3 against 23.2 us,
/// and longer rows already use larger chunks. Shorter rows (Quest's selections) keep 128-token
/// chunks: 512 would leave a 2048-token budget 4 splits a KV head, 32 blocks (19.2 against
/// 15.2 us). docs/kernels.md.
const MMA_MIN_CHUNK: usize = 512;
const MMA_LONG_ROW_TOKENS: usize = 8192;
/// Threads of a `merge_splits` block (`MERGE_THREADS` in `ptx/attention.cuh`): at least head_dim
/// (at most 256, `check_head_dim`).
const MERGE_THREADS: u32 = 256;
/// Rows up to this many tokens give every query head its own block (GB = 1): for short rows
/// (Quest's selections) parallelism beats reading a KV page once per group (L2 catches most
/// re-reads). Measured on the H100, docs/kernels.md.
const SHORT_ROW_TOKENS: usize = 8192;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct AttnParams {
    num_queries: i32,
    batch: i32,
    num_qo_heads: i32,
    num_kv_heads: i32,
    head_dim: i32,
    page_size: i32,
    page_shift: i32,
    num_pages: i32,
    rows_mode: i32,
    group_chunks: i32,
    chunk_tokens: i32,
    num_splits: i32,
    scale_log2: f32,
    /// Device pointer to one zeroed `int` per grid row: the decode kernels' split tickets for
    /// the in-kernel merge (0 in prefill, which launches `merge_splits`). `repr(C)` pads before
    /// it to 8 bytes, as C does.
    tickets: u64,
}
// SAFETY: #[repr(C)] of i32/f32/u64 fields only, the same layout as `AttnParams` in ptx/attention.cuh.
unsafe impl DeviceRepr for AttnParams {}

/// Query heads per block: the smallest instantiated chunk holding the GQA group (8 at most),
/// or 1 when every query head has its own row or the rows are short.
fn heads_per_block(rows: TableRows, group: usize, max_len: usize) -> usize {
    if rows == TableRows::PerQoHead || max_len <= SHORT_ROW_TOKENS {
        return 1;
    }
    [1, 2, 4, 8].into_iter().find(|&g| g >= group).unwrap_or(8)
}

/// The tensor-core decode kernel for this launch, as its n-tile count (1: groups of 2..=4 query
/// heads per KV head, 2: 5..=8), or `None` for the CUDA-core kernel.
///
/// Why these bounds: the kernel puts a group's query heads (hi and lo halves of q) in the 16 rows
/// of an mma.sync m16n8k16 tile, so it needs every head of the group to read the same row
/// (PerSequence / PerKvHead; PerQoHead rows differ per head) and at most 8 heads; a group of 1
/// would use 2 of 16 rows, and the CUDA-core kernel is as fast there. It is written for
/// head_dim 128 and page size 16 (one warp per page, the fragment/channel mapping) and for the
/// 16-bit storage types the tensor cores multiply (f32 K/V keeps the CUDA-core kernel). Prefill
/// (several query tokens, causal lengths) keeps the CUDA-core kernel. On the H100 it reads K/V at
/// 1.5-2.3x the CUDA-core kernel's rate for groups of 4 (docs/kernels.md).
fn mma_decode_tiles(
    family: Family,
    dtype: DType,
    head_dim: usize,
    page_size: usize,
    group: usize,
    rows: TableRows,
) -> Option<usize> {
    let fits = family == Family::Decode
        && matches!(dtype, DType::F16 | DType::Bf16)
        && head_dim == 128
        && page_size == 16
        && matches!(rows, TableRows::PerSequence | TableRows::PerKvHead);
    match group {
        2..=4 if fits => Some(1),
        5..=8 if fits => Some(2),
        _ => None,
    }
}

/// `QUEST_MMA_DECODE=0` keeps the CUDA-core kernel everywhere, for A/B measurements.
fn mma_decode_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("QUEST_MMA_DECODE").map_or(true, |v| v != "0"))
}

struct Launch<'a> {
    op: &'static str,
    family: Family,
    prefix: &'static str,
    q: &'a CudaBuf<f32>,
    kv_ptr: u64,
    table: &'a DevicePageTable<CudaBackend>,
    qo_ptr: u64,
    rows: TableRows,
    num_queries: usize,
    max_len: usize,
}

fn launch<T: Half>(
    be: &CudaBackend,
    shape: &AttentionShape,
    l: Launch<'_>,
    out: &mut CudaBuf<f32>,
) -> Result<()> {
    let op = l.op;
    let layout = &shape.layout;
    let (hq, hkv, d) = (shape.num_qo_heads, layout.num_kv_heads, layout.head_dim);
    let group = shape.group_size();
    let mma = mma_decode_tiles(l.family, T::DTYPE, d, layout.page_size, group, l.rows)
        .filter(|_| mma_decode_enabled());
    let gb = heads_per_block(l.rows, group, l.max_len);
    let group_chunks = group.div_ceil(gb);
    let chunks = if mma.is_some() {
        hkv
    } else if l.rows == TableRows::PerQoHead {
        hq
    } else {
        hkv * group_chunks
    };
    let units = l.num_queries * chunks;
    if units == 0 {
        return Ok(());
    }
    let (name, threads, step) = match mma {
        Some(nt) => (
            format!("{}_mma_{}_n{nt}", l.prefix, suffix::<T>(op)?),
            MMA_THREADS,
            MMA_STEP_TOKENS,
        ),
        None => (
            format!("{}_{}_g{gb}", l.prefix, suffix::<T>(op)?),
            THREADS,
            (THREADS as usize / (d / 8)) * TOKENS_PER_STEP_PER_TEAM,
        ),
    };
    let f: CudaFunction = be.func(op, l.family, &name)?;
    // Split-K: enough blocks for one full wave of resident blocks on every SM, each split a
    // whole number of the block's token steps (for the tensor-core kernel: whole pages).
    let resident = f
        .occupancy_max_active_blocks_per_multiprocessor(threads, 0, None)
        .map_err(|e| cuda_err(op, e))?
        .max(1) as usize;
    let target = be.num_sms() as usize * resident;
    let max_len = l.max_len.max(1);
    let want_splits = target.div_ceil(units).max(1);
    let min_chunk = if mma.is_some() && l.max_len >= MMA_LONG_ROW_TOKENS {
        MMA_MIN_CHUNK
    } else {
        128
    };
    let mut chunk = max_len
        .div_ceil(want_splits)
        .max(min_chunk)
        .next_multiple_of(step);
    chunk = chunk.max(max_len.div_ceil(65535)).next_multiple_of(step);
    let splits = max_len.div_ceil(chunk);
    // Held until the launches below are queued (see `CudaBackend::scratch`). Decode kernels
    // merge their splits themselves (`merge_splits_if_last`, ptx/attention.cuh) and take one
    // ticket per grid row; prefill launches `merge_splits` after the kernel.
    let merge_in_kernel = l.family == Family::Decode;
    let scratch = if splits > 1 {
        let o_len = l.num_queries * hq * splits * d;
        let lse_len = l.num_queries * hq * splits;
        let tickets = if merge_in_kernel { units } else { 0 };
        Some((be.scratch(op, (o_len + lse_len) * 4, tickets)?, o_len))
    } else {
        None
    };
    let (part_o, part_lse, tickets) = scratch.as_ref().map_or((0, 0, 0), |(s, o_len)| {
        (s.ptr, s.ptr + (o_len * 4) as u64, s.tickets)
    });
    let ps = layout.page_size;
    let p = AttnParams {
        num_queries: i32_of(op, "queries", l.num_queries)?,
        batch: i32_of(op, "batch", l.table.rows())?,
        num_qo_heads: hq as i32,
        num_kv_heads: hkv as i32,
        head_dim: d as i32,
        page_size: i32_of(op, "page_size", ps)?,
        page_shift: if ps.is_power_of_two() {
            ps.trailing_zeros() as i32
        } else {
            -1
        },
        num_pages: i32_of(op, "num_pages", layout.num_pages)?,
        rows_mode: match l.rows {
            TableRows::PerSequence => 0,
            TableRows::PerQoHead => 1,
            TableRows::PerKvHead => 2,
        },
        group_chunks: group_chunks as i32,
        chunk_tokens: i32_of(op, "chunk", chunk)?,
        num_splits: splits as i32,
        scale_log2: shape.sm_scale * std::f32::consts::LOG2_E,
        tickets,
    };
    let (qp, ip, xp, lp, op_ptr) = (
        l.q.ptr(),
        l.table.indptr.ptr(),
        l.table.indices.ptr(),
        l.table.last_page_len.ptr(),
        out.touched(),
    );
    let mut b = be.launch_builder(&f);
    b.arg(&qp)
        .arg(&l.kv_ptr)
        .arg(&ip)
        .arg(&xp)
        .arg(&lp)
        .arg(&l.qo_ptr)
        .arg(&op_ptr);
    b.arg(&part_o).arg(&part_lse).arg(&p);
    let cfg = LaunchConfig {
        grid_dim: (
            u32::try_from(units).map_err(|_| shape_err(op, "too many query rows"))?,
            splits as u32,
            1,
        ),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: matches `<prefix>_<T>_g<GB>` and `decode_mma_<T>_n<NT>` (const float* q, const T* kv, const int* indptr, const
    // int* indices, const int* last, const int* qo, float* out, float* part_o, float* part_lse,
    // AttnParams)`. Shapes were checked by the caller; the scratch holds queries * heads * splits
    // partials; page ids and lengths are clamped in the kernel.
    unsafe { b.launch(cfg) }.map_err(|e| cuda_err(op, e))?;
    if splits > 1 && !merge_in_kernel {
        let m = be.func(op, l.family, "merge_splits")?;
        let (s, di) = (splits as i32, d as i32);
        let mut b = be.launch_builder(&m);
        b.arg(&part_o).arg(&part_lse).arg(&op_ptr).arg(&s).arg(&di);
        let cfg = LaunchConfig {
            grid_dim: ((l.num_queries * hq) as u32, 1, 1),
            block_dim: (MERGE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: matches `merge_splits(const float*, const float*, float*, int, int)`; every
        // (query, head) row of the scratch was written by the kernel above.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err(op, e))?;
    }
    Ok(())
}

/// Longest row of a table in tokens, from its host row structure (pages * page_size).
fn max_row_tokens(table: &DevicePageTable<CudaBackend>, page_size: usize) -> usize {
    table
        .indptr_host
        .windows(2)
        .map(|w| (w[1] - w[0]).max(0) as usize * page_size)
        .max()
        .unwrap_or(0)
}

pub(super) fn decode_attention<T: Half>(
    be: &CudaBackend,
    q: &CudaBuf<f32>,
    kv: &CudaBuf<T>,
    shape: &AttentionShape,
    table: &DevicePageTable<CudaBackend>,
    rows: TableRows,
    out: &mut CudaBuf<f32>,
) -> Result<()> {
    const OP: &str = "decode_attention";
    let layout = &shape.layout;
    check_heads(OP, shape)?;
    check_table_sparse(OP, table, layout)?;
    expect_len(OP, "kv pages", kv.len(), layout.kv_len())?;
    let (hq, hkv, d) = (shape.num_qo_heads, layout.num_kv_heads, layout.head_dim);
    if q.len() % (hq * d) != 0 {
        return Err(shape_err(OP, "q is not [batch, num_qo_heads, head_dim]"));
    }
    let batch = q.len() / (hq * d);
    expect_len(OP, "out", out.len(), q.len())?;
    expect_len(OP, "table rows", table.rows(), rows.count(batch, hq, hkv))?;
    check_head_dim(OP, d)?;
    let l = Launch {
        op: OP,
        family: Family::Decode,
        prefix: "decode",
        q,
        kv_ptr: kv.ptr(),
        table,
        qo_ptr: 0,
        rows,
        num_queries: batch,
        max_len: max_row_tokens(table, layout.page_size),
    };
    launch::<T>(be, shape, l, out)
}

pub(super) fn prefill_attention<T: Half>(
    be: &CudaBackend,
    q: &CudaBuf<f32>,
    kv: &CudaBuf<T>,
    shape: &AttentionShape,
    table: &DevicePageTable<CudaBackend>,
    qo_indptr: &[i32],
    out: &mut CudaBuf<f32>,
) -> Result<()> {
    const OP: &str = "prefill_attention";
    let layout = &shape.layout;
    check_heads(OP, shape)?;
    check_table(OP, table, layout)?;
    expect_len(OP, "kv pages", kv.len(), layout.kv_len())?;
    let (hq, d) = (shape.num_qo_heads, layout.head_dim);
    let batch = table.rows();
    expect_len(OP, "qo_indptr", qo_indptr.len(), batch + 1)?;
    if qo_indptr[0] != 0 {
        return Err(shape_err(OP, "qo_indptr must start with 0"));
    }
    // Exact row lengths need last_page_len on the host: the mirror, or a download.
    let last = be.host_ints(&table.last_page_len)?;
    for b in 0..batch {
        let n = qo_indptr[b + 1] as i64 - qo_indptr[b] as i64;
        let pages = (table.indptr_host[b + 1] - table.indptr_host[b]).max(0) as usize;
        let len = if pages == 0 {
            0
        } else {
            layout.page_size * (pages - 1) + last[b].max(0) as usize
        };
        if n < 0 || n as usize > len {
            return Err(shape_err(
                OP,
                format!("sequence {b} has {n} queries but {len} tokens in the cache"),
            ));
        }
    }
    let total = qo_indptr[batch] as usize;
    expect_len(OP, "q", q.len(), total * hq * d)?;
    expect_len(OP, "out", out.len(), total * hq * d)?;
    check_head_dim(OP, d)?;
    if total == 0 {
        return Ok(());
    }
    let qo = be.upload(qo_indptr)?;
    let l = Launch {
        op: OP,
        family: Family::Prefill,
        prefix: "prefill",
        q,
        kv_ptr: kv.ptr(),
        table,
        qo_ptr: qo.ptr(),
        rows: TableRows::PerSequence,
        num_queries: total,
        max_len: max_row_tokens(table, layout.page_size),
    };
    // `qo` is freed when it drops, stream-ordered after the kernel that reads it.
    launch::<T>(be, shape, l, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_core_decode_only_where_it_is_written_for() {
        use TableRows::*;
        let d = Family::Decode;
        for (group, want) in [(1, None), (2, Some(1)), (3, Some(1)), (4, Some(1))] {
            assert_eq!(
                mma_decode_tiles(d, DType::F16, 128, 16, group, PerSequence),
                want
            );
        }
        for group in 5..=8 {
            assert_eq!(
                mma_decode_tiles(d, DType::Bf16, 128, 16, group, PerKvHead),
                Some(2)
            );
        }
        assert_eq!(
            mma_decode_tiles(d, DType::F16, 128, 16, 9, PerSequence),
            None
        );
        assert_eq!(mma_decode_tiles(d, DType::F16, 128, 16, 4, PerQoHead), None);
        assert_eq!(
            mma_decode_tiles(d, DType::F32, 128, 16, 4, PerSequence),
            None
        );
        assert_eq!(
            mma_decode_tiles(d, DType::F16, 64, 16, 4, PerSequence),
            None
        );
        assert_eq!(
            mma_decode_tiles(d, DType::F16, 128, 32, 4, PerSequence),
            None
        );
        let p = Family::Prefill;
        assert_eq!(
            mma_decode_tiles(p, DType::F16, 128, 16, 4, PerSequence),
            None
        );
    }
}
