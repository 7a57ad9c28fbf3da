//! The address reconciler's section of the agent state file (`workload-addresses`): per
//! workload, the addresses that appeared in a desired state (`seen`) and the shard ranges
//! they came from (`ranges`). An agent restarted in the middle of a migration still
//! recognises the old address it set before the restart, and removes it.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use weft_proto::kinds::WORKLOAD_ADDRESSES;

use super::diff::{Cidr, Managed};
use crate::control::state::{Section, StateError, StateFile};

/// Format version of this section's objects.
const SECTION_VERSION: u32 = 1;

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

/// Reads the address section of `file`.
pub fn load(file: &StateFile) -> Result<Remembered, StateError> {
    let Some(section) = file.section(WORKLOAD_ADDRESSES) else {
        return Ok(Remembered::new());
    };
    let bad = |key: &str, message: String| StateError::Bad {
        path: file.path().to_owned(),
        kind: WORKLOAD_ADDRESSES.to_owned(),
        key: key.to_owned(),
        message,
    };
    if section.version != SECTION_VERSION {
        return Err(bad(
            "",
            format!(
                "section version {} is not one this agent reads ({SECTION_VERSION})",
                section.version
            ),
        ));
    }
    let mut remembered = Remembered::new();
    for (workload, value) in section.objects {
        let entry: Entry =
            serde_json::from_value(value).map_err(|e| bad(&workload, e.to_string()))?;
        let mut ranges = BTreeSet::new();
        for r in &entry.ranges {
            let cidr: Cidr = r
                .parse()
                .map_err(|e: super::diff::CidrError| bad(&workload, e.to_string()))?;
            ranges.insert(cidr);
        }
        remembered.insert(workload, (entry.seen, ranges));
    }
    Ok(remembered)
}

/// The address section for `managed` (workloads with nothing managed are left out).
pub fn section(managed: &HashMap<String, Managed>) -> Section {
    Section {
        version: SECTION_VERSION,
        objects: managed
            .iter()
            .filter(|(_, m)| !m.seen.is_empty() || !m.ranges.is_empty())
            .map(|(name, m)| {
                let entry = Entry {
                    seen: m.seen.clone(),
                    ranges: m.ranges.iter().map(ToString::to_string).collect(),
                };
                (
                    name.clone(),
                    serde_json::to_value(entry).unwrap_or_default(),
                )
            })
            .collect(),
    }
}

/// Writes `managed` as the address section of `file` (if it changed).
pub fn save(file: &StateFile, managed: &HashMap<String, Managed>) -> Result<(), StateError> {
    file.save(WORKLOAD_ADDRESSES, section(managed))
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    struct TestDir(PathBuf);
    impl TestDir {
        fn new(name: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "weft-agent-addrstate-{}-{name}",
                std::process::id()
            ));
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
        Managed {
            seen: seen.iter().map(|s| s.parse().unwrap()).collect(),
            ranges: ranges.iter().map(|s| s.parse().unwrap()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn saved_addresses_read_back() {
        let dir = TestDir::new("roundtrip");
        let path = dir.path().join("state.json");
        let file = StateFile::open(&path).unwrap();
        let mut all = HashMap::new();
        all.insert(
            "web".to_owned(),
            managed(&["198.18.128.5"], &["198.18.128.0/22"]),
        );
        all.insert("idle".to_owned(), Managed::default());
        save(&file, &all).unwrap();
        let back = load(&StateFile::open(&path).unwrap()).unwrap();
        assert_eq!(
            back.len(),
            1,
            "workloads with nothing managed are left out: {back:?}"
        );
        let (seen, ranges) = &back["web"];
        assert!(seen.contains(&"198.18.128.5".parse().unwrap()));
        assert!(ranges.contains(&"198.18.128.0/22".parse().unwrap()));
    }

    /// The file an agent of the address-only control path wrote, byte for byte.
    const VERSION_1: &str = "{\n  \"version\": 1,\n  \"workloads\": {\n    \"web\": {\n      \"seen\": [\n        \"198.18.128.5\",\n        \"198.18.132.9\"\n      ],\n      \"ranges\": [\n        \"198.18.128.0/22\",\n        \"198.18.132.0/22\"\n      ]\n    }\n  }\n}\n";

    #[test]
    fn an_agent_upgraded_from_the_address_only_file_keeps_its_managed_addresses() {
        let dir = TestDir::new("upgrade");
        let path = dir.path().join("state.json");
        std::fs::write(&path, VERSION_1).unwrap();
        let file = StateFile::open(&path).unwrap();
        let back = load(&file).unwrap();
        let (seen, ranges) = &back["web"];
        assert_eq!(seen.len(), 2);
        assert!(seen.contains(&"198.18.132.9".parse().unwrap()));
        assert_eq!(ranges.len(), 2);
        // Written back in the new format, and read again the same.
        let mut m = HashMap::new();
        m.insert(
            "web".to_owned(),
            managed(
                &["198.18.128.5", "198.18.132.9"],
                &["198.18.128.0/22", "198.18.132.0/22"],
            ),
        );
        save(&file, &m).unwrap();
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("\"version\": 2")
        );
        assert_eq!(load(&StateFile::open(&path).unwrap()).unwrap(), back);
    }

    #[test]
    fn a_bad_address_entry_names_the_file_the_kind_and_the_workload() {
        let dir = TestDir::new("bad");
        let path = dir.path().join("state.json");
        std::fs::write(
            &path,
            r#"{"version": 1, "workloads": {"web": {"seen": [], "ranges": ["198.18.128.0/99"]}}}"#,
        )
        .unwrap();
        let e = load(&StateFile::open(&path).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("state.json")
                && e.contains("workload-addresses")
                && e.contains("\"web\"")
                && e.contains("/99"),
            "{e}"
        );
        std::fs::write(
            &path,
            r#"{"version": 1, "workloads": {"web": {"seen": ["nope"], "ranges": []}}}"#,
        )
        .unwrap();
        let e = load(&StateFile::open(&path).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"web\""), "{e}");
    }
}
