//! Generation under hostile requests: prompts longer than the context, token ids outside the
//! vocabulary, and a KV pool too small for one sequence of a batch. The other sequences go on
//! unchanged, the failed one reports the error, and every page returns to the pool.

mod common;

use std::sync::OnceLock;

use common::*;
use quest_kernels::{Backend, CpuBackend, CudaBackend, f16};
use quest_kvcache::KvCache;
use quest_model::{Dense, GenerateParams, Llama, ModelError, generate};

fn model<B: Backend>(b: &B, spec: &TinySpec) -> (tempfile::TempDir, Llama<B, f16>) {
    let dir = tiny_model(spec);
    let m = Llama::load(b, dir.path()).unwrap();
    (dir, m)
}

/// The GPU, or `None` after saying the test skipped.
fn gpu() -> Option<&'static CudaBackend> {
    static G: OnceLock<Result<CudaBackend, String>> = OnceLock::new();
    match G.get_or_init(|| CudaBackend::new(0).map_err(|e| e.to_string())) {
        Ok(g) => Some(g),
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
    }
}

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 37 + salt * 11) % 256)
        .collect()
}

fn params(max_new: usize) -> GenerateParams {
    GenerateParams {
        max_new_tokens: max_new,
        prefill_chunk: 16,
        ..Default::default()
    }
}

/// Greedy tokens of each prompt generated alone in a roomy cache.
fn alone<B: Backend>(b: &B, m: &Llama<B, f16>, p: &[u32], max_new: usize) -> Vec<u32> {
    let mut cache = KvCache::new(b, m.cache_config(64, 4)).unwrap();
    let (g, _) = generate(
        m,
        &mut cache,
        &mut Dense,
        &[p.to_vec()],
        &params(max_new),
        |_: usize, _: u32| {},
    )
    .unwrap();
    assert!(g[0].error.is_none());
    g[0].tokens.clone()
}

/// Each case takes the backend, so the CPU and the GPU run the same requests.
mod cases {
    use super::*;

    pub fn prompt_longer_than_the_context_is_refused_before_anything_is_stored<B: Backend>(be: &B) {
        let spec = TinySpec {
            max_position_embeddings: 32,
            ..Default::default()
        };
        let (_d, m) = model(be, &spec);
        let mut cache = KvCache::new(be, m.cache_config(64, 4)).unwrap();
        let ok = prompt(4, 1);
        for (len, new) in [(33, 1), (30, 3), (32, 1)] {
            let e = generate(
                &m,
                &mut cache,
                &mut Dense,
                &[ok.clone(), prompt(len, 2)],
                &params(new),
                |_: usize, _: u32| {},
            )
            .unwrap_err();
            assert!(
                matches!(e, ModelError::PromptTooLong { tokens, new: n, context: 32 } if tokens == len && n == new),
                "{len}+{new}: {e}"
            );
            assert_eq!(cache.pages_in_use(), 0);
            assert_eq!(cache.sequences().count(), 0);
        }
        // Exactly the context fits.
        let (g, _) = generate(
            &m,
            &mut cache,
            &mut Dense,
            &[prompt(30, 2)],
            &params(2),
            |_: usize, _: u32| {},
        )
        .unwrap();
        assert_eq!(g[0].tokens.len(), 2);
        // forward refuses a step past the context and keeps what the sequence had.
        let seq = cache.add_sequence();
        m.forward(&mut cache, &[(seq, &prompt(30, 3))], &mut Dense)
            .unwrap();
        let pages = cache.seq_pages(seq).unwrap().to_vec();
        let e = m
            .forward(&mut cache, &[(seq, &prompt(3, 4))], &mut Dense)
            .err()
            .unwrap();
        assert!(
            matches!(
                e,
                ModelError::PromptTooLong {
                    tokens: 33,
                    context: 32,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(cache.seq_len(seq).unwrap(), 30);
        assert_eq!(cache.seq_pages(seq).unwrap(), &pages[..]);
    }

    pub fn token_ids_outside_the_vocabulary_are_refused_and_nothing_leaks<B: Backend>(be: &B) {
        let spec = TinySpec::default();
        let (_d, m) = model(be, &spec);
        let mut cache = KvCache::new(be, m.cache_config(64, 4)).unwrap();
        // The bad id sits in the second prefill chunk, after the first chunk was stored.
        let mut bad = prompt(20, 5);
        bad[18] = spec.vocab as u32;
        let e = generate(
            &m,
            &mut cache,
            &mut Dense,
            &[prompt(6, 1), bad],
            &params(3),
            |_: usize, _: u32| {},
        )
        .unwrap_err();
        assert!(
            e.to_string().contains(&format!("token id {}", spec.vocab)),
            "{e}"
        );
        assert_eq!(
            cache.pages_in_use(),
            0,
            "pages of the failed call stay in use"
        );
        assert_eq!(
            cache.sequences().count(),
            0,
            "sequences of the failed call stay in the cache"
        );
    }

    pub fn pool_exhausted_during_prefill_fails_only_that_sequence<B: Backend>(be: &B) {
        let spec = TinySpec::default();
        let (_d, m) = model(be, &spec);
        let (a, b, c) = (prompt(5, 1), prompt(40, 2), prompt(6, 3));
        let max_new = 6;
        // a and c need 3 pages of 4 tokens each over the whole run; b alone needs 12.
        let mut cache = KvCache::new(be, m.cache_config(10, 4)).unwrap();
        let mut seen = vec![0usize; 3];
        let (gens, stats) = generate(
            &m,
            &mut cache,
            &mut Dense,
            &[a.clone(), b, c.clone()],
            &params(max_new),
            |i: usize, _: u32| seen[i] += 1,
        )
        .unwrap();
        assert!(
            gens[1]
                .error
                .as_deref()
                .is_some_and(|e| e.contains("pool is full")),
            "{:?}",
            gens[1].error
        );
        assert!(gens[1].tokens.is_empty());
        assert_eq!(seen, vec![max_new, 0, max_new]);
        for (i, p) in [(0, &a), (2, &c)] {
            assert!(gens[i].error.is_none(), "{i}: {:?}", gens[i].error);
            assert_eq!(
                gens[i].tokens,
                alone(be, &m, p, max_new),
                "prompt {i} changed by the failure"
            );
        }
        assert!(stats.pages_in_use <= 10);
        assert_eq!(cache.pages_in_use(), 0);
        assert_eq!(cache.free_pages(), 10);
        assert_eq!(cache.sequences().count(), 0);
    }

    pub fn pool_exhausted_during_decode_fails_only_the_sequence_that_could_not_grow<B: Backend>(
        be: &B,
    ) {
        let spec = TinySpec::default();
        let (_d, m) = model(be, &spec);
        let (a, b) = (prompt(4, 7), prompt(4, 8));
        // Each prompt fills one page; the first decode token of each needs a second page and only
        // one is free: the batch's second sequence fails, the first goes on.
        let max_new = 5;
        let mut cache = KvCache::new(be, m.cache_config(3, 4)).unwrap();
        let (gens, _) = generate(
            &m,
            &mut cache,
            &mut Dense,
            &[a.clone(), b],
            &params(max_new),
            |_: usize, _: u32| {},
        )
        .unwrap();
        assert!(gens[0].error.is_none(), "{:?}", gens[0].error);
        assert_eq!(gens[0].tokens, alone(be, &m, &a, max_new));
        let err = gens[1].error.as_deref().expect("the second sequence fails");
        assert!(err.contains("pool is full"), "{err}");
        // It keeps the token sampled from its prefill, and nothing after.
        assert_eq!(gens[1].tokens.len(), 1);
        assert_eq!(cache.pages_in_use(), 0);
        assert_eq!(cache.free_pages(), 3);
    }

    pub fn forward_that_cannot_reserve_leaves_every_sequence_as_it_was<B: Backend>(be: &B) {
        let spec = TinySpec::default();
        let (_d, m) = model(be, &spec);
        let mut cache = KvCache::new(be, m.cache_config(4, 4)).unwrap();
        let (s1, s2) = (cache.add_sequence(), cache.add_sequence());
        m.forward(
            &mut cache,
            &[(s1, &prompt(6, 1)), (s2, &prompt(3, 2))],
            &mut Dense,
        )
        .unwrap();
        let kv0 = be.download(cache.kv(0).unwrap()).unwrap();
        let before = (
            cache.seq_pages(s1).unwrap().to_vec(),
            cache.seq_pages(s2).unwrap().to_vec(),
            cache.free_pages(),
        );
        // s1 can grow by 2, s2 by 9 would need 2 more pages than the 1 left.
        let e = m
            .forward(
                &mut cache,
                &[(s1, &prompt(2, 3)), (s2, &prompt(9, 4))],
                &mut Dense,
            )
            .err()
            .unwrap();
        assert!(
            matches!(&e, ModelError::CacheFull { seq, .. } if *seq == s2),
            "{e}"
        );
        let after = (
            cache.seq_pages(s1).unwrap().to_vec(),
            cache.seq_pages(s2).unwrap().to_vec(),
            cache.free_pages(),
        );
        assert_eq!(before, after);
        assert_eq!(
            (cache.seq_len(s1).unwrap(), cache.seq_len(s2).unwrap()),
            (6, 3)
        );
        assert!(
            be.download(cache.kv(0).unwrap()).unwrap() == kv0,
            "stored K/V changed by a refused step"
        );
        // Unknown and empty inputs are refused without change too.
        assert!(m.forward(&mut cache, &[(s1, &[])], &mut Dense).is_err());
        assert!(m.forward(&mut cache, &[], &mut Dense).is_err());
        cache.remove_sequence(s2).unwrap();
        assert!(
            m.forward(&mut cache, &[(s1, &[1]), (s2, &[1])], &mut Dense)
                .is_err()
        );
        assert_eq!(cache.seq_len(s1).unwrap(), 6);
        // And the survivor still decodes.
        m.forward(&mut cache, &[(s1, &[1])], &mut Dense).unwrap();
        assert_eq!(cache.seq_len(s1).unwrap(), 7);
    }
}

/// One test per case on the CPU, and the same under `on_cuda::` on the GPU (skipped, saying so,
/// without one).
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                cases::$name(&CpuBackend);
            }
        )*
        mod on_cuda {
            $(
                #[test]
                fn $name() {
                    if let Some(g) = super::gpu() {
                        super::cases::$name(g);
                    }
                }
            )*
        }
    };
}

on_both_backends!(
    prompt_longer_than_the_context_is_refused_before_anything_is_stored,
    token_ids_outside_the_vocabulary_are_refused_and_nothing_leaks,
    pool_exhausted_during_prefill_fails_only_that_sequence,
    pool_exhausted_during_decode_fails_only_the_sequence_that_could_not_grow,
    forward_that_cannot_reserve_leaves_every_sequence_as_it_was,
);
