//! The allow-list of expected dependencies: entries `source -> target [protocol]`, globs
//! allowed on every part, from TOML (`allow = ["web -> api http", ...]`) or JSON (a list
//! of such strings, or `{"allow": [...]}`).

use serde::{Deserialize, Serialize};

use crate::topology::TopologySnapshot;
use agent_common::glob::glob_match_ignore_case as glob_match;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AllowRule {
    pub source: String,
    pub target: String,
    /// `None` allows any protocol.
    pub protocol: Option<String>,
}

impl AllowRule {
    /// Parses `source -> target [protocol]` (brackets around the protocol optional).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (source, rest) = text
            .split_once("->")
            .ok_or_else(|| format!("`{text}` is not `source -> target [protocol]`"))?;
        let mut parts = rest.split_whitespace();
        let target = parts
            .next()
            .ok_or_else(|| format!("`{text}` has no target"))?;
        let protocol = parts.next().map(|p| {
            p.trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase()
        });
        if parts.next().is_some() {
            return Err(format!(
                "`{text}` has more than `source -> target [protocol]`"
            ));
        }
        let source = source.trim();
        if source.is_empty() || source.contains(char::is_whitespace) {
            return Err(format!("`{text}` needs one source name before `->`"));
        }
        Ok(Self {
            source: source.to_owned(),
            target: target.to_owned(),
            protocol,
        })
    }

    fn allows(&self, source: &str, target: &str, protocol: &str) -> bool {
        glob_match(&self.source, source)
            && glob_match(&self.target, target)
            && self
                .protocol
                .as_ref()
                .is_none_or(|p| glob_match(p, protocol))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AllowList {
    pub rules: Vec<AllowRule>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum AllowFile {
    List(Vec<String>),
    Table { allow: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub source: String,
    pub target: String,
    pub protocol: String,
    pub requests: u64,
}

impl AllowList {
    /// Parses JSON (text starting with `[` or `{`) or TOML; `origin` names the source in
    /// errors, which also name the entry.
    pub fn parse(text: &str, origin: &str) -> Result<Self, String> {
        let trimmed = text.trim_start();
        let file: AllowFile = if trimmed.starts_with('[') || trimmed.starts_with('{') {
            serde_json::from_str(text).map_err(|e| {
                format!("{origin}: expected a JSON list of \"source -> target [protocol]\" strings or {{\"allow\": [...]}}: {e}")
            })?
        } else {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct TomlFile {
                allow: Vec<String>,
            }
            let parsed: TomlFile = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
            AllowFile::Table {
                allow: parsed.allow,
            }
        };
        let entries = match file {
            AllowFile::List(list) | AllowFile::Table { allow: list } => list,
        };
        let rules = entries
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                AllowRule::parse(entry).map_err(|e| format!("{origin}: entry {}: {e}", i + 1))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { rules })
    }

    /// Whether a rule allows `source -> target` over `protocol`.
    pub fn allows(&self, source: &str, target: &str, protocol: &str) -> bool {
        self.rules
            .iter()
            .any(|r| r.allows(source, target, protocol))
    }

    /// Observed dependencies no rule allows.
    pub fn violations(&self, snapshot: &TopologySnapshot) -> Vec<Violation> {
        snapshot
            .dependencies
            .iter()
            .filter(|d| {
                !self
                    .rules
                    .iter()
                    .any(|r| r.allows(&d.source, &d.target, &d.protocol))
            })
            .map(|d| Violation {
                source: d.source.clone(),
                target: d.target.clone(),
                protocol: d.protocol.clone(),
                requests: d.requests,
            })
            .collect()
    }
}
