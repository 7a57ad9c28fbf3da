//! `weft weave create|list|get|delete|route|activate|deactivate|sync|watch`: weaves (the
//! controller's `/weaves` and `/events/weaves`).

use anyhow::bail;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::shards::{call, enc, follow_events};

#[derive(Debug, Subcommand)]
pub enum WeaveCommand {
    /// Materialize environment ENV (a source network) as it was at --at as a new network
    /// beside it (same hosts, same addresses in an isolated layer 2, volumes cloned from
    /// the snapshot in force then).
    Create {
        environment: String,
        /// An RFC 3339 time ("2026-12-06T01:00:00Z") or "now" (a snapshot is taken).
        #[arg(long, default_value = "now")]
        at: String,
        /// The weave's id (also its network's); default `<ENV>-w<n>`.
        #[arg(long)]
        id: Option<String>,
    },
    List {
        /// Only this environment's weaves.
        #[arg(long)]
        environment: Option<String>,
    },
    Get {
        id: String,
        /// The WeaveInfo JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove its routes, its network and volumes; unpin its snapshots.
    Delete { id: String },
    /// New connections to PORT of the environment's nodes go to the weave's copies; with
    /// --header NAME[=VALUE], only the HTTP/1.1 requests and h2c streams carrying that
    /// header do (the others go to the environment); --header host=NAME also routes TLS
    /// connections whose server name (SNI) is NAME, whole.
    Route {
        id: String,
        port: u32,
        /// Only this node; default every node that declares the port.
        #[arg(long)]
        node: Option<String>,
        /// Route by request: NAME (any value) or NAME=VALUE.
        #[arg(long)]
        header: Option<String>,
        /// Remove the route instead.
        #[arg(long)]
        remove: bool,
    },
    /// Every new connection to every node of the environment goes to the weave; with the
    /// environment's id: back to the environment.
    Activate { id: String },
    /// Back to the environment (connections in flight to the weave stay there).
    Deactivate { id: String },
    /// Replace VOLUME of --to's nodes with --from's current state (a weave or the
    /// environment, of one environment).
    Sync {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        volume: String,
    },
    /// Follow the weaves' events.
    Watch {
        /// Only this weave's (or environment's).
        id: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

fn text(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn summary_line(w: &Value) -> String {
    format!(
        "{:<20}  {:<16}  {:<12}  rev {:<4}  {}{}\n",
        text(w, "id"),
        text(w, "environment"),
        text(w, "state"),
        text(w, "environment_revision"),
        if w["active"] == true { "ACTIVE " } else { "" },
        routes(w)
    )
}

fn routes(w: &Value) -> String {
    let r: Vec<String> = w["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| match r["port"].as_u64() {
            Some(0) => format!("{}:*", text(r, "node")),
            _ => match r["header"].as_str() {
                Some(h) => format!(
                    "{}:{}[{h}{}]",
                    text(r, "node"),
                    r["port"],
                    r["header_value"]
                        .as_str()
                        .map(|v| format!("={v}"))
                        .unwrap_or_default()
                ),
                None => format!("{}:{}", text(r, "node"), r["port"]),
            },
        })
        .collect();
    if r.is_empty() {
        "no routes".into()
    } else {
        format!("routes {}", r.join(" "))
    }
}

fn show(w: &Value) -> String {
    let mut out = format!(
        "weave {} of {} (revision {}), {}{}\n",
        text(w, "id"),
        text(w, "environment"),
        text(w, "environment_revision"),
        text(w, "state"),
        if w["active"] == true { ", ACTIVE" } else { "" }
    );
    if let Some(e) = w["error"].as_str().filter(|e| !e.is_empty()) {
        out.push_str(&format!("  error: {e}\n"));
    }
    if let Some(s) = w["ready_seconds"].as_f64().filter(|s| *s > 0.0) {
        out.push_str(&format!("  ready in {s:.2} s\n"));
    }
    for (node, host) in w["placement"].as_object().into_iter().flatten() {
        let snap = w["snapshots"][node].as_str().unwrap_or("");
        out.push_str(&format!(
            "  {node:<16} on {}{}\n",
            host.as_str().unwrap_or("-"),
            if snap.is_empty() {
                String::new()
            } else {
                format!(", volumes from snapshot {snap}")
            }
        ));
    }
    out.push_str(&format!("  {}\n", routes(w)));
    out
}

fn event_line(e: &Value, as_json: bool) -> String {
    if as_json {
        return format!("{e}\n");
    }
    let d = &e["data"];
    let detail = match e["type"].as_str().unwrap_or_default() {
        "weft.weave.created" => format!(
            "of {} revision {}",
            text(d, "environment"),
            text(d, "environment_revision")
        ),
        "weft.weave.ready" => format!("in {} s", text(d, "ready_seconds")),
        "weft.weave.routed" => format!(
            "port {}{}{}{}",
            text(d, "port"),
            d["node"]
                .as_str()
                .map(|n| format!(" of {n}"))
                .unwrap_or_default(),
            d["header"]
                .as_str()
                .map(|h| format!(
                    " by header {h}{}",
                    d["header_value"]
                        .as_str()
                        .filter(|v| !v.is_empty())
                        .map(|v| format!("={v}"))
                        .unwrap_or_default()
                ))
                .unwrap_or_default(),
            if d["removed"] == true { " removed" } else { "" }
        ),
        "weft.weave.synced" => format!("volume {} from {}", text(d, "volume"), text(d, "source")),
        _ => String::new(),
    };
    format!(
        "{}  {:<24}  {}  {}\n",
        text(e, "time"),
        text(e, "type"),
        text(e, "subject"),
        detail
    )
}

pub fn run(base: &str, command: &WeaveCommand) -> anyhow::Result<String> {
    match command {
        WeaveCommand::Create {
            environment,
            at,
            id,
        } => {
            let mut body = json!({ "environment": environment });
            if at != "now" {
                if weft_topology::time::parse_rfc3339(at).is_err() {
                    bail!("--at {at:?}: say an RFC 3339 time (2026-12-06T01:00:00Z) or now");
                }
                body["at"] = json!(at);
            }
            if let Some(id) = id {
                body["id"] = json!(id);
            }
            Ok(show(&call(base, "POST", "/weaves", Some(&body))?))
        }
        WeaveCommand::List { environment } => {
            let path = match environment {
                Some(e) => format!("/weaves?environment={}", enc(e)),
                None => "/weaves".into(),
            };
            let all = call(base, "GET", &path, None)?;
            let mut out = format!(
                "{:<20}  {:<16}  {:<12}  {:<8}  {}\n",
                "WEAVE", "ENVIRONMENT", "STATE", "REVISION", "ROUTES"
            );
            for w in all["weaves"].as_array().into_iter().flatten() {
                out.push_str(&summary_line(w));
            }
            Ok(out)
        }
        WeaveCommand::Get { id, json } => {
            let w = call(base, "GET", &format!("/weaves/{}", enc(id)), None)?;
            if *json {
                Ok(serde_json::to_string_pretty(&w)? + "\n")
            } else {
                Ok(show(&w))
            }
        }
        WeaveCommand::Delete { id } => {
            let w = call(base, "DELETE", &format!("/weaves/{}", enc(id)), None)?;
            Ok(format!("deleted {}", summary_line(&w)))
        }
        WeaveCommand::Route {
            id,
            port,
            node,
            header,
            remove,
        } => {
            let by_request = header.as_deref().map(|h| match h.split_once('=') {
                Some((n, v)) => (n.trim(), v.trim()),
                None => (h.trim(), ""),
            });
            if by_request.is_some_and(|(n, _)| n.is_empty()) {
                bail!(
                    "--header {:?}: say NAME or NAME=VALUE",
                    header.as_deref().unwrap_or_default()
                );
            }
            let w = if *remove {
                let mut q: Vec<String> = Vec::new();
                if let Some(n) = node {
                    q.push(format!("node={}", enc(n)));
                }
                if let Some((n, v)) = by_request {
                    q.push(format!("header={}", enc(n)));
                    if !v.is_empty() {
                        q.push(format!("header_value={}", enc(v)));
                    }
                }
                let q = if q.is_empty() {
                    String::new()
                } else {
                    format!("?{}", q.join("&"))
                };
                call(
                    base,
                    "DELETE",
                    &format!("/weaves/{}/routes/{port}{q}", enc(id)),
                    None,
                )?
            } else {
                let mut body = json!({ "port": port });
                if let Some(n) = node {
                    body["node"] = json!(n);
                }
                if let Some((n, v)) = by_request {
                    body["header"] = json!(n);
                    if !v.is_empty() {
                        body["header_value"] = json!(v);
                    }
                }
                call(
                    base,
                    "POST",
                    &format!("/weaves/{}/routes", enc(id)),
                    Some(&body),
                )?
            };
            Ok(show(&w))
        }
        WeaveCommand::Activate { id } => Ok(show(&call(
            base,
            "POST",
            &format!("/weaves/{}/activate", enc(id)),
            None,
        )?)),
        WeaveCommand::Deactivate { id } => Ok(show(&call(
            base,
            "DELETE",
            &format!("/weaves/{}/activate", enc(id)),
            None,
        )?)),
        WeaveCommand::Sync { from, to, volume } => {
            let r = call(
                base,
                "POST",
                &format!("/weaves/{}/sync", enc(to)),
                Some(&json!({ "source": from, "volume": volume })),
            )?;
            let mut out = format!("volume {volume} of {to} replaced by {from}'s:\n");
            for n in r["nodes"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "  {:<16} {:.3} s ({})\n",
                    text(n, "node"),
                    n["took_seconds"].as_f64().unwrap_or(0.0),
                    text(n, "method")
                ));
            }
            Ok(out)
        }
        WeaveCommand::Watch { id, json } => {
            let path = match id {
                Some(id) => format!("/events/weaves?weave={}", enc(id)),
                None => "/events/weaves".to_owned(),
            };
            follow_events(base, &path, |e| event_line(e, *json))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_weave_reads_as_its_state_placement_and_routes() {
        let w = json!({
            "id": "shop-w1", "environment": "shop", "environment_revision": 3,
            "state": "running", "error": "", "active": true, "ready_seconds": 1.5,
            "placement": {"db": "hv2", "web": "hv1"}, "snapshots": {"db": "s-1"},
            "routes": [{"node": "web", "port": 80}, {"node": "db", "port": 0},
                       {"node": "api", "port": 8080, "header": "x-branch", "header_value": "w1"}],
        });
        let s = show(&w);
        assert!(
            s.contains("weave shop-w1 of shop (revision 3), running, ACTIVE"),
            "{s}"
        );
        assert!(
            s.contains("db               on hv2, volumes from snapshot s-1"),
            "{s}"
        );
        assert!(
            s.contains("routes web:80 db:* api:8080[x-branch=w1]"),
            "{s}"
        );
        let e = json!({"type": "weft.weave.routed", "time": "t", "subject": "shop-w1",
                       "data": {"port": 80, "node": "web", "removed": false}});
        assert!(event_line(&e, false).contains("port 80 of web"));
        let e = json!({"type": "weft.weave.routed", "time": "t", "subject": "shop-w1",
                       "data": {"port": 80, "node": "web", "header": "x-branch", "header_value": "w1", "removed": false}});
        assert!(
            event_line(&e, false).contains("port 80 of web by header x-branch=w1"),
            "{}",
            event_line(&e, false)
        );
    }
}
