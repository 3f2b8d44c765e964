//! Every op refuses bad input with an `Err` whose message names the op and the problem, and never
//! panics. Ops that write a cache (`append_kv`, `update_bounds`) or work in place (`rope`) leave
//! their buffer unchanged when they refuse.

mod common;

use std::fmt::Debug;

use common::*;
use quest_kernels::{
    AttentionShape, Backend, CpuBackend, DevicePageTable, KernelError, PageTable, PagedLayout,
    SamplingParams, SelectOptions, TableRows, f16,
};

/// The call failed, and its message contains the op's name and every needle.
#[track_caller]
fn expect_err<T: Debug>(r: Result<T, KernelError>, op: &str, needles: &[&str]) {
    let e = match r {
        Ok(v) => panic!("{op}: expected an error containing {needles:?}, got Ok({v:?})"),
        Err(e) => e,
    };
    let msg = e.to_string();
    assert!(
        msg.contains(op),
        "error {msg:?} does not name the op {op:?}"
    );
    for n in needles {
        assert!(msg.contains(n), "error {msg:?} does not mention {n:?}");
    }
}

/// A page table on the backend without validation, to hand ops a broken one.
fn raw_table<B: Backend>(b: &B, t: &PageTable) -> DevicePageTable<B> {
    DevicePageTable {
        indptr_host: t.indptr.clone(),
        indptr: up(b, &t.indptr),
        indices: up(b, &t.indices),
        last_page_len: up(b, &t.last_page_len),
    }
}

/// A small valid setup: 6 pages of 4 slots, 2 KV heads of 8, 4 query heads; sequences of 6 tokens
/// (pages 3, 1) and 4 tokens (page 5).
struct Fixture<B: Backend> {
    shape: AttentionShape,
    table: PageTable,
    kv: B::Buf<f16>,
    bounds: B::Buf<f16>,
    q: B::Buf<f32>,
}

fn fixture<B: Backend>(b: &B) -> Fixture<B> {
    let layout = PagedLayout {
        num_pages: 6,
        page_size: 4,
        num_kv_heads: 2,
        head_dim: 8,
    };
    let shape = AttentionShape {
        num_qo_heads: 4,
        layout,
        sm_scale: 0.35,
    };
    let mut table = PageTable::new();
    table.push_row(&[3, 1], 2);
    table.push_row(&[5], 4);
    let mut r = rng(11);
    Fixture {
        shape,
        table,
        kv: up(b, &uniform_half::<f16>(&mut r, layout.kv_len())),
        bounds: up(b, &uniform_half::<f16>(&mut r, layout.bounds_len())),
        q: up(b, &uniform(&mut r, 2 * 4 * 8, -3.0, 3.0)),
    }
}

/// Broken variants of the fixture's table, each with the words its error must contain.
fn broken_tables() -> Vec<(PageTable, &'static [&'static str])> {
    let t = |indptr: &[i32], indices: &[i32], last: &[i32]| PageTable {
        indptr: indptr.to_vec(),
        indices: indices.to_vec(),
        last_page_len: last.to_vec(),
    };
    vec![
        (
            t(&[0, 2, 3], &[3, 1, 6], &[2, 4]),
            &["page id 6", "outside 0..6"],
        ),
        (t(&[0, 2, 3], &[3, -1, 5], &[2, 4]), &["page id -1"]),
        (t(&[0, 2, 3], &[3, 1, 5], &[0, 4]), &["last_page_len 0"]),
        (
            t(&[0, 2, 3], &[3, 1, 5], &[2, 5]),
            &["last_page_len 5", "1..=4"],
        ),
        (
            t(&[1, 2, 3], &[3, 1, 5], &[2, 4]),
            &["indptr must start with 0"],
        ),
        (
            t(&[0, 2, 1, 3], &[3, 1, 5], &[2, 4, 1]),
            &["indptr decreases"],
        ),
        (
            t(&[0, 2, 4], &[3, 1, 5], &[2, 4]),
            &["indptr ends at 4", "3 entries"],
        ),
        (
            t(&[0, 2, 3], &[3, 1, 5], &[2]),
            &["2 rows but 1 last_page_len"],
        ),
        (t(&[], &[], &[]), &["indptr must start with 0"]),
    ]
}

// The catalogue lives in one module per op family (tests/errors/); each function takes any
// backend, so the CPU and the CUDA backend run the same cases. (A test crate's root resolves
// modules beside it, hence the paths.)
#[path = "errors/attention.rs"]
mod attention;
#[path = "errors/dense.rs"]
mod dense;
#[path = "errors/int8.rs"]
mod int8;
#[path = "errors/paged.rs"]
mod paged;
#[path = "errors/selection.rs"]
mod selection;

#[test]
fn dense_ops_refuse_bad_input() {
    dense::dense_errors(&CpuBackend);
}

#[test]
fn paged_writes_refuse_bad_input_and_write_nothing() {
    paged::paged_errors(&CpuBackend);
}

#[test]
fn selection_refuses_bad_input() {
    selection::selection_errors(&CpuBackend);
}

#[test]
fn int8_bounds_refuse_bad_input() {
    int8::int8_errors(&CpuBackend);
}

#[test]
fn attention_refuses_bad_input() {
    attention::attention_errors(&CpuBackend);
}

/// Uploading a broken page table fails with a message naming the upload and the problem.
#[test]
fn page_table_upload_validates() {
    let b = CpuBackend;
    let layout = PagedLayout {
        num_pages: 6,
        page_size: 4,
        num_kv_heads: 2,
        head_dim: 8,
    };
    for (bad, needles) in broken_tables() {
        expect_err(
            DevicePageTable::upload(&b, &bad, &layout).map(|_| ()),
            "page table upload",
            needles,
        );
    }
}

/// The same cases on the CUDA backend (each test says it skipped when there is no GPU): its own
/// checks must refuse all of them before any launch, and leave the buffers unchanged.
#[cfg(feature = "cuda")]
mod on_cuda {
    use super::*;

    #[test]
    fn dense_ops_refuse_bad_input() {
        if let Some(g) = cuda() {
            dense::dense_errors(g);
        }
    }

    #[test]
    fn paged_writes_refuse_bad_input_and_write_nothing() {
        if let Some(g) = cuda() {
            paged::paged_errors(g);
        }
    }

    #[test]
    fn selection_refuses_bad_input() {
        if let Some(g) = cuda() {
            selection::selection_errors(g);
        }
    }

    #[test]
    fn attention_refuses_bad_input() {
        if let Some(g) = cuda() {
            attention::attention_errors(g);
        }
    }

    #[test]
    fn int8_bounds_refuse_bad_input() {
        if let Some(g) = cuda() {
            int8::int8_errors(g);
        }
    }
}
