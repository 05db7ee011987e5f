//! The workflow cache: one folder per pass run, keyed by what determines its output — the input artifact's content
//! (or, for a model the cache made, the key that made it), the pass name and version, the plugin name and version,
//! the resolved config and the device. A run writes into a staging folder that is renamed into place, and an entry
//! counts only once its `entry.json` exists, so a run killed at any moment leaves nothing that is mistaken for a
//! result; the next run redoes that pass and reuses every finished one. A lock file per key makes two runs on one
//! cache wait for each other instead of computing the same entry twice.
//!
//! Layout: `<cache>/runs/<key>/{entry.json, output/}`, `<cache>/evaluations/<key>.json`, `<cache>/locks/<key>.lock`,
//! `<cache>/file-hashes.json` (content hashes of input files by path, size, mtime and inode).

mod hash;
mod lock;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context};
use olive_pass_api::Model;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::files::write_atomic;
pub use hash::{key_of, ContentHasher};
use lock::Lock;

/// A cache folder.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// What the cache keeps about one pass run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    /// The key of the input model (a cache key, or the input artifact's content key).
    pub parent: String,
    /// The pass's name in the workflow, and the plugin's pass it ran.
    pub pass_name: String,
    pub pass_type: String,
    pub pass_version: String,
    pub plugin: String,
    pub plugin_version: String,
    pub device: String,
    /// The resolved config the pass ran with.
    pub config: Value,
    /// The model written, its paths relative to the entry's folder.
    pub model: Model,
    /// Unix seconds.
    pub started: f64,
    pub finished: f64,
}

/// Whether a lookup found a finished entry or made one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Ran,
}

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Cache {
    /// Opens (creating) the cache at `root`.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        for sub in ["runs", "evaluations", "locks"] {
            fs::create_dir_all(root.join(sub))
                .with_context(|| format!("cannot create the cache folder {}", root.display()))?;
        }
        let root = fs::canonicalize(root)
            .with_context(|| format!("cannot resolve the cache folder {}", root.display()))?;
        Ok(Cache { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The content key of a model given by the user: its files' contents and its kind.
    pub fn input_key(&self, model: &Model) -> anyhow::Result<String> {
        let mut hasher = ContentHasher::open(&self.root.join("file-hashes.json"));
        let mut parts = vec![
            Value::String(model.kind.clone()),
            Value::String(hasher.tree(&model.path)?),
        ];
        for adapter in &model.adapter_paths {
            parts.push(Value::String(hasher.tree(adapter)?));
        }
        hasher.save();
        Ok(key_of(&Value::Array(parts)))
    }

    fn run_dir(&self, key: &str) -> PathBuf {
        self.root.join("runs").join(key)
    }

    /// The finished entry for `key`, with its model's paths made absolute.
    pub fn entry(&self, key: &str) -> anyhow::Result<Option<Entry>> {
        let dir = self.run_dir(key);
        let path = dir.join("entry.json");
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(anyhow!("cannot read {}: {e}", path.display())),
        };
        let mut entry: Entry = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a cache entry", path.display()))?;
        entry.model = absolute(entry.model, &dir);
        Ok(Some(entry))
    }

    /// The finished entry for `entry.key`, or runs `produce(output_path)` under the key's lock and stores what it
    /// wrote. A half-written folder from a killed run is removed first.
    pub fn run(
        &self,
        mut entry: Entry,
        produce: impl FnOnce(&Path) -> anyhow::Result<Model>,
    ) -> anyhow::Result<(Entry, Outcome)> {
        let lock = Lock::acquire(&self.root.join("locks").join(format!("{}.lock", entry.key)))?;
        if let Some(found) = self.entry(&entry.key)? {
            return Ok((found, Outcome::Hit));
        }
        let dir = self.run_dir(&entry.key);
        if dir.exists() {
            tracing::info!("removing the unfinished cache entry {}", dir.display());
            fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        entry.started = now();
        let model = produce(&dir.join("output"))?;
        entry.finished = now();
        entry.model = relative(model.clone(), &dir);
        write_atomic(&dir.join("entry.json"), &serde_json::to_vec_pretty(&entry)?)?;
        drop(lock);
        entry.model = model;
        Ok((entry, Outcome::Ran))
    }

    /// The stored evaluation under `key`, unless `clean` asked for fresh ones.
    pub fn evaluation(&self, key: &str) -> Option<Value> {
        let text =
            fs::read_to_string(self.root.join("evaluations").join(format!("{key}.json"))).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Stores an evaluation.
    pub fn store_evaluation(&self, key: &str, value: &Value) -> anyhow::Result<()> {
        let path = self.root.join("evaluations").join(format!("{key}.json"));
        write_atomic(&path, &serde_json::to_vec_pretty(value)?)
    }

    /// Every finished entry, oldest first.
    pub fn list(&self) -> anyhow::Result<Vec<Entry>> {
        let mut entries = Vec::new();
        let runs = self.root.join("runs");
        for item in
            fs::read_dir(&runs).with_context(|| format!("cannot list {}", runs.display()))?
        {
            let name = item?.file_name();
            if let Some(entry) = self.entry(&name.to_string_lossy())? {
                entries.push(entry);
            }
        }
        entries.sort_by(|a, b| a.finished.total_cmp(&b.finished));
        Ok(entries)
    }

    /// Removes every run (or only the evaluations), each under its lock: an entry that another run holds is left
    /// and named. Returns how many were removed.
    pub fn clean(&self, evaluations_only: bool) -> anyhow::Result<usize> {
        let mut removed = 0;
        let evaluations = self.root.join("evaluations");
        for item in fs::read_dir(&evaluations)? {
            fs::remove_file(item?.path())?;
            removed += 1;
        }
        if evaluations_only {
            return Ok(removed);
        }
        let runs = self.root.join("runs");
        for item in fs::read_dir(&runs)? {
            let name = item?.file_name().to_string_lossy().into_owned();
            let lock_path = self.root.join("locks").join(format!("{name}.lock"));
            match Lock::try_acquire(&lock_path)? {
                Some(lock) => {
                    fs::remove_dir_all(runs.join(&name))?;
                    drop(lock);
                    let _ = fs::remove_file(&lock_path);
                    removed += 1;
                }
                None => {
                    tracing::warn!("cache entry {name} is in use by another run; left in place")
                }
            }
        }
        Ok(removed)
    }
}

fn map_paths(mut model: Model, f: impl Fn(&Path) -> PathBuf) -> Model {
    model.path = f(&model.path);
    model.adapter_paths = model.adapter_paths.iter().map(|p| f(p)).collect();
    model
}

/// Paths inside `dir` made relative to it (so the cache can move).
fn relative(model: Model, dir: &Path) -> Model {
    map_paths(model, |p| {
        p.strip_prefix(dir)
            .map_or_else(|_| p.to_path_buf(), Path::to_path_buf)
    })
}

fn absolute(model: Model, dir: &Path) -> Model {
    map_paths(model, |p| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str) -> Entry {
        Entry {
            key: key.into(),
            parent: "p".into(),
            pass_name: "q".into(),
            pass_type: "Rtn".into(),
            pass_version: "1".into(),
            plugin: "quant-rtn".into(),
            plugin_version: "1".into(),
            device: "cpu".into(),
            config: serde_json::json!({"bits": 4}),
            model: Model::new("hf", ""),
            started: 0.0,
            finished: 0.0,
        }
    }

    fn produce(out: &Path) -> anyhow::Result<Model> {
        fs::create_dir_all(out)?;
        fs::write(out.join("w"), "weights")?;
        Ok(Model::new("hf", out))
    }

    #[test]
    fn a_second_lookup_is_a_hit_with_the_same_model() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let (first, outcome) = cache.run(entry("k1"), produce).unwrap();
        assert_eq!(outcome, Outcome::Ran);
        let (second, outcome) = cache
            .run(entry("k1"), |_| panic!("a hit must not run the pass"))
            .unwrap();
        assert_eq!(outcome, Outcome::Hit);
        assert_eq!(first.model, second.model);
        assert_eq!(
            fs::read_to_string(second.model.path.join("w")).unwrap(),
            "weights"
        );
        assert_eq!(cache.list().unwrap().len(), 1);
    }

    #[test]
    fn an_unfinished_entry_is_redone_and_a_failed_one_leaves_no_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        // A run killed mid-pass: its folder without entry.json.
        fs::create_dir_all(cache.run_dir("k2").join("output")).unwrap();
        fs::write(cache.run_dir("k2").join("output/partial"), "x").unwrap();
        assert!(cache.entry("k2").unwrap().is_none());
        let err = cache.run(entry("k2"), |_| anyhow::bail!("pass failed"));
        assert!(err.is_err());
        assert!(cache.entry("k2").unwrap().is_none());
        let (done, outcome) = cache.run(entry("k2"), produce).unwrap();
        assert_eq!(outcome, Outcome::Ran);
        assert!(!done.model.path.join("partial").exists());
    }

    #[test]
    fn concurrent_runs_of_one_key_compute_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let runs = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let cache = Cache::open(dir.path()).unwrap();
                    cache
                        .run(entry("k3"), |out| {
                            runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            produce(out)
                        })
                        .unwrap();
                });
            }
        });
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(cache.clean(false).unwrap(), 1);
        assert!(cache.list().unwrap().is_empty());
    }
}
