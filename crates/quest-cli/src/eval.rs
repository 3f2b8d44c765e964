//! `quest eval passkey`: pass-key retrieval accuracy for each policy, budget and length, as a
//! table (stdout), JSON and an SVG plot of accuracy against budget. The policies and their options
//! are shared with `quest eval ppl` (ppl.rs).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use quest_kernels::{Backend, CpuBackend, CudaBackend, Half, TableRows, f16};
use quest_model::{
    Dense, H2o, KvPolicy, Llama, PageReads, Quest, QuestConfig, StreamingLlm, Tokenizer, Tova,
    passkey_prompts, run_passkey,
};
use serde_json::json;

use crate::generate::{BoundsArg, Device};
use crate::progress;

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// Pass-key retrieval over lengths, budgets and policies.
    Passkey(PasskeyArgs),
    /// Perplexity of a long text fed token by token through the decode path.
    Ppl(crate::ppl::PplArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EvalPolicy {
    Dense,
    /// The paper's Quest: one page set per query head.
    #[value(alias = "quest-paper")]
    Quest,
    /// Quest with one page set per GQA group (scores summed over the group).
    QuestGroup,
    /// Quest keeping the sink page and a recent window (--sink-pages, --recent-pages).
    QuestSink,
    /// Both of the above.
    QuestSinkGroup,
    #[value(alias = "streaming-llm")]
    Streaming,
    H2o,
    Tova,
}

impl EvalPolicy {
    pub fn name(self) -> &'static str {
        match self {
            EvalPolicy::Dense => "dense",
            EvalPolicy::Quest => "quest",
            EvalPolicy::QuestGroup => "quest-group",
            EvalPolicy::QuestSink => "quest-sink",
            EvalPolicy::QuestSinkGroup => "quest-sink-group",
            EvalPolicy::Streaming => "streaming",
            EvalPolicy::H2o => "h2o",
            EvalPolicy::Tova => "tova",
        }
    }
}

#[derive(Args, Debug)]
pub struct PasskeyArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// Prompt lengths in tokens.
    #[arg(long, value_delimiter = ',', default_value = "2048,4096,7500")]
    pub lengths: Vec<usize>,
    /// Token budgets.
    #[arg(long, value_delimiter = ',', default_value = "64,128,256,512,1024")]
    pub budgets: Vec<usize>,
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "dense,quest,streaming,h2o,tova"
    )]
    pub policies: Vec<EvalPolicy>,
    /// Keys (prompts) per cell, at depths spread over the context.
    #[arg(long, default_value_t = 20)]
    pub keys: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prompt tokens fed through the decode path before the answer.
    #[arg(long, default_value_t = 64)]
    pub tail: usize,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Prompts run together in one batch.
    #[arg(long, default_value_t = 20)]
    pub batch: usize,
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// Directory for passkey.json and passkey.svg.
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
}

/// Options of the policies, shared by the evaluations.
#[derive(Args, Debug)]
pub struct PolicyArgs {
    /// Quest's page size. Default: 16 for dense, quest and quest-group (the paper's setting),
    /// 8 for quest-sink and quest-sink-group, the default Quest (smaller pages select more
    /// precisely: docs/accuracy.md). The token policies use one-token pages.
    #[arg(long)]
    pub page_size: Option<usize>,
    /// Layers that stay dense under every policy.
    #[arg(long, default_value_t = 2)]
    pub skip_layers: usize,
    /// quest-sink*: pages kept at the start of each sequence.
    #[arg(long, default_value_t = 1)]
    pub sink_pages: usize,
    /// quest-sink*: pages kept before the last one.
    #[arg(long, default_value_t = 2)]
    pub recent_pages: usize,
    /// quest*: how the page bounds are stored. Default: f16 for quest and quest-group (the
    /// paper), int8 for quest-sink and quest-sink-group (the default Quest: with 8-token pages the
    /// estimate then reads what the paper's f16 bounds of 16-token pages do).
    #[arg(long, value_enum)]
    pub bounds: Option<BoundsArg>,
    /// quest*: adaptive budget: keep each head's best pages only until their estimated softmax
    /// mass reaches P (0 < P <= 1; forced pages always), the budget being the cap. Reports the
    /// average pages read per row.
    #[arg(long, value_name = "P")]
    pub mass: Option<f32>,
}

impl PolicyArgs {
    /// The page size `policy` runs with: `--page-size`, else the policy's own default.
    pub fn page_size_for(&self, policy: EvalPolicy) -> usize {
        match policy {
            EvalPolicy::Streaming | EvalPolicy::H2o | EvalPolicy::Tova => 1,
            EvalPolicy::QuestSink | EvalPolicy::QuestSinkGroup => {
                self.page_size.unwrap_or(quest_model::DEFAULT_PAGE_SIZE)
            }
            _ => self.page_size.unwrap_or(PAPER_PAGE_SIZE),
        }
    }

    /// How `policy` stores its page bounds: `--bounds`, else the policy's own default.
    pub fn bounds_for(&self, policy: EvalPolicy) -> BoundsArg {
        match policy {
            EvalPolicy::QuestSink | EvalPolicy::QuestSinkGroup => {
                self.bounds.unwrap_or(BoundsArg::Int8)
            }
            _ => self.bounds.unwrap_or(BoundsArg::F16),
        }
    }

    /// `{policy, page_size, bounds}` of each policy, for the JSON reports.
    pub fn settings(&self, policies: &[EvalPolicy]) -> serde_json::Value {
        serde_json::Value::Array(
            policies
                .iter()
                .map(|&p| {
                    json!({
                        "policy": p.name(),
                        "page_size": self.page_size_for(p),
                        "bounds": self.bounds_for(p).name(),
                    })
                })
                .collect(),
        )
    }
}

/// The paper's page size.
const PAPER_PAGE_SIZE: usize = 16;

/// Refuses a `--mass` outside (0, 1].
pub fn check_mass(mass: Option<f32>) -> Result<()> {
    if let Some(p) = mass {
        if !(p > 0.0 && p <= 1.0) {
            bail!("--mass must be in (0, 1], not {p}");
        }
    }
    Ok(())
}

/// Pages per selected row, summed over the policies of one cell (one per batch).
#[derive(Default)]
pub struct PageCount(Option<PageReads>);

impl PageCount {
    /// Adds what `policy` counted (nothing if it does not count pages).
    pub fn add<B: Backend, W: Half>(&mut self, policy: &mut dyn KvPolicy<B, W>) -> Result<()> {
        if let Some(r) = policy.page_reads()? {
            self.0 = Some(self.0.unwrap_or_default().add(&r));
        }
        Ok(())
    }

    /// Average pages read per selected row (Quest's layers past skip_layers, decode steps).
    pub fn per_row(&self) -> Option<f64> {
        self.0.filter(|r| r.rows > 0).map(|r| r.pages_per_row())
    }
}

pub fn run(cmd: EvalCommand, quiet: bool) -> Result<()> {
    match cmd {
        EvalCommand::Passkey(args) => match args.device {
            Device::Cpu => passkey::<CpuBackend, f16>(&CpuBackend, &args, quiet),
            Device::Cuda => {
                let gpu = CudaBackend::new(0).context("--device cuda")?;
                passkey::<CudaBackend, f16>(&gpu, &args, quiet)
            }
            Device::Auto => match CudaBackend::new(0) {
                Ok(gpu) => passkey::<CudaBackend, f16>(&gpu, &args, quiet),
                Err(_) => passkey::<CpuBackend, f16>(&CpuBackend, &args, quiet),
            },
        },
        EvalCommand::Ppl(args) => crate::ppl::run(&args, quiet),
    }
}

/// One (policy, budget) of the grid; dense has no budget.
pub fn cells(policies: &[EvalPolicy], budgets: &[usize]) -> Vec<(EvalPolicy, Option<usize>)> {
    let mut out = Vec::new();
    for &p in policies {
        if p == EvalPolicy::Dense {
            out.push((p, None));
        } else {
            out.extend(budgets.iter().map(|&b| (p, Some(b))));
        }
    }
    out
}

/// A fresh policy and the page size of the cache it runs on.
pub fn make_policy<B: Backend, W: Half>(
    p: EvalPolicy,
    budget: usize,
    args: &PolicyArgs,
) -> Result<(Box<dyn KvPolicy<B, W>>, usize)> {
    let skip = args.skip_layers;
    Ok(match p {
        EvalPolicy::Dense => (Box::new(Dense), args.page_size_for(p)),
        EvalPolicy::Quest
        | EvalPolicy::QuestGroup
        | EvalPolicy::QuestSink
        | EvalPolicy::QuestSinkGroup => {
            let group = matches!(p, EvalPolicy::QuestGroup | EvalPolicy::QuestSinkGroup);
            let sink = matches!(p, EvalPolicy::QuestSink | EvalPolicy::QuestSinkGroup);
            let q = Quest::<B>::new(QuestConfig {
                budget,
                skip_layers: skip,
                rows: if group {
                    TableRows::PerKvHead
                } else {
                    TableRows::PerQoHead
                },
                sink_pages: if sink { args.sink_pages } else { 0 },
                recent_pages: if sink { args.recent_pages } else { 0 },
                bounds: args.bounds_for(p).format(),
                mass: args.mass,
            })?;
            (Box::new(q), args.page_size_for(p))
        }
        EvalPolicy::Streaming => (Box::new(StreamingLlm::<B>::new(budget, skip)), 1),
        EvalPolicy::H2o => (Box::new(H2o::<B>::new(budget, skip)), 1),
        EvalPolicy::Tova => (Box::new(Tova::<B>::new(budget, skip)), 1),
    })
}

fn passkey<B: Backend, W: Half>(backend: &B, args: &PasskeyArgs, quiet: bool) -> Result<()> {
    if args.keys == 0 || args.batch == 0 || args.policy.page_size == Some(0) {
        bail!("--keys, --batch and --page-size must be positive");
    }
    check_mass(args.policy.mass)?;
    let tok = Tokenizer::from_dir(&args.model)?;
    let model = Llama::<B, W>::load(backend, &args.model)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let grid = cells(&args.policies, &args.budgets);
    let bar = progress::bar((grid.len() * args.lengths.len()) as u64, "passkey", quiet);
    let mut results = Vec::new();
    let started = std::time::Instant::now();
    for &length in &args.lengths {
        let prompts = passkey_prompts(&tok, length, args.keys, args.seed)?;
        let real_len = prompts.iter().map(|p| p.tokens.len()).sum::<usize>() / prompts.len();
        for &(p, budget) in &grid {
            let mut answers = Vec::new();
            let mut pages = PageCount::default();
            for chunk in prompts.chunks(args.batch) {
                // A fresh policy per batch: each batch runs on a new cache whose sequence ids
                // start again at 0, and H2O/TOVA key their state by sequence id (a reused policy
                // would carry one batch's kept tokens into the next, or index past its cache).
                let (mut policy, page_size) =
                    make_policy::<B, W>(p, budget.unwrap_or(0), &args.policy)?;
                answers.extend(run_passkey(
                    &model,
                    &tok,
                    policy.as_mut(),
                    chunk,
                    page_size,
                    args.tail,
                )?);
                pages.add(policy.as_mut())?;
            }
            let correct = answers.iter().filter(|a| a.correct).count();
            results.push(json!({
                "length": length,
                "mean_prompt_tokens": real_len,
                "policy": p.name(),
                "budget": budget,
                "correct": correct,
                "total": answers.len(),
                "accuracy": correct as f64 / answers.len() as f64,
                "pages_per_row": pages.per_row(),
                "answers": answers.iter().map(|a| json!({
                    "key": a.key, "depth": a.depth, "answer": a.answer, "correct": a.correct
                })).collect::<Vec<_>>(),
            }));
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let table = render_table(args, &results);
    println!("{table}");
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let doc = json!({
        "model": args.model.display().to_string(),
        "device": backend.name(),
        "keys": args.keys,
        "seed": args.seed,
        "policies": args.policy.settings(&args.policies),
        "tail": args.tail,
        "skip_layers": args.policy.skip_layers,
        "mass": args.policy.mass,
        "seconds": started.elapsed().as_secs_f64(),
        "results": results,
    });
    let json_path = args.out.join("passkey.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let svg_path = args.out.join("passkey.svg");
    std::fs::write(&svg_path, render_svg(args, &results))
        .with_context(|| format!("writing {}", svg_path.display()))?;
    if !quiet {
        eprintln!(
            "wrote {} and {} ({:.0} s on {})",
            json_path.display(),
            svg_path.display(),
            started.elapsed().as_secs_f64(),
            backend.name()
        );
    }
    Ok(())
}

fn cell<'a>(
    results: &'a [serde_json::Value],
    length: usize,
    policy: &str,
    budget: Option<usize>,
) -> Option<&'a serde_json::Value> {
    results.iter().find(|r| {
        r["length"] == length
            && r["policy"] == policy
            && (policy == "dense" || r["budget"] == json!(budget))
    })
}

fn accuracy(
    results: &[serde_json::Value],
    length: usize,
    policy: &str,
    budget: Option<usize>,
) -> Option<f64> {
    cell(results, length, policy, budget).and_then(|r| r["accuracy"].as_f64())
}

/// A markdown table per length: policies down, budgets across (dense: one value, repeated).
fn render_table(args: &PasskeyArgs, results: &[serde_json::Value]) -> String {
    let mut s = String::new();
    for &length in &args.lengths {
        let _ = writeln!(
            s,
            "\npass-key accuracy, ~{length} tokens, {} keys{}",
            args.keys,
            match args.policy.mass {
                Some(p) => format!("; quest*: mass {p}, (average pages read per row)"),
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
        for p in &args.policies {
            let _ = write!(s, "| {} |", p.name());
            for &b in &args.budgets {
                match accuracy(results, length, p.name(), Some(b)) {
                    Some(a) => {
                        let _ = write!(s, " {:.0}%", 100.0 * a);
                        // With the adaptive budget: the average pages read per row.
                        let pages = cell(results, length, p.name(), Some(b))
                            .and_then(|r| r["pages_per_row"].as_f64());
                        if let (Some(pr), Some(_)) = (pages, args.policy.mass) {
                            let _ = write!(s, " ({pr:.1} pages)");
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

/// Accuracy against budget (log scale), one panel per length, one line per policy.
fn render_svg(args: &PasskeyArgs, results: &[serde_json::Value]) -> String {
    const W: f64 = 320.0;
    const H: f64 = 240.0;
    const PAD: f64 = 40.0;
    let colors = ["#000000", "#d62728", "#1f77b4", "#2ca02c", "#9467bd"];
    let budgets: Vec<f64> = args.budgets.iter().map(|&b| (b as f64).log2()).collect();
    let (bmin, bmax) = budgets
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let span = (bmax - bmin).max(1.0);
    let width = W * args.lengths.len() as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        H + 30.0
    );
    for (li, &length) in args.lengths.iter().enumerate() {
        let x0 = li as f64 * W;
        let px = |b: f64| x0 + PAD + (b - bmin) / span * (W - 2.0 * PAD);
        let py = |a: f64| H - PAD + 10.0 - a * (H - 2.0 * PAD);
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"16\" text-anchor=\"middle\">~{length} tokens</text>",
            x0 + W / 2.0
        );
        let _ = writeln!(
            s,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#888\"/><line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#888\"/>",
            px(bmin),
            py(0.0),
            px(bmax),
            py(0.0),
            px(bmin),
            py(0.0),
            px(bmin),
            py(1.0)
        );
        for (bi, &b) in args.budgets.iter().enumerate() {
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{b}</text>",
                px(budgets[bi]),
                py(0.0) + 14.0
            );
        }
        for a in [0.0, 0.5, 1.0] {
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.0}%</text>",
                px(bmin) - 4.0,
                py(a) + 4.0,
                a * 100.0
            );
        }
        for (pi, p) in args.policies.iter().enumerate() {
            let color = colors[pi % colors.len()];
            let pts: Vec<String> = args
                .budgets
                .iter()
                .zip(&budgets)
                .filter_map(|(&b, &lb)| {
                    accuracy(results, length, p.name(), Some(b))
                        .map(|a| format!("{:.1},{:.1}", px(lb), py(a)))
                })
                .collect();
            let dash = if *p == EvalPolicy::Dense {
                " stroke-dasharray=\"4 3\""
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{dash}/>",
                pts.join(" ")
            );
            if li == 0 {
                let _ = writeln!(
                    s,
                    "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{}</text>",
                    PAD + 8.0,
                    PAD + 14.0 * pi as f64,
                    p.name()
                );
            }
        }
    }
    s.push_str("</svg>\n");
    s
}
