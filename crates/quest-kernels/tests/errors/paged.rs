//! Bad input to the paged cache writes (append_kv, update_bounds): each call is refused with an
//! error that names the op and the problem, and the cache is left unchanged.

use super::*;

pub(super) fn paged_errors<B: Backend>(b: &B) {
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
