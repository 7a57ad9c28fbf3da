//! The agent's memory of which objects are weft's, kept in a file (`--state-file`), one
//! section per resource kind: an agent restarted in the middle of a change still recognises
//! what it set before the restart, and removes what is no longer desired, instead of
//! leaving it beside the new.
//!
//! Format (version 2):
//! `{"version": 2, "kinds": {"workload-addresses": {"version": 1, "objects": {KEY: ...}}}}`;
//! each kind owns the shape of its objects and their version. A version 1 file (addresses
//! only: `{"version": 1, "workloads": {...}}`, written by agents before kinds existed) is
//! read as the `workload-addresses` section, and written back as version 2 at the next
//! change.
//!
//! Written whole, to a temporary file that is synced and renamed over the old one, and
//! only when it changed. A file that cannot be read is an error at start (naming the file
//! and the line): silently starting without it would leave objects behind.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

const VERSION: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading the agent state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the agent state file {path} is not valid (line {line}, column {column}: {message}); fix it, or remove it to start without it (objects weft set before are then not removed)"
    )]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error(
        "the agent state file {path}: {kind} {key:?}: {message}; fix it, or remove it to start without it"
    )]
    Bad {
        path: PathBuf,
        kind: String,
        key: String,
        message: String,
    },
    #[error("writing the agent state file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One kind's section: its own format version and its objects by key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    pub version: u32,
    pub objects: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    kinds: BTreeMap<String, Section>,
}

/// Version 1: addresses only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileV1 {
    #[allow(dead_code)]
    version: u32,
    workloads: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize)]
struct Versioned {
    version: u32,
}

/// The state file and what is in it.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    /// What is in the file (or will be, at the next save): kind -> section.
    kinds: Mutex<(BTreeMap<String, Section>, String)>,
}

fn parse_error(path: &Path, e: &serde_json::Error) -> StateError {
    StateError::Parse {
        path: path.to_owned(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    }
}

impl StateFile {
    /// Opens `path` (a missing or empty file is an empty state).
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let kinds = if text.trim().is_empty() {
            BTreeMap::new()
        } else {
            let v: Versioned = serde_json::from_str(&text).map_err(|e| parse_error(path, &e))?;
            match v.version {
                1 => {
                    let old: FileV1 =
                        serde_json::from_str(&text).map_err(|e| parse_error(path, &e))?;
                    let section = Section {
                        version: 1,
                        objects: old.workloads,
                    };
                    [(weft_proto::kinds::WORKLOAD_ADDRESSES.to_owned(), section)].into()
                }
                VERSION => {
                    let file: File =
                        serde_json::from_str(&text).map_err(|e| parse_error(path, &e))?;
                    file.kinds
                }
                other => {
                    return Err(StateError::Parse {
                        path: path.to_owned(),
                        line: 1,
                        column: 1,
                        message: format!(
                            "version {other} is not one this agent reads (1 or {VERSION})"
                        ),
                    });
                }
            }
        };
        Ok(Self {
            path: path.to_owned(),
            kinds: Mutex::new((kinds, text)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the file holds for `kind`.
    pub fn section(&self, kind: &str) -> Option<Section> {
        self.kinds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .get(kind)
            .cloned()
    }

    /// Replaces `kind`'s section and writes the file if anything changed. An empty section
    /// is left out.
    pub fn save(&self, kind: &str, section: Section) -> Result<(), StateError> {
        let mut guard = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let (kinds, written) = &mut *guard;
        if section.objects.is_empty() {
            kinds.remove(kind);
        } else {
            kinds.insert(kind.to_owned(), section);
        }
        let file = File {
            version: VERSION,
            kinds: kinds.clone(),
        };
        let text = serde_json::to_string_pretty(&file).unwrap_or_default() + "\n";
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
        write().map_err(|source| StateError::Write {
            path: self.path.clone(),
            source,
        })?;
        *written = text;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own under the system temp dir, removed on drop.
    pub(crate) struct TestDir(PathBuf);
    impl TestDir {
        pub(crate) fn new(name: &str) -> Self {
            let p = std::env::temp_dir()
                .join(format!("weft-agent-state-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn section(objects: &[(&str, Value)]) -> Section {
        Section {
            version: 1,
            objects: objects
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        }
    }

    #[test]
    fn sections_read_back_per_kind_and_unchanged_state_is_not_rewritten() {
        let dir = TestDir::new("sections");
        let path = dir.path().join("state.json");
        let file = StateFile::open(&path).unwrap();
        assert_eq!(
            file.section("workload-addresses"),
            None,
            "a missing file is an empty state"
        );
        let web = section(&[(
            "web",
            serde_json::json!({"seen": ["198.18.128.5"], "ranges": []}),
        )]);
        file.save("workload-addresses", web.clone()).unwrap();
        file.save(
            "network",
            section(&[("blue", serde_json::json!({"bridge": "br-blue"}))]),
        )
        .unwrap();
        let first = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        file.save("workload-addresses", web.clone()).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            first,
            "same state: not written again"
        );

        let back = StateFile::open(&path).unwrap();
        assert_eq!(back.section("workload-addresses"), Some(web));
        assert_eq!(
            back.section("network").unwrap().objects["blue"]["bridge"],
            "br-blue"
        );
        back.save("network", Section::default()).unwrap();
        assert_eq!(
            StateFile::open(&path).unwrap().section("network"),
            None,
            "an empty section is left out"
        );
    }

    #[test]
    fn a_version_1_file_is_the_address_section() {
        let dir = TestDir::new("v1");
        let path = dir.path().join("state.json");
        std::fs::write(
            &path,
            r#"{"version": 1, "workloads": {"web": {"seen": ["198.18.128.5"], "ranges": ["198.18.128.0/22"]}}}"#,
        )
        .unwrap();
        let file = StateFile::open(&path).unwrap();
        let s = file.section("workload-addresses").expect("upgraded");
        assert_eq!(s.version, 1);
        assert_eq!(s.objects["web"]["ranges"][0], "198.18.128.0/22");
        file.save("workload-addresses", s.clone()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"version\": 2") && text.contains("\"kinds\""),
            "{text}"
        );
    }

    #[test]
    fn a_bad_file_is_an_error_naming_it_and_the_line() {
        let dir = TestDir::new("bad");
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{\n  \"version\": 2,\n  \"kinds\": {\n    \"x\": { \"version\": 1, \"objects\": 7 }\n  }\n}\n").unwrap();
        let e = StateFile::open(&path).expect_err("refused").to_string();
        assert!(e.contains("state.json") && e.contains("line 4"), "{e}");
        std::fs::write(&path, r#"{"version": 7, "kinds": {}}"#).unwrap();
        let e = StateFile::open(&path).expect_err("refused").to_string();
        assert!(e.contains("version 7"), "{e}");
        std::fs::write(&path, "{\"version\": 1}").unwrap();
        let e = StateFile::open(&path).expect_err("refused").to_string();
        assert!(e.contains("workloads"), "{e}");
    }
}
