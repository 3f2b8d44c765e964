//! Bad input to the 8-bit bound ops (update_bounds_int8, estimate_pages_int8): each call is
//! refused with an error that names the op and the problem, and a refused update leaves the codes
//! and parameters unchanged.

use super::*;

pub(super) fn int8_errors<B: Backend>(b: &B) {
    let l = PagedLayout {
        num_pages: 4,
        page_size: 8,
        num_kv_heads: 2,
        head_dim: 16,
    };
    let mut r = rng(9);
    let kv = up(b, &uniform_half::<f16>(&mut r, l.kv_len()));
    let (codes0, params0) = (vec![7u8; l.bounds_len()], vec![9.0f32; l.int8_params_len()]);
    let (mut codes, mut params) = (up(b, &codes0), up(b, &params0));
    let op = "update_bounds_int8";

    // A bad page or length anywhere in the list: error naming it, nothing written.
    let cases: [(&[i32], &[i32], &[&str]); 5] = [
        (&[0, 4], &[1, 1], &["page 4 outside 0..4"]),
        (&[1, -1], &[8, 1], &["page -1 outside 0..4"]),
        (&[2], &[0], &["page 2 length 0", "1..=8"]),
        (&[3], &[9], &["page 3 length 9", "1..=8"]),
        (&[0, 1], &[1], &["page_lens has 1", "expected 2"]),
    ];
    for (pages, lens, needles) in cases {
        expect_err(
            b.update_bounds_int8(
                &kv,
                &mut codes,
                &mut params,
                &l,
                &up(b, pages),
                &up(b, lens),
            ),
            op,
            needles,
        );
    }
    assert!(
        down(b, &codes) == codes0 && down(b, &params) == params0,
        "a refused update_bounds_int8 wrote something"
    );
    let (one, len1) = (up(b, &[0i32]), up(b, &[1i32]));
    expect_err(
        b.update_bounds_int8(&kv, &mut up(b, &codes0[1..]), &mut params, &l, &one, &len1),
        op,
        &["bound codes has 255", "expected 256"],
    );
    expect_err(
        b.update_bounds_int8(&kv, &mut codes, &mut up(b, &[0f32; 36]), &l, &one, &len1),
        op,
        &["bound params has 36", "expected 32"],
    );
    expect_err(
        b.update_bounds_int8(
            &up(b, &[f16::ONE; 10]),
            &mut codes,
            &mut params,
            &l,
            &one,
            &len1,
        ),
        op,
        &["kv pages has 10"],
    );

    // estimate_pages_int8: 4 query heads over 2 KV heads, one sequence of pages 0, 1.
    let shape = AttentionShape {
        num_qo_heads: 4,
        layout: l,
        sm_scale: 0.25,
    };
    let mut t = PageTable::new();
    t.push_row(&[0, 1], 3);
    let table = DevicePageTable::upload(b, &t, &l).unwrap();
    let q = up(b, &[1.0f32; 4 * 16]);
    let mut scores = up(b, &poison(4 * 2));
    let op = "estimate_pages_int8";
    expect_err(
        b.estimate_pages_int8(&q, &codes, &params, &shape, &table, &mut up(b, &poison(9))),
        op,
        &["scores has 9", "expected 8"],
    );
    expect_err(
        b.estimate_pages_int8(
            &up(b, &[1.0f32; 63]),
            &codes,
            &params,
            &shape,
            &table,
            &mut scores,
        ),
        op,
        &["q has 63", "expected 64"],
    );
    expect_err(
        b.estimate_pages_int8(
            &q,
            &up(b, &codes0[1..]),
            &params,
            &shape,
            &table,
            &mut scores,
        ),
        op,
        &["bound codes has 255", "expected 256"],
    );
    expect_err(
        b.estimate_pages_int8(&q, &codes, &up(b, &[0f32; 4]), &shape, &table, &mut scores),
        op,
        &["bound params has 4", "expected 32"],
    );
    let odd = AttentionShape {
        num_qo_heads: 3,
        ..shape
    };
    expect_err(
        b.estimate_pages_int8(&q, &codes, &params, &odd, &table, &mut scores),
        op,
        &["query heads are not a multiple"],
    );
    let mut far = PageTable::new();
    far.push_row(&[0, 4], 3);
    expect_err(
        b.estimate_pages_int8(
            &q,
            &codes,
            &params,
            &shape,
            &raw_table(b, &far),
            &mut scores,
        ),
        op,
        &["page id 4", "outside 0..4"],
    );
}
