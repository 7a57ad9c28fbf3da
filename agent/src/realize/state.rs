//! The realizer's memory of which addresses on each workload are weft's, kept in a file
//! (`--state-file`): an agent restarted in the middle of a migration still recognises the
//! old address it set before the restart, and removes it, instead of leaving it on the
//! device beside the new one.
//!
//! Written whole, to a temporary file that is synced and renamed over the old one, and
//! only when it changed. A file that cannot be read is an error at start (naming the file
//! and the line): silently starting without it would leave addresses behind.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::diff::{Cidr, Managed};

const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading the agent state file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "the agent state file {path} is not valid (line {line}, column {column}: {message}); fix it, or remove it to start without it (addresses weft set before are then not removed)"
    )]
    Parse { path: PathBuf, line: usize, column: usize, message: String },
    #[error("the agent state file {path}: workload {workload:?}: {message}; fix it, or remove it to start without it")]
    Bad { path: PathBuf, workload: String, message: String },
    #[error("writing the agent state file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    workloads: BTreeMap<String, Entry>,
}

#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Entry {
    /// Addresses that appeared in a desired state.
    seen: BTreeSet<IpAddr>,
    /// Shard ranges, as `198.18.128.0/22`.
    ranges: BTreeSet<String>,
}

/// What was remembered per workload: addresses seen and shard ranges.
pub type Remembered = HashMap<String, (BTreeSet<IpAddr>, BTreeSet<Cidr>)>;

/// The state file and what was last written to it.
pub struct StateFile {
    path: PathBuf,
    written: Mutex<String>,
}

impl StateFile {
    /// Opens `path` (a missing file is an empty state) and returns what it remembers.
    pub fn open(path: &Path) -> Result<(Self, Remembered), StateError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(StateError::Read { path: path.to_owned(), source }),
        };
        let file: File = if text.trim().is_empty() {
            File { version: VERSION, ..Default::default() }
        } else {
            serde_json::from_str(&text).map_err(|e| StateError::Parse {
                path: path.to_owned(),
                line: e.line(),
                column: e.column(),
                message: e.to_string(),
            })?
        };
        if file.version != VERSION {
            return Err(StateError::Parse {
                path: path.to_owned(),
                line: 1,
                column: 1,
                message: format!("version {} is not one this agent reads ({VERSION})", file.version),
            });
        }
        let mut remembered = Remembered::new();
        for (workload, entry) in file.workloads {
            let mut ranges = BTreeSet::new();
            for r in &entry.ranges {
                let cidr: Cidr = r.parse().map_err(|e: super::diff::CidrError| StateError::Bad {
                    path: path.to_owned(),
                    workload: workload.clone(),
                    message: e.to_string(),
                })?;
                ranges.insert(cidr);
            }
            remembered.insert(workload, (entry.seen, ranges));
        }
        Ok((Self { path: path.to_owned(), written: Mutex::new(text) }, remembered))
    }

    /// Writes the managed addresses of every workload, if they changed since the last write.
    pub fn save(&self, managed: &HashMap<String, Managed>) -> Result<(), StateError> {
        let file = File {
            version: VERSION,
            workloads: managed
                .iter()
                .filter(|(_, m)| !m.seen.is_empty() || !m.ranges.is_empty())
                .map(|(name, m)| {
                    let entry = Entry {
                        seen: m.seen.clone(),
                        ranges: m.ranges.iter().map(ToString::to_string).collect(),
                    };
                    (name.clone(), entry)
                })
                .collect(),
        };
        let text = serde_json::to_string_pretty(&file).unwrap_or_default() + "\n";
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if *written == text {
            return Ok(());
        }
        let write = || -> std::io::Result<()> {
            let tmp = self.path.with_extension("tmp");
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|source| StateError::Write { path: self.path.clone(), source })?;
        *written = text;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own under the system temp dir, removed on drop.
    struct TestDir(PathBuf);
    impl TestDir {
        fn new(name: &str) -> Self {
            let p = std::env::temp_dir().join(format!("weft-agent-state-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn managed(seen: &[&str], ranges: &[&str]) -> Managed {
        let mut m = Managed::default();
        m.seen = seen.iter().map(|s| s.parse().unwrap()).collect();
        m.ranges = ranges.iter().map(|s| s.parse().unwrap()).collect();
        m
    }

    #[test]
    fn saved_state_reads_back_and_unchanged_state_is_not_rewritten() {
        let dir = TestDir::new("roundtrip");
        let path = dir.path().join("state.json");
        let (file, remembered) = StateFile::open(&path).unwrap();
        assert!(remembered.is_empty(), "a missing file is an empty state");
        let mut all = HashMap::new();
        all.insert("web".to_owned(), managed(&["198.18.128.5"], &["198.18.128.0/22"]));
        all.insert("idle".to_owned(), Managed::default());
        file.save(&all).unwrap();
        let first = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        file.save(&all).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), first, "same state: not written again");

        let (_, back) = StateFile::open(&path).unwrap();
        assert_eq!(back.len(), 1, "workloads with nothing managed are left out: {back:?}");
        let (seen, ranges) = &back["web"];
        assert!(seen.contains(&"198.18.128.5".parse().unwrap()));
        assert!(ranges.contains(&"198.18.128.0/22".parse().unwrap()));
    }

    #[test]
    fn a_bad_file_is_an_error_naming_it_and_the_line() {
        let dir = TestDir::new("bad");
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{\n  \"version\": 1,\n  \"workloads\": {\n    \"web\": { \"seen\": [\"nope\"], \"ranges\": [] }\n  }\n}\n").unwrap();
        let e = StateFile::open(&path).err().expect("refused").to_string();
        assert!(e.contains("state.json") && e.contains("line 4"), "{e}");
        std::fs::write(&path, r#"{"version": 1, "workloads": {"web": {"seen": [], "ranges": ["198.18.128.0/99"]}}}"#).unwrap();
        let e = StateFile::open(&path).err().expect("refused").to_string();
        assert!(e.contains("\"web\"") && e.contains("198.18.128.0/99"), "{e}");
        std::fs::write(&path, r#"{"version": 7, "workloads": {}}"#).unwrap();
        let e = StateFile::open(&path).err().expect("refused").to_string();
        assert!(e.contains("version 7"), "{e}");
    }
}
