//! Bad input to decode and prefill attention: each call is refused with an error that names the
//! op and the problem.

use super::*;

pub(super) fn attention_errors<B: Backend>(b: &B) {
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
