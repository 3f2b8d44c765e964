//! The adaptive budget of `select_top_pages` (`SelectOptions::mass`) on the CPU reference:
//! hand-checkable rows, a property test against an f64 recomputation of the masses, the argument
//! checks, and decode attention over tables with empty slots (`EMPTY_PAGE`). The CUDA comparison
//! is in cuda_vs_cpu_adaptive.rs.

#[path = "common/adaptive.rs"]
mod adaptive_check;
mod common;

use adaptive_check::{RowCheck, check_row, kept_pages};
use common::*;
use proptest::prelude::*;
use quest_kernels::{
    AttentionShape, Backend, CpuBackend, DevicePageTable, EMPTY_PAGE, KernelError, PageTable,
    PagedLayout, SelectOptions, TableRows, f16,
};
use rand::Rng;

/// A poison no backend writes (-1 is a legitimate empty slot).
const POISON: i32 = -7;

fn layout(num_pages: usize, num_kv_heads: usize) -> PagedLayout {
    PagedLayout {
        num_pages,
        page_size: 16,
        num_kv_heads,
        head_dim: 8,
    }
}

/// Runs `select_top_pages` with `opts` on a poisoned output; returns the table and the kept count.
pub fn select<B: Backend>(
    b: &B,
    scores: &[f32],
    shape: &AttentionShape,
    table: &PageTable,
    opts: SelectOptions,
) -> (PageTable, u64) {
    let heads = opts
        .rows
        .count(1, shape.num_qo_heads, shape.layout.num_kv_heads);
    let dt = DevicePageTable::upload(b, table, &shape.layout).unwrap();
    let mut out = DevicePageTable::for_selection(b, &table.indptr, heads, opts.budget_pages)
        .expect("for_selection");
    let (nnz, rows) = (out.nnz(), out.rows());
    b.write(&mut out.indices, 0, &vec![POISON; nnz]).unwrap();
    b.write(&mut out.last_page_len, 0, &vec![POISON; rows])
        .unwrap();
    let mut kept = up(b, &[5u64]);
    b.select_top_pages(&up(b, scores), shape, &dt, opts, &mut out, Some(&mut kept))
        .expect("select_top_pages");
    let host = out.to_host(b).unwrap();
    assert!(!host.indices.contains(&POISON), "unwritten slot: {host:?}");
    (host, down(b, &kept)[0] - 5)
}

/// One sequence of pages 10, 11, ... (one per score plus the last), one query head.
fn one_row(scores: &[f32], budget: usize, mass: Option<f32>, sm_scale: f32) -> Vec<i32> {
    let n = scores.len() + 1;
    let shape = AttentionShape {
        num_qo_heads: 1,
        layout: layout(10 + n, 1),
        sm_scale,
    };
    let mut table = PageTable::new();
    table.push_row(&(10..10 + n as i32).collect::<Vec<_>>(), 3);
    let mut s = scores.to_vec();
    s.push(0.0); // the last page's own score, never used
    let opts = SelectOptions::top_k(budget, TableRows::PerQoHead).with_mass(mass);
    let (t, kept) = select(&CpuBackend, &s, &shape, &table, opts);
    assert_eq!(t.last_page_len, vec![3]);
    let real = t.indices.iter().filter(|&&p| p != EMPTY_PAGE).count() as u64;
    assert_eq!(kept, real, "kept counter");
    t.indices
}

const E: i32 = EMPTY_PAGE;

#[test]
fn one_dominant_page_keeps_one_page_and_the_last() {
    let mut s = vec![0.0f32; 9];
    s[3] = 100.0;
    assert_eq!(one_row(&s, 6, Some(0.9), 1.0), vec![13, E, E, E, E, 19]);
    // Forced pages (sink 0, recent 7 and 8) stay and do not count toward the mass.
    s[0] = f32::INFINITY;
    s[7] = f32::INFINITY;
    s[8] = f32::INFINITY;
    assert_eq!(one_row(&s, 6, Some(0.9), 1.0), vec![10, 13, 17, 18, E, 19]);
    // Mass off: the whole budget.
    assert_eq!(one_row(&s, 6, None, 1.0), vec![10, 11, 13, 17, 18, 19]);
}

#[test]
fn uniform_scores_keep_p_of_the_pages() {
    // 40 equal candidates, a budget covering them all: p = 0.5 keeps 20 (the earliest: ties).
    let s = vec![1.5f32; 40];
    for (p, want) in [(0.5f32, 20usize), (0.25, 10), (0.9, 36), (0.01, 1)] {
        let got = one_row(&s, 41, Some(p), 0.125);
        let kept: Vec<i32> = got[..40].iter().copied().filter(|&x| x != E).collect();
        assert_eq!(kept, (10..10 + want as i32).collect::<Vec<_>>(), "p {p}");
        assert_eq!(got[40], 50);
    }
}

#[test]
fn p_one_keeps_the_full_budget_and_equals_top_k() {
    let mut r = rng(7);
    for _ in 0..20 {
        let n = r.random_range(1..30usize);
        let budget = r.random_range(1..35usize);
        // Spread wide enough that some masses underflow to 0: p = 1 keeps them anyway.
        let s: Vec<f32> = (0..n).map(|_| r.random_range(-2000.0..2000.0)).collect();
        assert_eq!(
            one_row(&s, budget, Some(1.0), 1.0),
            one_row(&s, budget, None, 1.0)
        );
    }
}

#[test]
fn the_budget_caps_the_pages() {
    // 40 equal pages would need 36 for p = 0.9; a budget of 8 keeps the top-k's 7 and the last.
    let s = vec![0.0f32; 40];
    let got = one_row(&s, 8, Some(0.9), 1.0);
    assert_eq!(got, vec![10, 11, 12, 13, 14, 15, 16, 50]);
    assert_eq!(got, one_row(&s, 8, None, 1.0));
}

#[test]
fn nan_and_minus_inf_have_no_mass() {
    let (nan, ninf) = (f32::NAN, f32::NEG_INFINITY);
    // No finite score: nothing but forced pages and the last.
    assert_eq!(
        one_row(&[nan, ninf, f32::INFINITY, nan], 5, Some(0.5), 1.0),
        vec![12, E, E, E, 14]
    );
    // One finite page holds all the mass.
    assert_eq!(
        one_row(&[nan, ninf, 2.0, nan], 5, Some(0.99), 1.0),
        vec![12, E, E, E, 14]
    );
}

#[test]
fn summed_rows_use_the_per_head_scale() {
    // Two query heads share a KV head; page 0 scores (10, 10), page 1 (0, 0), sm_scale 0.1.
    // Per head, page 1 has mass e^-1 of page 0's: page 0 holds 1 / (1 + e^-1) = 0.731.
    // (With the raw sum the share would be 1 / (1 + e^-2) = 0.881.)
    let shape = AttentionShape {
        num_qo_heads: 2,
        layout: layout(8, 1),
        sm_scale: 0.1,
    };
    let mut table = PageTable::new();
    table.push_row(&[4, 5, 6], 1);
    // scores[h * nnz + j]
    let scores = [10.0, 0.0, 0.0, 10.0, 0.0, 0.0];
    for (p, want) in [(0.7f32, vec![4, E, 6]), (0.8, vec![4, 5, 6])] {
        let opts = SelectOptions::top_k(3, TableRows::PerKvHead).with_mass(Some(p));
        let (t, kept) = select(&CpuBackend, &scores, &shape, &table, opts);
        assert_eq!(t.indices, want, "p {p}");
        assert_eq!(kept, want.iter().filter(|&&x| x != E).count() as u64);
    }
}

#[test]
fn bad_thresholds_are_refused() {
    for p in [0.0f32, -0.5, 1.5, f32::NAN, f32::INFINITY] {
        let shape = AttentionShape {
            num_qo_heads: 1,
            layout: layout(4, 1),
            sm_scale: 1.0,
        };
        let mut table = PageTable::new();
        table.push_row(&[0, 1, 2], 1);
        let dt = DevicePageTable::upload(&CpuBackend, &table, &shape.layout).unwrap();
        let mut out = DevicePageTable::for_selection(&CpuBackend, &table.indptr, 1, 2).unwrap();
        let opts = SelectOptions::top_k(2, TableRows::PerQoHead).with_mass(Some(p));
        match CpuBackend.select_top_pages(&vec![0.0; 3], &shape, &dt, opts, &mut out, None) {
            Err(KernelError::Argument { msg, .. }) => {
                assert!(msg.contains("mass threshold"), "{msg}")
            }
            other => panic!("p = {p}: expected an argument error, got {other:?}"),
        }
    }
}

// ---- property ---------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct MassCase {
    num_kv_heads: usize,
    group: usize,
    pages_per_seq: Vec<usize>,
    budget: usize,
    p: f32,
    sm_scale: f32,
    /// 0: wide continuous scores, 1: coarse grid (ties), 2: with NaN / ±inf / forced pages.
    kind: u8,
    seed: u64,
}

fn mass_case() -> impl Strategy<Value = MassCase> {
    (
        (1usize..=2, 1usize..=3),
        prop::collection::vec(1usize..=40, 1..=3),
        1usize..=45,
        0.01f32..1.0,
        prop::sample::select(vec![0.05f32, 0.125, 1.0]),
        0u8..3,
        any::<u64>(),
    )
        .prop_map(
            |((num_kv_heads, group), pages_per_seq, budget, p, sm_scale, kind, seed)| MassCase {
                num_kv_heads,
                group,
                pages_per_seq,
                budget,
                p,
                sm_scale,
                kind,
                seed,
            },
        )
}

/// Random scores of a kind (see [`MassCase::kind`]).
pub fn mass_scores(r: &mut rand::rngs::StdRng, n: usize, kind: u8) -> Vec<f32> {
    (0..n)
        .map(|_| match kind {
            0 => r.random_range(-40.0f32..40.0),
            1 => r.random_range(-4i32..=4) as f32,
            _ => match r.random_range(0..12) {
                0 => f32::NAN,
                1 => f32::NEG_INFINITY,
                2 => f32::INFINITY,
                _ => r.random_range(-20.0f32..20.0),
            },
        })
        .collect()
}

/// Checks every row of an adaptive selection against the f64 recomputation (`check_row`) and
/// the plain top-k of the same scores; returns the rows' kept counts.
pub fn check_adaptive<B: Backend>(
    b: &B,
    scores: &[f32],
    shape: &AttentionShape,
    table: &PageTable,
    opts: SelectOptions,
    ctx: &str,
) -> (PageTable, u64) {
    let (top_k, _) = select(b, scores, shape, table, opts.with_mass(None));
    let (got, kept) = select(b, scores, shape, table, opts);
    let hq = shape.num_qo_heads;
    let heads = opts.rows.count(1, hq, shape.layout.num_kv_heads);
    let group = hq / heads;
    let nnz = table.indices.len();
    let mut real = 0u64;
    for bi in 0..table.rows() {
        let start = table.indptr[bi] as usize;
        let pages = table.row(bi);
        for head in 0..heads {
            let row = bi * heads + head;
            let key: Vec<f32> = (0..pages.len() - 1)
                .map(|j| {
                    (head * group..(head + 1) * group)
                        .map(|h| scores[h * nnz + start + j])
                        .sum()
                })
                .collect();
            let c = RowCheck {
                scores: &key,
                pages,
                scale: shape.sm_scale / group as f32,
                budget: opts.budget_pages,
                p: opts.mass.unwrap_or(1.0),
                top_k: top_k.row(row),
                got: got.row(row),
            };
            let ctx = format!("{ctx} seq {bi} head {head}");
            real += kept_pages(got.row(row), pages[pages.len() - 1], &ctx).len() as u64 + 1;
            check_row(&c, &ctx);
        }
    }
    assert_eq!(kept, real, "{ctx}: kept counter");
    (got, kept)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Property: every row keeps its forced pages and the shortest best-first prefix of the
    /// others whose mass reaches p (or the whole top-k when the budget caps it), in table order,
    /// padded with empty slots, the last page last; the kept counter counts the real pages.
    #[test]
    fn adaptive_rows_reach_p_with_the_shortest_prefix(case in mass_case()) {
        let mut r = rng(case.seed);
        let hq = case.num_kv_heads * case.group;
        let total: usize = case.pages_per_seq.iter().sum();
        let shape = AttentionShape {
            num_qo_heads: hq,
            layout: layout(total, case.num_kv_heads),
            sm_scale: case.sm_scale,
        };
        let mut table = PageTable::new();
        let mut next = 0i32;
        for &n in &case.pages_per_seq {
            table.push_row(&(next..next + n as i32).collect::<Vec<_>>(), r.random_range(1..=16));
            next += n as i32;
        }
        let scores = mass_scores(&mut r, hq * total, case.kind);
        for rows in [TableRows::PerQoHead, TableRows::PerKvHead] {
            let opts = SelectOptions::top_k(case.budget, rows).with_mass(Some(case.p));
            check_adaptive(&CpuBackend, &scores, &shape, &table, opts, &format!("{case:?} {rows:?}"));
        }
    }
}

// ---- attention over empty slots ---------------------------------------------------------------

/// Decode attention over a table with empty slots equals attention over the same table with the
/// empty slots removed (bit for bit on the CPU: the same tokens in the same order).
#[test]
fn empty_slots_read_nothing() {
    let c = CpuBackend;
    let mut r = rng(3);
    let l = PagedLayout {
        num_pages: 12,
        page_size: 4,
        num_kv_heads: 2,
        head_dim: 8,
    };
    let shape = AttentionShape {
        num_qo_heads: 4,
        layout: l,
        sm_scale: 0.3,
    };
    let kv: Vec<f16> = to_half(&uniform(&mut r, l.kv_len(), -2.0, 2.0));
    let q = uniform(&mut r, 4 * 8, -1.0, 1.0);
    let (mut sparse, mut dense) = (PageTable::new(), PageTable::new());
    // Per KV head rows: [3, -1, 7, -1, 9] and [-1, -1, 5]; compacted [3, 7, 9] and [5].
    sparse.push_row(&[3, E, 7, E, 9], 2);
    sparse.push_row(&[E, E, 5], 4);
    dense.push_row(&[3, 7, 9], 2);
    dense.push_row(&[5], 4);
    let mut outs = Vec::new();
    for t in [&sparse, &dense] {
        let dt = DevicePageTable::upload(&c, t, &l).unwrap();
        let mut o = vec![f32::NAN; q.len()];
        c.decode_attention(&q, &kv, &shape, &dt, TableRows::PerKvHead, &mut o)
            .unwrap();
        assert_written("decode_attention", &o);
        outs.push(o);
    }
    assert_eq!(outs[0], outs[1]);
    // An empty last slot is refused (it holds the row's last tokens), and so are empty slots
    // anywhere but in decode attention.
    let mut bad = PageTable::new();
    bad.push_row(&[3, E], 2);
    bad.push_row(&[5], 1);
    let err = bad.validate_sparse("t", &l).unwrap_err();
    assert!(err.to_string().contains("page id -1"), "{err}");
    assert!(sparse.validate("t", &l).is_err());
    let dt = DevicePageTable::upload(&c, &sparse, &l).unwrap();
    let mut scores = vec![0.0; 4 * 8];
    assert!(
        c.estimate_pages(
            &q,
            &vec![f16::ZERO; l.bounds_len()],
            &shape,
            &dt,
            &mut scores
        )
        .is_err()
    );
}

/// An empty sequence row between two others: nothing to keep there, with or without a mass, and
/// the other rows select as they would alone (the CPU reference once underflowed on it).
#[test]
fn empty_rows_select_nothing_with_a_mass() {
    let shape = AttentionShape {
        num_qo_heads: 1,
        layout: layout(20, 1),
        sm_scale: 1.0,
    };
    let mut table = PageTable::new();
    table.push_row(&[1, 2, 3, 4], 5);
    table.push_row(&[], 1);
    table.push_row(&[7, 8, 9], 2);
    let scores = [9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
    for mass in [None, Some(0.5), Some(1.0)] {
        let opts = SelectOptions::top_k(2, TableRows::PerQoHead).with_mass(mass);
        let (t, kept) = select(&CpuBackend, &scores, &shape, &table, opts);
        assert_eq!(t.indptr, vec![0, 2, 2, 4], "mass {mass:?}");
        assert_eq!(
            &t.indices[..2],
            &[1, 4],
            "mass {mass:?}: the dominant page and the last"
        );
        assert_eq!(t.indices[3], 9, "mass {mass:?}: the last page of row 2");
        assert_eq!(
            kept,
            t.indices.iter().filter(|&&p| p != EMPTY_PAGE).count() as u64
        );
    }
}
