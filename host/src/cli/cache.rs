//! `olive-host cache list|clean`: what the workflow cache holds, and emptying it (Olive's `clean_cache`).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::cache::Cache;

#[derive(Args, Debug)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub action: CacheAction,
}

#[derive(Subcommand, Debug)]
pub enum CacheAction {
    /// List the cached pass runs: key, parent, pass, size, when.
    List {
        /// The cache folder (Olive's default: .olive-cache).
        #[arg(long = "cache_dir", default_value = ".olive-cache")]
        cache_dir: PathBuf,
    },
    /// Remove every cached run and evaluation (runs in use by another process are left and named).
    Clean {
        #[arg(long = "cache_dir", default_value = ".olive-cache")]
        cache_dir: PathBuf,
        /// Remove only the stored evaluations.
        #[arg(long)]
        evaluations: bool,
    },
}

/// Bytes under a path.
fn size(path: &std::path::Path) -> u64 {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .map(|d| d.flatten().map(|e| size(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

pub fn run(args: CacheArgs) -> anyhow::Result<()> {
    match args.action {
        CacheAction::List { cache_dir } => {
            if !cache_dir.is_dir() {
                anyhow::bail!("{} is not a cache folder", cache_dir.display());
            }
            let cache = Cache::open(&cache_dir)?;
            let entries = cache.list()?;
            println!("| key | parent | pass | type | size MiB | seconds |");
            println!("| --- | --- | --- | --- | --- | --- |");
            for e in &entries {
                let folder = cache.root().join("runs").join(&e.key);
                println!(
                    "| {} | {} | {} | {} | {:.1} | {:.1} |",
                    e.key,
                    e.parent,
                    e.pass_name,
                    e.pass_type,
                    size(&folder) as f64 / (1 << 20) as f64,
                    e.finished - e.started
                );
            }
            println!("{} entries in {}", entries.len(), cache.root().display());
        }
        CacheAction::Clean {
            cache_dir,
            evaluations,
        } => {
            if !cache_dir.is_dir() {
                println!("{} does not exist; nothing to clean", cache_dir.display());
                return Ok(());
            }
            let removed = Cache::open(&cache_dir)?.clean(evaluations)?;
            println!("removed {removed} entries from {}", cache_dir.display());
        }
    }
    Ok(())
}
