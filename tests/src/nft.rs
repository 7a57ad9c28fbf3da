//! nftables in a lab namespace: a ruleset (text) loaded atomically with `nft -f`; drop
//! deletes the tables it declared.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

use crate::cmd;
use crate::netns::{self, Netns};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The nftables families (`table <family> <name>`; without a family it is `ip`).
const FAMILIES: [&str; 6] = ["ip", "ip6", "inet", "arp", "bridge", "netdev"];

/// Tables loaded into a namespace; they exist as long as this guard (or the namespace).
#[derive(Debug)]
pub struct NftRuleset {
    netns: String,
    /// (family, name) of every table the ruleset declared.
    tables: Vec<(String, String)>,
}

impl NftRuleset {
    /// Loads `ruleset` into `ns`. The ruleset must declare its tables at top level
    /// (`table inet lab { ... }`) and none of them may exist yet: drop deletes exactly them.
    pub fn load(ns: &Netns, ruleset: &str) -> Result<NftRuleset> {
        let tables = tables_of(ruleset)?;
        for (family, name) in &tables {
            if ns.exec(&["nft", "list", "table", family, name]).is_ok() {
                bail!("table {family} {name} already exists in {}", ns.name());
            }
        }
        let file = std::env::temp_dir().join(format!(
            "weft-lab-nft-{}-{}.nft",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&file, ruleset).with_context(|| format!("write {}", file.display()))?;
        let _remove = RemoveFile(file.clone());
        let file_s = file.to_string_lossy().into_owned();
        ns.exec(&["nft", "-f", &file_s])
            .with_context(|| format!("load nftables ruleset into {}:\n{ruleset}", ns.name()))?;
        Ok(NftRuleset {
            netns: ns.name().to_string(),
            tables,
        })
    }

    /// (family, name) of the tables this guard removes.
    pub fn tables(&self) -> &[(String, String)] {
        &self.tables
    }

    /// `nft list table` of every table, for messages.
    pub fn listing(&self) -> String {
        self.tables
            .iter()
            .map(|(f, n)| {
                cmd::run(&mut netns::command_in(
                    &self.netns,
                    &["nft", "list", "table", f, n],
                ))
                .unwrap_or_else(|e| format!("{e:#}"))
            })
            .collect()
    }
}

impl Drop for NftRuleset {
    fn drop(&mut self) {
        if !netns::exists(&self.netns) {
            return;
        }
        for (family, name) in &self.tables {
            let _ = cmd::output(&mut netns::command_in(
                &self.netns,
                &["nft", "delete", "table", family, name],
            ));
        }
    }
}

struct RemoveFile(PathBuf);

impl Drop for RemoveFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The (family, name) of every top-level `table` declaration in `ruleset`.
pub fn tables_of(ruleset: &str) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut depth = 0i32;
    for line in ruleset.lines() {
        let code = line.split('#').next().unwrap_or("");
        let words: Vec<&str> = code
            .split(|c: char| c.is_whitespace() || c == '{' || c == ';')
            .filter(|w| !w.is_empty())
            .collect();
        if depth == 0 {
            // `table F N`, `add table F N`, `table N` (family ip).
            let w: &[&str] = match words.first() {
                Some(&"add") | Some(&"create") => &words[1..],
                _ => &words,
            };
            if w.first() == Some(&"table") {
                let (family, name) = match (w.get(1), w.get(2)) {
                    (Some(f), Some(n)) if FAMILIES.contains(f) => (*f, *n),
                    (Some(n), _) => ("ip", *n),
                    _ => bail!("a table without a name: {line:?}"),
                };
                let t = (family.to_string(), name.to_string());
                if !out.contains(&t) {
                    out.push(t);
                }
            } else if !words.is_empty() {
                bail!(
                    "only table declarations may stand at top level (drop removes tables): {line:?}"
                );
            }
        }
        depth += code.matches('{').count() as i32 - code.matches('}').count() as i32;
    }
    if out.is_empty() {
        bail!("the ruleset declares no table");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_top_level_tables() {
        let r = "# a comment\n\
                 table inet lab {\n  chain input {\n    type filter hook input priority 0;\n    tcp dport 80 drop\n  }\n}\n\
                 table filt { }\n\
                 add table ip6 six\n";
        assert_eq!(
            tables_of(r).unwrap(),
            vec![
                ("inet".to_string(), "lab".to_string()),
                ("ip".to_string(), "filt".to_string()),
                ("ip6".to_string(), "six".to_string()),
            ]
        );
    }

    #[test]
    fn rejects_rulesets_drop_could_not_undo() {
        assert!(tables_of("").is_err());
        assert!(tables_of("flush ruleset\ntable inet a { }\n").is_err());
        assert!(tables_of("table\n").is_err());
    }
}
