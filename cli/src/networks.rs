//! `weft tdl validate|fmt|plan|diff FILE` (offline: the TDL library), `weft tdl export`
//! (the controller's `/tdl/export`) and
//! `weft network create|mirror|update|list|show|status|delete` (the controller's
//! `/networks`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::shards::{call, enc};

#[derive(Debug, clap::Subcommand)]
pub enum TdlCommand {
    /// Check a TDL file: every error with its line and column. Exit status 1 when wrong.
    Validate { file: PathBuf },
    /// Print a TDL file in canonical form (defaults and kinds merged into every node).
    Fmt {
        file: PathBuf,
        /// Rewrite the file instead of printing.
        #[arg(long)]
        write: bool,
    },
    /// What would be made on which hypervisor: bridges, VXLAN, namespaces, veths,
    /// addresses, firewall rules, limits.
    Plan {
        file: PathBuf,
        /// The hypervisors to place on (repeat, or comma-separated).
        #[arg(long = "host", value_delimiter = ',', required = true)]
        hosts: Vec<String>,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// What changes between two TDL files.
    Diff { old: PathBuf, new: PathBuf },
    /// A TDL of what really runs: the workloads the agents registered (nodes) and the
    /// traffic weft saw between them (connections, and security allowing exactly it).
    /// What was seen but left out is listed on stderr.
    Export {
        /// Write the TDL to FILE instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Only the workloads of these hypervisors (repeat, or comma-separated).
        #[arg(long = "host", value_delimiter = ',')]
        hosts: Vec<String>,
        /// The network's name.
        #[arg(long, default_value = "exported")]
        network: String,
        /// Leave the registered addresses out (the nodes get addresses from the shards).
        #[arg(long)]
        no_addresses: bool,
        /// Only traffic since this time (RFC 3339, or relative: 15m, 2h).
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum NetworkCommand {
    /// Create a network from a TDL file (placed on --host, or every capable hypervisor).
    Create {
        file: PathBuf,
        #[arg(long = "host", value_delimiter = ',')]
        hosts: Vec<String>,
        /// What happens to changes made by hand in its nodes (addresses, inbound rules):
        /// propagate (kept, reported and carried to the mirrors; the default) or repair
        /// (put back as the TDL says, reported).
        #[arg(long, value_parser = ["propagate", "repair"])]
        source_drift: Option<String>,
    },
    /// Mirror a network (or a TDL file) as network DESTINATION on --host.
    Mirror {
        /// The source network id.
        #[arg(long, conflicts_with = "file", required_unless_present = "file")]
        source: Option<String>,
        /// A TDL file instead of a source network.
        #[arg(long)]
        file: Option<PathBuf>,
        destination: String,
        #[arg(long = "host", value_delimiter = ',', required = true)]
        hosts: Vec<String>,
    },
    /// Replace a network's definition with a TDL file (its mirrors follow).
    Update {
        network: String,
        file: PathBuf,
    },
    List,
    /// The network's definition, placement and addresses.
    Show {
        network: String,
    },
    /// Desired against applied per hypervisor, resource states and drift.
    Status {
        network: String,
        #[arg(long)]
        json: bool,
    },
    /// Copy volumes now: a mirror's from its source, or a source's to all its mirrors.
    Sync {
        network: String,
    },
    /// Remove the network from every hypervisor.
    Delete {
        network: String,
    },
    /// Every applied revision of a source network (what weaves branch from).
    History {
        network: String,
        /// Print each revision's TDL too.
        #[arg(long)]
        tdl: bool,
    },
    /// Snapshot the volumes of every node of a source network now (and wait for them);
    /// with --list, the snapshots the agents keep.
    Snapshot {
        network: String,
        #[arg(long)]
        list: bool,
    },
}

fn read(file: &Path) -> anyhow::Result<(String, String)> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    Ok((file.display().to_string(), text))
}

fn parse(file: &Path) -> anyhow::Result<weft_tdl::Network> {
    let (name, text) = read(file)?;
    weft_tdl::parse(&name, &text).map_err(|e| anyhow::anyhow!("{e}"))
}

/// The `/tdl/export` request of `weft tdl export`.
pub fn export_path(
    hosts: &[String],
    network: &str,
    no_addresses: bool,
    since: Option<&str>,
) -> String {
    let mut q = vec![
        "format=json".to_owned(),
        format!("network={}", enc(network)),
    ];
    if !hosts.is_empty() {
        let hosts: Vec<String> = hosts.iter().map(|h| enc(h)).collect();
        q.push(format!("hosts={}", hosts.join(",")));
    }
    if no_addresses {
        q.push("addresses=false".into());
    }
    if let Some(s) = since {
        q.push(format!("since={}", enc(s)));
    }
    format!("/tdl/export?{}", q.join("&"))
}

pub fn run_tdl(controller: &str, command: &TdlCommand) -> anyhow::Result<String> {
    match command {
        TdlCommand::Export {
            out,
            hosts,
            network,
            no_addresses,
            since,
        } => {
            let path = export_path(hosts, network, *no_addresses, since.as_deref());
            let answer = call(controller, "GET", &path, None)?;
            let Some(tdl) = answer["tdl"].as_str() else {
                bail!("the controller's answer to GET {path} has no `tdl`");
            };
            // Checked here too: what is written must be a TDL.
            weft_tdl::parse("export", tdl)
                .map_err(|e| anyhow::anyhow!("the exported TDL does not parse: {e}"))?;
            for l in answer["left_out"].as_array().into_iter().flatten() {
                eprintln!("left out: {}", l.as_str().unwrap_or_default());
            }
            match out {
                Some(file) => {
                    std::fs::write(file, tdl)
                        .with_context(|| format!("writing {}", file.display()))?;
                    Ok(format!(
                        "{}: network {:?}, {} nodes, {} connections\n",
                        file.display(),
                        answer["network"].as_str().unwrap_or_default(),
                        answer["nodes"].as_object().map_or(0, |n| n.len()),
                        answer["connections"]
                    ))
                }
                None => Ok(tdl.to_owned()),
            }
        }
        TdlCommand::Validate { file } => {
            let n = parse(file)?;
            Ok(format!(
                "{}: network {:?} is valid: {} nodes, {} connections, {} security rules\n",
                file.display(),
                n.name,
                n.nodes.len(),
                n.connections.len(),
                n.security.len()
            ))
        }
        TdlCommand::Fmt { file, write } => {
            let text = weft_tdl::format(&parse(file)?);
            if *write {
                std::fs::write(file, &text)
                    .with_context(|| format!("writing {}", file.display()))?;
                Ok(String::new())
            } else {
                Ok(text)
            }
        }
        TdlCommand::Plan { file, hosts, json } => {
            let plan = weft_tdl::plan(&parse(file)?, hosts).map_err(|e| anyhow::anyhow!("{e}"))?;
            if *json {
                Ok(serde_json::to_string_pretty(&plan)? + "\n")
            } else {
                Ok(format!("{plan}"))
            }
        }
        TdlCommand::Diff { old, new } => {
            let changes = weft_tdl::diff(&parse(old)?, &parse(new)?);
            if changes.is_empty() {
                return Ok("no changes\n".into());
            }
            Ok(changes.iter().map(|c| format!("{c}\n")).collect())
        }
    }
}

fn body(file: &Path, hosts: &[String]) -> anyhow::Result<Value> {
    let (name, text) = read(file)?;
    Ok(json!({"tdl": text, "file_name": name, "hosts": hosts}))
}

fn summary_line(n: &Value) -> String {
    let s = |k: &str| match &n[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    };
    let hosts: Vec<String> = n["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h.as_str().map(str::to_owned))
        .collect();
    format!(
        "{:<20}  {:<6}  {:<12}  {:>8}  {:>5}  {}\n",
        s("network_id"),
        s("role"),
        s("source"),
        s("vni"),
        s("nodes"),
        hosts.join(",")
    )
}

fn show(n: &Value) -> String {
    let mut out = summary_line(n);
    if let Some(p) = n["placement"].as_object() {
        for (node, v) in p {
            let addrs: Vec<&str> = v["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            out.push_str(&format!(
                "  {node:<16} on {:<10} {:<40} netns {}\n",
                v["host"].as_str().unwrap_or("-"),
                addrs.join(","),
                v["namespace"].as_str().unwrap_or("-")
            ));
        }
    }
    out
}

fn status_text(s: &Value) -> String {
    let mut out = format!(
        "network {} ({}), revision {}, vni {}: {}\n",
        s["network"].as_str().unwrap_or("-"),
        s["role"].as_str().unwrap_or("-"),
        s["revision"],
        s["vni"],
        if s["in_sync"] == json!(true) {
            "in sync"
        } else {
            "NOT in sync"
        }
    );
    for h in s["hosts"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {}: desired generation {}, applied {}{}\n",
            h["host"].as_str().unwrap_or("-"),
            h["desired_generation"],
            h["applied_generation"],
            if h["applied"] == json!(true) {
                ""
            } else {
                " (pending)"
            }
        ));
        for r in h["resources"].as_array().into_iter().flatten() {
            if r["state"] != json!("applied") {
                out.push_str(&format!(
                    "    {} {}: {} {}\n",
                    r["kind"].as_str().unwrap_or("-"),
                    r["key"].as_str().unwrap_or("-"),
                    r["state"].as_str().unwrap_or("-"),
                    r["error"].as_str().unwrap_or("")
                ));
            }
        }
        for d in h["drift"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "    drift {}: {} ({})\n",
                d["key"].as_str().unwrap_or("-"),
                d["what"].as_str().unwrap_or("-"),
                if d["kept"] == json!(true) {
                    "kept, propagated to the mirrors".to_string()
                } else if d["repaired_unix_ns"].as_u64().unwrap_or(0) > 0 {
                    "repaired".to_string()
                } else {
                    format!("not repaired: {}", d["error"].as_str().unwrap_or(""))
                }
            ));
        }
    }
    if let Some(sd) = s["source_drift"].as_str() {
        out.push_str(&format!("  hand changes in its nodes: {sd}\n"));
    }
    for (node, h) in s["hand_changes"].as_object().into_iter().flatten() {
        out.push_str(&format!(
            "  hand changes of {node} (on {}), in force: {}\n",
            h["host"].as_str().unwrap_or("-"),
            h["changes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        ));
        for f in h["foreign_rules"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "    not carried to mirrors (a rule weft does not write): {}\n",
                f.as_str().unwrap_or("-")
            ));
        }
    }
    out
}

pub fn run_network(controller: &str, command: &NetworkCommand) -> anyhow::Result<String> {
    match command {
        NetworkCommand::Create {
            file,
            hosts,
            source_drift,
        } => {
            let mut b = body(file, hosts)?;
            if let Some(sd) = source_drift {
                b["source_drift"] = json!(sd);
            }
            let n = call(controller, "POST", "/networks", Some(&b))?;
            Ok(show(&n))
        }
        NetworkCommand::Mirror {
            source,
            file,
            destination,
            hosts,
        } => {
            let mut b = json!({"destination": destination, "hosts": hosts});
            match (source, file) {
                (Some(s), None) => b["source"] = json!(s),
                (None, Some(f)) => {
                    let (name, text) = read(f)?;
                    b["tdl"] = json!(text);
                    b["file_name"] = json!(name);
                }
                _ => bail!("give --source or --file"),
            }
            Ok(show(&call(
                controller,
                "POST",
                "/networks/mirror",
                Some(&b),
            )?))
        }
        NetworkCommand::Update { network, file } => {
            let n = call(
                controller,
                "PUT",
                &format!("/networks/{network}"),
                Some(&body(file, &[])?),
            )?;
            let mut out = show(&n);
            for c in n["changes"].as_array().into_iter().flatten() {
                out.push_str(&format!("  change: {}\n", c.as_str().unwrap_or("-")));
            }
            Ok(out)
        }
        NetworkCommand::List => {
            let all = call(controller, "GET", "/networks", None)?;
            let mut out = format!(
                "{:<20}  {:<6}  {:<12}  {:>8}  {:>5}  {}\n",
                "NETWORK", "ROLE", "SOURCE", "VNI", "NODES", "HOSTS"
            );
            for n in all["networks"].as_array().into_iter().flatten() {
                out.push_str(&summary_line(n));
            }
            Ok(out)
        }
        NetworkCommand::Show { network } => Ok(show(&call(
            controller,
            "GET",
            &format!("/networks/{network}"),
            None,
        )?)),
        NetworkCommand::Status { network, json } => {
            let s = call(
                controller,
                "GET",
                &format!("/networks/{network}/status"),
                None,
            )?;
            if *json {
                Ok(serde_json::to_string_pretty(&s)? + "\n")
            } else {
                Ok(status_text(&s))
            }
        }
        NetworkCommand::Sync { network } => {
            let r = call(
                controller,
                "POST",
                &format!("/networks/{network}/sync"),
                None,
            )?;
            let m: Vec<&str> = r["mirrors"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            Ok(format!("volume copy asked of: {}\n", m.join(", ")))
        }
        NetworkCommand::Delete { network } => {
            let n = call(controller, "DELETE", &format!("/networks/{network}"), None)?;
            Ok(format!("deleted {}", summary_line(&n)))
        }
        NetworkCommand::History { network, tdl } => {
            let h = call(
                controller,
                "GET",
                &format!("/networks/{network}/history"),
                None,
            )?;
            let mut out = format!("{:<8}  {}\n", "REVISION", "APPLIED");
            for e in h["history"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "{:<8}  {}\n",
                    e["revision"],
                    e["applied"].as_str().unwrap_or("-")
                ));
                if *tdl {
                    for line in e["tdl"].as_str().unwrap_or("").lines() {
                        out.push_str(&format!("    {line}\n"));
                    }
                }
            }
            Ok(out)
        }
        NetworkCommand::Snapshot { network, list } => {
            let path = format!("/networks/{network}/snapshots");
            let r = if *list {
                call(controller, "GET", &path, None)?
            } else {
                call(controller, "POST", &path, None)?
            };
            let mut out = String::new();
            for (node, v) in r["snapshots"].as_object().into_iter().flatten() {
                let list: Vec<&Value> = match v {
                    Value::Array(a) => a.iter().collect(),
                    one => vec![one],
                };
                for s in list {
                    out.push_str(&format!(
                        "{node:<16}  {:<24}  {}  {} ({:.3} s)\n",
                        s["id"].as_str().unwrap_or("-"),
                        s["taken"].as_str().unwrap_or("-"),
                        s["method"].as_str().unwrap_or("-"),
                        s["took_seconds"].as_f64().unwrap_or(0.0)
                    ));
                }
            }
            if out.is_empty() {
                out.push_str("no node with volumes\n");
            }
            Ok(out)
        }
    }
}
