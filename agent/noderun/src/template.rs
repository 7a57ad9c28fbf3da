//! Placeholders in profile commands, paths and file templates: `{name}`, `{volume:x}`,
//! `{env:X}`, and `{each listen}...{end}` (with `{addr}` / `{addr_url}` inside). Anything
//! else in braces (`{ worker_connections 1024; }`, `${HOME}`) is text.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// Placeholders a profile may use, besides `volume:*`, `env:*` and the loop.
pub(crate) const SCALARS: &[&str] = &[
    "data",
    "run",
    "log",
    "node",
    "network",
    "name",
    "key",
    "port",
    "ports",
    "listen",
    "listen_space",
    "user",
];
const LOOP_VARS: &[&str] = &["addr", "addr_url"];

#[derive(Debug, Default, Clone)]
pub(crate) struct Vars {
    pub scalars: BTreeMap<&'static str, String>,
    pub volumes: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    /// The loop's items (never empty: 0.0.0.0 stands for "no address").
    pub listen: Vec<IpAddr>,
}

#[derive(Debug, PartialEq, Eq)]
enum Tok<'a> {
    Text(&'a str),
    Var(&'a str, Option<&'a str>),
    Each,
    End,
}

fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some('a'..='z')) && c.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

fn is_arg(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn tokens(t: &str) -> Vec<Tok<'_>> {
    let mut out = Vec::new();
    let mut rest = t;
    let mut text_start = 0usize;
    let mut pos = 0usize;
    while let Some(i) = rest.find('{') {
        let open = pos + i;
        let after = &t[open + 1..];
        let Some(close) = after.find('}') else { break };
        let inner = &after[..close];
        let tok = if inner == "each listen" {
            Some(Tok::Each)
        } else if inner == "end" {
            Some(Tok::End)
        } else if let Some((n, a)) = inner.split_once(':') {
            (is_name(n) && is_arg(a)).then_some(Tok::Var(n, Some(a)))
        } else {
            is_name(inner).then_some(Tok::Var(inner, None))
        };
        let next = open + 1 + close + 1;
        match tok {
            Some(tok) => {
                if text_start < open {
                    out.push(Tok::Text(&t[text_start..open]));
                }
                out.push(tok);
                text_start = next;
                pos = next;
            }
            None => pos = open + 1,
        }
        rest = &t[pos..];
    }
    if text_start < t.len() {
        out.push(Tok::Text(&t[text_start..]));
    }
    out
}

/// Checks a profile template: every placeholder known, loops closed and not nested.
pub(crate) fn check(t: &str) -> Result<(), String> {
    let mut in_loop = false;
    for tok in tokens(t) {
        match tok {
            Tok::Text(_) => {}
            Tok::Each if in_loop => return Err("nested {each listen}".into()),
            Tok::Each => in_loop = true,
            Tok::End if !in_loop => return Err("{end} without {each listen}".into()),
            Tok::End => in_loop = false,
            Tok::Var("volume" | "env", Some(_)) => {}
            Tok::Var(n, None) if SCALARS.contains(&n) => {}
            Tok::Var(n, None) if in_loop && LOOP_VARS.contains(&n) => {}
            Tok::Var(n, a) => {
                let shown = match a {
                    Some(a) => format!("{{{n}:{a}}}"),
                    None => format!("{{{n}}}"),
                };
                return Err(format!(
                    "unknown placeholder {shown} (known: {}, volume:NAME, env:NAME, \
                     {{each listen}}...{{end}} with addr, addr_url)",
                    SCALARS.join(", ")
                ));
            }
        }
    }
    if in_loop {
        return Err("{each listen} without {end}".into());
    }
    Ok(())
}

fn addr_url(a: &IpAddr) -> String {
    match a {
        IpAddr::V4(v) => v.to_string(),
        IpAddr::V6(v) => format!("[{v}]"),
    }
}

/// Renders `t`. `strict`: an unknown placeholder or a missing volume is an error (profile
/// text); otherwise it stays as written (a node's own command).
pub(crate) fn render(t: &str, v: &Vars, strict: bool) -> Result<String, String> {
    let toks = tokens(t);
    let mut out = String::with_capacity(t.len());
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Each => {
                let end = toks[i + 1..]
                    .iter()
                    .position(|t| *t == Tok::End)
                    .map(|p| i + 1 + p);
                let Some(end) = end else {
                    if strict {
                        return Err("{each listen} without {end}".into());
                    }
                    out.push_str("{each listen}");
                    i += 1;
                    continue;
                };
                for a in &v.listen {
                    for tok in &toks[i + 1..end] {
                        match tok {
                            Tok::Var("addr", None) => out.push_str(&a.to_string()),
                            Tok::Var("addr_url", None) => out.push_str(&addr_url(a)),
                            other => one(other, v, strict, &mut out)?,
                        }
                    }
                }
                i = end + 1;
            }
            tok => {
                one(tok, v, strict, &mut out)?;
                i += 1;
            }
        }
    }
    Ok(out)
}

fn one(tok: &Tok<'_>, v: &Vars, strict: bool, out: &mut String) -> Result<(), String> {
    match tok {
        Tok::Text(s) => out.push_str(s),
        Tok::Var("volume", Some(a)) => match v.volumes.get(*a) {
            Some(d) => out.push_str(d),
            None if strict => return Err(format!("the node has no volume {a:?}")),
            None => {
                out.push_str("{volume:");
                out.push_str(a);
                out.push('}');
            }
        },
        Tok::Var("env", Some(a)) => {
            out.push_str(v.env.get(*a).map_or("", String::as_str));
        }
        Tok::Var(n, None) if v.scalars.contains_key(n) => out.push_str(&v.scalars[n]),
        Tok::Var(n, a) => {
            if strict {
                return Err(format!("unknown placeholder {{{n}}}"));
            }
            out.push('{');
            out.push_str(n);
            if let Some(a) = a {
                out.push(':');
                out.push_str(a);
            }
            out.push('}');
        }
        Tok::Each => out.push_str("{each listen}"),
        Tok::End => out.push_str("{end}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        let mut v = Vars::default();
        v.scalars.insert("data", "/d".into());
        v.scalars.insert("port", "80".into());
        v.volumes.insert("logs".into(), "/v/logs".into());
        v.env.insert("A".into(), "x".into());
        v.listen = vec!["198.18.0.2".parse().unwrap(), "fd00::2".parse().unwrap()];
        v
    }

    #[test]
    fn renders_placeholders_and_leaves_braces_alone() {
        let v = vars();
        let out = render(
            "events { worker_connections 1; } root {data}; ${HOME} {volume:logs} {env:A}{env:B}",
            &v,
            true,
        )
        .unwrap();
        assert_eq!(
            out,
            "events { worker_connections 1; } root /d; ${HOME} /v/logs x"
        );
    }

    #[test]
    fn loop_repeats_per_address() {
        let out = render(
            "{each listen}listen {addr_url}:{port};\n{end}done",
            &vars(),
            true,
        )
        .unwrap();
        assert_eq!(out, "listen 198.18.0.2:80;\nlisten [fd00::2]:80;\ndone");
    }

    #[test]
    fn strict_rejects_unknown_lenient_keeps_it() {
        assert!(render("{nope}", &vars(), true).is_err());
        assert!(render("{volume:none}", &vars(), true).is_err());
        assert_eq!(
            render("{nope} {volume:none}", &vars(), false).unwrap(),
            "{nope} {volume:none}"
        );
    }

    #[test]
    fn check_validates() {
        assert!(check("{data} {each listen}{addr}{end} {volume:x}").is_ok());
        assert!(check("{addr}").is_err());
        assert!(check("{each listen}").is_err());
        assert!(check("{dta}").unwrap_err().contains("{dta}"));
    }
}
