//! `smoker-install`: verifies bundles and applies them on a host.

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use smoker::bundle::read::{VerifiedBundle, VerifyError, verify_file};
use smoker::signing::TrustedKeys;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Default directory of trusted public keys.
const DEFAULT_KEYS_DIR: &str = "/etc/smoker/keys";

#[derive(Parser)]
#[command(
    name = "smoker-install",
    version,
    about = "Verify and apply smoker-release bundles"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct KeyArgs {
    /// A trusted public key file.
    #[arg(long, conflicts_with = "keys")]
    key: Option<PathBuf>,
    /// A directory of trusted public keys (`*.pub`).
    #[arg(long, env = "SMOKER_KEYS")]
    keys: Option<PathBuf>,
}

impl KeyArgs {
    fn load(&self) -> Result<TrustedKeys> {
        Ok(match (&self.key, &self.keys) {
            (Some(k), _) => TrustedKeys::from_file(k)?,
            (None, Some(d)) => TrustedKeys::from_dir(d)?,
            (None, None) => TrustedKeys::from_dir(Path::new(DEFAULT_KEYS_DIR))
                .context("no --key or --keys given and the default key directory is unusable")?,
        })
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Check a bundle's signature and every file in it; writes nothing.
    Verify {
        #[command(flatten)]
        keys: KeyArgs,
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
        /// The bundle file.
        bundle: PathBuf,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode> {
    match Cli::parse().cmd {
        Cmd::Verify { keys, json, bundle } => {
            let keys = keys.load()?;
            let result = verify_file(&bundle, &keys);
            print_verdict(&bundle, &result, json);
            Ok(if result.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn print_verdict(path: &Path, result: &Result<VerifiedBundle, VerifyError>, json: bool) {
    match (result, json) {
        (Ok(v), false) => println!(
            "OK {}: {} {} {} env={} signed by {} ({} files, {} bytes, sha256 {})",
            path.display(),
            v.manifest.name,
            v.manifest.version,
            v.manifest.arch,
            v.manifest.environment,
            v.key_id,
            v.manifest.files.len(),
            v.compressed_bytes,
            v.bundle_sha256
        ),
        (Ok(v), true) => println!(
            "{}",
            serde_json::json!({
                "ok": true,
                "bundle": path.display().to_string(),
                "name": v.manifest.name,
                "version": v.manifest.version,
                "arch": v.manifest.arch,
                "environment": v.manifest.environment,
                "key_id": v.key_id,
                "files": v.manifest.files.len(),
                "bundle_sha256": v.bundle_sha256,
                "manifest_sha256": v.manifest_sha256,
            })
        ),
        (Err(e), false) => eprintln!("REJECTED {}: {e}", path.display()),
        (Err(e), true) => println!(
            "{}",
            serde_json::json!({
                "ok": false,
                "bundle": path.display().to_string(),
                "error": e.kind(),
                "message": e.to_string(),
            })
        ),
    }
}
