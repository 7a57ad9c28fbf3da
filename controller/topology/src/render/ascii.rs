//! The ASCII topology map, in the style of the TopoMapper specification.

use std::fmt::Write as _;

use crate::topology::{DependencyView, TopologySnapshot};

const HEAVY_RULE: &str =
    "================================================================================";
const LIGHT_RULE: &str =
    "--------------------------------------------------------------------------------";

fn endpoint_text(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

fn dependency_line(dependency: &DependencyView) -> String {
    let d = dependency;
    let mut line = format!(
        "    → {} [{} reqs, {:.2} ms avg, p99 {:.2} ms, {} bytes",
        d.target,
        d.requests,
        d.latency_ms.avg,
        d.latency_ms.p99,
        d.bytes_sent.saturating_add(d.bytes_received),
    );
    if d.errors > 0 {
        let _ = write!(line, ", {} errors", d.errors);
    }
    let _ = write!(line, "] {} {}/{}", d.protocol, d.transport, d.port);
    line
}

/// Renders the snapshot as a text map: services with their endpoints, then each client's
/// dependencies as `→ target [N reqs, X ms avg, p99 Y ms, B bytes] protocol transport/port`.
pub fn ascii(snapshot: &TopologySnapshot) -> String {
    // Writing to a String cannot fail.
    let mut out = String::new();
    let _ = writeln!(out, "{HEAVY_RULE}");
    let _ = writeln!(out, "APPLICATION TOPOLOGY MAP");
    let _ = writeln!(out, "{HEAVY_RULE}");
    let _ = writeln!(out);
    let _ = writeln!(out, "Total Services: {}", snapshot.services.len());
    let _ = writeln!(out, "Total Dependencies: {}", snapshot.dependencies.len());
    let _ = writeln!(out);
    let _ = writeln!(out, "SERVICES:");
    let _ = writeln!(out, "{LIGHT_RULE}");
    if snapshot.services.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for service in &snapshot.services {
        let _ = writeln!(
            out,
            "  • {} ({})",
            service.name,
            service.service_type.as_str()
        );
        for endpoint in &service.endpoints {
            let _ = writeln!(
                out,
                "    - {} [{}]",
                endpoint_text(&endpoint.address, endpoint.port),
                endpoint.protocol
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "DEPENDENCIES:");
    let _ = writeln!(out, "{LIGHT_RULE}");
    if snapshot.dependencies.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    // Dependencies are sorted by source, so each source's lines are contiguous.
    let mut current_source: Option<&str> = None;
    for dependency in &snapshot.dependencies {
        if current_source != Some(dependency.source.as_str()) {
            if current_source.is_some() {
                let _ = writeln!(out);
            }
            let _ = writeln!(out, "  {}", dependency.source);
            current_source = Some(&dependency.source);
        }
        let _ = writeln!(out, "{}", dependency_line(dependency));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures;

    #[test]
    fn map_lists_services_and_dependency_lines_with_counts() {
        let text = ascii(&fixtures::snapshot());
        assert!(text.starts_with(&format!("{HEAVY_RULE}\nAPPLICATION TOPOLOGY MAP\n")));
        assert!(text.contains("Total Services: 4\n"));
        assert!(text.contains("Total Dependencies: 3\n"));
        assert!(text.contains("  • db (database)\n    - 10.0.0.3:5432 [postgres]\n"));
        assert!(
            text.contains("  • [2001:db8::1]:443 (web_server)\n    - [2001:db8::1]:443 [https]\n")
        );
        assert!(text.contains("  • web (client)\n"));
        assert!(text.contains(
            "  api\n    → [2001:db8::1]:443 [150 reqs, 35.00 ms avg, p99 80.50 ms, 50000 bytes] https tcp/443\n"
        ));
        assert!(text.contains(
            "    → db [150 reqs, 35.00 ms avg, p99 80.50 ms, 50000 bytes, 3 errors] postgres tcp/5432\n"
        ));
        assert!(text.contains("\n\n  web\n    → api [150 reqs,"));
    }

    #[test]
    fn empty_topology_says_so() {
        let mut snapshot = fixtures::snapshot();
        snapshot.services.clear();
        snapshot.dependencies.clear();
        let text = ascii(&snapshot);
        assert!(text.contains("Total Services: 0\n"));
        assert_eq!(text.matches("  (none)").count(), 2);
        assert!(!text.contains('→'));
    }
}
