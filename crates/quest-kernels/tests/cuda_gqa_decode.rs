//! Paged decode attention for grouped query heads on the CUDA backend against the CPU reference.
//! Groups of 2..8 query heads per KV head with head_dim 128, page size 16, f16/bf16 K/V and
//! PerSequence / PerKvHead rows run the tensor-core kernel (`ptx/attention_mma.cuh`); group 1
//! and PerQoHead rows the CUDA-core kernel (`ptx/attention.cuh`), checked here beside them.
//! Without a driver or GPU each test prints `skipped: no CUDA device (<reason>)` and passes.
//!
//! Inputs are random (q, K, V uniform in [-3, 3), never zero), outputs poisoned with NaN first.
//! Both backends run; both outputs are compared with an f64 reference over the same stored K/V
//! (`decode_ref`), and the CUDA one must satisfy `‖cuda − ref‖ / ‖ref‖ ≤ 1e-4` per (query, head)
//! row, the attention bound of cuda_vs_cpu.rs. (At 64K tokens the CPU backend's own sequential
//! f32 sums reach ~1e-4 against f64 on some rows, so the f64 reference is the judge here; both
//! errors are printed.) The tensor-core kernel splits q and the probabilities P into two halves
//! of the storage type (hi + lo), so its products carry ~22 (f16) / ~16 (bf16) bits: errors of
//! ~2^-18 relative in a score for bf16, well inside the bound, while a lost token, page or split
//! costs orders of magnitude more.
#![cfg(feature = "cuda")]

mod common;

use common::*;
use quest_kernels::{
    AttentionShape, Backend, CpuBackend, CudaBackend, DevicePageTable, Half, PageTable,
    PagedLayout, TableRows, bf16, f16,
};
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

const ATT_TOL: f64 = 1e-4;
const HEAD_DIM: usize = 128;
const PAGE: usize = 16;

/// One decode case: `lens[b]` tokens per sequence, `group` query heads per KV head.
struct Case {
    group: usize,
    kv_heads: usize,
    lens: Vec<usize>,
    rows: TableRows,
}

/// Pages of each sequence, disjoint, in random order, from a pool with a few spare pages.
fn sequence_pages(r: &mut StdRng, lens: &[usize]) -> (Vec<Vec<i32>>, usize) {
    let counts: Vec<usize> = lens.iter().map(|&n| n.div_ceil(PAGE)).collect();
    let num_pages = counts.iter().sum::<usize>() + 5;
    let mut ids: Vec<i32> = (0..num_pages as i32).collect();
    ids.shuffle(r);
    let mut out = Vec::new();
    let mut at = 0;
    for &c in &counts {
        out.push(ids[at..at + c].to_vec());
        at += c;
    }
    (out, num_pages)
}

fn last_len(n: usize) -> i32 {
    (n - (n.div_ceil(PAGE).max(1) - 1) * PAGE) as i32
}

/// The table of `case.rows`: PerSequence rows are the sequences; PerKvHead rows hold a random
/// subset of the sequence's pages (always its last page, so the row may end on a partial page)
/// and, for the first KV head of the second sequence, no pages at all; PerQoHead likewise per
/// query head.
fn build_table(r: &mut StdRng, case: &Case, pages: &[Vec<i32>]) -> PageTable {
    let mut t = PageTable::new();
    let heads = match case.rows {
        TableRows::PerSequence => 1,
        TableRows::PerKvHead => case.kv_heads,
        TableRows::PerQoHead => case.kv_heads * case.group,
    };
    for (b, seq) in pages.iter().enumerate() {
        let last = last_len(case.lens[b]);
        for h in 0..heads {
            if case.rows == TableRows::PerSequence {
                t.push_row(seq, last);
                continue;
            }
            if b == 1 && h == 0 {
                t.push_row(&[], 1);
                continue;
            }
            let (body, tail) = seq.split_at(seq.len() - 1);
            let mut keep: Vec<i32> = body
                .iter()
                .copied()
                .filter(|_| r.random_bool(0.6))
                .collect();
            keep.push(tail[0]);
            t.push_row(&keep, last);
        }
    }
    t
}

/// Runs `case` on both backends and returns the largest per-row relative error. With
/// `corrupt`, the GPU table additionally holds out-of-range page ids (-7 and num_pages + 3)
/// in the middle of its longest row and sees no host check of them; the kernels must skip
/// those pages, so the CPU reference runs on the table without them.
fn run_case<T: Half>(g: &CudaBackend, case: &Case, seed: u64, corrupt: bool) -> f64 {
    let c = CpuBackend;
    let mut r = rng(seed);
    let (pages, num_pages) = sequence_pages(&mut r, &case.lens);
    let hq = case.kv_heads * case.group;
    let layout = PagedLayout {
        num_pages,
        page_size: PAGE,
        num_kv_heads: case.kv_heads,
        head_dim: HEAD_DIM,
    };
    let shape = AttentionShape {
        num_qo_heads: hq,
        layout,
        sm_scale: 1.0 / (HEAD_DIM as f32).sqrt(),
    };
    let kv: Vec<T> = uniform_half(&mut r, layout.kv_len());
    let batch = case.lens.len();
    let q = uniform(&mut r, batch * hq * HEAD_DIM, -3.0, 3.0);
    let table = build_table(&mut r, case, &pages);

    let mut gpu_table = table.clone();
    if corrupt {
        let row = (0..table.rows())
            .max_by_key(|&i| table.row(i).len())
            .unwrap_or(0);
        let at = table.indptr[row] as usize + table.row(row).len() / 2;
        gpu_table = PageTable::new();
        for i in 0..table.rows() {
            let mut ids = table.row(i).to_vec();
            if i == row {
                let mid = at - table.indptr[row] as usize;
                ids.insert(mid, -7);
                ids.insert(mid, num_pages as i32 + 3);
            }
            gpu_table.push_row(&ids, table.last_page_len[i]);
        }
    }

    let tc = DevicePageTable::upload(&c, &table, &layout).expect("cpu table");
    let mut oc = poison(q.len());
    c.decode_attention(&q, &kv, &shape, &tc, case.rows, &mut oc)
        .expect("cpu decode");

    let tg = if corrupt {
        let mut t: DevicePageTable<CudaBackend> = DevicePageTable {
            indptr_host: gpu_table.indptr.clone(),
            indptr: up(g, &gpu_table.indptr),
            indices: up(g, &gpu_table.indices),
            last_page_len: up(g, &gpu_table.last_page_len),
        };
        t.indices.forget_host_mirror();
        t
    } else {
        DevicePageTable::upload(g, &table, &layout).expect("gpu table")
    };
    let mut og = up(g, &poison(q.len()));
    g.decode_attention(&up(g, &q), &up(g, &kv), &shape, &tg, case.rows, &mut og)
        .expect("cuda decode");
    let got = down(g, &og);
    assert_written("decode_attention", &got);
    assert_written("cpu decode_attention", &oc);
    let want = decode_ref(&q, &kv, &shape, &table, case.rows);
    let (e, row) = max_row_rel_err(&got, &want, HEAD_DIM);
    let (e_cpu, _) = max_row_rel_err(&oc, &want, HEAD_DIM);
    let what = format!(
        "{} group {} kv_heads {} lens {:?} {:?}{}",
        T::DTYPE,
        case.group,
        case.kv_heads,
        case.lens,
        case.rows,
        if corrupt { " corrupt table" } else { "" }
    );
    assert!(
        e <= ATT_TOL,
        "{what}: row {row} relative error {e:.3e} > {ATT_TOL:.0e}"
    );
    eprintln!("{what}: max row relative error vs f64: cuda {e:.2e}, cpu {e_cpu:.2e}");
    e
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for group in [1usize, 2, 3, 4, 6, 8] {
        for rows in [TableRows::PerSequence, TableRows::PerKvHead] {
            for lens in [vec![4100usize], vec![1, 37, 2000, 16]] {
                v.push(Case {
                    group,
                    kv_heads: 2,
                    lens,
                    rows,
                });
            }
        }
    }
    v
}

#[test]
fn grouped_decode_matches_cpu_f16_and_bf16() {
    let Some(g) = cuda() else { return };
    for (i, case) in cases().iter().enumerate() {
        let seed = 7000 + i as u64;
        run_case::<f16>(g, case, seed, false);
        run_case::<bf16>(g, case, seed ^ 0xbf, false);
    }
    // Per-query-head rows always take the CUDA-core kernel; same data shape.
    let case = Case {
        group: 4,
        kv_heads: 2,
        lens: vec![1, 37, 2000, 16],
        rows: TableRows::PerQoHead,
    };
    run_case::<f16>(g, &case, 7100, false);
}

/// Long rows: many splits and the merge pass, up to 64K tokens plus a partial page.
#[test]
fn grouped_decode_long_contexts() {
    let Some(g) = cuda() else { return };
    let long = [
        (4usize, 8, vec![65536 + 7], TableRows::PerSequence),
        (8, 1, vec![65536], TableRows::PerSequence),
        (2, 4, vec![32768, 1, 20001], TableRows::PerSequence),
        (4, 2, vec![40000, 9000], TableRows::PerKvHead),
    ];
    for (i, (group, kv_heads, lens, rows)) in long.into_iter().enumerate() {
        let case = Case {
            group,
            kv_heads,
            lens,
            rows,
        };
        run_case::<f16>(g, &case, 8000 + i as u64, false);
        if i % 2 == 1 {
            run_case::<bf16>(g, &case, 8100 + i as u64, false);
        }
    }
}

/// Page ids outside `[0, num_pages)` in a table the host cannot check (a device-written table)
/// are skipped by both kernels: the result equals the reference without those pages.
#[test]
fn out_of_range_page_ids_are_skipped() {
    let Some(g) = cuda() else { return };
    for (i, (group, rows)) in [
        (4usize, TableRows::PerSequence),
        (8, TableRows::PerKvHead),
        (1, TableRows::PerSequence),
        (4, TableRows::PerQoHead),
    ]
    .into_iter()
    .enumerate()
    {
        let case = Case {
            group,
            kv_heads: 2,
            lens: vec![3000, 37, 300],
            rows,
        };
        run_case::<f16>(g, &case, 9000 + i as u64, true);
        run_case::<bf16>(g, &case, 9100 + i as u64, true);
    }
}

/// Threads sharing one backend (one stream) each run split-K decodes whose scratch needs grow
/// from thread to thread and call to call: one thread's decode must never land between another's
/// decode and merge, nor run on a scratch area another call freed to grow it. Every result is
/// checked against the f64 reference as above. (Before the scratch lock covered the whole
/// decode + merge, this failed under `compute-sanitizer --tool memcheck`: out-of-bounds writes
/// to a freed scratch area, wrong rows.)
#[test]
fn threads_sharing_a_backend_keep_their_split_k_partials() {
    let Some(g) = cuda() else { return };
    std::thread::scope(|s| {
        for t in 0..4usize {
            s.spawn(move || {
                for i in 0..4usize {
                    let case = Case {
                        group: [1, 4][(t + i) % 2],
                        kv_heads: 2,
                        lens: vec![1000 + 700 * (4 * i + t), 33],
                        rows: TableRows::PerSequence,
                    };
                    run_case::<f16>(g, &case, 9500 + (10 * t + i) as u64, false);
                }
            });
        }
    });
}
