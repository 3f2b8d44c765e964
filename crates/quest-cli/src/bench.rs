//! `quest bench decode`: end-to-end decode latency of a synthetic model (real shapes, random
//! weights generated on the device) over a cache filled to a given context, dense against Quest,
//! each row next to the time its bytes need at the card's measured copy bandwidth.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use quest_kernels::{Backend, BoundsFormat, CpuBackend, CudaBackend, CudaTimer, TableRows, f16};
use quest_kvcache::{KvCache, SeqId};
use quest_model::synthetic::decode_weight_bytes;
use quest_model::{Dense, KvPolicy, Llama, Quest, QuestConfig, ReadStats, Shape, Weights};
use serde::Serialize;

use crate::generate::{BoundsArg, Device};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Time decode steps of a synthetic model over a cache filled to a context length.
    Decode(DecodeArgs),
    /// Time the decode kernels (paged decode, Quest's estimate / top-k / sparse decode, the
    /// decode GEMVs) at 4K-128K tokens and budgets 256-4096 on the GPU; table and JSON.
    Kernels(crate::bench_kernels::KernelArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ShapeArg {
    #[value(name = "llama2-7b")]
    Llama2_7b,
    #[value(name = "llama3-8b")]
    Llama3_8b,
    #[value(name = "smollm2-135m")]
    Smollm2_135m,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PolicyArg {
    Dense,
    Quest,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RowsArg {
    /// One page set per query head (the paper).
    PerQoHead,
    /// One page set per KV head, shared by its GQA group.
    PerKvHead,
}

#[derive(Args, Debug)]
pub struct DecodeArgs {
    #[arg(long, value_enum)]
    pub shape: ShapeArg,
    /// Context lengths (tokens already in the cache of every sequence), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub context: Vec<usize>,
    /// Quest budgets in tokens, comma-separated (one Quest row per budget).
    #[arg(long, value_delimiter = ',', default_value = "2048")]
    pub budget: Vec<usize>,
    /// Policies to time, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "dense,quest")]
    pub policy: Vec<PolicyArg>,
    /// Batch sizes (sequences decoded together), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub batch: Vec<usize>,
    /// Timed decode steps per row (the median is reported).
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Untimed steps before them.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    #[arg(long, default_value_t = 16)]
    pub page_size: usize,
    /// Quest: the first layers that stay dense.
    #[arg(long, default_value_t = 2)]
    pub skip_layers: usize,
    #[arg(long, value_enum, default_value_t = RowsArg::PerQoHead)]
    pub rows: RowsArg,
    /// Quest: page-bound formats, comma-separated (one Quest row per budget and format; rows
    /// with 8-bit bounds are named `quest+int8`).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "f16")]
    pub bounds: Vec<BoundsArg>,
    /// Quest: adaptive budget: keep each head's best pages only until their estimated softmax
    /// mass reaches P (0 < P <= 1), the budget being the cap (rows named `quest+mass`).
    #[arg(long, value_name = "P")]
    pub mass: Option<f32>,
    /// Also time every row with activation buffers allocated afresh in each step (the
    /// behaviour before the workspace was reused).
    #[arg(long)]
    pub compare_workspace: bool,
    /// Write the rows as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Device::Cuda)]
    pub device: Device,
    /// Seed of the synthetic weights and cache.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// One measured configuration.
#[derive(Clone, Debug, Serialize)]
struct Row {
    shape: &'static str,
    context: usize,
    batch: usize,
    policy: String,
    budget: Option<usize>,
    workspace_reuse: bool,
    steps: usize,
    /// Median step time; every sequence of the batch gets one token per step.
    ms_per_step: f64,
    ms_min: f64,
    ms_max: f64,
    tokens_per_s: f64,
    weight_bytes: usize,
    kv_bytes: usize,
    bounds_bytes: usize,
    total_bytes: usize,
    /// Quest: average pages read per selected row over the row's steps.
    pages_per_row: Option<f64>,
    /// `total_bytes` over the copy bandwidth measured in the same run.
    ideal_ms: Option<f64>,
    /// `ideal_ms / ms_per_step`.
    fraction_of_limit: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    device: String,
    /// Device-to-device copy, bytes read + written per second.
    copy_bandwidth_bytes_per_s: Option<f64>,
    command: String,
    kv_fill: &'static str,
    rows: Vec<Row>,
}

/// A policy to time: its name, its budget and the policy itself.
type PolicyRow<B> = (String, Option<usize>, Box<dyn KvPolicy<B, f16>>);

/// Times one decode step on a backend.
trait StepTimer {
    fn start(&self) -> Result<()>;
    /// Milliseconds since `start`, after the queued work finished.
    fn stop(&self) -> Result<f64>;
}

struct CudaStepTimer(CudaTimer);

impl StepTimer for CudaStepTimer {
    fn start(&self) -> Result<()> {
        Ok(self.0.start()?)
    }
    fn stop(&self) -> Result<f64> {
        Ok(self.0.stop()? as f64)
    }
}

struct HostTimer(std::cell::Cell<Option<Instant>>);

impl StepTimer for HostTimer {
    fn start(&self) -> Result<()> {
        self.0.set(Some(Instant::now()));
        Ok(())
    }
    fn stop(&self) -> Result<f64> {
        let t = self.0.get().context("timer not started")?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    }
}

pub fn run(cmd: BenchCommand, quiet: bool) -> Result<()> {
    let args = match cmd {
        BenchCommand::Decode(args) => args,
        BenchCommand::Kernels(args) => return crate::bench_kernels::run(&args),
    };
    if args.steps == 0 || args.page_size == 0 || args.context.contains(&0) {
        bail!("--steps, --page-size and every --context must be positive");
    }
    if args.batch.contains(&0) || args.budget.contains(&0) {
        bail!("every --batch and --budget must be positive");
    }
    crate::eval::check_mass(args.mass)?;
    match args.device {
        Device::Cpu => {
            let timer = HostTimer(std::cell::Cell::new(None));
            run_on(&CpuBackend, &timer, None, &args, quiet)
        }
        Device::Cuda | Device::Auto => {
            let gpu = CudaBackend::new(0).context("bench decode needs a CUDA device")?;
            // 2 GiB each way: far past the 50 MB L2, so this is DRAM bandwidth.
            let bw = gpu.copy_bandwidth(2 << 30, 20)?;
            if !quiet {
                eprintln!(
                    "device: {}; copy bandwidth {:.0} GB/s (read + write)",
                    gpu.name(),
                    bw / 1e9
                );
            }
            let timer = CudaStepTimer(CudaTimer::new(&gpu)?);
            run_on(&gpu, &timer, Some(bw), &args, quiet)
        }
    }
}

fn shape_of(s: ShapeArg) -> Shape {
    match s {
        ShapeArg::Llama2_7b => Shape::Llama2_7b,
        ShapeArg::Llama3_8b => Shape::Llama3_8b,
        ShapeArg::Smollm2_135m => Shape::Smollm2_135m,
    }
}

fn run_on<B: Backend>(
    backend: &B,
    timer: &dyn StepTimer,
    copy_bw: Option<f64>,
    args: &DecodeArgs,
    quiet: bool,
) -> Result<()> {
    let shape = shape_of(args.shape);
    let max_ctx = args.context.iter().max().copied().unwrap_or(0);
    let cfg = shape.config(max_ctx + args.warmup + 2);
    let t0 = Instant::now();
    let weights = Weights::<B, f16>::random(backend, &cfg, args.seed)?;
    let model = Llama::new(backend, cfg.clone(), weights)?;
    backend.synchronize()?;
    if !quiet {
        eprintln!(
            "{}: synthetic f16 weights generated on the device in {:.2} s",
            shape.name(),
            t0.elapsed().as_secs_f64()
        );
    }
    let mut rows = Vec::new();
    for &context in &args.context {
        for &batch in &args.batch {
            // The cache holds the context plus one page per sequence for the step's new token.
            let pages = batch * (context.div_ceil(args.page_size) + 1);
            // Bounds in the first Quest format; a row with another one converts the cache
            // during its warm-up steps.
            let format = match (args.policy.contains(&PolicyArg::Quest), args.bounds.first()) {
                (true, Some(b)) => b.format(),
                _ => BoundsFormat::Full,
            };
            let mut cache = match KvCache::<B, f16>::with_bounds(
                backend,
                model.cache_config(pages, args.page_size),
                format,
            ) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!(
                        "{} context {context} batch {batch}: skipped, the cache does not fit ({e})",
                        shape.name()
                    );
                    continue;
                }
            };
            let seqs: Vec<SeqId> = (0..batch).map(|_| cache.add_sequence()).collect();
            for &s in &seqs {
                cache.reserve(s, context)?;
            }
            cache.fill_random(args.seed ^ 0xcafe, 1.0)?;
            backend.synchronize()?;
            let mut configs: Vec<PolicyRow<B>> = Vec::new();
            for p in &args.policy {
                match p {
                    PolicyArg::Dense => configs.push(("dense".into(), None, Box::new(Dense))),
                    PolicyArg::Quest => {
                        for (&budget, &bounds) in args
                            .budget
                            .iter()
                            .flat_map(|b| args.bounds.iter().map(move |f| (b, f)))
                        {
                            let q = Quest::<B>::new(QuestConfig {
                                budget,
                                skip_layers: args.skip_layers,
                                rows: match args.rows {
                                    RowsArg::PerQoHead => TableRows::PerQoHead,
                                    RowsArg::PerKvHead => TableRows::PerKvHead,
                                },
                                sink_pages: 0,
                                recent_pages: 0,
                                bounds: bounds.format(),
                                mass: args.mass,
                            })?;
                            let name = match bounds {
                                BoundsArg::F16 => "quest",
                                BoundsArg::Int8 => "quest+int8",
                            };
                            let name = match args.mass {
                                Some(p) => format!("{name}+mass{p}"),
                                None => name.to_string(),
                            };
                            configs.push((name, Some(budget), Box::new(q)));
                        }
                    }
                }
            }
            let reuse_modes: &[bool] = if args.compare_workspace {
                &[false, true]
            } else {
                &[true]
            };
            for (name, budget, policy) in &mut configs {
                for &reuse in reuse_modes {
                    model.set_workspace_reuse(reuse);
                    let (times, stats, pages_per_row) = time_steps(
                        &model,
                        &mut cache,
                        policy.as_mut(),
                        &seqs,
                        context,
                        args,
                        timer,
                    )
                    .with_context(|| format!("{name} at context {context}, batch {batch}"))?;
                    let row = make_row(
                        shape, &cfg, context, batch, name, *budget, reuse, &times, stats, copy_bw,
                    );
                    let row = Row {
                        pages_per_row,
                        ..row
                    };
                    if !quiet {
                        eprintln!("{}", format_row(&row));
                    }
                    rows.push(row);
                }
            }
            model.set_workspace_reuse(true);
        }
    }
    print_table(&rows, copy_bw);
    if let Some(path) = &args.json {
        let report = Report {
            device: backend.name(),
            copy_bandwidth_bytes_per_s: copy_bw,
            command: std::env::args().collect::<Vec<_>>().join(" "),
            kv_fill: "K/V pages written with Backend::fill_random (uniform in ±1, f16), bounds by update_bounds (update_bounds_int8 for quest+int8 rows); no prefill",
            rows,
        };
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Runs `warmup + steps` decode steps, rolling every sequence back to `context` tokens after each
/// so every step attends over exactly `context + 1` tokens. Returns the timed steps' milliseconds,
/// the read statistics of the last step (with the adaptive budget's pages, counted on the device
/// and read once after the steps, averaged over them) and the pages read per selected row.
fn time_steps<B: Backend>(
    model: &Llama<B, f16>,
    cache: &mut KvCache<B, f16>,
    policy: &mut dyn KvPolicy<B, f16>,
    seqs: &[SeqId],
    context: usize,
    args: &DecodeArgs,
    timer: &dyn StepTimer,
) -> Result<(Vec<f64>, ReadStats, Option<f64>)> {
    let backend = model.backend();
    let vocab = model.config().vocab_size as u32;
    let toks: Vec<[u32; 1]> = (0..seqs.len())
        .map(|i| [(i as u32 * 7919 + 11) % vocab])
        .collect();
    let items: Vec<(SeqId, &[u32])> = seqs.iter().zip(&toks).map(|(&s, t)| (s, &t[..])).collect();
    let mut next = backend.zeros::<u32>(seqs.len())?;
    let mut times = Vec::with_capacity(args.steps);
    let mut stats = ReadStats::default();
    let before = policy.page_reads()?.unwrap_or_default();
    backend.synchronize()?;
    for step in 0..args.warmup + args.steps {
        timer.start()?;
        let f = model.forward(cache, &items, policy)?;
        backend.argmax(&f.logits, vocab as usize, &mut next)?;
        let ms = timer.stop()?;
        if step >= args.warmup {
            times.push(ms);
        }
        stats = f.stats;
        for &s in seqs {
            cache.truncate(s, context)?;
        }
    }
    let pages_per_row = match policy.page_reads()? {
        Some(after) if after.rows > before.rows => {
            let (rows, pages) = (after.rows - before.rows, after.pages - before.pages);
            if stats.adaptive_slots > 0 {
                let per_step = pages as f64 / (args.warmup + args.steps) as f64;
                stats.kv_bytes = stats.kv_bytes_with(per_step.round() as u64);
                stats.adaptive_slots = 0;
            }
            Some(pages as f64 / rows as f64)
        }
        _ => None,
    };
    Ok((times, stats, pages_per_row))
}

#[allow(clippy::too_many_arguments)]
fn make_row(
    shape: Shape,
    cfg: &quest_model::LlamaConfig,
    context: usize,
    batch: usize,
    policy: &str,
    budget: Option<usize>,
    reuse: bool,
    times: &[f64],
    stats: ReadStats,
    copy_bw: Option<f64>,
) -> Row {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let weight_bytes = decode_weight_bytes::<f16>(cfg, batch);
    let total = weight_bytes + stats.kv_bytes + stats.bounds_bytes;
    let ideal_ms = copy_bw.map(|bw| total as f64 / bw * 1e3);
    Row {
        shape: shape.name(),
        context,
        batch,
        policy: policy.to_string(),
        budget,
        workspace_reuse: reuse,
        steps: times.len(),
        ms_per_step: median,
        ms_min: sorted[0],
        ms_max: sorted[sorted.len() - 1],
        tokens_per_s: batch as f64 / (median * 1e-3),
        weight_bytes,
        kv_bytes: stats.kv_bytes,
        bounds_bytes: stats.bounds_bytes,
        total_bytes: total,
        pages_per_row: None,
        ideal_ms,
        fraction_of_limit: ideal_ms.map(|i| i / median),
    }
}

fn format_row(r: &Row) -> String {
    let mb = |b: usize| b as f64 / 1e6;
    format!(
        "| {} | {} | {} | {}{} | {} | {:.3} | {:.0} | {:.0} | {:.0} | {:.1} | {:.0} | {} | {} |",
        r.shape,
        r.context,
        r.batch,
        r.policy,
        r.budget.map(|b| format!(" {b}")).unwrap_or_default(),
        if r.workspace_reuse { "yes" } else { "no" },
        r.ms_per_step,
        r.tokens_per_s,
        mb(r.weight_bytes),
        mb(r.kv_bytes),
        mb(r.bounds_bytes),
        mb(r.total_bytes),
        r.ideal_ms
            .map(|i| format!("{i:.3}"))
            .unwrap_or_else(|| "-".into()),
        r.fraction_of_limit
            .map(|f| format!("{:.0}%", f * 100.0))
            .unwrap_or_else(|| "-".into()),
    )
}

fn print_table(rows: &[Row], copy_bw: Option<f64>) {
    if let Some(bw) = copy_bw {
        println!("copy bandwidth (read + write): {:.0} GB/s", bw / 1e9);
    }
    println!(
        "| shape | context | batch | policy | workspace reuse | ms/step (median) | tok/s | weights MB | KV MB | bounds MB | total MB | ideal ms | of limit |"
    );
    println!("|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!("{}", format_row(r));
    }
}
