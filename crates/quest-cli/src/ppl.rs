//! `quest eval ppl`: perplexity of a long text fed token by token through the decode path, for
//! each window length, policy and budget; a table per length (stdout) and, optionally, JSON with
//! the perplexity of every window and of every 512-token segment of the windows.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use quest_kernels::{Backend, CpuBackend, CudaBackend, Half, f16};
use quest_model::{Llama, Perplexity, PplOptions, Tokenizer, read_text, run_ppl, text_windows};
use serde_json::json;

use crate::eval::{EvalPolicy, PageCount, PolicyArgs, cells, check_mass, make_policy};
use crate::generate::Device;
use crate::progress;

/// Positions per segment in the JSON's perplexity-by-position curve.
const SEGMENT: usize = 512;

#[derive(Args, Debug)]
pub struct PplArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// A UTF-8 text; `quest fetch moby-dick` writes models/texts/moby-dick.txt.
    #[arg(long)]
    pub text: PathBuf,
    /// Window lengths in tokens.
    #[arg(
        long,
        alias = "length",
        value_delimiter = ',',
        default_value = "4096,8192"
    )]
    pub lengths: Vec<usize>,
    /// Token budgets.
    #[arg(
        long,
        alias = "budget",
        value_delimiter = ',',
        default_value = "256,1024"
    )]
    pub budgets: Vec<usize>,
    /// quest is the paper's selection, quest-sink the default one (sink page + recent window).
    #[arg(
        long,
        alias = "policy",
        value_enum,
        value_delimiter = ',',
        default_value = "dense,quest,quest-sink,streaming,h2o,tova"
    )]
    pub policies: Vec<EvalPolicy>,
    /// Windows per length, one from the start of each equal part of the text (never overlapping).
    #[arg(long, default_value_t = 4)]
    pub windows: usize,
    /// Windows run together as one batch of sequences.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// The first this-many tokens of each window are prefilled densely and only serve as
    /// context; 0 (the default) feeds every token through the decode path.
    #[arg(long, default_value_t = 0)]
    pub prefill: usize,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(args: &PplArgs, quiet: bool) -> Result<()> {
    match args.device {
        Device::Cpu => ppl::<CpuBackend, f16>(&CpuBackend, args, quiet),
        Device::Cuda => {
            let gpu = CudaBackend::new(0).context("--device cuda")?;
            ppl::<CudaBackend, f16>(&gpu, args, quiet)
        }
        Device::Auto => match CudaBackend::new(0) {
            Ok(gpu) => ppl::<CudaBackend, f16>(&gpu, args, quiet),
            Err(_) => ppl::<CpuBackend, f16>(&CpuBackend, args, quiet),
        },
    }
}

/// One cell of the grid.
struct Cell {
    length: usize,
    policy: EvalPolicy,
    budget: Option<usize>,
    result: Perplexity,
    /// Average pages read per selected row (Quest policies).
    pages_per_row: Option<f64>,
    seconds: f64,
}

fn ppl<B: Backend, W: Half>(backend: &B, args: &PplArgs, quiet: bool) -> Result<()> {
    if args.windows == 0 || args.batch == 0 || args.policy.page_size == Some(0) {
        bail!("--windows, --batch and --page-size must be positive");
    }
    if args.lengths.is_empty() || args.policies.is_empty() {
        bail!("give at least one --lengths and one --policies value");
    }
    check_mass(args.policy.mass)?;
    // The text and its windows are checked before the model is loaded.
    let text = read_text(&args.text).context("reading the text for perplexity")?;
    let tok = Tokenizer::from_dir(&args.model)?;
    let tokens = tok.encode(&text)?;
    for &length in &args.lengths {
        text_windows(&tokens, length, args.windows)
            .with_context(|| format!("{}", args.text.display()))?;
        if args.prefill >= length {
            bail!(
                "--prefill {} leaves nothing to predict in {length}-token windows",
                args.prefill
            );
        }
    }
    let model = Llama::<B, W>::load(backend, &args.model)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let context = model.config().max_position_embeddings;
    if let Some(&too_long) = args.lengths.iter().find(|&&l| l - 1 > context) {
        bail!("{too_long}-token windows exceed the model's context of {context} tokens");
    }

    let grid = cells(&args.policies, &args.budgets);
    let opts = |page_size| PplOptions {
        prefill: args.prefill,
        ..PplOptions::new(page_size)
    };
    let passes: usize = args
        .lengths
        .iter()
        .map(|&l| {
            let per_run = args.prefill.div_ceil(opts(1).prefill_chunk) + (l - 1 - args.prefill);
            per_run * args.windows.div_ceil(args.batch) * grid.len()
        })
        .sum();
    let bar = progress::bar(passes as u64, "ppl", quiet);
    let started = Instant::now();
    let mut results = Vec::new();
    for &length in &args.lengths {
        let windows = text_windows(&tokens, length, args.windows)?;
        for &(policy, budget) in &grid {
            let t0 = Instant::now();
            let mut nll = Vec::new();
            let mut first = 1;
            let mut pages = PageCount::default();
            for chunk in windows.chunks(args.batch) {
                // A fresh policy per batch: the baselines keep state per sequence id.
                let (mut p, page_size) =
                    make_policy::<B, W>(policy, budget.unwrap_or(0), &args.policy)?;
                let r = run_ppl(&model, p.as_mut(), chunk, &opts(page_size), |_, _| {
                    bar.inc(1)
                })
                .with_context(|| format!("{} at {length} tokens", cell_name(policy, budget)))?;
                first = r.first;
                nll.extend(r.nll);
                pages.add(p.as_mut())?;
            }
            results.push(Cell {
                length,
                policy,
                budget,
                result: Perplexity { length, first, nll },
                pages_per_row: pages.per_row(),
                seconds: t0.elapsed().as_secs_f64(),
            });
        }
    }
    bar.finish_and_clear();
    println!("{}", render_table(args, &results, tokens.len()));
    if let Some(path) = &args.json {
        let doc = json!({
            "model": args.model.display().to_string(),
            "text": args.text.display().to_string(),
            "text_tokens": tokens.len(),
            "device": backend.name(),
            "windows": args.windows,
            "prefill": args.prefill,
            "policies": args.policy.settings(&args.policies),
            "skip_layers": args.policy.skip_layers,
            "sink_pages": args.policy.sink_pages,
            "recent_pages": args.policy.recent_pages,
            "mass": args.policy.mass,
            "seconds": started.elapsed().as_secs_f64(),
            "results": results.iter().map(|c| json!({
                "length": c.length,
                "policy": c.policy.name(),
                "budget": c.budget,
                "ppl": c.result.ppl(),
                "ppl_last_half": c.result.ppl_last_half(),
                "predicted_tokens": c.result.tokens(),
                "first_predicted_position": c.result.first,
                "pages_per_row": c.pages_per_row,
                "window_ppl": c.result.window_ppl(),
                "segment_tokens": SEGMENT,
                "segment_ppl": c.result.segment_ppl(SEGMENT).iter().map(|s| s.1).collect::<Vec<_>>(),
                "seconds": c.seconds,
            })).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !quiet {
        eprintln!(
            "{:.0} s on {}{}",
            started.elapsed().as_secs_f64(),
            backend.name(),
            args.json
                .as_ref()
                .map(|p| format!("; wrote {}", p.display()))
                .unwrap_or_default()
        );
    }
    Ok(())
}

fn cell_name(policy: EvalPolicy, budget: Option<usize>) -> String {
    match budget {
        Some(b) => format!("{} (budget {b})", policy.name()),
        None => policy.name().to_owned(),
    }
}

/// A markdown table per length: policies down, budgets across, each cell the perplexity over all
/// predicted tokens and, in parentheses, over the second half of the windows (dense: one value,
/// repeated).
fn render_table(args: &PplArgs, results: &[Cell], text_tokens: usize) -> String {
    let mut s = String::new();
    for &length in &args.lengths {
        let _ = writeln!(
            s,
            "\nperplexity, {} window(s) of {length} tokens from {} ({text_tokens} tokens){}: \
             all predicted tokens (second half){}",
            args.windows,
            args.text.display(),
            if args.prefill > 0 {
                format!(", first {} prefilled", args.prefill)
            } else {
                String::new()
            },
            match args.policy.mass {
                Some(p) => format!("; quest*: mass {p}, [average pages read per row]"),
                None => String::new(),
            }
        );
        let _ = write!(s, "| policy |");
        for b in &args.budgets {
            let _ = write!(s, " {b} |");
        }
        let _ = write!(s, "\n|---|");
        for _ in &args.budgets {
            let _ = write!(s, "---|");
        }
        s.push('\n');
        for &p in &args.policies {
            let _ = write!(s, "| {} |", p.name());
            for &b in &args.budgets {
                let cell = results.iter().find(|c| {
                    c.length == length
                        && c.policy == p
                        && (p == EvalPolicy::Dense || c.budget == Some(b))
                });
                match cell {
                    Some(c) => {
                        let _ = write!(
                            s,
                            " {:.2} ({:.2})",
                            c.result.ppl(),
                            c.result.ppl_last_half()
                        );
                        // With the adaptive budget: the average pages read per row.
                        if let (Some(pr), Some(_)) = (c.pages_per_row, args.policy.mass) {
                            let _ = write!(s, " [{pr:.1} pages]");
                        }
                        s.push_str(" |");
                    }
                    None => s.push_str(" - |"),
                }
            }
            s.push('\n');
        }
    }
    s
}
