//! The Llama forward pass on a tiny random model: the prefill and decode paths, batching,
//! chunking and the Quest policy must agree with each other where the math says they must.

use quest_kernels::{AttentionShape, Backend, BoundsFormat, CpuBackend, PageTable, TableRows, f16};
use quest_kvcache::{CacheConfig, KvCache};
use quest_model::{
    Dense, H2o, KvPolicy, Llama, LlamaConfig, Quest, QuestConfig, Selection, StreamingLlm, Tova,
    Weights,
};

/// A small deterministic generator of weights in [-scale, scale).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn tensor(&mut self, n: usize, scale: f32) -> Vec<f16> {
        (0..n).map(|_| f16::from_f32(self.next() * scale)).collect()
    }

    fn norm(&mut self, n: usize) -> Vec<f16> {
        (0..n)
            .map(|_| f16::from_f32(1.0 + 0.2 * self.next()))
            .collect()
    }
}

fn tiny_config(heads: usize, kv_heads: usize) -> LlamaConfig {
    LlamaConfig::from_json(&format!(
        r#"{{"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3,
        "num_attention_heads": {heads}, "num_key_value_heads": {kv_heads}, "head_dim": 16,
        "vocab_size": 97, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 512, "tie_word_embeddings": true}}"#
    ))
    .unwrap()
}

fn tiny_model(cfg: &LlamaConfig, seed: u64) -> Llama<CpuBackend, f16> {
    let mut r = Rng(seed);
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let q = cfg.num_attention_heads * cfg.head_dim();
    let kv = cfg.num_kv_heads() * cfg.head_dim();
    let s = 1.0 / (h as f32).sqrt() * 1.7;
    let layers = (0..cfg.num_hidden_layers)
        .map(|_| quest_model::llama::LayerWeights {
            attn_norm: r.norm(h),
            wq: r.tensor(q * h, s * 2.0),
            wk: r.tensor(kv * h, s * 2.0),
            wv: r.tensor(kv * h, s),
            wo: r.tensor(h * q, s),
            ffn_norm: r.norm(h),
            w_gate: r.tensor(i * h, s),
            w_up: r.tensor(i * h, s),
            w_down: r.tensor(h * i, s),
        })
        .collect();
    let weights = Weights {
        embed: r.tensor(v * h, 1.0),
        layers,
        norm: r.norm(h),
        lm_head: None,
    };
    Llama::new(&CpuBackend, cfg.clone(), weights).unwrap()
}

fn tokens(n: usize, seed: u64, vocab: usize) -> Vec<u32> {
    let mut r = Rng(seed);
    (0..n)
        .map(|_| ((r.next() * 0.5 + 0.5) * vocab as f32) as u32 % vocab as u32)
        .collect()
}

fn cache(model: &Llama<CpuBackend, f16>, page_size: usize) -> KvCache<CpuBackend, f16> {
    KvCache::new(&CpuBackend, model.cache_config(128, page_size)).unwrap()
}

fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f32 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-30)).sqrt()
}

/// Logits after feeding `toks`: `prefill` tokens at once, then one decode step per token.
fn run(
    model: &Llama<CpuBackend, f16>,
    policy: &mut dyn KvPolicy<CpuBackend, f16>,
    toks: &[u32],
    prefill: usize,
    page_size: usize,
) -> Vec<Vec<f32>> {
    let mut c = cache(model, page_size);
    let s = c.add_sequence();
    let mut out = Vec::new();
    let f = model
        .forward(&mut c, &[(s, &toks[..prefill])], policy)
        .unwrap();
    out.push(f.logits);
    for t in &toks[prefill..] {
        let f = model
            .forward(&mut c, &[(s, std::slice::from_ref(t))], policy)
            .unwrap();
        out.push(f.logits);
    }
    out
}

#[test]
fn decode_steps_match_a_single_prefill() {
    for (heads, kv_heads) in [(4, 4), (6, 2)] {
        let cfg = tiny_config(heads, kv_heads);
        let model = tiny_model(&cfg, 1);
        let toks = tokens(70, 2, cfg.vocab_size);
        for page_size in [8, 16] {
            let stepwise = run(&model, &mut Dense, &toks, 1, page_size);
            for n in [1, 17, 40, 70] {
                let whole = run(&model, &mut Dense, &toks[..n], n, page_size);
                let e = rel_err(&stepwise[n - 1], &whole[0]);
                assert!(
                    e < 1e-4,
                    "GQA {heads}/{kv_heads} page {page_size} n {n}: {e}"
                );
            }
        }
    }
}

#[test]
fn a_batch_equals_its_sequences_alone() {
    let cfg = tiny_config(6, 2);
    let model = tiny_model(&cfg, 3);
    let prompts: Vec<Vec<u32>> = [5, 33, 18]
        .iter()
        .enumerate()
        .map(|(i, &n)| tokens(n, 10 + i as u64, cfg.vocab_size))
        .collect();
    let mut c = cache(&model, 8);
    let seqs: Vec<_> = prompts.iter().map(|_| c.add_sequence()).collect();
    let items: Vec<_> = seqs
        .iter()
        .zip(&prompts)
        .map(|(&s, p)| (s, &p[..]))
        .collect();
    let batched = model.forward(&mut c, &items, &mut Dense).unwrap().logits;
    // One decode step for all three at once, too.
    let next: Vec<[u32; 1]> = (0..3).map(|i| [i as u32 + 7]).collect();
    let items: Vec<_> = seqs.iter().zip(&next).map(|(&s, t)| (s, &t[..])).collect();
    let batched_step = model.forward(&mut c, &items, &mut Dense).unwrap().logits;
    let v = cfg.vocab_size;
    for (i, p) in prompts.iter().enumerate() {
        let mut with_next = p.clone();
        with_next.push(next[i][0]);
        let alone = run(&model, &mut Dense, &with_next, p.len(), 8);
        assert!(rel_err(&batched[i * v..(i + 1) * v], &alone[0]) < 1e-5);
        assert!(rel_err(&batched_step[i * v..(i + 1) * v], &alone[1]) < 1e-5);
    }
}

#[test]
fn quest_with_a_covering_budget_is_dense_and_a_small_budget_is_not() {
    let cfg = tiny_config(6, 2);
    let model = tiny_model(&cfg, 5);
    let toks = tokens(120, 6, cfg.vocab_size);
    let dense = run(&model, &mut Dense, &toks, 60, 8);
    let cases = [TableRows::PerQoHead, TableRows::PerKvHead]
        .into_iter()
        .flat_map(|r| [(r, BoundsFormat::Full), (r, BoundsFormat::Int8)]);
    for (rows, bounds) in cases {
        let mut covering = Quest::<CpuBackend>::new(QuestConfig {
            budget: 128,
            skip_layers: 0,
            rows,
            sink_pages: 0,
            recent_pages: 0,
            bounds,
            mass: None,
        })
        .unwrap();
        let q = run(&model, &mut covering, &toks, 60, 8);
        assert_eq!(
            q, dense,
            "{rows:?}: covering budget must give dense logits exactly"
        );
        let mut small = Quest::<CpuBackend>::new(QuestConfig {
            budget: 16,
            skip_layers: 1,
            rows,
            sink_pages: 0,
            recent_pages: 0,
            bounds,
            mass: None,
        })
        .unwrap();
        let q = run(&model, &mut small, &toks, 60, 8);
        assert!(q.iter().flatten().all(|x| x.is_finite()));
        let last = q.len() - 1;
        assert!(
            rel_err(&q[last], &dense[last]) > 1e-6,
            "{rows:?} {bounds}: 2 of 15 pages cannot equal dense attention"
        );
    }
}

/// Quest with 8-bit bounds turns the cache to 8-bit bounds before its first step (and H2O back to
/// full ones), and counts the bytes it reads in that format: `2·d + 16` a page and KV head
/// instead of `2·d·2`.
#[test]
fn quest_with_int8_bounds_converts_the_cache_and_counts_its_bytes() {
    let cfg = tiny_config(6, 2);
    let model = tiny_model(&cfg, 13);
    let toks = tokens(80, 14, cfg.vocab_size);
    let mut bytes = Vec::new();
    for bounds in [BoundsFormat::Full, BoundsFormat::Int8] {
        let mut q = Quest::<CpuBackend>::new(QuestConfig {
            bounds,
            skip_layers: 1,
            ..QuestConfig::paper(16)
        })
        .unwrap();
        let mut c = cache(&model, 8);
        let s = c.add_sequence();
        model.forward(&mut c, &[(s, &toks[..79])], &mut q).unwrap();
        assert_eq!(c.bounds_format(), bounds);
        let f = model.forward(&mut c, &[(s, &toks[79..])], &mut q).unwrap();
        assert!(
            CpuBackend
                .download(&f.logits)
                .unwrap()
                .iter()
                .all(|x| x.is_finite())
        );
        bytes.push(f.stats.bounds_bytes);
        let mut h2o = H2o::<CpuBackend>::new(64, 1);
        let _ = model.forward(&mut c, &[(s, &toks[..1])], &mut h2o);
        assert_eq!(
            c.bounds_format(),
            BoundsFormat::Full,
            "H2O needs exact bounds"
        );
    }
    // 10 pages, 2 KV heads, 2 Quest layers, head_dim 16.
    assert_eq!(
        bytes,
        vec![10 * 2 * 2 * (2 * 16 * 2), 10 * 2 * 2 * (2 * 16 + 16)]
    );
}

#[test]
fn chunked_prefill_equals_one_pass() {
    let cfg = tiny_config(4, 2);
    let model = tiny_model(&cfg, 7);
    let toks = tokens(50, 8, cfg.vocab_size);
    let whole = run(&model, &mut Dense, &toks, 50, 16);
    let mut c = cache(&model, 16);
    let s = c.add_sequence();
    let mut last = Vec::new();
    for chunk in toks.chunks(13) {
        last = model
            .forward(&mut c, &[(s, chunk)], &mut Dense)
            .unwrap()
            .logits;
    }
    assert!(rel_err(&last, &whole[0]) < 1e-5);
    assert_eq!(c.seq_len(s).unwrap(), 50);
}

#[test]
fn bad_tokens_and_overlong_input_change_nothing() {
    let cfg = tiny_config(4, 2);
    let model = tiny_model(&cfg, 9);
    let mut c = KvCache::new(&CpuBackend, model.cache_config(4, 8)).unwrap();
    let s = c.add_sequence();
    let Err(e) = model.forward(&mut c, &[(s, &[1, 2, 97])], &mut Dense) else {
        panic!("token 97 of a 97-token vocabulary was accepted");
    };
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    // 33 tokens need 5 pages of 8; the pool has 4.
    let long = tokens(33, 1, cfg.vocab_size);
    let Err(e) = model.forward(&mut c, &[(s, &long)], &mut Dense) else {
        panic!("33 tokens fit in 32 slots");
    };
    assert!(e.to_string().contains("pool is full"), "{e}");
    assert_eq!(c.seq_len(s).unwrap(), 0);
    assert_eq!(c.pages_in_use(), 0);
    let f = model
        .forward(&mut c, &[(s, &long[..32])], &mut Dense)
        .unwrap();
    assert_eq!(CpuBackend.buf_len(&f.logits), cfg.vocab_size);
}

fn baselines(budget: usize, skip: usize) -> Vec<Box<dyn KvPolicy<CpuBackend, f16>>> {
    vec![
        Box::new(StreamingLlm::<CpuBackend>::new(budget, skip)),
        Box::new(H2o::<CpuBackend>::new(budget, skip)),
        Box::new(Tova::<CpuBackend>::new(budget, skip)),
    ]
}

#[test]
fn baselines_with_a_covering_budget_are_dense() {
    let cfg = tiny_config(6, 2);
    let model = tiny_model(&cfg, 11);
    let toks = tokens(90, 12, cfg.vocab_size);
    let dense = run(&model, &mut Dense, &toks, 60, 1);
    for mut p in baselines(128, 0) {
        let got = run(&model, p.as_mut(), &toks, 60, 1);
        for (g, d) in got.iter().zip(&dense) {
            assert!(rel_err(g, d) < 1e-5, "{}: {}", p.name(), rel_err(g, d));
        }
    }
}

#[test]
fn baselines_with_a_small_budget_differ_from_dense_and_stay_finite() {
    let cfg = tiny_config(6, 2);
    let model = tiny_model(&cfg, 13);
    let toks = tokens(100, 14, cfg.vocab_size);
    let dense = run(&model, &mut Dense, &toks, 60, 1);
    for mut p in baselines(12, 1) {
        let got = run(&model, p.as_mut(), &toks, 60, 1);
        assert!(got.iter().flatten().all(|x| x.is_finite()), "{}", p.name());
        let last = got.len() - 1;
        assert!(
            rel_err(&got[last], &dense[last]) > 1e-6,
            "{}: 12 of 100 tokens cannot equal dense",
            p.name()
        );
    }
}

#[test]
fn token_policies_refuse_multi_token_pages() {
    let cfg = tiny_config(4, 2);
    let model = tiny_model(&cfg, 15);
    let toks = tokens(40, 16, cfg.vocab_size);
    for mut p in baselines(8, 0) {
        let mut c = cache(&model, 8);
        let s = c.add_sequence();
        model.forward(&mut c, &[(s, &toks)], p.as_mut()).unwrap();
        let Err(e) = model.forward(&mut c, &[(s, &[1])], p.as_mut()) else {
            panic!("{} accepted 8-token pages", p.name());
        };
        assert!(e.to_string().contains("page_size 1"), "{e}");
        assert_eq!(c.seq_len(s).unwrap(), 40, "the failed step rolled back");
    }
}

#[test]
fn streaming_llm_is_sinks_plus_recent_window() {
    // The policy's choice itself, on a 31-token cache with a budget of 10: tokens 0-3 and 25-30.
    use quest_kernels::{AttentionShape, Backend};
    use quest_model::policy::SelectInput;
    let cfg = tiny_config(4, 2);
    let model = tiny_model(&cfg, 17);
    let mut c = cache(&model, 1);
    let s = c.add_sequence();
    let toks = tokens(30, 18, cfg.vocab_size);
    model.forward(&mut c, &[(s, &toks)], &mut Dense).unwrap();
    c.reserve(s, 1).unwrap();
    let plan = c.plan(&[(s, 1)]).unwrap();
    let shape = AttentionShape {
        num_qo_heads: 4,
        layout: *c.layout(),
        sm_scale: 0.25,
    };
    let q = CpuBackend.zeros::<f32>(4 * 16).unwrap();
    let mut p = StreamingLlm::<CpuBackend>::new(10, 0);
    let sel = KvPolicy::<CpuBackend, f16>::select(
        &mut p,
        SelectInput {
            layer: 0,
            q: &q,
            cache: &c,
            plan: &plan,
            shape: &shape,
        },
    )
    .unwrap();
    let quest_model::Selection::Pages(table, rows) = sel else {
        panic!("31 tokens over a budget of 10 must be sparse");
    };
    assert_eq!(rows, TableRows::PerSequence);
    let pages = c.seq_pages(s).unwrap();
    let want: Vec<i32> = [0, 1, 2, 3, 25, 26, 27, 28, 29, 30]
        .iter()
        .map(|&i| pages[i] as i32)
        .collect();
    assert_eq!(table.to_host(&CpuBackend).unwrap().indices, want);
}

/// The adaptive budget at p = 1 with a budget covering the context still selects (the budget is
/// only a cap) but keeps every page: dense logits exactly. At p = 0.3 it reads fewer pages than
/// its slots (counted on the device, reported by `page_reads`), and the step's bytes say so.
#[test]
fn adaptive_budget_at_p_one_is_dense_and_below_one_reads_fewer_pages() {
    let cfg = tiny_config(6, 2);
    let model = tiny_model(&cfg, 21);
    let toks = tokens(100, 22, cfg.vocab_size);
    let dense = run(&model, &mut Dense, &toks, 50, 8);
    for rows in [TableRows::PerQoHead, TableRows::PerKvHead] {
        let config = QuestConfig {
            skip_layers: 0,
            rows,
            mass: Some(1.0),
            ..QuestConfig::new(256)
        };
        let mut q = Quest::<CpuBackend>::new(config).unwrap();
        assert_eq!(run(&model, &mut q, &toks, 50, 8), dense, "{rows:?} p = 1");
        let reads = q.page_reads().unwrap();
        // 50 decode steps, 3 layers, a row per head: every slot held a page.
        let heads = if rows == TableRows::PerQoHead { 6 } else { 2 };
        assert_eq!(reads.rows, 50 * 3 * heads);
        assert_eq!(reads.pages, reads.slots);

        let mut trim = Quest::<CpuBackend>::new(QuestConfig {
            mass: Some(0.3),
            ..config
        })
        .unwrap();
        let mut c = cache(&model, 8);
        let s = c.add_sequence();
        model
            .forward(&mut c, &[(s, &toks[..99])], &mut trim)
            .unwrap();
        let f = model
            .forward(&mut c, &[(s, &toks[99..])], &mut trim)
            .unwrap();
        let logits = CpuBackend.download(&f.logits).unwrap();
        assert!(logits.iter().all(|x| x.is_finite()));
        let reads = trim.page_reads().unwrap();
        assert_eq!(reads.rows, 3 * heads);
        assert_eq!(reads.slots, 3 * heads * 13, "13 pages of 8 for 100 tokens");
        assert!(
            reads.pages < reads.slots,
            "{reads:?}: p = 0.3 trims nothing"
        );
        assert!(reads.pages >= 3 * heads, "the last page is always kept");
        let st = f.stats;
        assert_eq!(st.kv_bytes, 0, "every layer's pages are adaptive");
        assert_eq!(st.adaptive_slots, reads.slots as usize);
        assert!(st.kv_bytes_with(reads.pages) < st.kv_bytes_upper());
        // Slots of 8 tokens, each token one KV head's K and V: 2 * head_dim 16 * 2 bytes.
        let token_bytes = 2 * 16 * 2;
        assert_eq!(
            st.kv_bytes_upper(),
            3 * heads as usize * 13 * 8 * token_bytes
        );
        assert_eq!(st.dense_kv_bytes, 3 * 100 * 2 * token_bytes);
    }
    let bad = QuestConfig {
        mass: Some(1.5),
        ..QuestConfig::new(64)
    };
    assert!(Quest::<CpuBackend>::new(bad).is_err());
}

/// The page table Quest selects for `layer` of a decode step, on the host.
fn quest_table(
    quest: &mut Quest<CpuBackend>,
    layer: usize,
    q: &Vec<f32>,
    cache: &KvCache<CpuBackend, f16>,
    plan: &quest_kvcache::StepPlan<CpuBackend>,
    shape: &AttentionShape,
) -> PageTable {
    let input = quest_model::policy::SelectInput {
        layer,
        q,
        cache,
        plan,
        shape,
    };
    match KvPolicy::<CpuBackend, f16>::select(quest, input).unwrap() {
        Selection::Pages(t, _) | Selection::Adaptive(t, _) => t.to_host(&CpuBackend).unwrap(),
        Selection::Dense => panic!("layer {layer} is past skip_layers: Quest must select"),
    }
}

/// Quest selects while the decode step's append and bounds update run beside it (the model
/// queues them on a branch): so its pages must be the same whether it selects before or after
/// them. Checked directly on the selection, over decode steps that fill a page and open the next
/// (the new last page's bounds are stale or garbage before the append), for both row kinds,
/// forced pages, both bound formats and the adaptive budget.
#[test]
fn quest_selecting_before_the_append_changes_nothing() {
    let (heads, kv_heads, hd, layers) = (6usize, 2usize, 16usize, 2usize);
    let config = CacheConfig {
        num_layers: layers,
        num_kv_heads: kv_heads,
        head_dim: hd,
        page_size: 4,
        num_pages: 64,
    };
    let mut r = Rng(5);
    let mut f32s = |n: usize| -> Vec<f32> { (0..n).map(|_| r.next() * 2.0).collect() };
    for rows in [TableRows::PerQoHead, TableRows::PerKvHead] {
        for bounds in [BoundsFormat::Full, BoundsFormat::Int8] {
            for mass in [None, Some(0.5)] {
                let qc = QuestConfig {
                    skip_layers: 1,
                    rows,
                    bounds,
                    mass,
                    ..QuestConfig::new(12)
                };
                let mut quest = Quest::<CpuBackend>::new(qc).unwrap();
                assert!(KvPolicy::<CpuBackend, f16>::selects_before_append(
                    &quest, 1
                ));
                assert!(!KvPolicy::<CpuBackend, f16>::selects_before_append(
                    &quest, 0
                ));
                let mut cache = KvCache::<CpuBackend, f16>::new(&CpuBackend, config).unwrap();
                cache.set_bounds_format(bounds).unwrap();
                let seq = cache.add_sequence();
                let shape = AttentionShape {
                    num_qo_heads: heads,
                    layout: *cache.layout(),
                    sm_scale: 0.25,
                };
                let width = kv_heads * hd;
                let prompt = 21;
                cache.reserve(seq, prompt).unwrap();
                let plan = cache.plan(&[(seq, prompt)]).unwrap();
                for layer in 0..layers {
                    let (k, v) = (f32s(prompt * width), f32s(prompt * width));
                    cache.write_kv(layer, &plan, &k, &v).unwrap();
                }
                for step in 0..9 {
                    cache.reserve(seq, 1).unwrap();
                    let plan = cache.plan(&[(seq, 1)]).unwrap();
                    let q = f32s(heads * hd);
                    let before = quest_table(&mut quest, 1, &q, &cache, &plan, &shape);
                    for layer in 0..layers {
                        let (k, v) = (f32s(width), f32s(width));
                        cache.write_kv(layer, &plan, &k, &v).unwrap();
                    }
                    let after = quest_table(&mut quest, 1, &q, &cache, &plan, &shape);
                    assert_eq!(
                        before, after,
                        "{rows:?} {bounds:?} mass {mass:?} step {step}"
                    );
                    let rows = before.indptr.len() - 1; // per query head or per KV head
                    assert!(
                        before.indices.len() < (prompt + step + 1).div_ceil(4) * rows,
                        "a budget of 3 pages must select"
                    );
                }
            }
        }
    }
}
