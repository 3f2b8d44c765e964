//! Perplexity through the decode path on a tiny random checkpoint: it must equal the NLL computed
//! from prefill logits, be exactly dense when the budget covers the context, differ when it does
//! not, and refuse bad input with named errors.

mod common;

use quest_kernels::{Backend, CpuBackend, f16};
use quest_kvcache::KvCache;
use quest_model::ppl::token_nll;
use quest_model::{
    Dense, H2o, KvPolicy, Llama, ModelError, Perplexity, PplOptions, Quest, QuestConfig,
    StreamingLlm, Tokenizer, Tova, read_text, run_ppl, text_windows,
};

type Model = Llama<CpuBackend, f16>;

const TEXT: &str = "It was a bright cold day in April, and the clocks were striking thirteen. \
The sea was calm, the ship lay still, and the crew slept below the deck while the watch kept on.";

/// A 3-layer random checkpoint with its byte-level tokenizer, and the windows of `TEXT`.
fn setup() -> (tempfile::TempDir, Model, Vec<u32>) {
    let spec = common::TinySpec {
        layers: 3,
        ..Default::default()
    };
    let dir = common::tiny_model(&spec);
    let model = Model::load(&CpuBackend, dir.path()).unwrap();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let tokens = tok.encode(TEXT).unwrap();
    assert!(tokens.len() >= 96, "{} tokens", tokens.len());
    (dir, model, tokens)
}

fn ppl(
    model: &Model,
    policy: &mut dyn KvPolicy<CpuBackend, f16>,
    windows: &[&[u32]],
    page_size: usize,
) -> Perplexity {
    run_ppl(
        model,
        policy,
        windows,
        &PplOptions::new(page_size),
        |_, _| {},
    )
    .unwrap()
}

#[test]
fn decode_nll_equals_the_nll_of_prefill_logits() {
    let (_dir, model, tokens) = setup();
    let windows = text_windows(&tokens, 40, 2).unwrap();
    let got = ppl(&model, &mut Dense, &windows, 4);
    assert_eq!(got.first, 1);
    assert_eq!(got.tokens(), 2 * 39);
    // The reference: for each window and position i, prefill the first i tokens alone (all as
    // one batch of sequences) and score token i with the logits of that prefill.
    let vocab = model.config().vocab_size;
    for (w, window) in windows.iter().enumerate() {
        let mut cache =
            KvCache::<CpuBackend, f16>::new(&CpuBackend, model.cache_config(400, 4)).unwrap();
        let items: Vec<_> = (1..40)
            .map(|i| (cache.add_sequence(), &window[..i]))
            .collect();
        let f = model.forward(&mut cache, &items, &mut Dense).unwrap();
        let logits = CpuBackend.download(&f.logits).unwrap();
        for i in 1..40 {
            let want = token_nll(&logits[(i - 1) * vocab..i * vocab], window[i]);
            let have = got.nll[w][i - 1];
            assert!(
                (have - want).abs() < 1e-3,
                "window {w} position {i}: decode {have}, prefill {want}"
            );
        }
    }
    let p = got.ppl();
    assert!(p.is_finite() && p > 1.0, "{p}");
}

#[test]
fn a_covering_budget_gives_dense_perplexity() {
    let (_dir, model, tokens) = setup();
    let windows = text_windows(&tokens, 48, 2).unwrap();
    let dense = ppl(&model, &mut Dense, &windows, 4);
    for config in [QuestConfig::new(64), QuestConfig::paper(64)] {
        let mut q = Quest::<CpuBackend>::new(QuestConfig {
            skip_layers: 0,
            ..config
        })
        .unwrap();
        assert_eq!(ppl(&model, &mut q, &windows, 4), dense, "{config:?}");
    }
    let dense1 = ppl(&model, &mut Dense, &windows, 1);
    let mut baselines: Vec<Box<dyn KvPolicy<CpuBackend, f16>>> = vec![
        Box::new(StreamingLlm::<CpuBackend>::new(64, 0)),
        Box::new(H2o::<CpuBackend>::new(64, 0)),
        Box::new(Tova::<CpuBackend>::new(64, 0)),
    ];
    for p in &mut baselines {
        let got = ppl(&model, p.as_mut(), &windows, 1);
        let worst = got
            .nll
            .iter()
            .flatten()
            .zip(dense1.nll.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-4, "{}: {worst}", p.name());
    }
}

#[test]
fn a_small_budget_changes_perplexity_and_stays_finite() {
    let (_dir, model, tokens) = setup();
    let windows = text_windows(&tokens, 48, 2).unwrap();
    let dense = ppl(&model, &mut Dense, &windows, 4);
    let mut q = Quest::<CpuBackend>::new(QuestConfig {
        skip_layers: 1,
        ..QuestConfig::paper(8)
    })
    .unwrap();
    let quest = ppl(&model, &mut q, &windows, 4);
    assert!(quest.ppl().is_finite());
    assert_ne!(quest.ppl(), dense.ppl());
    // Up to the budget the context is whole: the first 8 predictions are dense ones.
    assert_eq!(quest.nll[0][..7], dense.nll[0][..7]);
    let mut s = StreamingLlm::<CpuBackend>::new(8, 1);
    let streaming = ppl(&model, &mut s, &windows, 1);
    assert!(streaming.ppl().is_finite());
    assert_ne!(streaming.ppl(), ppl(&model, &mut Dense, &windows, 1).ppl());
}

#[test]
fn a_dense_prefix_scores_only_the_tokens_after_it_and_runs_are_deterministic() {
    let (_dir, model, tokens) = setup();
    let windows = text_windows(&tokens, 40, 2).unwrap();
    let all = ppl(&model, &mut Dense, &windows, 4);
    assert_eq!(
        all,
        ppl(&model, &mut Dense, &windows, 4),
        "same inputs, same numbers"
    );
    let opts = PplOptions {
        prefill: 16,
        prefill_chunk: 5,
        ..PplOptions::new(4)
    };
    let mut passes = 0;
    let part = run_ppl(&model, &mut Dense, &windows, &opts, |done, total| {
        passes = done;
        assert!(done <= total);
    })
    .unwrap();
    assert_eq!(
        passes,
        4 + 23,
        "4 prefill passes of 5 tokens, then 23 decode steps"
    );
    assert_eq!(part.first, 16);
    assert_eq!(part.tokens(), 2 * 24);
    for (p, a) in part.nll.iter().zip(&all.nll) {
        for (x, y) in p.iter().zip(&a[15..]) {
            assert!((x - y).abs() < 1e-3, "{x} vs {y}");
        }
    }
}

#[test]
fn bad_input_is_a_named_error() {
    let (_dir, model, tokens) = setup();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.txt");
    let e = read_text(&missing).unwrap_err();
    assert!(matches!(e, ModelError::Io { .. }) && e.to_string().contains("nope.txt"));
    let latin1 = dir.path().join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9 au lait").unwrap();
    let e = read_text(&latin1).unwrap_err();
    assert!(matches!(e, ModelError::NotUtf8 { offset: 3, .. }), "{e}");
    let e = text_windows(&tokens, tokens.len() + 1, 1).unwrap_err();
    assert!(e.to_string().contains("window(s) of"), "{e}");

    let w = text_windows(&tokens, 20, 1).unwrap();
    let run = |windows: &[&[u32]], opts: PplOptions| {
        run_ppl(&model, &mut Dense, windows, &opts, |_, _| {}).unwrap_err()
    };
    let e = run(
        &w,
        PplOptions {
            prefill: 20,
            ..PplOptions::new(4)
        },
    );
    assert!(e.to_string().contains("nothing to predict"), "{e}");
    assert!(run(&[], PplOptions::new(4)).to_string().contains("window"));
    assert!(
        run(&[&w[0][..5], &w[0][..6]], PplOptions::new(4))
            .to_string()
            .contains("same length")
    );
    assert!(
        run(&w, PplOptions::new(0))
            .to_string()
            .contains("page_size")
    );
    let bad = [1u32, 2, 999];
    assert!(
        run(&[&bad], PplOptions::new(4))
            .to_string()
            .contains("outside the vocabulary")
    );
    let long: Vec<u32> = (0..130).map(|i| i % 200).collect();
    let e = run(&[&long], PplOptions::new(4));
    assert!(matches!(e, ModelError::PromptTooLong { .. }), "{e}");
}
