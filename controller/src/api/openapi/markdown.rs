//! The API reference in docs/api.md, written from the OpenAPI document (so the two never
//! disagree: a test compares them). Operations grouped by tag, each with its parameters,
//! request body and responses; the schemas themselves are in `/openapi.json`.

use std::fmt::Write as _;

use serde_json::Value;

/// A table cell: one line, pipes escaped.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// The type of a parameter's schema, briefly.
fn type_of(schema: &Value) -> String {
    if let Some(r) = schema["$ref"].as_str() {
        return r.rsplit('/').next().unwrap_or(r).to_owned();
    }
    match &schema["type"] {
        Value::String(t) => match schema["format"].as_str() {
            Some(f) => format!("{t} ({f})"),
            None => t.clone(),
        },
        Value::Array(types) => types
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any".to_owned(),
    }
}

/// docs/api.md from `doc` (the OpenAPI document as JSON).
pub fn render(doc: &Value) -> String {
    let mut out = String::new();
    let info = &doc["info"];
    let _ = writeln!(
        out,
        "# {}\n\n<!-- Written from the OpenAPI document (GET /openapi.json) by \
         `WEFT_UPDATE_DOCS=1 cargo test -p weft-controller --test api_doc`; \
         a test fails when it differs. Do not edit by hand. -->\n",
        info["title"].as_str().unwrap_or("API")
    );
    let _ = writeln!(out, "{}\n", info["description"].as_str().unwrap_or(""));
    let _ = writeln!(
        out,
        "The machine-readable document is served at `GET /openapi.json` (OpenAPI {}); \
         schemathesis checks the controller against it in `cargo xtask test`.\n",
        doc["openapi"].as_str().unwrap_or("3.1")
    );
    let tags: Vec<(&str, &str)> = doc["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t["name"].as_str().unwrap_or(""),
                t["description"].as_str().unwrap_or(""),
            )
        })
        .collect();
    let paths = doc["paths"].as_object().cloned().unwrap_or_default();
    // Contents.
    for (tag, description) in &tags {
        let _ = writeln!(out, "- [{tag}](#{tag}): {description}");
    }
    out.push('\n');
    for (tag, description) in &tags {
        let _ = writeln!(out, "## {tag}\n\n{description}.\n");
        for (path, item) in &paths {
            for method in ["get", "put", "post", "delete", "patch"] {
                let op = &item[method];
                if op.is_null()
                    || !op["tags"]
                        .as_array()
                        .is_some_and(|t| t.iter().any(|x| x == tag))
                {
                    continue;
                }
                operation(&mut out, method, path, op);
            }
        }
    }
    out
}

fn operation(out: &mut String, method: &str, path: &str, op: &Value) {
    let _ = writeln!(out, "### `{} {path}`\n", method.to_uppercase());
    let text = op["description"]
        .as_str()
        .or_else(|| op["summary"].as_str())
        .unwrap_or("");
    if !text.is_empty() {
        let _ = writeln!(out, "{}\n", text.trim());
    }
    if op["security"].as_array().is_some_and(|s| {
        s.iter()
            .all(|r| r.as_object().is_some_and(|o| o.is_empty()))
    }) {
        let _ = writeln!(out, "No token needed.\n");
    }
    if let Some(params) = op["parameters"].as_array().filter(|p| !p.is_empty()) {
        let _ = writeln!(
            out,
            "| parameter | in | type | required | description |\n|---|---|---|---|---|"
        );
        for p in params {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} |",
                p["name"].as_str().unwrap_or(""),
                p["in"].as_str().unwrap_or(""),
                type_of(&p["schema"]),
                if p["required"].as_bool() == Some(true) {
                    "yes"
                } else {
                    "no"
                },
                cell(p["description"].as_str().unwrap_or(""))
            );
        }
        out.push('\n');
    }
    if let Some(body) = op["requestBody"].as_object() {
        let types: Vec<&str> = body
            .get("content")
            .and_then(Value::as_object)
            .map(|c| c.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "Request body ({}): {}\n",
            types.join(", "),
            cell(
                body.get("description")
                    .and_then(Value::as_str)
                    .unwrap_or("")
            )
        );
    }
    if let Some(responses) = op["responses"].as_object() {
        let _ = writeln!(out, "| status | content | description |\n|---|---|---|");
        for (status, r) in responses {
            let types: Vec<String> = r["content"]
                .as_object()
                .map(|c| {
                    c.iter()
                        .map(|(t, m)| {
                            let schema = &m["schema"];
                            if schema.is_null() || t.starts_with("text/") && !t.contains("event") {
                                t.clone()
                            } else {
                                format!("{t} `{}`", type_of(schema))
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "| {status} | {} | {} |",
                types.join(", "),
                cell(r["description"].as_str().unwrap_or(""))
            );
        }
        out.push('\n');
    }
}
