//! `quest`: generate text with Quest sparse attention, import models, evaluate and benchmark.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

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

#[derive(Subcommand)]
enum Command {
    /// Import a llama GGUF file into a Hugging Face checkpoint directory.
    Convert {
        /// The GGUF file.
        gguf: PathBuf,
        /// The directory to write model.safetensors, config.json and tokenizer.json into.
        dir: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Convert { gguf, dir } => {
            let summary = quest_model::convert_gguf(&gguf, &dir, |_, _| {})
                .with_context(|| format!("importing {}", gguf.display()))?;
            if !cli.quiet {
                eprintln!(
                    "wrote {} ({} tensors, {:.1}M parameters)",
                    dir.display(),
                    summary.tensors,
                    summary.parameters as f64 / 1e6
                );
            }
            Ok(())
        }
    }
}
