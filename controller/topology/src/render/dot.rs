//! Graphviz DOT export: nodes coloured by service type, edges labelled with protocol,
//! requests and mean latency; edges with errors drawn red.

use std::fmt::Write as _;

use crate::topology::{ServiceType, TopologySnapshot};

/// Fill colour of a node by service type.
pub fn colour(service_type: ServiceType) -> &'static str {
    match service_type {
        ServiceType::Database => "#9ecae1",
        ServiceType::Cache => "#fdae6b",
        ServiceType::MessageQueue => "#bcbddc",
        ServiceType::WebServer => "#a1d99b",
        ServiceType::LoadBalancer => "#c7e9c0",
        ServiceType::ApiGateway => "#fdd0a2",
        ServiceType::Microservice => "#fff2a8",
        ServiceType::Client => "#d9d9d9",
        ServiceType::ExternalApi => "#f7f7f7",
    }
}

/// A DOT double-quoted string (quotes included).
fn quoted(text: &str) -> String {
    let escaped = text
        .replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n");
    format!("\"{escaped}\"")
}

pub fn dot(snapshot: &TopologySnapshot) -> String {
    // Writing to a String cannot fail.
    let mut out = String::new();
    let _ = writeln!(out, "digraph weft_topology {{");
    let _ = writeln!(out, "  rankdir=LR;");
    let _ = writeln!(
        out,
        r#"  node [shape=box, style="rounded,filled", fontname="Helvetica"];"#
    );
    let _ = writeln!(out, r#"  edge [fontname="Helvetica", fontsize=10];"#);
    for service in &snapshot.services {
        let label = format!("{}\n({})", service.name, service.service_type.as_str());
        let _ = writeln!(
            out,
            "  {} [label={}, fillcolor={}];",
            quoted(&service.name),
            quoted(&label),
            quoted(colour(service.service_type)),
        );
    }
    for d in &snapshot.dependencies {
        let mut label = format!(
            "{}\n{} reqs\n{:.2} ms avg",
            d.protocol, d.requests, d.latency_ms.avg
        );
        let style = if d.errors > 0 {
            let _ = write!(label, "\n{} errors", d.errors);
            r#"color="red", fontcolor="red", penwidth=2"#
        } else {
            r##"color="#555555""##
        };
        let _ = writeln!(
            out,
            "  {} -> {} [label={}, {style}];",
            quoted(&d.source),
            quoted(&d.target),
            quoted(&label),
        );
    }
    let _ = writeln!(out, "}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures;

    #[test]
    fn graph_has_coloured_nodes_and_labelled_edges() {
        let text = dot(&fixtures::snapshot());
        assert!(text.starts_with("digraph weft_topology {\n"));
        assert!(text.trim_end().ends_with('}'));
        assert_eq!(text.matches('{').count(), text.matches('}').count());
        assert!(
            text.contains(r##"  "db" [label="db\n(database)", fillcolor="#9ecae1"];"##),
            "{text}"
        );
        assert!(text.contains(r##"  "web" [label="web\n(client)", fillcolor="#d9d9d9"];"##));
        assert!(text.contains(
            r##"  "web" -> "api" [label="http\n150 reqs\n35.00 ms avg", color="#555555"];"##
        ));
    }

    #[test]
    fn edges_with_errors_are_red_and_others_are_not() {
        let text = dot(&fixtures::snapshot());
        let red: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(r#"color="red""#))
            .collect();
        assert_eq!(red.len(), 1, "{text}");
        assert!(red[0].starts_with(r#"  "api" -> "db" "#));
        assert!(red[0].contains(r"3 errors"));
    }

    #[test]
    fn names_are_escaped() {
        assert_eq!(quoted(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
