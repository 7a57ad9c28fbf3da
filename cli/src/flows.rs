//! `weft flows`: the flows the agents reported last (`GET /flows`), one line each, or the
//! controller's JSON with `--json`.

use clap::Args;

#[derive(Debug, Args)]
pub struct FlowsArgs {
    /// How many flows, most recent first.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Print the controller's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `{"a": 2, "b": 1}` as `a×2 b×1`.
fn counts(v: &serde_json::Value) -> String {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| {
                    let k = if k.is_empty() { "(other)" } else { k.as_str() };
                    format!("{k}×{n}")
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// One line per flow from the controller's answer.
pub fn render(body: &str) -> anyhow::Result<String> {
    let v: serde_json::Value = serde_json::from_str(body)?;
    let mut out = String::new();
    for f in v["flows"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let mut tls = Vec::new();
        if let Some(sni) = f["sni"].as_str() {
            tls.push(format!("sni={sni}"));
        }
        if let Some(alpn) = f["alpn"].as_array().filter(|a| !a.is_empty()) {
            let names: Vec<String> = alpn.iter().map(text).collect();
            tls.push(format!("alpn={}", names.join(",")));
        }
        out.push_str(&format!(
            "{} {} -> {} {}{} requests={} errors={}",
            text(&f["transport"]),
            text(&f["client"]),
            text(&f["server"]),
            f["protocol"].as_str().unwrap_or("?"),
            if tls.is_empty() {
                String::new()
            } else {
                format!(" {}", tls.join(" "))
            },
            text(&f["requests"]),
            text(&f["errors"]),
        ));
        for (label, key) in [
            ("methods", "methods"),
            ("statuses", "statuses"),
            ("paths", "paths"),
        ] {
            let c = counts(&f[key]);
            if !c.is_empty() {
                out.push_str(&format!(" {label}=[{c}]"));
            }
        }
        if f["ended"].as_bool() == Some(true) {
            out.push_str(" ended");
        }
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str("no flows reported yet\n");
    }
    Ok(out)
}

pub fn run(controller: &str, args: &FlowsArgs) -> anyhow::Result<String> {
    let body = crate::fetch(controller, &format!("/flows?limit={}", args.limit.max(1)))?;
    if args.json {
        return Ok(body + "\n");
    }
    render(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_is_one_line_with_tls_and_counts() {
        let body = serde_json::json!({"flows": [{
            "transport": "tcp", "client": "198.18.0.1:40000", "server": "198.18.0.2:443",
            "protocol": "tls", "sni": "api.example", "alpn": ["h2", "http/1.1"],
            "requests": 3, "errors": 1, "methods": {"GET": 3}, "statuses": {"200": 2, "503": 1},
            "paths": {"/x": 3}, "ended": true
        }]});
        let text = render(&body.to_string()).expect("render");
        assert_eq!(
            text,
            "tcp 198.18.0.1:40000 -> 198.18.0.2:443 tls sni=api.example alpn=h2,http/1.1 \
             requests=3 errors=1 methods=[GET×3] statuses=[200×2 503×1] paths=[/x×3] ended\n"
        );
        assert_eq!(
            render("{\"flows\": []}").unwrap(),
            "no flows reported yet\n"
        );
        assert!(render("not json").is_err());
    }
}
