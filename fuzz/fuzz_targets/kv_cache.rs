//! The KV cache under arbitrary operation sequences — add_sequence, reserve, plan, write_kv,
//! truncate, remove_sequence, and plans that went stale or come from another cache — checked
//! after every operation against a model of what it must hold:
//!
//! - each live sequence has its length and `ceil(len / page_size)` pages, no page is owned twice,
//!   every owned page is allocated in the pool and the pool's counts add up;
//! - the KV and bounds buffers hold exactly what the successful writes put there (the model keeps
//!   its own copy of both, bounds recomputed from its KV copy);
//! - an operation is refused exactly when the model says it must be, and a refused operation
//!   changes nothing (the model is only updated on success, and compared in full after each step).
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use quest_fuzz::Bytes;
use quest_kernels::{
    AttentionShape, Backend, CpuBackend, DevicePageTable, SelectOptions, TableRows, f16,
};
use quest_kvcache::{CacheConfig, CacheError, KvCache, SeqId, StepPlan};

type Cache = KvCache<CpuBackend, f16>;

#[derive(Clone, Debug)]
struct SeqModel {
    id: SeqId,
    alive: bool,
    len: usize,
    pages: Vec<u32>,
}

/// A plan and what the model knew when it was made.
struct PlanModel {
    plan: StepPlan<CpuBackend>,
    epoch: u64,
    /// (sequence index, new tokens, length then, pages then) per row.
    rows: Vec<(usize, usize, usize, Vec<u32>)>,
}

struct Model {
    cfg: CacheConfig,
    seqs: Vec<SeqModel>,
    /// Bumped by every successful remove_sequence and truncate (which make plans stale).
    epoch: u64,
    kv: Vec<Vec<f16>>,
    bounds: Vec<Vec<f16>>,
}

impl Model {
    fn owned(&self) -> usize {
        self.seqs
            .iter()
            .filter(|s| s.alive)
            .map(|s| s.pages.len())
            .sum()
    }

    fn check(&self, cache: &Cache) {
        let ps = self.cfg.page_size;
        let live: Vec<SeqId> = self.seqs.iter().filter(|s| s.alive).map(|s| s.id).collect();
        assert_eq!(cache.sequences().collect::<Vec<_>>(), live);
        let mut owned = HashSet::new();
        for s in &self.seqs {
            if !s.alive {
                assert!(matches!(
                    cache.seq_len(s.id),
                    Err(CacheError::UnknownSequence(_))
                ));
                continue;
            }
            assert_eq!(cache.seq_len(s.id).unwrap(), s.len);
            assert_eq!(cache.seq_pages(s.id).unwrap(), &s.pages[..]);
            assert_eq!(s.pages.len(), s.len.div_ceil(ps), "{s:?}");
            for &p in &s.pages {
                assert!(owned.insert(p), "page {p} owned twice");
                assert!((p as usize) < self.cfg.num_pages);
                assert!(
                    cache.pool().is_allocated(p),
                    "owned page {p} is free in the pool"
                );
            }
        }
        assert_eq!(cache.pages_in_use(), owned.len());
        assert_eq!(
            cache.free_pages() + cache.pages_in_use(),
            self.cfg.num_pages
        );
        for l in 0..self.cfg.num_layers {
            assert!(
                cache.kv(l).unwrap() == &self.kv[l],
                "layer {l}: KV differs from the model"
            );
            assert!(
                cache.bounds(l).unwrap() == &self.bounds[l],
                "layer {l}: bounds differ"
            );
        }
        let l = self.cfg.num_layers;
        assert!(matches!(
            cache.kv(l),
            Err(CacheError::LayerOutOfRange { .. })
        ));
        assert!(matches!(
            cache.bounds(l),
            Err(CacheError::LayerOutOfRange { .. })
        ));
    }

    /// Applies a successful write of `pm`'s tokens to the model's KV and bounds copies.
    fn write(&mut self, layer: usize, pm: &PlanModel, k: &[f32], v: &[f32]) {
        let layout = self.cfg.layout();
        let (ps, width) = (layout.page_size, layout.token_width());
        let mut t = 0;
        for (_, n, len, pages) in &pm.rows {
            for pos in len - n..*len {
                let (page, off) = (pages[pos / ps] as usize, pos % ps);
                for (which, src) in [(0, k), (1, v)] {
                    let at = layout.kv_offset(page, which, off, 0);
                    for c in 0..width {
                        self.kv[layer][at + c] = f16::from_f32(src[t * width + c]);
                    }
                }
                t += 1;
            }
        }
        for (_, n, len, pages) in &pm.rows {
            let first = (len - n) / ps;
            for (idx, &page) in pages.iter().enumerate().take(len.div_ceil(ps)).skip(first) {
                let (page, filled) = (page as usize, (len - idx * ps).min(ps));
                for c in 0..width {
                    let keys =
                        (0..filled).map(|s| self.kv[layer][layout.kv_offset(page, 0, s, 0) + c]);
                    let hi = keys.clone().fold(f16::NEG_INFINITY, f16::max);
                    let lo = keys.fold(f16::INFINITY, f16::min);
                    self.bounds[layer][layout.bounds_offset(page, 0, 0) + c] = hi;
                    self.bounds[layer][layout.bounds_offset(page, 1, 0) + c] = lo;
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let cfg = CacheConfig {
        num_layers: b.range(1, 2),
        num_kv_heads: b.range(1, 2),
        head_dim: 2 * b.range(1, 2),
        page_size: b.range(1, 5),
        num_pages: b.range(1, 12),
    };
    let mut cache = Cache::new(&CpuBackend, cfg).expect("a valid config");
    let layout = cfg.layout();
    let mut m = Model {
        cfg,
        seqs: Vec::new(),
        epoch: 0,
        kv: vec![vec![f16::ZERO; layout.kv_len()]; cfg.num_layers],
        bounds: vec![vec![f16::ZERO; layout.bounds_len()]; cfg.num_layers],
    };
    // A plan of another cache, which this one must refuse.
    let mut other = Cache::new(&CpuBackend, cfg).expect("a valid config");
    let os = other.add_sequence();
    other.reserve(os, 1).unwrap();
    let foreign = other.plan(&[(os, 1)]).unwrap();

    let mut plans: Vec<PlanModel> = Vec::new();
    let mut steps = 0;
    while !b.is_empty() && steps < 500 {
        steps += 1;
        let pick_seq = |b: &mut Bytes, m: &Model| -> Option<usize> {
            (!m.seqs.is_empty()).then(|| b.below(m.seqs.len()))
        };
        match b.u8() % 8 {
            0 => {
                let id = cache.add_sequence();
                assert!(m.seqs.iter().all(|s| s.id != id), "sequence id {id} reused");
                m.seqs.push(SeqModel {
                    id,
                    alive: true,
                    len: 0,
                    pages: Vec::new(),
                });
            }
            1 | 2 => {
                let Some(i) = pick_seq(&mut b, &m) else {
                    continue;
                };
                let n = match b.u8() % 16 {
                    0 => usize::MAX - b.below(4),
                    _ => b.below(2 * cfg.page_size + 3),
                };
                let s = &m.seqs[i];
                let free = cfg.num_pages - m.owned();
                let expect_ok = s.alive
                    && s.len
                        .checked_add(n)
                        .is_some_and(|l| l.div_ceil(cfg.page_size) - s.pages.len() <= free);
                match cache.reserve(s.id, n) {
                    Ok(()) => {
                        assert!(
                            expect_ok,
                            "reserve({}, {n}) accepted: {s:?}, {free} free",
                            s.id
                        );
                        let s = &mut m.seqs[i];
                        s.len += n;
                        let pages = cache.seq_pages(s.id).unwrap();
                        assert_eq!(&pages[..s.pages.len()], &s.pages[..], "reserve moved pages");
                        s.pages = pages.to_vec();
                    }
                    Err(e) => {
                        assert!(!expect_ok, "reserve({}, {n}) refused: {e}", s.id);
                        if s.alive && s.len.checked_add(n).is_some() {
                            assert!(matches!(e, CacheError::PoolExhausted { .. }), "{e}");
                        }
                    }
                }
            }
            3 => {
                let Some(i) = pick_seq(&mut b, &m) else {
                    continue;
                };
                let s = &m.seqs[i];
                let len = b.below(s.len + 2);
                match cache.truncate(s.id, len) {
                    Ok(()) => {
                        assert!(
                            s.alive && len <= s.len,
                            "truncate({}, {len}) accepted: {s:?}",
                            s.id
                        );
                        let s = &mut m.seqs[i];
                        s.len = len;
                        s.pages.truncate(len.div_ceil(cfg.page_size));
                        m.epoch += 1;
                    }
                    Err(e) => assert!(!(s.alive && len <= s.len), "truncate refused: {e}"),
                }
            }
            4 => {
                let Some(i) = pick_seq(&mut b, &m) else {
                    continue;
                };
                let s = &m.seqs[i];
                match cache.remove_sequence(s.id) {
                    Ok(()) => {
                        assert!(s.alive, "removed {} twice", s.id);
                        let s = &mut m.seqs[i];
                        s.alive = false;
                        s.pages.clear();
                        s.len = 0;
                        m.epoch += 1;
                    }
                    Err(e) => {
                        assert!(!s.alive, "remove_sequence refused: {e}");
                        assert_eq!(e, CacheError::UnknownSequence(s.id));
                    }
                }
            }
            5 | 6 => {
                if m.seqs.is_empty() {
                    continue;
                }
                let rows: Vec<(usize, usize)> = (0..b.below(4))
                    .map(|_| {
                        let i = b.below(m.seqs.len());
                        (i, b.below(m.seqs[i].len + 2))
                    })
                    .collect();
                let mut seen = HashSet::new();
                let expect_ok = !rows.is_empty()
                    && rows.iter().all(|&(i, n)| {
                        let s = &m.seqs[i];
                        s.alive && seen.insert(i) && n >= 1 && n <= s.len
                    });
                let request: Vec<(SeqId, usize)> =
                    rows.iter().map(|&(i, n)| (m.seqs[i].id, n)).collect();
                match cache.plan(&request) {
                    Ok(plan) => {
                        assert!(expect_ok, "plan({request:?}) accepted");
                        let rows: Vec<_> = rows
                            .iter()
                            .map(|&(i, n)| (i, n, m.seqs[i].len, m.seqs[i].pages.clone()))
                            .collect();
                        check_plan(&plan, &rows, cfg.page_size, &m);
                        check_select(&cache, &plan, &rows, &mut b);
                        plans.push(PlanModel {
                            plan,
                            epoch: m.epoch,
                            rows,
                        });
                        if plans.len() > 4 {
                            plans.remove(0);
                        }
                    }
                    Err(e) => assert!(!expect_ok, "plan({request:?}) refused: {e}"),
                }
            }
            _ => {
                let layer = b.below(cfg.num_layers + 1);
                let use_foreign = plans.is_empty() || b.u8().is_multiple_of(16);
                let pi = if use_foreign { 0 } else { b.below(plans.len()) };
                let plan = if use_foreign {
                    &foreign
                } else {
                    &plans[pi].plan
                };
                let width = layout.token_width();
                let mut len = plan.num_tokens() * width;
                let bad_size = b.u8().is_multiple_of(16);
                if bad_size {
                    len = if len > 0 && b.u8().is_multiple_of(2) {
                        len - 1
                    } else {
                        len + 1
                    };
                }
                let k: Vec<f32> = (0..len).map(|_| b.value()).collect();
                let v: Vec<f32> = (0..len).map(|_| b.value()).collect();
                let expect_ok = layer < cfg.num_layers
                    && !use_foreign
                    && plans[pi].epoch == m.epoch
                    && !bad_size;
                match cache.write_kv(layer, plan, &k, &v) {
                    Ok(()) => {
                        assert!(
                            expect_ok,
                            "write_kv accepted (layer {layer}, foreign {use_foreign}, bad size {bad_size})"
                        );
                        let pm = plans.swap_remove(pi);
                        m.write(layer, &pm, &k, &v);
                        plans.push(pm);
                    }
                    Err(e) => assert!(!expect_ok, "write_kv refused: {e}"),
                }
            }
        }
        m.check(&cache);
    }
    // Removing every sequence returns every page.
    for s in m.seqs.iter().filter(|s| s.alive) {
        cache.remove_sequence(s.id).unwrap();
    }
    assert_eq!(cache.free_pages(), cfg.num_pages);
    assert_eq!(cache.pages_in_use(), 0);
});

/// The plan holds the positions, slots, rows and touched pages the model predicts.
fn check_plan(
    plan: &StepPlan<CpuBackend>,
    rows: &[(usize, usize, usize, Vec<u32>)],
    ps: usize,
    m: &Model,
) {
    let (mut positions, mut slots, mut indptr) = (Vec::new(), Vec::new(), vec![0i32]);
    let (mut touched, mut touched_lens) = (Vec::new(), Vec::new());
    for (_, n, len, pages) in rows {
        for pos in len - n..*len {
            positions.push(pos as i32);
            slots.push((pages[pos / ps] as usize * ps + pos % ps) as i32);
        }
        indptr.push(positions.len() as i32);
        let first = (len - n) / ps;
        for (idx, &page) in pages.iter().enumerate().take(len.div_ceil(ps)).skip(first) {
            touched.push(page as i32);
            touched_lens.push((len - idx * ps).min(ps) as i32);
        }
    }
    let seqs: Vec<SeqId> = rows.iter().map(|r| m.seqs[r.0].id).collect();
    assert_eq!(plan.seqs(), &seqs[..]);
    assert_eq!(plan.batch(), rows.len());
    assert_eq!(plan.positions(), &positions[..]);
    assert_eq!(plan.slots(), &slots[..]);
    assert_eq!(plan.qo_indptr(), &indptr[..]);
    assert_eq!(plan.touched_pages(), &touched[..]);
    assert_eq!(plan.touched_page_lens(), &touched_lens[..]);
    assert_eq!(plan.num_tokens(), positions.len());
    for (r, (_, n, len, _)) in rows.iter().enumerate() {
        assert_eq!(plan.new_tokens(r), Some(*n));
        assert_eq!(plan.host_table().row_tokens(r, ps), *len);
    }
    assert_eq!(plan.new_tokens(rows.len()), None);
    let layout = m.cfg.layout();
    plan.host_table()
        .validate("plan", &layout)
        .expect("a valid page table");
}

/// Quest's selection over a fresh plan (the "select" operation): estimate with a query from the
/// input, maybe force a sink and a recent window, select with a budget from the input. Every row
/// keeps `min(n_pages, budget)` of its own sequence's pages, in table order, the last page last.
fn check_select(
    cache: &Cache,
    plan: &StepPlan<CpuBackend>,
    rows: &[(usize, usize, usize, Vec<u32>)],
    b: &mut Bytes,
) {
    if b.is_empty() {
        return;
    }
    let layout = *cache.layout();
    let group = 1 + b.below(3);
    let hq = layout.num_kv_heads * group;
    let shape = AttentionShape {
        num_qo_heads: hq,
        layout,
        sm_scale: 0.125,
    };
    let q: Vec<f32> = (0..rows.len() * hq * layout.head_dim)
        .map(|_| b.u8() as f32 / 16.0 - 8.0)
        .collect();
    let table = plan.table();
    let mut scores = vec![0f32; hq * table.nnz()];
    let bounds = cache.bounds(0).expect("layer 0 exists");
    CpuBackend
        .estimate_pages(&q, bounds, &shape, table, &mut scores)
        .expect("estimate over a valid plan");
    if b.u8().is_multiple_of(2) {
        CpuBackend
            .force_pages(&mut scores, hq, table, b.below(3), b.below(4))
            .expect("force over a valid plan");
    }
    let budget = 1 + b.below(8);
    let kind = if b.u8().is_multiple_of(2) {
        TableRows::PerQoHead
    } else {
        TableRows::PerKvHead
    };
    let heads = kind.count(1, hq, layout.num_kv_heads);
    let mut out = DevicePageTable::for_selection(&CpuBackend, &table.indptr_host, heads, budget)
        .expect("selection table");
    CpuBackend
        .select_top_pages(
            &scores,
            &shape,
            table,
            SelectOptions::top_k(budget, kind),
            &mut out,
            None,
        )
        .expect("select over a valid plan");
    let got = out.to_host(&CpuBackend).expect("cpu download");
    for (r, (_, _, _, pages)) in rows.iter().enumerate() {
        for h in 0..heads {
            let row = got.row(r * heads + h);
            assert_eq!(row.len(), pages.len().min(budget));
            let pos: Vec<usize> = row
                .iter()
                .map(|&p| {
                    pages
                        .iter()
                        .position(|&q| q as i32 == p)
                        .expect("a page of the sequence")
                })
                .collect();
            assert!(pos.windows(2).all(|w| w[0] < w[1]), "table order");
            if let Some(&last) = pos.last() {
                assert_eq!(last, pages.len() - 1, "the last page is kept");
            }
        }
    }
}
