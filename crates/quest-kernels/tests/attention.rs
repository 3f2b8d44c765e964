//! Paged decode and prefill attention: against an f64 softmax reference that reads the stored
//! keys/values straight from the layout, and Quest's central property, that sparse attention with a
//! budget covering the context is dense attention.

mod common;

use common::*;
use proptest::prelude::*;
use quest_kernels::{
    Backend, CpuBackend, DevicePageTable, Half, PageTable, SelectOptions, TableRows, bf16, f16,
};
use rand::Rng;
use rand::seq::SliceRandom;

/// Relative error allowed between an f32-accumulating kernel and the f64 reference.
const REF_TOL: f64 = 1e-5;

/// Decode attention through `table`/`rows`, output poisoned first and checked fully written.
fn decode<B: Backend, T: Half>(
    backend: &B,
    q: &[f32],
    cache: &Cache<B, T>,
    table: &DevicePageTable<B>,
    rows: TableRows,
) -> Vec<f32> {
    let mut out = up(backend, &poison(q.len()));
    backend
        .decode_attention(
            &up(backend, q),
            &cache.kv,
            &cache.shape,
            table,
            rows,
            &mut out,
        )
        .expect("decode_attention");
    let out = down(backend, &out);
    assert_written("decode_attention out", &out);
    out
}

/// Property 1: estimate → select with `budget_pages >= n_pages` (per query head and per KV head)
/// → decode over the selected tables equals decode over the dense per-sequence table.
fn check_sparse_covering_budget_is_dense<B: Backend, T: Half>(
    backend: &B,
    spec: &CacheSpec,
    seed: u64,
    extra_budget: usize,
) {
    let mut r = rng(seed);
    let cache = build_cache::<B, T>(backend, &mut r, spec);
    let (hq, hkv, d) = (cache.shape.num_qo_heads, spec.num_kv_heads, spec.head_dim);
    let batch = cache.batch();
    let q = uniform(&mut r, batch * hq * d, -3.0, 3.0);
    let dense_table = DevicePageTable::upload(backend, &cache.table, cache.layout()).unwrap();
    let dense = decode(backend, &q, &cache, &dense_table, TableRows::PerSequence);

    let nnz = cache.table.indices.len();
    let mut scores = up(backend, &poison(hq * nnz));
    backend
        .estimate_pages(
            &up(backend, &q),
            &cache.bounds,
            &cache.shape,
            &dense_table,
            &mut scores,
        )
        .expect("estimate_pages");
    assert_written("estimate_pages scores", &down(backend, &scores));

    let max_pages = (0..batch).map(|b| cache.table.row(b).len()).max().unwrap();
    let budget = max_pages + extra_budget;
    for rows in [TableRows::PerQoHead, TableRows::PerKvHead] {
        let heads = rows.count(1, hq, hkv);
        let mut sel = poisoned_selection(backend, &cache.table.indptr, heads, budget);
        backend
            .select_top_pages(
                &scores,
                &cache.shape,
                &dense_table,
                SelectOptions::top_k(budget, rows),
                &mut sel,
                None,
            )
            .expect("select_top_pages");
        let host = sel.to_host(backend).unwrap();
        for b in 0..batch {
            for head in 0..heads {
                let row = b * heads + head;
                assert_eq!(host.row(row), cache.table.row(b), "{rows:?} row {row}");
                assert_eq!(host.last_page_len[row], cache.table.last_page_len[b]);
            }
        }
        let sparse = decode(backend, &q, &cache, &sel, rows);
        let err = rel_err_f32(&sparse, &dense);
        assert!(
            err <= 1e-6,
            "{rows:?}: sparse vs dense relative error {err:e}"
        );
    }
}

/// Property 4 (decode): dense per-sequence tables, and random per-head tables (a random subset of
/// the sequence's pages per row, in random order, the row's last page partly read), both against the
/// f64 reference.
fn check_decode_matches_reference<B: Backend, T: Half>(backend: &B, spec: &CacheSpec, seed: u64) {
    let mut r = rng(seed);
    let cache = build_cache::<B, T>(backend, &mut r, spec);
    let (hq, hkv, d) = (cache.shape.num_qo_heads, spec.num_kv_heads, spec.head_dim);
    let batch = cache.batch();
    let q = uniform(&mut r, batch * hq * d, -3.0, 3.0);

    let mut tables = vec![(TableRows::PerSequence, cache.table.clone())];
    for rows in [TableRows::PerQoHead, TableRows::PerKvHead] {
        let heads = rows.count(1, hq, hkv);
        let mut t = PageTable::new();
        for b in 0..batch {
            let seq = cache.table.row(b);
            for _ in 0..heads {
                let keep = r.random_range(1..=seq.len());
                let mut pos: Vec<usize> = (0..seq.len()).collect();
                pos.shuffle(&mut r);
                pos.truncate(keep);
                // The sequence's own last page, when chosen, goes last with its true length;
                // otherwise the row ends in a full page of which only a random prefix is read.
                let last_pos = seq.len() - 1;
                let last_len = if let Some(i) = pos.iter().position(|&p| p == last_pos) {
                    pos.remove(i);
                    pos.push(last_pos);
                    cache.table.last_page_len[b]
                } else {
                    r.random_range(1..=spec.page_size as i32)
                };
                let pages: Vec<i32> = pos.iter().map(|&p| seq[p]).collect();
                t.push_row(&pages, last_len);
            }
        }
        tables.push((rows, t));
    }
    for (rows, table) in tables {
        let dt = DevicePageTable::upload(backend, &table, cache.layout()).unwrap();
        let got = decode(backend, &q, &cache, &dt, rows);
        let want = decode_ref(&q, &cache.kv_host, &cache.shape, &table, rows);
        let (err, at) = max_row_rel_err(&got, &want, d);
        assert!(
            err < REF_TOL,
            "{rows:?}: relative error {err:e} at (b, h) = ({}, {})",
            at / hq,
            at % hq
        );
    }
}

/// Property 4 (prefill): random query counts per sequence, causal positions `L - n + i`, GQA.
/// The last query of each sequence must also agree with decode attention over the sequence.
fn check_prefill_matches_reference<B: Backend, T: Half>(backend: &B, spec: &CacheSpec, seed: u64) {
    let mut r = rng(seed);
    let cache = build_cache::<B, T>(backend, &mut r, spec);
    let (hq, d) = (cache.shape.num_qo_heads, spec.head_dim);
    let batch = cache.batch();
    let mut qo_indptr = vec![0i32];
    for &len in &cache.seq_lens {
        let n = r.random_range(1..=len) as i32;
        qo_indptr.push(qo_indptr.last().unwrap() + n);
    }
    let total = *qo_indptr.last().unwrap() as usize;
    let q = uniform(&mut r, total * hq * d, -3.0, 3.0);
    let table = DevicePageTable::upload(backend, &cache.table, cache.layout()).unwrap();
    let mut out = up(backend, &poison(q.len()));
    backend
        .prefill_attention(
            &up(backend, &q),
            &cache.kv,
            &cache.shape,
            &table,
            &qo_indptr,
            &mut out,
        )
        .expect("prefill_attention");
    let got = down(backend, &out);
    assert_written("prefill_attention out", &got);
    let want = prefill_ref(&q, &cache.kv_host, &cache.shape, &cache.table, &qo_indptr);
    let (err, at) = max_row_rel_err(&got, &want, d);
    assert!(
        err < REF_TOL,
        "prefill relative error {err:e} at (query token, head) = ({}, {}), qo_indptr {qo_indptr:?}",
        at / hq,
        at % hq
    );

    // The last query token of each sequence sits at position L - 1: decode over the whole sequence.
    let w = hq * d;
    let last_q: Vec<f32> = (0..batch)
        .flat_map(|b| {
            let i = qo_indptr[b + 1] as usize - 1;
            q[i * w..(i + 1) * w].to_vec()
        })
        .collect();
    let dec = decode(backend, &last_q, &cache, &table, TableRows::PerSequence);
    for b in 0..batch {
        let i = qo_indptr[b + 1] as usize - 1;
        let err = rel_err_f32(&got[i * w..(i + 1) * w], &dec[b * w..(b + 1) * w]);
        assert!(
            err <= 1e-6,
            "sequence {b}: prefill last token vs decode {err:e}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sparse_with_covering_budget_equals_dense(
        spec in cache_spec(300),
        seed in any::<u64>(),
        extra in 0usize..=3,
        use_bf16 in any::<bool>(),
    ) {
        if use_bf16 {
            check_sparse_covering_budget_is_dense::<_, bf16>(&CpuBackend, &spec, seed, extra);
        } else {
            check_sparse_covering_budget_is_dense::<_, f16>(&CpuBackend, &spec, seed, extra);
        }
    }

    #[test]
    fn decode_matches_f64_reference(
        spec in cache_spec(300),
        seed in any::<u64>(),
        use_bf16 in any::<bool>(),
    ) {
        if use_bf16 {
            check_decode_matches_reference::<_, bf16>(&CpuBackend, &spec, seed);
        } else {
            check_decode_matches_reference::<_, f16>(&CpuBackend, &spec, seed);
        }
    }

    #[test]
    fn prefill_matches_f64_reference(
        spec in cache_spec(200),
        seed in any::<u64>(),
        use_bf16 in any::<bool>(),
    ) {
        if use_bf16 {
            check_prefill_matches_reference::<_, bf16>(&CpuBackend, &spec, seed);
        } else {
            check_prefill_matches_reference::<_, f16>(&CpuBackend, &spec, seed);
        }
    }
}

/// f32 storage (the `Half` impl used by references) goes through the same code.
#[test]
fn decode_and_prefill_with_f32_storage() {
    let spec = CacheSpec {
        page_size: 16,
        head_dim: 64,
        num_kv_heads: 2,
        group: 2,
        seq_lens: vec![37, 16, 1],
        spare_pages: 2,
    };
    for seed in 0..4 {
        check_decode_matches_reference::<_, f32>(&CpuBackend, &spec, seed);
        check_prefill_matches_reference::<_, f32>(&CpuBackend, &spec, seed);
    }
}

/// A sequence with zero queries in the middle of a prefill batch contributes no rows and does not
/// shift the others.
#[test]
fn prefill_with_an_empty_query_range() {
    let backend = CpuBackend;
    let spec = CacheSpec {
        page_size: 8,
        head_dim: 64,
        num_kv_heads: 1,
        group: 3,
        seq_lens: vec![20, 9, 13],
        spare_pages: 1,
    };
    let mut r = rng(7);
    let cache = build_cache::<_, f16>(&backend, &mut r, &spec);
    let qo_indptr = [0, 4, 4, 17];
    let (hq, d) = (3, 64);
    let q = uniform(&mut r, 17 * hq * d, -3.0, 3.0);
    let table = DevicePageTable::upload(&backend, &cache.table, cache.layout()).unwrap();
    let mut out = poison(q.len());
    backend
        .prefill_attention(&q, &cache.kv, &cache.shape, &table, &qo_indptr, &mut out)
        .unwrap();
    assert_written("prefill out", &out);
    let want = prefill_ref(&q, &cache.kv_host, &cache.shape, &cache.table, &qo_indptr);
    let (err, _) = max_row_rel_err(&out, &want, d);
    assert!(err < REF_TOL, "{err:e}");
}
