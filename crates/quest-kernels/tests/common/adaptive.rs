//! Checks of the adaptive budget (`SelectOptions::mass`) shared by the CPU tests (adaptive.rs) and
//! the CUDA comparison (cuda_vs_cpu_adaptive.rs): an f64 recomputation of every row's estimated
//! masses, independent of either backend's f32 sums.

#![allow(dead_code)]

use quest_kernels::{EMPTY_PAGE, PageTable};

/// Relative slack of the f64 mass checks: both backends sum at most a few thousand f32 terms
/// (about n · 2⁻²⁴ relative error, ≈ 1e-4 at 2000 terms) and use f32 `exp` (a few ulp).
pub const MASS_SLACK: f64 = 2e-4;

/// One selection row as the tests see it: the candidates' scores (the row's key: a query head's
/// score or the GQA group's sum), page ids of the sequence, and what a backend wrote.
pub struct RowCheck<'a> {
    /// Scores of the sequence's pages but the last, in table order.
    pub scores: &'a [f32],
    /// The sequence's page ids (the last one included).
    pub pages: &'a [i32],
    /// `sm_scale / group`.
    pub scale: f32,
    pub budget: usize,
    pub p: f32,
    /// The plain top-k row (mass off) for the same scores.
    pub top_k: &'a [i32],
    /// The adaptive row.
    pub got: &'a [i32],
}

/// Candidates best first: score descending, NaN last, earlier page on ties.
pub fn rank(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| {
        let (sa, sb) = (scores[a], scores[b]);
        let by = match (sa.is_nan(), sb.is_nan()) {
            (false, false) => sb.partial_cmp(&sa).unwrap_or(std::cmp::Ordering::Equal),
            (na, nb) => na.cmp(&nb),
        };
        by.then(a.cmp(&b))
    });
    order
}

/// f64 masses of the candidates: `exp(scale * (s - s_max))` for finite scores, 0 for NaN, -inf
/// and forced (+inf) pages.
pub fn masses(scores: &[f32], scale: f32) -> Vec<f64> {
    let s_max = scores
        .iter()
        .filter(|s| s.is_finite())
        .fold(f64::NEG_INFINITY, |m, &s| m.max(s as f64));
    scores
        .iter()
        .map(|&s| {
            if s.is_finite() {
                (scale as f64 * (s as f64 - s_max)).exp()
            } else {
                0.0
            }
        })
        .collect()
}

/// The kept pages of an adaptive row (slots before the last that are not empty), checking the
/// layout: kept pages first, then only empty slots, then the sequence's last page.
pub fn kept_pages(got: &[i32], last: i32, ctx: &str) -> Vec<i32> {
    assert_eq!(got.last(), Some(&last), "{ctx}: last page not last");
    let body = &got[..got.len() - 1];
    let k = body.iter().take_while(|&&p| p != EMPTY_PAGE).count();
    assert!(
        body[k..].iter().all(|&p| p == EMPTY_PAGE),
        "{ctx}: a page after an empty slot: {got:?}"
    );
    body[..k].to_vec()
}

/// Asserts that `c.got` is a valid adaptive selection and returns its kept candidates (indices
/// into the sequence, best first):
/// - the kept pages are those of the top-k, in table order, every forced (+inf) page among them;
/// - the non-forced ones are a best-first prefix of the top-k's non-forced pages;
/// - their mass reaches `p` of the row's non-forced mass, unless the whole top-k is kept (cap);
/// - no shorter prefix reaches it (dropping the last kept page falls short),
///
/// with [`MASS_SLACK`] relative slack on both mass comparisons.
pub fn check_row(c: &RowCheck, ctx: &str) -> Vec<usize> {
    let last = *c.pages.last().expect("a row has pages");
    let kept = kept_pages(c.got, last, ctx);
    let winners = &c.top_k[..c.top_k.len() - 1];
    let pos = |page: i32| c.pages.iter().position(|&q| q == page);
    // Table order and subset of the top-k.
    let kept_idx: Vec<usize> = kept
        .iter()
        .map(|&pg| pos(pg).unwrap_or_else(|| panic!("{ctx}: page {pg} not in the sequence")))
        .collect();
    assert!(
        kept_idx.windows(2).all(|w| w[0] < w[1]),
        "{ctx}: kept pages not in table order: {kept:?}"
    );
    assert!(
        kept.iter().all(|pg| winners.contains(pg)),
        "{ctx}: kept {kept:?} not within the top-k {winners:?}"
    );
    let ranked: Vec<usize> = rank(c.scores)
        .into_iter()
        .filter(|&j| winners.contains(&c.pages[j]))
        .collect();
    let forced = |j: usize| c.scores[j] == f32::INFINITY;
    for &j in ranked.iter().filter(|&&j| forced(j)) {
        assert!(kept_idx.contains(&j), "{ctx}: forced page {j} dropped");
    }
    let free: Vec<usize> = ranked.iter().copied().filter(|&j| !forced(j)).collect();
    let kept_free: Vec<usize> = free
        .iter()
        .copied()
        .filter(|j| kept_idx.contains(j))
        .collect();
    assert_eq!(
        kept_free,
        free[..kept_free.len()],
        "{ctx}: kept non-forced pages are not a best-first prefix"
    );
    let m = masses(c.scores, c.scale);
    let total: f64 = m.iter().sum();
    let goal = c.p as f64 * total;
    let covered: f64 = kept_free.iter().map(|&j| m[j]).sum();
    let slack = MASS_SLACK * total;
    if kept_free.len() < free.len() {
        assert!(
            covered >= goal - slack,
            "{ctx}: kept mass {covered} < p * total = {goal} (and the cap was not hit)"
        );
    }
    if let Some(&lastj) = kept_free.last() {
        let shorter = covered - m[lastj];
        assert!(
            shorter < goal + slack,
            "{ctx}: a shorter prefix ({shorter}) already reaches p * total = {goal}"
        );
    }
    kept_free
}

/// Splits a selection table into rows.
pub fn rows_of(t: &PageTable) -> Vec<Vec<i32>> {
    (0..t.rows()).map(|r| t.row(r).to_vec()).collect()
}
