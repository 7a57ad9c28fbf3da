//! The canonical text of a network (`weft tdl fmt`).

use std::fmt::Write;

use crate::model::{Command, Network, NodeType};
use crate::units::{format_bits, format_bytes, format_cpu};

/// The canonical TDL of `net`: fixed key order, two-space indentation, every node written
/// out in full (defaults and kinds are already merged into the nodes, so the text has
/// neither), `type` always given, connections and security in canonical form and order.
/// [`crate::parse()`] of the result gives back `net`.
pub fn format(net: &Network) -> String {
    let mut o = String::new();
    let _ = write_network(&mut o, net);
    o
}

fn write_network(o: &mut String, net: &Network) -> std::fmt::Result {
    writeln!(o, "network: {}", scalar(&net.name))?;
    if let Some(v) = net.vni {
        writeln!(o, "vni: {v}")?;
    }
    if let Some(v) = net.vlan {
        writeln!(o, "vlan: {v}")?;
    }
    if let Some(v) = net.mtu {
        writeln!(o, "mtu: {v}")?;
    }
    writeln!(o, "addressing:")?;
    writeln!(o, "  shards: {}", scalar(&net.addressing.shards))?;
    let fams: Vec<String> = net
        .addressing
        .families
        .iter()
        .map(|f| f.to_string())
        .collect();
    writeln!(o, "  families: [{}]", fams.join(", "))?;
    writeln!(o, "nodes:")?;
    for (name, n) in &net.nodes {
        writeln!(o, "  {}:", scalar(name))?;
        let t = match n.node_type {
            NodeType::Vm => "vm",
            NodeType::Container => "container",
            NodeType::Service => "service",
        };
        writeln!(o, "    type: {t}")?;
        if let Some(i) = &n.image {
            writeln!(o, "    image: {}", scalar(i))?;
        }
        if let Some(c) = n.cpu_millis {
            writeln!(o, "    cpu: {}", format_cpu(c))?;
        }
        if let Some(m) = n.memory_bytes {
            writeln!(o, "    memory: {}", format_bytes(m))?;
        }
        if !n.ports.is_empty() {
            writeln!(o, "    ports: [{}]", join_ports(&n.ports))?;
        }
        match &n.command {
            None => {}
            Some(Command::Shell(s)) => writeln!(o, "    command: {}", scalar(s))?,
            Some(Command::Exec(args)) => {
                writeln!(o, "    command:")?;
                for a in args {
                    writeln!(o, "      - {}", scalar(a))?;
                }
            }
        }
        if !n.volumes.is_empty() {
            writeln!(o, "    volumes:")?;
            for v in &n.volumes {
                match v.size_bytes {
                    None => writeln!(o, "      - {}", scalar(&format!("{}:{}", v.name, v.path)))?,
                    Some(size) => {
                        writeln!(o, "      - name: {}", scalar(&v.name))?;
                        writeln!(o, "        path: {}", scalar(&v.path))?;
                        writeln!(o, "        size: {}", format_bytes(size))?;
                    }
                }
            }
        }
        if let Some(h) = &n.host {
            writeln!(o, "    host: {}", scalar(h))?;
        }
        if !n.addresses.is_empty() {
            writeln!(o, "    addresses:")?;
            for a in &n.addresses {
                writeln!(o, "      - {}", scalar(&a.to_string()))?;
            }
        }
        if !n.env.is_empty() {
            writeln!(o, "    env:")?;
            for (k, v) in &n.env {
                writeln!(o, "      {k}: {}", scalar(v))?;
            }
        }
    }
    if !net.connections.is_empty() {
        writeln!(o, "connections:")?;
        for c in &net.connections {
            writeln!(o, "  {}:", c.key())?;
            writeln!(o, "    protocol: {}", c.protocol)?;
            if !c.ports.is_empty() {
                writeln!(o, "    ports: [{}]", join_ports(&c.ports))?;
            }
            if let Some(b) = c.bandwidth_bps {
                writeln!(o, "    bandwidth: {}", format_bits(b))?;
            }
        }
    }
    if !net.security.is_empty() {
        writeln!(o, "security:")?;
        for s in &net.security {
            writeln!(o, "  {}:", s.key())?;
            let rules: Vec<String> = s.rules.iter().map(ToString::to_string).collect();
            writeln!(o, "    firewall_rule: [{}]", rules.join(", "))?;
        }
    }
    Ok(())
}

fn join_ports(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `s` plain when that is unambiguous (letters, digits and a few safe punctuation marks,
/// not starting with an indicator, not a YAML null/bool/number look-alike), otherwise
/// double-quoted with escapes.
pub(crate) fn scalar(s: &str) -> String {
    let safe_char = |c: char| c.is_ascii_alphanumeric() || "_./:@+=-".contains(c);
    let looks_typed = matches!(
        s.to_ascii_lowercase().as_str(),
        "" | "~" | "null" | "true" | "false" | "yes" | "no" | "on" | "off" | ".inf" | ".nan"
    ) || s.parse::<f64>().is_ok()
        // Dates, times, 1_000 and the like, which other YAML readers may type; a `/`
        // (CIDRs, paths) rules those out.
        || (s.starts_with(|c: char| c.is_ascii_digit() || c == '.' || c == '+' || c == '-')
            && s.chars().any(|c| c.is_ascii_digit())
            && !s.chars().any(|c| c.is_ascii_alphabetic() || c == '/'));
    let plain = !looks_typed
        && s.chars().all(safe_char)
        && s.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '/' || c == '.')
        && !s.ends_with(':')
        && !s.contains("://");
    if plain {
        return s.to_owned();
    }
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\t' => q.push_str("\\t"),
            '\r' => q.push_str("\\r"),
            c if (c as u32) < 0x20
                || c == '\u{7f}'
                || c == '\u{85}'
                || c == '\u{feff}'
                || ('\u{80}'..='\u{9f}').contains(&c)
                || c == '\u{2028}'
                || c == '\u{2029}' =>
            {
                let _ = write!(q, "\\u{:04x}", c as u32);
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml;

    #[test]
    fn scalars_read_back_as_written() {
        for s in [
            "postgres:latest",
            "ubuntu_latest",
            "nginx",
            "123",
            "1.5",
            "true",
            "null",
            "",
            " x",
            "a: b",
            "#x",
            "- x",
            "[x]",
            "{x}",
            "x # y",
            "'q'",
            "\"q\"",
            "a\\b",
            "tab\there",
            "line\nbreak",
            "\u{7}bell",
            "üñï",
            "http://x",
            "x:",
            "-1",
            "0x10",
            "*a",
            "&a",
            "!tag",
            "%x",
            "@x",
            "`x",
            "10.0.0.5/24",
            "fd00::1/64",
            "::1/128",
            "\u{2028}",
            "\u{85}",
            "é\u{9f}",
        ] {
            let text = format!("k: {}\n", scalar(s));
            let node = yaml::load(&text)
                .unwrap_or_else(|e| panic!("{s:?} -> {text:?}: {e:?}"))
                .unwrap();
            let yaml::Value::Map(e) = &node.value else {
                panic!("{text}")
            };
            assert_eq!(e[0].1.str(), Some(s), "{s:?} written as {text:?}");
        }
        assert_eq!(scalar("postgres:latest"), "postgres:latest");
        assert_eq!(scalar("123"), "\"123\"");
        assert_eq!(scalar("2024-01-01"), "\"2024-01-01\"");
        assert_eq!(scalar("10.0.0.5/24"), "10.0.0.5/24");
    }
}
