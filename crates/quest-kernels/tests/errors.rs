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

// ---- dense ops -----------------------------------------------------------------------------------------

fn dense_errors<B: Backend>(b: &B) {
    let f = |v: &[f32]| up(b, v);
    let table = up(b, &[f16::from_f32(0.5); 4 * 3]); // vocab 4, hidden 3
    let mut out3 = f(&[0.0; 3]);

    // embedding
    expect_err(
        b.embedding(&table, 3, &up(b, &[4u32]), &mut out3),
        "embedding",
        &["token 4", "vocabulary of 4"],
    );
    expect_err(
        b.embedding(&table, 3, &up(b, &[u32::MAX]), &mut out3),
        "embedding",
        &["outside vocabulary"],
    );
    expect_err(
        b.embedding(&table, 5, &up(b, &[0u32]), &mut out3),
        "embedding",
        &["not rows of 5"],
    );
    expect_err(
        b.embedding(&table, 0, &up(b, &[0u32]), &mut out3),
        "embedding",
        &["not rows of 0"],
    );
    expect_err(
        b.embedding(&table, 3, &up(b, &[0u32, 1]), &mut out3),
        "embedding",
        &["out has 3", "expected 6"],
    );

    // rms_norm
    let w3 = up(b, &[f16::ONE; 3]);
    expect_err(
        b.rms_norm(&f(&[1.0; 7]), &w3, 1e-5, &mut f(&[0.0; 7])),
        "rms_norm",
        &["x of 7", "rows of 3"],
    );
    expect_err(
        b.rms_norm(&f(&[1.0; 6]), &w3, 1e-5, &mut f(&[0.0; 3])),
        "rms_norm",
        &["out has 3", "expected 6"],
    );
    expect_err(
        b.rms_norm(
            &f(&[1.0; 6]),
            &up(b, &Vec::<f16>::new()),
            1e-5,
            &mut f(&[0.0; 6]),
        ),
        "rms_norm",
        &["rows of 0"],
    );

    // matmul: x [2, 3], w [4, 3], out [2, 4]
    let w = up(b, &[f16::ONE; 12]);
    expect_err(
        b.matmul(&f(&[1.0; 5]), &w, 2, 3, 4, &mut f(&[0.0; 8])),
        "matmul",
        &["x has 5", "expected 6"],
    );
    expect_err(
        b.matmul(
            &f(&[1.0; 6]),
            &up(b, &[f16::ONE; 11]),
            2,
            3,
            4,
            &mut f(&[0.0; 8]),
        ),
        "matmul",
        &["w has 11", "expected 12"],
    );
    expect_err(
        b.matmul(&f(&[1.0; 6]), &w, 2, 3, 4, &mut f(&[0.0; 9])),
        "matmul",
        &["out has 9", "expected 8"],
    );

    // matmul_many: weights must be whole rows of k, one output per weight, outputs [n, m_i]
    expect_err(
        b.matmul_many(
            &f(&[1.0; 6]),
            &[&w, &up(b, &[f16::ONE; 7])],
            2,
            3,
            &mut [&mut f(&[0.0; 8]), &mut f(&[0.0; 4])],
        ),
        "matmul_many",
        &["weight 1 of 7", "rows of k = 3"],
    );
    expect_err(
        b.matmul_many(&f(&[1.0; 6]), &[&w, &w], 2, 3, &mut [&mut f(&[0.0; 8])]),
        "matmul_many",
        &["2 weights but 1 outputs"],
    );
    expect_err(
        b.matmul_many(&f(&[1.0; 6]), &[&w], 2, 3, &mut [&mut f(&[0.0; 7])]),
        "matmul",
        &["out has 7", "expected 8"],
    );

    // rope: x [2 tokens, 1 head, 4]
    let inv = f(&[1.0, 0.01]);
    let pos = up(b, &[0i32, 5]);
    expect_err(
        b.rope(&mut f(&[1.0; 6]), &up(b, &[1i32]), &f(&[1.0]), 3),
        "rope",
        &["head_dim 3", "even"],
    );
    expect_err(
        b.rope(&mut f(&[1.0; 8]), &pos, &f(&[1.0; 4]), 0),
        "rope",
        &["head_dim 0"],
    );
    expect_err(
        b.rope(&mut f(&[1.0; 8]), &pos, &f(&[1.0; 3]), 4),
        "rope",
        &["inv_freq has 3", "expected 2"],
    );
    expect_err(
        b.rope(&mut f(&[1.0; 12]), &pos, &inv, 4),
        "rope",
        &["x of 12", "whole heads of 4"],
    );
    expect_err(
        b.rope(&mut f(&[1.0; 4]), &pos, &inv, 4),
        "rope",
        &["x of 4"],
    );
    // No rows of x for the positions given.
    expect_err(b.rope(&mut f(&[]), &pos, &inv, 4), "rope", &["x of 0"]);
    expect_err(
        b.rope(&mut f(&[1.0; 4]), &up(b, &Vec::<i32>::new()), &inv, 4),
        "rope",
        &["x has 4", "expected 0"],
    );
    // A negative position anywhere leaves x untouched.
    let x0: Vec<f32> = (0..8).map(|i| i as f32 + 0.5).collect();
    let mut x = f(&x0);
    expect_err(
        b.rope(&mut x, &up(b, &[7i32, -1]), &inv, 4),
        "rope",
        &["negative position -1"],
    );
    assert_eq!(down(b, &x), x0, "rope changed x before refusing");

    // silu_mul, add_assign
    expect_err(
        b.silu_mul(&f(&[1.0; 3]), &f(&[1.0; 2]), &mut f(&[0.0; 3])),
        "silu_mul",
        &["up has 2", "expected 3"],
    );
    expect_err(
        b.silu_mul(&f(&[1.0; 3]), &f(&[1.0; 3]), &mut f(&[0.0; 4])),
        "silu_mul",
        &["out has 4", "expected 3"],
    );
    let mut x = f(&[1.0; 3]);
    expect_err(
        b.add_assign(&mut x, &f(&[1.0; 4])),
        "add_assign",
        &["y has 4", "expected 3"],
    );
    assert_eq!(down(b, &x), vec![1.0; 3]);

    // argmax
    let mut o2 = up(b, &[0u32; 2]);
    expect_err(
        b.argmax(&f(&[1.0; 7]), 3, &mut o2),
        "argmax",
        &["logits of 7", "rows of 3"],
    );
    expect_err(
        b.argmax(&f(&[1.0; 6]), 0, &mut o2),
        "argmax",
        &["rows of 0"],
    );
    expect_err(
        b.argmax(&f(&[1.0; 9]), 3, &mut o2),
        "argmax",
        &["out has 2", "expected 3"],
    );

    // sample
    let p = SamplingParams {
        temperature: 1.0,
        top_p: 0.9,
    };
    let logits = f(&[0.5; 6]);
    let u2 = f(&[0.1, 0.2]);
    expect_err(
        b.sample(&f(&[1.0; 7]), 3, p, &u2, &mut o2),
        "sample",
        &["logits of 7"],
    );
    expect_err(
        b.sample(&logits, 3, p, &u2, &mut up(b, &[0u32; 3])),
        "sample",
        &["out has 3", "expected 2"],
    );
    expect_err(
        b.sample(&logits, 3, p, &f(&[0.1]), &mut o2),
        "sample",
        &["uniforms has 1", "expected 2"],
    );
    for t in [-1.0, f32::NAN, f32::INFINITY] {
        let bad = SamplingParams {
            temperature: t,
            top_p: 0.9,
        };
        expect_err(
            b.sample(&logits, 3, bad, &u2, &mut o2),
            "sample",
            &["temperature"],
        );
    }
    for tp in [0.0, -0.5, 1.5, f32::NAN] {
        let bad = SamplingParams {
            temperature: 1.0,
            top_p: tp,
        };
        expect_err(
            b.sample(&logits, 3, bad, &u2, &mut o2),
            "sample",
            &["top_p"],
        );
    }

    // write
    let mut buf = f(&[0.0; 4]);
    expect_err(b.write(&mut buf, 3, &[1.0, 2.0]), "write", &["overflow"]);
    expect_err(
        b.write(&mut buf, usize::MAX, &[1.0]),
        "write",
        &["overflow"],
    );
    assert_eq!(down(b, &buf), vec![0.0; 4]);
}

#[test]
fn dense_ops_refuse_bad_input() {
    dense_errors(&CpuBackend);
}

// ---- paged cache writes ---------------------------------------------------------------------------------

fn paged_errors<B: Backend>(b: &B) {
    let layout = PagedLayout {
        num_pages: 3,
        page_size: 4,
        num_kv_heads: 2,
        head_dim: 8,
    };
    let w = layout.token_width();
    let mut r = rng(5);
    let kv0 = uniform_half::<f16>(&mut r, layout.kv_len());
    let bounds0 = uniform_half::<f16>(&mut r, layout.bounds_len());
    let k2 = up(b, &uniform(&mut r, 2 * w, -3.0, 3.0));
    let v2 = up(b, &uniform(&mut r, 2 * w, -3.0, 3.0));
    let mut kv = up(b, &kv0);

    // A bad slot anywhere in the list: error naming it, nothing written.
    for bad in [12, -1, i32::MAX] {
        expect_err(
            b.append_kv(&mut kv, &layout, &k2, &v2, &up(b, &[0i32, bad])),
            "append_kv",
            &[&format!("slot {bad}"), "outside 0..12"],
        );
        assert_eq!(
            down(b, &kv),
            kv0,
            "append_kv wrote before refusing slot {bad}"
        );
    }
    let slots = up(b, &[0i32, 5]);
    let short = up(b, &vec![1.0f32; 2 * w - 1]);
    expect_err(
        b.append_kv(&mut kv, &layout, &short, &v2, &slots),
        "append_kv",
        &["k has 31", "expected 32"],
    );
    expect_err(
        b.append_kv(&mut kv, &layout, &k2, &short, &slots),
        "append_kv",
        &["v has 31", "expected 32"],
    );
    let mut small = up(b, &kv0[1..]);
    expect_err(
        b.append_kv(&mut small, &layout, &k2, &v2, &slots),
        "append_kv",
        &["kv pages has 383", "expected 384"],
    );
    let empty = PagedLayout {
        head_dim: 0,
        ..layout
    };
    expect_err(
        b.append_kv(&mut kv, &empty, &k2, &v2, &slots),
        "append_kv",
        &["empty layout"],
    );
    let empty = PagedLayout {
        page_size: 0,
        ..layout
    };
    expect_err(
        b.append_kv(&mut kv, &empty, &k2, &v2, &slots),
        "append_kv",
        &["empty layout"],
    );
    // Geometry whose buffer size overflows usize: an error, not an arithmetic panic.
    let huge = PagedLayout {
        num_pages: 1,
        page_size: 1,
        num_kv_heads: 1 << 40,
        head_dim: 1 << 40,
    };
    expect_err(
        b.append_kv(&mut kv, &huge, &k2, &v2, &slots),
        "append_kv",
        &["overflow"],
    );
    assert_eq!(down(b, &kv), kv0);

    // update_bounds: a bad page or length anywhere: error, bounds unchanged.
    let mut bounds = up(b, &bounds0);
    let cases: [(&[i32], &[i32], &[&str]); 6] = [
        (&[0, 3], &[4, 4], &["page 3 outside 0..3"]),
        (&[1, -2], &[4, 4], &["page -2 outside"]),
        (&[0, 1], &[4, 0], &["page 1 length 0", "1..=4"]),
        (&[0, 1], &[5, 1], &["page 0 length 5"]),
        (&[0, 1], &[-3, 1], &["length -3"]),
        (&[0, 1], &[4], &["page_lens has 1", "expected 2"]),
    ];
    for (pages, lens, needles) in cases {
        expect_err(
            b.update_bounds(&kv, &mut bounds, &layout, &up(b, pages), &up(b, lens)),
            "update_bounds",
            needles,
        );
        assert_eq!(
            down(b, &bounds),
            bounds0,
            "update_bounds wrote before refusing {pages:?} {lens:?}"
        );
    }
    let (p, l) = (up(b, &[0i32]), up(b, &[2i32]));
    let mut short_bounds = up(b, &bounds0[..bounds0.len() - 1]);
    expect_err(
        b.update_bounds(&kv, &mut short_bounds, &layout, &p, &l),
        "update_bounds",
        &["bounds has 95", "expected 96"],
    );
    expect_err(
        b.update_bounds(&small, &mut bounds, &layout, &p, &l),
        "update_bounds",
        &["kv pages has 383"],
    );
    expect_err(
        b.update_bounds(&kv, &mut bounds, &huge, &p, &l),
        "update_bounds",
        &["overflow"],
    );
    assert_eq!(down(b, &bounds), bounds0);
}

#[test]
fn paged_writes_refuse_bad_input_and_write_nothing() {
    paged_errors(&CpuBackend);
}

// ---- selection ----------------------------------------------------------------------------------------------

fn selection_errors<B: Backend>(b: &B) {
    let fx = fixture(b);
    let table = DevicePageTable::upload(b, &fx.table, &fx.shape.layout).unwrap();
    let nnz = 3;
    let mut scores = up(b, &poison(4 * nnz));
    let est = "estimate_pages";

    // Non-GQA head counts: 6 query heads over 4 KV heads (and 0 of either).
    let gqa = |hq: usize, hkv: usize| AttentionShape {
        num_qo_heads: hq,
        layout: PagedLayout {
            num_kv_heads: hkv,
            ..fx.shape.layout
        },
        ..fx.shape
    };
    for (hq, hkv) in [(6, 4), (0, 2), (3, 2)] {
        let s = gqa(hq, hkv);
        expect_err(
            b.estimate_pages(&fx.q, &fx.bounds, &s, &table, &mut scores),
            est,
            &["query heads are not a multiple"],
        );
    }
    let s = gqa(4, 0);
    expect_err(
        b.estimate_pages(&fx.q, &fx.bounds, &s, &table, &mut scores),
        est,
        &["KV heads"],
    );

    expect_err(
        b.estimate_pages(
            &up(b, &[1.0f32; 63]),
            &fx.bounds,
            &fx.shape,
            &table,
            &mut scores,
        ),
        est,
        &["q has 63", "expected 64"],
    );
    expect_err(
        b.estimate_pages(
            &fx.q,
            &up(b, &[f16::ONE; 10]),
            &fx.shape,
            &table,
            &mut scores,
        ),
        est,
        &["bounds has 10", "expected 192"],
    );
    expect_err(
        b.estimate_pages(
            &fx.q,
            &fx.bounds,
            &fx.shape,
            &table,
            &mut up(b, &[0.0f32; 11]),
        ),
        est,
        &["scores has 11", "expected 12"],
    );
    for (bad, needles) in broken_tables() {
        let t = raw_table(b, &bad);
        expect_err(
            b.estimate_pages(&fx.q, &fx.bounds, &fx.shape, &t, &mut scores),
            est,
            needles,
        );
    }
    let zero_dim = AttentionShape {
        layout: PagedLayout {
            head_dim: 0,
            ..fx.shape.layout
        },
        ..fx.shape
    };
    let no_bounds = up(b, &Vec::<f16>::new());
    expect_err(
        b.estimate_pages(&fx.q, &no_bounds, &zero_dim, &table, &mut scores),
        est,
        &["empty layout"],
    );

    // select_top_pages
    let sel = "select_top_pages";
    let scores = up(b, &uniform(&mut rng(1), 4 * nnz, -1.0, 1.0));
    let mut out = DevicePageTable::for_selection(b, &fx.table.indptr, 4, 1).unwrap();
    expect_err(
        b.select_top_pages(
            &scores,
            &fx.shape,
            &table,
            SelectOptions::top_k(0, TableRows::PerQoHead),
            &mut out,
            None,
        ),
        sel,
        &["budget of 0"],
    );
    let mut out_seq = DevicePageTable::for_selection(b, &fx.table.indptr, 1, 1).unwrap();
    expect_err(
        b.select_top_pages(
            &scores,
            &fx.shape,
            &table,
            SelectOptions::top_k(1, TableRows::PerSequence),
            &mut out_seq,
            None,
        ),
        sel,
        &["per query or per KV head"],
    );
    expect_err(
        b.select_top_pages(
            &up(b, &[0.0f32; 11]),
            &fx.shape,
            &table,
            SelectOptions::top_k(1, TableRows::PerQoHead),
            &mut out,
            None,
        ),
        sel,
        &["scores has 11", "expected 12"],
    );
    // Output built for the wrong head count or the wrong budget.
    expect_err(
        b.select_top_pages(
            &scores,
            &fx.shape,
            &table,
            SelectOptions::top_k(1, TableRows::PerKvHead),
            &mut out,
            None,
        ),
        sel,
        &["output rows has 8", "expected 4"],
    );
    expect_err(
        b.select_top_pages(
            &scores,
            &fx.shape,
            &table,
            SelectOptions::top_k(2, TableRows::PerQoHead),
            &mut out,
            None,
        ),
        sel,
        &["build it with for_selection"],
    );
    let s = gqa(6, 4);
    let scores6 = up(b, &[0.0f32; 6 * 3]);
    let mut out6 = DevicePageTable::for_selection(b, &fx.table.indptr, 6, 1).unwrap();
    expect_err(
        b.select_top_pages(
            &scores6,
            &s,
            &table,
            SelectOptions::top_k(1, TableRows::PerQoHead),
            &mut out6,
            None,
        ),
        sel,
        &["not a multiple"],
    );
    for (bad, needles) in broken_tables() {
        let t = raw_table(b, &bad);
        expect_err(
            b.select_top_pages(
                &scores,
                &fx.shape,
                &t,
                SelectOptions::top_k(1, TableRows::PerQoHead),
                &mut out,
                None,
            ),
            sel,
            needles,
        );
    }
}

#[test]
fn selection_refuses_bad_input() {
    selection_errors(&CpuBackend);
}

// ---- attention -------------------------------------------------------------------------------------------

fn attention_errors<B: Backend>(b: &B) {
    let fx = fixture(b);
    let table = DevicePageTable::upload(b, &fx.table, &fx.shape.layout).unwrap();
    let dec = "decode_attention";
    let mut out = up(b, &poison(64));
    let ps = TableRows::PerSequence;

    let s = AttentionShape {
        num_qo_heads: 6,
        layout: PagedLayout {
            num_kv_heads: 4,
            ..fx.shape.layout
        },
        ..fx.shape
    };
    expect_err(
        b.decode_attention(&fx.q, &fx.kv, &s, &table, ps, &mut out),
        dec,
        &["6 query heads", "4 KV heads"],
    );
    expect_err(
        b.decode_attention(
            &up(b, &[0.5f32; 60]),
            &fx.kv,
            &fx.shape,
            &table,
            ps,
            &mut out,
        ),
        dec,
        &["q is not"],
    );
    expect_err(
        b.decode_attention(
            &fx.q,
            &fx.kv,
            &fx.shape,
            &table,
            ps,
            &mut up(b, &[0.0f32; 32]),
        ),
        dec,
        &["out has 32", "expected 64"],
    );
    expect_err(
        b.decode_attention(
            &fx.q,
            &up(b, &[f16::ONE; 5]),
            &fx.shape,
            &table,
            ps,
            &mut out,
        ),
        dec,
        &["kv pages has 5"],
    );
    // A per-sequence table read as per-head rows: wrong row count.
    expect_err(
        b.decode_attention(
            &fx.q,
            &fx.kv,
            &fx.shape,
            &table,
            TableRows::PerQoHead,
            &mut out,
        ),
        dec,
        &["table rows has 2", "expected 8"],
    );
    expect_err(
        b.decode_attention(
            &fx.q,
            &fx.kv,
            &fx.shape,
            &table,
            TableRows::PerKvHead,
            &mut out,
        ),
        dec,
        &["table rows has 2", "expected 4"],
    );
    for (bad, needles) in broken_tables() {
        let t = raw_table(b, &bad);
        expect_err(
            b.decode_attention(&fx.q, &fx.kv, &fx.shape, &t, ps, &mut out),
            dec,
            needles,
        );
    }
    // Degenerate geometry: an error, not a division by zero.
    for layout in [
        PagedLayout {
            head_dim: 0,
            ..fx.shape.layout
        },
        PagedLayout {
            page_size: 0,
            ..fx.shape.layout
        },
    ] {
        let s = AttentionShape { layout, ..fx.shape };
        // A KV buffer of the (zero) size that geometry asks for.
        let kv0 = up(b, &Vec::<f16>::new());
        expect_err(
            b.decode_attention(&fx.q, &kv0, &s, &table, ps, &mut out),
            dec,
            &["empty layout"],
        );
        expect_err(
            b.prefill_attention(&fx.q, &kv0, &s, &table, &[0, 1, 2], &mut out),
            "prefill_attention",
            &["empty layout"],
        );
    }

    // prefill: 2 sequences of 6 and 4 tokens; q/out [total, 4, 8]
    let pre = "prefill_attention";
    let q3 = up(b, &[0.5f32; 3 * 32]);
    let mut out3 = up(b, &poison(3 * 32));
    let s = AttentionShape {
        num_qo_heads: 6,
        layout: PagedLayout {
            num_kv_heads: 4,
            ..fx.shape.layout
        },
        ..fx.shape
    };
    expect_err(
        b.prefill_attention(&q3, &fx.kv, &s, &table, &[0, 2, 3], &mut out3),
        pre,
        &["not a multiple"],
    );
    expect_err(
        b.prefill_attention(&q3, &fx.kv, &fx.shape, &table, &[0, 3], &mut out3),
        pre,
        &["qo_indptr has 2", "expected 3"],
    );
    expect_err(
        b.prefill_attention(&q3, &fx.kv, &fx.shape, &table, &[1, 2, 3], &mut out3),
        pre,
        &["qo_indptr must start with 0"],
    );
    expect_err(
        b.prefill_attention(&q3, &fx.kv, &fx.shape, &table, &[0, 7, 8], &mut out3),
        pre,
        &["sequence 0 has 7 queries", "6 tokens"],
    );
    expect_err(
        b.prefill_attention(&q3, &fx.kv, &fx.shape, &table, &[0, 2, 1], &mut out3),
        pre,
        &["sequence 1 has -1 queries"],
    );
    expect_err(
        b.prefill_attention(&q3, &fx.kv, &fx.shape, &table, &[0, 1, i32::MIN], &mut out3),
        pre,
        &["sequence 1"],
    );
    expect_err(
        b.prefill_attention(&q3, &fx.kv, &fx.shape, &table, &[0, i32::MAX, 3], &mut out3),
        pre,
        &["sequence 0"],
    );
    expect_err(
        b.prefill_attention(&q3, &fx.kv, &fx.shape, &table, &[0, 2, 4], &mut out3),
        pre,
        &["q has 96", "expected 128"],
    );
    expect_err(
        b.prefill_attention(
            &q3,
            &fx.kv,
            &fx.shape,
            &table,
            &[0, 2, 3],
            &mut up(b, &[0.0f32; 95]),
        ),
        pre,
        &["out has 95", "expected 96"],
    );
    expect_err(
        b.prefill_attention(
            &q3,
            &up(b, &[f16::ONE; 5]),
            &fx.shape,
            &table,
            &[0, 2, 3],
            &mut out3,
        ),
        pre,
        &["kv pages has 5"],
    );
    for (bad, needles) in broken_tables() {
        let t = raw_table(b, &bad);
        expect_err(
            b.prefill_attention(&q3, &fx.kv, &fx.shape, &t, &[0, 2, 3], &mut out3),
            pre,
            needles,
        );
    }

    // The same shapes are accepted when right (the fixture itself is valid).
    b.decode_attention(&fx.q, &fx.kv, &fx.shape, &table, ps, &mut out)
        .unwrap();
    assert_written("decode out", &down(b, &out));
    b.prefill_attention(&q3, &fx.kv, &fx.shape, &table, &[0, 2, 3], &mut out3)
        .unwrap();
    assert_written("prefill out", &down(b, &out3));
}

#[test]
fn attention_refuses_bad_input() {
    attention_errors(&CpuBackend);
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
