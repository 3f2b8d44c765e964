//! Bad input to Quest's selection (estimate_pages, force_pages, select_top_pages): each call is
//! refused with an error that names the op and the problem.

use super::*;

pub(super) fn selection_errors<B: Backend>(b: &B) {
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

    // An output table whose device indptr is shorter than its rows (built by hand): the kernel
    // reads that indptr, so the call is refused.
    let want = DevicePageTable::<B>::selection_indptr(&fx.table.indptr, 4, 1);
    let mut short_out = DevicePageTable {
        indptr_host: want.clone(),
        indptr: up(b, &want[..want.len() - 1]),
        indices: up(b, &vec![0i32; *want.last().unwrap() as usize]),
        last_page_len: up(b, &vec![0i32; want.len() - 1]),
    };
    expect_err(
        b.select_top_pages(
            &scores,
            &fx.shape,
            &table,
            SelectOptions::top_k(1, TableRows::PerQoHead),
            &mut short_out,
            None,
        ),
        sel,
        &["output"],
    );

    // force_pages: scores must be [num_qo_heads, nnz] of the table, whose rows must span its
    // indices; a refused call leaves the scores unchanged.
    let fp = "force_pages";
    let s0 = poison(4 * nnz);
    let mut forced = up(b, &s0);
    expect_err(
        b.force_pages(&mut up(b, &poison(4 * nnz + 1)), 4, &table, 1, 1),
        fp,
        &["scores has 13", "expected 12"],
    );
    expect_err(
        b.force_pages(&mut forced, 3, &table, 1, 1),
        fp,
        &["scores has 12", "expected 9"],
    );
    let rows = |indptr: &[i32], last: &[i32]| PageTable {
        indptr: indptr.to_vec(),
        indices: vec![3, 1, 5],
        last_page_len: last.to_vec(),
    };
    for bad in [
        rows(&[1, 2, 3], &[2, 4]),
        rows(&[0, 2, 1, 3], &[2, 4, 1]),
        rows(&[0, 2, 4], &[2, 4]),
        // Ends at nnz but a row runs past it: unchecked, it would write past the scores.
        rows(&[0, 5, 3], &[2, 4]),
    ] {
        expect_err(
            b.force_pages(&mut forced, 4, &raw_table(b, &bad), 1, 1),
            fp,
            &["indptr"],
        );
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&down(b, &forced)),
        bits(&s0),
        "a refused force_pages wrote scores"
    );
}
