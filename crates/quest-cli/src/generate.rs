//! `quest generate`: stream a continuation of a prompt, then a summary of speed and cache traffic.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use quest_kernels::{
    Backend, BoundsFormat, CpuBackend, CudaBackend, Half, SamplingParams, TableRows, f16,
};
use quest_kvcache::KvCache;
use quest_model::{
    Dense, GenerateObserver, GenerateParams, KvPolicy, Llama, Quest, QuestConfig, TextStream,
    Tokenizer, generate,
};

use crate::progress;

/// Streams each new token's text to stdout and shows prefill progress on stderr.
struct Printer<'a> {
    tokenizer: &'a Tokenizer,
    stream: TextStream,
    prefill: indicatif::ProgressBar,
}

impl GenerateObserver for Printer<'_> {
    fn prefill_progress(&mut self, done: usize, total: usize) {
        self.prefill.set_length(total as u64);
        self.prefill.set_position(done as u64);
        if done >= total {
            self.prefill.finish_and_clear();
        }
    }

    fn token(&mut self, _prompt: usize, token: u32) {
        if let Ok(piece) = self.stream.push(self.tokenizer, token) {
            let mut stdout = std::io::stdout();
            let _ = write!(stdout, "{piece}");
            let _ = stdout.flush();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PolicyKind {
    Dense,
    Quest,
}

/// How Quest's page bounds are stored (`--bounds`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BoundsArg {
    /// Max and min keys in f16, the KV's type: exact.
    #[value(alias = "full")]
    F16,
    /// 8-bit codes rounded outward plus a base and step per page and KV head: about half the
    /// bytes for the estimate to read; scores stay upper bounds, slightly looser.
    Int8,
}

impl BoundsArg {
    pub fn name(self) -> &'static str {
        match self {
            BoundsArg::F16 => "f16",
            BoundsArg::Int8 => "int8",
        }
    }

    pub fn format(self) -> BoundsFormat {
        match self {
            BoundsArg::F16 => BoundsFormat::Full,
            BoundsArg::Int8 => BoundsFormat::Int8,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Device {
    Auto,
    Cpu,
    Cuda,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Checkpoint directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// The prompt text.
    #[arg(
        long,
        conflicts_with = "prompt_file",
        required_unless_present = "prompt_file"
    )]
    pub prompt: Option<String>,
    /// Read the prompt from this file.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// Wrap the prompt in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    #[arg(long, value_enum, default_value_t = PolicyKind::Quest)]
    pub policy: PolicyKind,
    /// Quest: tokens each head attends to per decode step.
    #[arg(long, default_value_t = 512)]
    pub budget: usize,
    /// Tokens per KV page. Default: 8 for quest (the default Quest's pages, docs/accuracy.md;
    /// the paper used 16), 16 for dense (the GPU's tensor-core decode for grouped heads reads
    /// 16-token pages).
    #[arg(long)]
    pub page_size: Option<usize>,
    /// Quest: pages at the start of the sequence always kept (attention sink; 0 for the paper's
    /// selection).
    #[arg(long, default_value_t = 1)]
    pub sink_pages: usize,
    /// Quest: pages before the last one always kept (recent window; 0 for the paper's selection).
    #[arg(long, default_value_t = 2)]
    pub recent_pages: usize,
    /// Quest: one page set per GQA group (KV head) instead of per query head.
    #[arg(long)]
    pub group_selection: bool,
    /// Quest: the first layers that stay dense.
    #[arg(long, default_value_t = 2)]
    pub skip_layers: usize,
    /// Quest: how the page bounds are stored (int8: the default Quest; f16: the paper).
    #[arg(long, value_enum, default_value_t = BoundsArg::Int8)]
    pub bounds: BoundsArg,
    /// Quest: adaptive budget: keep each head's best pages only until their estimated softmax
    /// mass reaches P (0 < P <= 1; sink and recent pages always), --budget being the cap.
    #[arg(long, value_name = "P")]
    pub mass: Option<f32>,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
}

fn read_prompt(args: &GenerateArgs) -> Result<String> {
    match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("reading the prompt file {}", f.display())),
        (None, None) => bail!("give --prompt or --prompt-file"),
    }
}

impl GenerateArgs {
    /// `--page-size`, else the policy's default.
    fn page_size(&self) -> usize {
        self.page_size.unwrap_or(match self.policy {
            PolicyKind::Dense => 16,
            PolicyKind::Quest => quest_model::DEFAULT_PAGE_SIZE,
        })
    }
}

pub fn run(args: GenerateArgs, quiet: bool) -> Result<()> {
    if args.page_size() == 0 || args.budget == 0 {
        bail!("--page-size and --budget must be positive");
    }
    crate::eval::check_mass(args.mass)?;
    match args.device {
        Device::Cpu => run_on::<CpuBackend, f16>(&CpuBackend, &args, quiet),
        Device::Cuda => {
            let gpu = CudaBackend::new(0).context("--device cuda")?;
            if !quiet {
                eprintln!("device: {}", gpu.name());
            }
            run_on::<CudaBackend, f16>(&gpu, &args, quiet)
        }
        Device::Auto => match CudaBackend::new(0) {
            Ok(gpu) => {
                if !quiet {
                    eprintln!("device: {} (auto: a CUDA GPU is present)", gpu.name());
                }
                run_on::<CudaBackend, f16>(&gpu, &args, quiet)
            }
            Err(e) => {
                if !quiet {
                    eprintln!("device: {} (auto: {e})", CpuBackend.name());
                }
                run_on::<CpuBackend, f16>(&CpuBackend, &args, quiet)
            }
        },
    }
}

fn run_on<B: Backend, W: Half>(backend: &B, args: &GenerateArgs, quiet: bool) -> Result<()> {
    if !args.model.is_dir() {
        bail!(
            "model directory {} does not exist (run `quest fetch smollm2` first)",
            args.model.display()
        );
    }
    let tokenizer = Tokenizer::from_dir(&args.model)?;
    let model = Llama::<B, W>::load(backend, &args.model)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let mut text = read_prompt(args)?;
    if args.chat {
        text = tokenizer.apply_chat_template(&text)?;
    }
    let prompt = tokenizer.encode(&text)?;
    let context = model.config().max_position_embeddings;
    if prompt.len() + args.max_new_tokens > context {
        bail!(
            "the prompt has {} tokens; with --max-new-tokens {} that exceeds the model's context of {context}",
            prompt.len(),
            args.max_new_tokens
        );
    }
    let page_size = args.page_size();
    let pages = (prompt.len() + args.max_new_tokens).div_ceil(page_size) + 1;
    let bounds = match args.policy {
        PolicyKind::Dense => BoundsFormat::Full,
        PolicyKind::Quest => args.bounds.format(),
    };
    let config = model.cache_config(pages, page_size);
    let mut cache = KvCache::<B, W>::with_bounds(backend, config, bounds)?;
    let mut policy: Box<dyn KvPolicy<B, W>> = match args.policy {
        PolicyKind::Dense => Box::new(Dense),
        PolicyKind::Quest => Box::new(Quest::<B>::new(QuestConfig {
            budget: args.budget,
            skip_layers: args.skip_layers,
            rows: if args.group_selection {
                TableRows::PerKvHead
            } else {
                TableRows::PerQoHead
            },
            sink_pages: args.sink_pages,
            recent_pages: args.recent_pages,
            bounds,
            mass: args.mass,
        })?),
    };
    let params = GenerateParams {
        max_new_tokens: args.max_new_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_p: args.top_p,
        },
        seed: args.seed,
        stop_tokens: model.config().eos_tokens(),
        prefill_chunk: 512,
        decode_prompt_tail: 0,
    };
    // Only a long prompt gets a bar; short ones are done before it would draw.
    let show = !quiet && prompt.len() > params.prefill_chunk;
    let printer = Printer {
        tokenizer: &tokenizer,
        stream: TextStream::new(),
        prefill: progress::bar(prompt.len() as u64, "prefill", !show),
    };
    let (gens, stats) = generate(
        &model,
        &mut cache,
        policy.as_mut(),
        &[prompt],
        &params,
        printer,
    )?;
    println!();
    if let Some(e) = &gens[0].error {
        bail!("generation stopped: {e}");
    }
    if !quiet {
        let rate = |n: usize, t: std::time::Duration| n as f64 / t.as_secs_f64().max(1e-9);
        let steps = stats.decode_steps.max(1);
        let r = &stats.decode_reads;
        eprintln!(
            "policy {}: {} prompt tokens, {} generated; prefill {:.1} tok/s, decode {:.2} tok/s",
            policy.name(),
            stats.prompt_tokens,
            stats.generated_tokens,
            rate(stats.prompt_tokens, stats.prefill_time),
            rate(stats.decode_steps, stats.decode_time),
        );
        // With the adaptive budget the pages read are counted on the device: one copy, here.
        let reads = policy.page_reads()?;
        let kv_bytes = match reads {
            Some(p) if r.adaptive_slots > 0 => r.kv_bytes_with(p.pages),
            _ => r.kv_bytes,
        };
        eprintln!(
            "KV pages in use: {} of {}; per decode step read {:.2} MiB of KV + {:.2} MiB of bounds, dense reads {:.2} MiB ({:.1}%)",
            stats.pages_in_use,
            cache.config().num_pages,
            kv_bytes as f64 / steps as f64 / 1048576.0,
            r.bounds_bytes as f64 / steps as f64 / 1048576.0,
            r.dense_kv_bytes as f64 / steps as f64 / 1048576.0,
            100.0 * (kv_bytes + r.bounds_bytes) as f64 / r.dense_kv_bytes.max(1) as f64,
        );
        if let (Some(p), Some(_)) = (reads, args.mass) {
            eprintln!(
                "adaptive budget: {:.1} pages read per row on average (of {} slots a row)",
                p.pages_per_row(),
                (args.budget / args.page_size()).max(1)
            );
        }
    }
    Ok(())
}
