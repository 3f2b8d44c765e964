//! The `quest` binary end to end: generation with dense and Quest attention on SmolLM2, and every
//! error path exiting non-zero with one readable line and no backtrace.
//!
//! Needs the imported model (scripts/test.sh fetches it), or QUEST_SMOLLM2_DIR.

use std::path::PathBuf;
use std::process::{Command, Output};

fn model_dir() -> PathBuf {
    std::env::var_os("QUEST_SMOLLM2_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/smollm2"))
}

fn quest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quest"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("the quest binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failed run: the given exit code, an `error:` line naming `needle`, no panic or backtrace.
fn assert_clean_failure(o: &Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

fn require_model() -> String {
    let dir = model_dir();
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} has no imported model: run scripts/test.sh or `quest fetch smollm2 models/smollm2`",
        dir.display()
    );
    dir.to_string_lossy().into_owned()
}

#[test]
fn quest_with_a_covering_budget_generates_the_same_text_as_dense() {
    let model = require_model();
    let prompt = "The lighthouse keeper climbed the stairs and checked the great lamp. Then he";
    let run = |policy: &str| {
        let o = quest(&[
            "generate",
            "--model",
            &model,
            "--prompt",
            prompt,
            "--policy",
            policy,
            "--budget",
            "64",
            "--page-size",
            "16",
            "--skip-layers",
            "0",
            "--max-new-tokens",
            "24",
            "--device",
            "cpu",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        (String::from_utf8_lossy(&o.stdout).into_owned(), stderr(&o))
    };
    let (dense, dense_err) = run("dense");
    let (sparse, sparse_err) = run("quest");
    assert!(dense.trim().len() > 20, "too little text: {dense:?}");
    assert_eq!(dense, sparse);
    for err in [&dense_err, &sparse_err] {
        assert!(
            err.contains("tok/s") && err.contains("KV pages in use"),
            "{err}"
        );
    }
}

#[test]
fn quest_with_a_small_budget_reads_less_than_dense() {
    let model = require_model();
    let prompt_file =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/passkey_2k.txt");
    let o = quest(&[
        "generate",
        "--model",
        &model,
        "--prompt-file",
        prompt_file.to_str().unwrap(),
        "--policy",
        "quest",
        "--budget",
        "128",
        "--max-new-tokens",
        "2",
        "--device",
        "cpu",
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    // "...dense reads X MiB (P%)": Quest at 64 of ~560 tokens reads well under half, even with
    // the first two layers dense and one page list per query head.
    let pct: f64 = err
        .rsplit_once('(')
        .and_then(|(_, p)| p.split('%').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no read percentage in: {err}"));
    assert!(pct < 50.0, "Quest read {pct}% of dense: {err}");
}

/// `--bounds int8` reads `2·64 + 16` bound bytes a page and KV head where f16 reads `2·64·2`.
#[test]
fn int8_bounds_read_about_half_the_bound_bytes() {
    let model = require_model();
    let prompt = "The grass is green. The sky is blue. The sun is yellow. ".repeat(12);
    let bound_mib = |bounds: &str| -> f64 {
        let o = quest(&[
            "generate",
            "--model",
            &model,
            "--prompt",
            &prompt,
            "--budget",
            "32",
            "--bounds",
            bounds,
            "--max-new-tokens",
            "2",
            "--device",
            "cpu",
        ]);
        let err = stderr(&o);
        assert!(o.status.success(), "{err}");
        assert!(
            err.contains(&format!(
                "bounds={}",
                if bounds == "f16" { "full" } else { bounds }
            )),
            "{err}"
        );
        err.split(" MiB of bounds")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("no bounds MiB in: {err}"))
    };
    let (full, int8) = (bound_mib("f16"), bound_mib("int8"));
    let ratio = int8 / full;
    assert!(
        (ratio - 144.0 / 256.0).abs() < 0.03,
        "int8 {int8} MiB, f16 {full} MiB"
    );
}

#[test]
fn bad_arguments_exit_with_usage_errors() {
    let o = quest(&[
        "generate", "--model", "x", "--prompt", "hi", "--budget", "many",
    ]);
    assert_clean_failure(&o, 2, "invalid value");
    let o = quest(&["generate", "--model", "x"]);
    assert_clean_failure(&o, 2, "--prompt");
    let o = quest(&["frobnicate"]);
    assert_clean_failure(&o, 2, "unrecognized subcommand");
}

#[test]
fn a_missing_model_directory_is_one_clear_error() {
    let o = quest(&[
        "generate",
        "--model",
        "/nonexistent/model",
        "--prompt",
        "hi",
        "--device",
        "cpu",
    ]);
    assert_clean_failure(&o, 1, "/nonexistent/model does not exist");
    assert_eq!(
        stderr(&o)
            .lines()
            .filter(|l| l.starts_with("error"))
            .count(),
        1
    );
}

#[test]
fn a_prompt_longer_than_the_context_is_refused() {
    let model = require_model();
    let dir = std::env::temp_dir().join(format!("quest-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("long.txt");
    std::fs::write(&file, "The sky is blue. ".repeat(2000)).unwrap();
    let o = quest(&[
        "generate",
        "--model",
        &model,
        "--prompt-file",
        file.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert_clean_failure(&o, 1, "exceeds the model's context of 8192");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_file_that_is_not_gguf_is_refused_by_convert() {
    let dir = std::env::temp_dir().join(format!("quest-cli-convert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bogus.gguf");
    std::fs::write(&file, b"not a model at all").unwrap();
    let o = quest(&[
        "convert",
        file.to_str().unwrap(),
        dir.join("out").to_str().unwrap(),
    ]);
    assert_clean_failure(&o, 1, "not a GGUF file");
    assert!(
        !dir.join("out").exists(),
        "nothing is written for a bad file"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn device_cuda_without_a_gpu_is_one_clear_error() {
    let o = quest(&[
        "generate",
        "--model",
        "/nonexistent/model",
        "--prompt",
        "hi",
        "--device",
        "cuda",
    ]);
    if quest_kernels::CudaBackend::is_available() {
        // With a GPU the device opens and the missing model is the error.
        assert_clean_failure(&o, 1, "does not exist");
    } else {
        assert_clean_failure(&o, 1, "CUDA is not available");
    }
}

#[test]
fn bench_kernels_without_a_gpu_is_one_clear_error() {
    if quest_kernels::CudaBackend::is_available() {
        println!("a GPU is present: `quest bench kernels` would run the whole benchmark; skipped");
        return;
    }
    let o = quest(&["bench", "kernels", "--json", "/nonexistent/dir/out.json"]);
    assert_clean_failure(&o, 1, "needs a CUDA device");
}

const PROSE: &str = "The morning was grey and still. Down by the harbour the fishing boats rocked \
gently at their moorings, and the gulls walked up and down the wet stones looking for scraps. \
An old man sat on an upturned crate mending a net, his fingers moving quickly over the knots.";

#[test]
fn eval_ppl_refuses_a_missing_a_non_utf8_and_a_short_text() {
    let dir = std::env::temp_dir().join(format!("quest-cli-ppl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let args = |text: &std::path::Path, model: &str| {
        quest(&[
            "eval",
            "ppl",
            "--model",
            model,
            "--text",
            text.to_str().unwrap(),
            "--device",
            "cpu",
        ])
    };
    // Both are caught before the model is read.
    let o = args(&dir.join("missing.txt"), "/nonexistent/model");
    assert_clean_failure(&o, 1, "missing.txt");
    let latin1 = dir.join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9").unwrap();
    let o = args(&latin1, "/nonexistent/model");
    assert_clean_failure(&o, 1, "not UTF-8");
    let short = dir.join("short.txt");
    std::fs::write(&short, PROSE).unwrap();
    let o = args(&short, &require_model());
    assert_clean_failure(&o, 1, "4 window(s) of 4096 tokens need 16384");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn eval_ppl_of_quest_with_a_covering_budget_equals_dense() {
    let model = require_model();
    let dir = std::env::temp_dir().join(format!("quest-cli-ppl-ok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("prose.txt");
    std::fs::write(&text, PROSE).unwrap();
    let json = dir.join("ppl.json");
    let o = quest(&[
        "eval",
        "ppl",
        "--model",
        &model,
        "--text",
        text.to_str().unwrap(),
        "--length",
        "16",
        "--windows",
        "2",
        "--budget",
        "64",
        "--policy",
        "dense,quest",
        "--device",
        "cpu",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("| quest |"), "{stdout}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let r = doc["results"].as_array().unwrap();
    assert_eq!(r.len(), 2);
    let ppl = |i: usize| r[i]["ppl"].as_f64().unwrap();
    assert_eq!(r[0]["policy"], "dense");
    assert_eq!(r[1]["policy"], "quest");
    assert_eq!(r[0]["predicted_tokens"], 30);
    assert_eq!(ppl(0), ppl(1), "a budget covering the windows is dense");
    // SmolLM2 on plain English prose: finite and far below a uniform guess over 49152 tokens.
    assert!(ppl(0) > 1.0 && ppl(0) < 1000.0, "{}", ppl(0));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn eval_ppl_with_the_adaptive_budget_reports_pages_per_row() {
    let model = require_model();
    let dir = std::env::temp_dir().join(format!("quest-cli-ppl-mass-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("prose.txt");
    std::fs::write(&text, PROSE).unwrap();
    let json = dir.join("ppl.json");
    let run = |mass: &str| {
        quest(&[
            "eval",
            "ppl",
            "--model",
            &model,
            "--text",
            text.to_str().unwrap(),
            "--length",
            "40",
            "--windows",
            "1",
            "--budget",
            "64",
            "--page-size",
            "4",
            "--policy",
            "dense,quest",
            "--mass",
            mass,
            "--device",
            "cpu",
            "--json",
            json.to_str().unwrap(),
        ])
    };
    let o = run("0.5");
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("pages]"), "{stdout}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let r = doc["results"].as_array().unwrap();
    assert_eq!(doc["mass"], 0.5);
    assert!(r[0]["pages_per_row"].is_null(), "dense counts no pages");
    // 40-token windows on 4-token pages: at most 10 pages a row; p = 0.5 keeps fewer on average.
    let pages = r[1]["pages_per_row"].as_f64().unwrap();
    assert!((1.0..10.0).contains(&pages), "{pages}");
    assert!(r[1]["ppl"].as_f64().unwrap().is_finite());
    // p = 1 keeps every page of a covering budget: dense perplexity.
    let o = run("1");
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let r = doc["results"].as_array().unwrap();
    assert_eq!(r[0]["ppl"], r[1]["ppl"]);
    let o = run("1.5");
    assert_clean_failure(&o, 1, "--mass must be in (0, 1]");
    std::fs::remove_dir_all(&dir).ok();
}
