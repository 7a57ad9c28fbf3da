//! `weft shards ...`, `weft addresses ...` and `weft events`: the controller's shard API
//! (REST). Problems from the controller are printed with their detail and exit non-zero.

use std::io::{BufRead as _, BufReader, Write as _};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{endpoint, problem_message};

#[derive(Debug, Subcommand)]
pub enum ShardsCommand {
    /// Carve a new shard from the controller's pools.
    Create {
        /// Addresses in the shard: a power of two, 16..4096 (default 1024).
        #[arg(long, conflicts_with = "prefix_len")]
        size: Option<u64>,
        /// Prefix length instead of --size (IPv4 20..28, IPv6 116..124).
        #[arg(long)]
        prefix_len: Option<u8>,
        /// ipv4 or ipv6.
        #[arg(long, default_value = "ipv4")]
        family: String,
        /// Allocate it to this network at once.
        #[arg(long)]
        network: Option<String>,
        /// Set it aside: never allocated to a network.
        #[arg(long)]
        reserved: bool,
    },
    /// Show one shard.
    Get { shard_id: String },
    /// List shards (every page).
    List {
        #[arg(long)]
        network: Option<String>,
        /// Available, In-Use, Migrating or Reserved.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        family: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a shard that holds no addresses.
    Delete { shard_id: String },
    /// Allocate a shard to a network.
    Allocate {
        shard_id: String,
        #[arg(long)]
        network: String,
    },
    /// Deallocate a shard from its network; a shard in use is migrated first.
    Deallocate {
        shard_id: String,
        #[arg(long)]
        network: String,
        /// Wait until the migration completes, printing its progress.
        #[arg(long)]
        wait: bool,
    },
    /// Show a migration (its state, error and each workload's move).
    Migration { migration_id: String },
    /// Cancel a running or paused migration: workloads not moved yet get their old
    /// addresses back (moved ones keep their new ones) and the shard stays in its network.
    CancelMigration { migration_id: String },
}

#[derive(Debug, Subcommand)]
pub enum AddressesCommand {
    /// Allocate an address for a workload interface from its network's shards.
    Allocate {
        #[arg(long)]
        network: String,
        #[arg(long)]
        workload: String,
        #[arg(long)]
        host: String,
        #[arg(long, default_value = "ipv4")]
        family: String,
    },
    /// Release one address (naming its allocation seq), or everything a workload holds.
    Release {
        #[arg(long)]
        network: String,
        /// The address to release (with --seq).
        #[arg(
            required_unless_present = "workload",
            conflicts_with = "workload",
            requires = "seq"
        )]
        address: Option<String>,
        /// Allocation sequence returned when the address was allocated.
        #[arg(long)]
        seq: Option<u64>,
        /// Release every address of this workload instead.
        #[arg(long)]
        workload: Option<String>,
    },
    /// List a workload's addresses.
    List {
        #[arg(long)]
        network: String,
        #[arg(long)]
        workload: String,
    },
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// First event sequence (default: every retained event; with --follow, only new ones).
    #[arg(long)]
    from: Option<u64>,
    /// Keep streaming new events (server-sent events) until interrupted.
    #[arg(long)]
    follow: bool,
    /// Print each event as its CloudEvents JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn agent(timeout: Option<Duration>) -> ureq::Agent {
    let mut b = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(5));
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    crate::credentials::http_agent(b)
}

/// One request; the JSON answer, or the controller's problem as the error.
pub(crate) fn call(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    let url = endpoint(base, path);
    let request = agent(Some(Duration::from_secs(30))).request(method, &url);
    let result = match body {
        Some(b) => request.send_json(b.clone()),
        None => request.call(),
    };
    match result {
        Ok(response) => {
            let text = response
                .into_string()
                .with_context(|| format!("reading the answer of {url}"))?;
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            serde_json::from_str(&text).with_context(|| format!("the answer of {url} is not JSON"))
        }
        Err(ureq::Error::Status(code, response)) => {
            let body = response.into_string().unwrap_or_default();
            Err(anyhow!(
                "the controller answered {code} for {method} {path}: {}",
                problem_message(&body)
            ))
        }
        Err(error @ ureq::Error::Transport(_)) => {
            Err(anyhow!(error)).with_context(|| crate::credentials::unreachable(base))
        }
    }
}

fn pretty(v: &Value) -> String {
    format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default())
}

/// Percent-encodes a path segment or query value.
pub(crate) fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn run_shards(base: &str, command: &ShardsCommand) -> anyhow::Result<String> {
    match command {
        ShardsCommand::Create {
            size,
            prefix_len,
            family,
            network,
            reserved,
        } => {
            let mut body = json!({ "family": family });
            if let Some(size) = size {
                body["size"] = json!(size);
            }
            if let Some(len) = prefix_len {
                body["prefix_len"] = json!(len);
            }
            if let Some(n) = network {
                body["network_id"] = json!(n);
            }
            if *reserved {
                body["reserved"] = json!(true);
            }
            Ok(pretty(&call(base, "POST", "/shards", Some(&body))?))
        }
        ShardsCommand::Get { shard_id } => Ok(pretty(&call(
            base,
            "GET",
            &format!("/shards/{}", enc(shard_id)),
            None,
        )?)),
        ShardsCommand::List {
            network,
            status,
            family,
            json,
        } => {
            let mut shards = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let mut query = vec!["limit=1000".to_owned()];
                for (k, v) in [
                    ("network_id", network),
                    ("status", status),
                    ("family", family),
                ] {
                    if let Some(v) = v {
                        query.push(format!("{k}={}", enc(v)));
                    }
                }
                if let Some(t) = &token {
                    query.push(format!("page_token={}", enc(t)));
                }
                let page = call(base, "GET", &format!("/shards?{}", query.join("&")), None)?;
                shards.extend(page["shards"].as_array().cloned().unwrap_or_default());
                match page["next_page_token"].as_str() {
                    Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                    _ => break,
                }
            }
            if *json {
                return Ok(pretty(&Value::Array(shards)));
            }
            let mut out = format!(
                "{:<14} {:<22} {:<10} {:<12} {:>9}  {}\n",
                "ID", "CIDR", "STATUS", "NETWORK", "RESOURCES", "LAST ACCESSED"
            );
            for sh in &shards {
                out.push_str(&format!(
                    "{:<14} {:<22} {:<10} {:<12} {:>9}  {}\n",
                    s(&sh["id"]),
                    s(&sh["cidr"]),
                    s(&sh["status"]),
                    s(&sh["network_id"]),
                    s(&sh["resource_count"]),
                    s(&sh["last_accessed"]),
                ));
            }
            Ok(out)
        }
        ShardsCommand::Delete { shard_id } => {
            call(base, "DELETE", &format!("/shards/{}", enc(shard_id)), None)?;
            Ok(format!("deleted shard {shard_id}\n"))
        }
        ShardsCommand::Allocate { shard_id, network } => Ok(pretty(&call(
            base,
            "POST",
            &format!("/networks/{}/shards/{}", enc(network), enc(shard_id)),
            None,
        )?)),
        ShardsCommand::Deallocate {
            shard_id,
            network,
            wait,
        } => {
            let answer = call(
                base,
                "DELETE",
                &format!("/networks/{}/shards/{}", enc(network), enc(shard_id)),
                None,
            )?;
            let Some(mid) = answer["migration_id"].as_str() else {
                return Ok(format!(
                    "shard {shard_id} deallocated from {network}; it is Available\n"
                ));
            };
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "shard {shard_id} is in use: migration {mid} moves its {} workloads",
                s(&answer["workloads"])
            )?;
            if !wait {
                return Ok(format!(
                    "follow it with: weft shards migration {mid} (stop it with: weft shards cancel-migration {mid})\n"
                ));
            }
            let mut last = String::new();
            // On a terminal a bar of workloads moved; elsewhere a line at every change.
            let bar = crate::progress::Progress::items(
                answer["workloads"].as_u64().unwrap_or(0),
                &format!("migration {mid}"),
            );
            loop {
                let m = call(base, "GET", &format!("/migrations/{}", enc(mid)), None)?;
                let line = format!(
                    "{} {}/{} moved{}",
                    s(&m["state"]),
                    s(&m["moved"]),
                    s(&m["total"]),
                    match (m["state"].as_str(), m["error"].as_str()) {
                        (Some("Paused"), Some(e)) if !e.is_empty() => format!(" (paused: {e})"),
                        _ => String::new(),
                    }
                );
                if crate::progress::shown() {
                    bar.set_total(m["total"].as_u64().unwrap_or(0));
                    bar.set(m["moved"].as_u64().unwrap_or(0));
                    bar.message(&format!("migration {mid}: {}", s(&m["state"])));
                } else if line != last {
                    writeln!(out, "{line}")?;
                    last = line.clone();
                }
                if matches!(m["state"].as_str(), Some("Completed" | "Failed")) {
                    bar.finish();
                    if line != last {
                        writeln!(out, "{line}")?;
                        last = line;
                    }
                }
                match m["state"].as_str() {
                    Some("Completed") => {
                        return Ok(format!("shard {shard_id} deallocated from {network}\n"));
                    }
                    Some("Failed") => bail!("migration {mid} failed: {}", s(&m["error"])),
                    _ => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        }
        ShardsCommand::Migration { migration_id } => Ok(pretty(&call(
            base,
            "GET",
            &format!("/migrations/{}", enc(migration_id)),
            None,
        )?)),
        ShardsCommand::CancelMigration { migration_id } => {
            let m = call(
                base,
                "POST",
                &format!("/migrations/{}/cancel", enc(migration_id)),
                None,
            )?;
            Ok(cancelled_summary(migration_id, &m))
        }
    }
}

/// What a cancel did, from the failed migration the controller answered.
fn cancelled_summary(migration_id: &str, m: &Value) -> String {
    format!(
        "migration {migration_id} cancelled ({}): {} of {} workloads had moved and keep their new addresses, \
         {} rolled back to their old addresses; shard {} stays in network {}\n",
        s(&m["error"]),
        s(&m["moved"]),
        s(&m["total"]),
        s(&m["rolled_back"]),
        s(&m["shard_id"]),
        s(&m["network_id"]),
    )
}

pub fn run_addresses(base: &str, command: &AddressesCommand) -> anyhow::Result<String> {
    match command {
        AddressesCommand::Allocate {
            network,
            workload,
            host,
            family,
        } => {
            let body = json!({ "workload": workload, "host_id": host, "family": family });
            Ok(pretty(&call(
                base,
                "POST",
                &format!("/networks/{}/addresses", enc(network)),
                Some(&body),
            )?))
        }
        AddressesCommand::Release {
            network,
            address,
            seq,
            workload,
        } => match (address, workload) {
            (Some(address), _) => {
                let seq = seq.ok_or_else(|| anyhow!("--seq is required with an address"))?;
                let path = format!(
                    "/networks/{}/addresses/{}?seq={seq}",
                    enc(network),
                    enc(address)
                );
                call(base, "DELETE", &path, None)?;
                Ok(format!("released {address} (seq {seq})\n"))
            }
            (None, Some(workload)) => {
                let path = format!(
                    "/networks/{}/workloads/{}/addresses",
                    enc(network),
                    enc(workload)
                );
                let answer = call(base, "DELETE", &path, None)?;
                let released: Vec<String> = answer["released"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| s(&a["address"]))
                    .collect();
                Ok(format!(
                    "released {} addresses of {workload}: {}\n",
                    released.len(),
                    released.join(" ")
                ))
            }
            (None, None) => bail!("give an address (with --seq) or --workload"),
        },
        AddressesCommand::List { network, workload } => {
            let path = format!(
                "/networks/{}/workloads/{}/addresses",
                enc(network),
                enc(workload)
            );
            Ok(pretty(&call(base, "GET", &path, None)?))
        }
    }
}

fn event_line(e: &Value, as_json: bool) -> String {
    if as_json {
        return format!("{e}\n");
    }
    format!(
        "{:>8} {} {:<34} {}\n",
        s(&e["sequence"]),
        s(&e["time"]),
        s(&e["type"]),
        s(&e["subject"])
    )
}

pub fn run_events(base: &str, args: &EventsArgs) -> anyhow::Result<String> {
    if !args.follow {
        let mut out = String::new();
        let mut from = args.from.unwrap_or(1);
        loop {
            let page = call(
                base,
                "GET",
                &format!("/events?follow=false&from={from}&limit=1000"),
                None,
            )?;
            let events = page["events"].as_array().cloned().unwrap_or_default();
            for e in &events {
                out.push_str(&event_line(e, args.json));
            }
            if events.is_empty() {
                return Ok(out);
            }
            from = page["next"].as_u64().unwrap_or(from + 1);
        }
    }
    let path = match args.from {
        Some(from) => format!("/events?from={from}"),
        None => "/events".to_owned(),
    };
    follow_events(base, &path, |e| event_line(e, args.json))
}

/// Follows the server-sent events of `path` until the controller closes the stream,
/// printing `show` of each event's data (JSON) as it comes.
pub fn follow_events(
    base: &str,
    path: &str,
    show: impl Fn(&Value) -> String,
) -> anyhow::Result<String> {
    let url = endpoint(base, path);
    let response = match agent(None)
        .get(&url)
        .set("Accept", "text/event-stream")
        .call()
    {
        Ok(r) => r,
        Err(ureq::Error::Status(code, response)) => {
            let body = response.into_string().unwrap_or_default();
            bail!(
                "the controller answered {code} for GET {path}: {}",
                problem_message(&body)
            );
        }
        Err(error) => {
            return Err(anyhow!(error)).with_context(|| crate::credentials::unreachable(base));
        }
    };
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(response.into_reader()).lines() {
        let line = line.context("reading the event stream")?;
        if let Some(data) = line.strip_prefix("data:") {
            let e: Value =
                serde_json::from_str(data.trim()).context("an event that is not JSON")?;
            out.write_all(show(&e).as_bytes())?;
            out.flush()?;
        }
    }
    bail!("the controller closed the event stream")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_parse_or_are_refused() {
        use clap::Parser as _;
        for ok in [
            &[
                "weft",
                "shards",
                "create",
                "--size",
                "1024",
                "--network",
                "blue",
            ][..],
            &["weft", "shards", "list", "--status", "In-Use"],
            &[
                "weft",
                "shards",
                "deallocate",
                "shard-000001",
                "--network",
                "blue",
                "--wait",
            ],
            &[
                "weft",
                "addresses",
                "release",
                "--network",
                "blue",
                "198.18.128.2",
                "--seq",
                "3",
            ],
            &[
                "weft",
                "addresses",
                "release",
                "--network",
                "blue",
                "--workload",
                "web",
            ],
            &["weft", "events", "--from", "10", "--follow"],
            &["weft", "shards", "cancel-migration", "mig-000001"],
        ] {
            assert!(crate::Cli::try_parse_from(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            &[
                "weft",
                "shards",
                "create",
                "--size",
                "1024",
                "--prefix-len",
                "22",
            ][..],
            &["weft", "shards", "allocate", "shard-000001"],
            &[
                "weft",
                "addresses",
                "release",
                "--network",
                "blue",
                "198.18.128.2",
            ],
            &["weft", "addresses", "release", "--network", "blue"],
            &["weft", "events", "--from", "x"],
            &["weft", "shards", "cancel-migration"],
        ] {
            assert!(crate::Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_cancel_summary_says_what_moved_and_what_was_rolled_back() {
        let m = json!({"id": "mig-000002", "state": "Failed", "error": "cancelled by the operator",
            "moved": 3, "rolled_back": 5, "total": 8, "shard_id": "shard-000001", "network_id": "blue"});
        assert_eq!(
            cancelled_summary("mig-000002", &m),
            "migration mig-000002 cancelled (cancelled by the operator): 3 of 8 workloads had moved and \
             keep their new addresses, 5 rolled back to their old addresses; shard shard-000001 stays \
             in network blue\n"
        );
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(enc("fd00:80::2"), "fd00%3A80%3A%3A2");
        assert_eq!(enc("web-1.a_b"), "web-1.a_b");
        assert_eq!(enc("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn event_lines_show_sequence_type_and_subject() {
        let e = json!({"sequence": 7, "time": "2026-11-23T16:00:00.000000Z", "type": "weft.shard.created", "subject": "shards/shard-000001"});
        let line = event_line(&e, false);
        assert!(
            line.contains("7 2026-11-23T16:00:00.000000Z weft.shard.created"),
            "{line}"
        );
        assert!(line.trim_end().ends_with("shards/shard-000001"));
        assert_eq!(event_line(&e, true).trim_end(), e.to_string());
    }
}
