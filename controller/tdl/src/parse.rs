//! From text to a validated [`Network`]: every error of the file is collected.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use crate::model::{
    Addressing, Cidr, Command, Connection, Direction, Family, FirewallRule, Network, Node,
    NodeType, Protocol, Security, Volume,
};
use crate::units;
use crate::yaml::{self, Node as Y, Pos, Value, clip};
use crate::{Error, Errors};

/// Largest file accepted.
pub const MAX_BYTES: usize = 1 << 20;
/// Longest node, network and volume name (they become namespace and interface names).
pub const MAX_NAME: usize = 48;

pub(crate) const TOP_KEYS: &[&str] = &[
    "network",
    "vni",
    "vlan",
    "mtu",
    "addressing",
    "defaults",
    "kinds",
    "nodes",
    "connections",
    "security",
];
pub(crate) const NODE_KEYS: &[&str] = &[
    "type",
    "image",
    "cpu",
    "memory",
    "ports",
    "command",
    "volumes",
    "host",
    "addresses",
    "env",
    "kind",
];
const KIND_KEYS: &[&str] = &[
    "type",
    "image",
    "cpu",
    "memory",
    "ports",
    "command",
    "volumes",
    "host",
    "addresses",
    "env",
    "inherits",
];
const CONNECTION_KEYS: &[&str] = &["protocol", "port", "ports", "bandwidth"];
const SECURITY_KEYS: &[&str] = &["firewall_rule"];
const ADDRESSING_KEYS: &[&str] = &["shards", "families"];
const VOLUME_KEYS: &[&str] = &["name", "path", "size"];

struct Cx<'f> {
    file: &'f str,
    errors: Vec<Error>,
}

impl Cx<'_> {
    fn err(&mut self, pos: Pos, message: impl Into<String>) {
        self.errors.push(Error {
            file: self.file.to_owned(),
            line: pos.line,
            column: pos.col,
            message: message.into(),
        });
    }
}

/// See [`crate::parse()`].
pub fn parse(file_name: &str, text: &str) -> Result<Network, Errors> {
    let mut cx = Cx {
        file: file_name,
        errors: Vec::new(),
    };
    let start = Pos { line: 1, col: 1 };
    let net = if text.len() > MAX_BYTES {
        cx.err(
            start,
            format!(
                "the file is {} bytes, more than the 1 MiB ({MAX_BYTES} bytes) a TDL file may have; split the network or share node fields with defaults: and kinds:",
                text.len()
            ),
        );
        None
    } else {
        match yaml::load(text) {
            Err((pos, msg)) => {
                cx.err(pos, msg);
                None
            }
            Ok(None) => {
                cx.err(start, EMPTY);
                None
            }
            Ok(Some(root)) => network(&mut cx, &root),
        }
    };
    let mut errors = cx.errors;
    match net {
        Some(n) if errors.is_empty() => Ok(n),
        _ => {
            if errors.is_empty() {
                // Unreachable by construction; never return Err with nothing in it.
                errors.push(Error {
                    file: file_name.to_owned(),
                    line: 1,
                    column: 1,
                    message: "the network is not valid".to_owned(),
                });
            }
            errors.sort_by(|a, b| {
                (a.line, a.column, &a.message).cmp(&(b.line, b.column, &b.message))
            });
            errors.dedup();
            Err(Errors(errors))
        }
    }
}

const EMPTY: &str =
    "the file is empty; a TDL file needs at least `network: <name>` and `nodes:` with one node";

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate within an edit distance of 2 (1 for short words).
fn suggest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    if word.len() > 64 {
        return None;
    }
    let max = if word.chars().count() <= 3 { 1 } else { 2 };
    candidates
        .into_iter()
        .map(|c| (distance(word, c), c))
        .filter(|(d, _)| *d <= max)
        .min()
        .map(|(_, c)| c)
}

/// `a, b, c` of names given sorted and unique (at most 12, then "..."); reads 13 at most.
fn list<'a>(sorted: impl IntoIterator<Item = &'a str>) -> String {
    let mut v: Vec<&str> = sorted.into_iter().take(13).collect();
    let more = v.len() > 12;
    v.truncate(12);
    let mut s = v.join(", ");
    if more {
        s.push_str(", ...");
    }
    s
}

/// A node, network or volume name: 1..=48 of `[a-z0-9_-]`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<(), String> {
    let rule = format!(
        "use 1 to {MAX_NAME} of a-z, 0-9, _ and -, starting with a letter or digit (names become namespace and interface names)"
    );
    if name.is_empty() {
        return Err(format!("the name is empty; {rule}"));
    }
    if name.chars().count() > MAX_NAME {
        return Err(format!(
            "{:?} is longer than {MAX_NAME} characters; {rule}",
            clip(name)
        ));
    }
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    if let Some(c) = name.chars().find(|c| !ok(*c)) {
        let lower = name.to_ascii_lowercase();
        let hint = if lower.chars().all(ok) {
            format!("; did you mean {lower:?}?")
        } else {
            String::new()
        };
        return Err(format!("{name:?} contains {c:?}; {rule}{hint}"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!("{name:?} starts with {:?}; {rule}", &name[..1]));
    }
    Ok(())
}

/// A host or shard network id: 1..=128 of `[A-Za-z0-9._-]`.
fn check_id(id: &str) -> Result<(), String> {
    let rule = "use 1 to 128 of letters, digits, ., _ and -";
    if id.is_empty() || id.len() > 128 {
        return Err(format!(
            "{:?} is empty or longer than 128 characters; {rule}",
            clip(id)
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("{:?} contains {c:?}; {rule}", clip(id)));
    }
    Ok(())
}

/// A mapping's entries (key text, key node, value); null is an empty mapping. Reports a
/// value that is not a mapping, keys that are not scalars and duplicate keys (`dup` says
/// what is duplicated, given the key and the first position).
fn entries<'y>(
    cx: &mut Cx,
    node: &'y Y,
    what: &str,
    dup: &dyn Fn(&str, Pos) -> String,
) -> Vec<(&'y str, &'y Y, &'y Y)> {
    if node.is_null() {
        return Vec::new();
    }
    let Value::Map(map) = &node.value else {
        cx.err(
            node.pos,
            format!(
                "{what} must be a mapping (name: value lines), found {}",
                node.describe()
            ),
        );
        return Vec::new();
    };
    let mut seen: HashMap<&str, Pos> = HashMap::new();
    let mut out = Vec::new();
    for (k, v) in map {
        let Value::Scalar { text, .. } = &k.value else {
            cx.err(
                k.pos,
                format!("{what}: a key must be a plain name, found {}", k.describe()),
            );
            continue;
        };
        if let Some(first) = seen.get(text.as_str()) {
            cx.err(k.pos, dup(text, *first));
            continue;
        }
        seen.insert(text, k.pos);
        out.push((text.as_str(), k, v));
    }
    out
}

/// [`entries`] for a mapping of fixed keys: unknown keys are reported (did you mean).
fn fields<'y>(
    cx: &mut Cx,
    node: &'y Y,
    what: &str,
    allowed: &[&str],
) -> Vec<(&'y str, &'y Y, &'y Y)> {
    let all = entries(cx, node, what, &|k, first| {
        format!(
            "duplicate key {k:?} in {what} (first at line {}); keep one",
            first.line
        )
    });
    let mut out = Vec::new();
    for (k, kn, v) in all {
        if allowed.contains(&k) {
            out.push((k, kn, v));
            continue;
        }
        let msg = match suggest(k, allowed.iter().copied()) {
            Some(s) => format!("unknown key {:?} in {what}; did you mean {s:?}?", clip(k)),
            None => format!(
                "unknown key {:?} in {what}; the keys are: {}",
                clip(k),
                allowed.join(", ")
            ),
        };
        let msg = if k == "kind" && allowed.contains(&"inherits") {
            format!("{msg} (a kind names the kind it extends with inherits:)")
        } else {
            msg
        };
        cx.err(kn.pos, msg);
    }
    out
}

fn string(cx: &mut Cx, v: &Y, what: &str) -> Option<String> {
    match v.str() {
        Some(s) => Some(s.to_owned()),
        None => {
            cx.err(
                v.pos,
                format!("{what} must be a string, found {}", v.describe()),
            );
            None
        }
    }
}

fn int(cx: &mut Cx, v: &Y, what: &str, lo: u64, hi: u64) -> Option<u64> {
    let Some(s) = v.str() else {
        cx.err(
            v.pos,
            format!(
                "{what} must be a whole number from {lo} to {hi}, found {}",
                v.describe()
            ),
        );
        return None;
    };
    let digits = !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    match s.parse::<u64>() {
        Ok(n) if digits && (lo..=hi).contains(&n) => Some(n),
        Ok(n) if digits => {
            cx.err(
                v.pos,
                format!("{what} {n} is out of range; use a number from {lo} to {hi}"),
            );
            None
        }
        _ => {
            cx.err(
                v.pos,
                format!(
                    "{what} must be a whole number from {lo} to {hi}, found {:?}",
                    clip(s)
                ),
            );
            None
        }
    }
}

fn port(cx: &mut Cx, v: &Y, what: &str) -> Option<u16> {
    int(cx, v, &format!("{what}: port"), 1, 65535).map(|p| p as u16)
}

/// One port or a list of them: sorted, without duplicates; `None` if any is bad.
fn ports(cx: &mut Cx, v: &Y, what: &str) -> Option<Vec<u16>> {
    let items: Vec<&Y> = match &v.value {
        Value::Seq(items) => items.iter().collect(),
        Value::Scalar { .. } if !v.is_null() => vec![v],
        _ => {
            cx.err(
                v.pos,
                format!(
                    "{what}: ports must be a list such as [80, 443], found {}",
                    v.describe()
                ),
            );
            return None;
        }
    };
    let mut out = Vec::new();
    let mut ok = true;
    for item in items {
        match port(cx, item, what) {
            Some(p) => out.push(p),
            None => ok = false,
        }
    }
    out.sort_unstable();
    out.dedup();
    ok.then_some(out)
}

/// Node fields before merging: set ones only.
#[derive(Clone, Debug, Default)]
struct Partial {
    node_type: Option<NodeType>,
    image: Option<String>,
    cpu: Option<u32>,
    memory: Option<u64>,
    ports: Option<Vec<u16>>,
    command: Option<Command>,
    volumes: Option<Vec<Volume>>,
    host: Option<String>,
    addresses: Option<Vec<(Cidr, Pos)>>,
    env: Option<BTreeMap<String, String>>,
    kind: Option<(String, Pos)>,
}

/// `over`'s fields win; lists replace, `env` merges.
fn merge(base: &Partial, over: &Partial) -> Partial {
    let env = match (&base.env, &over.env) {
        (Some(b), Some(o)) => {
            let mut m = b.clone();
            m.extend(o.iter().map(|(k, v)| (k.clone(), v.clone())));
            Some(m)
        }
        (b, o) => o.clone().or_else(|| b.clone()),
    };
    Partial {
        node_type: over.node_type.or(base.node_type),
        image: over.image.clone().or_else(|| base.image.clone()),
        cpu: over.cpu.or(base.cpu),
        memory: over.memory.or(base.memory),
        ports: over.ports.clone().or_else(|| base.ports.clone()),
        command: over.command.clone().or_else(|| base.command.clone()),
        volumes: over.volumes.clone().or_else(|| base.volumes.clone()),
        host: over.host.clone().or_else(|| base.host.clone()),
        addresses: over.addresses.clone().or_else(|| base.addresses.clone()),
        env,
        kind: over.kind.clone().or_else(|| base.kind.clone()),
    }
}

/// The node fields of `node` (a node, `defaults` or a kind); also `inherits` for kinds.
fn partial(
    cx: &mut Cx,
    node: &Y,
    what: &str,
    allowed: &[&str],
) -> (Partial, Option<(String, Pos)>) {
    let mut p = Partial::default();
    let mut inherits = None;
    for (k, _, v) in fields(cx, node, what, allowed) {
        match k {
            "type" => {
                if let Some(s) = string(cx, v, &format!("{what}: type")) {
                    p.node_type = match s.as_str() {
                        "vm" => Some(NodeType::Vm),
                        "container" => Some(NodeType::Container),
                        "service" => Some(NodeType::Service),
                        _ => {
                            cx.err(
                                v.pos,
                                format!(
                                    "{what}: unknown type {:?}; use vm, container or service",
                                    clip(&s)
                                ),
                            );
                            None
                        }
                    };
                }
            }
            "image" => {
                if let Some(s) = string(cx, v, &format!("{what}: image")) {
                    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                        cx.err(v.pos, format!("{what}: image {:?} is empty or has spaces; write an image name such as postgres:16", clip(&s)));
                    } else {
                        p.image = Some(s);
                    }
                }
            }
            "cpu" => {
                if let Some(s) = string(cx, v, &format!("{what}: cpu")) {
                    match units::parse_cpu(&s) {
                        Ok(m) => p.cpu = Some(m),
                        Err(e) => cx.err(v.pos, format!("{what}: cpu {e}")),
                    }
                }
            }
            "memory" => {
                if let Some(s) = string(cx, v, &format!("{what}: memory")) {
                    match units::parse_bytes(&s) {
                        Ok(b) => p.memory = Some(b),
                        Err(e) => cx.err(v.pos, format!("{what}: memory {e}")),
                    }
                }
            }
            "ports" => p.ports = ports(cx, v, what),
            "command" => p.command = command(cx, v, what),
            "volumes" => p.volumes = volumes(cx, v, what),
            "host" => {
                if let Some(s) = string(cx, v, &format!("{what}: host")) {
                    match check_id(&s) {
                        Ok(()) => p.host = Some(s),
                        Err(e) => cx.err(v.pos, format!("{what}: host {e}")),
                    }
                }
            }
            "addresses" => p.addresses = addresses(cx, v, what),
            "env" => p.env = env(cx, v, what),
            "kind" | "inherits" => {
                if let Some(s) = string(cx, v, &format!("{what}: {k}")) {
                    if k == "kind" {
                        p.kind = Some((s, v.pos));
                    } else {
                        inherits = Some((s, v.pos));
                    }
                }
            }
            _ => {}
        }
    }
    (p, inherits)
}

fn command(cx: &mut Cx, v: &Y, what: &str) -> Option<Command> {
    match &v.value {
        Value::Seq(items) => {
            let mut out = Vec::new();
            for item in items {
                out.push(string(cx, item, &format!("{what}: a command argument"))?);
            }
            if out.first().is_none_or(|s| s.is_empty()) {
                cx.err(v.pos, format!("{what}: command is an empty list or starts with an empty program; write the program first, e.g. [nginx, -g, \"daemon off;\"]"));
                return None;
            }
            Some(Command::Exec(out))
        }
        _ => {
            let s = string(
                cx,
                v,
                &format!("{what}: command (a string or a list of strings)"),
            )?;
            if s.trim().is_empty() {
                cx.err(
                    v.pos,
                    format!(
                        "{what}: command is empty; write what the node runs, or remove the key"
                    ),
                );
                return None;
            }
            Some(Command::Shell(s))
        }
    }
}

fn volume_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.split('/').any(|c| c == "..") || path.contains('\0') {
        return Err(format!(
            "path {:?} must be absolute (start with /) and have no .. component",
            clip(path)
        ));
    }
    Ok(())
}

fn volumes(cx: &mut Cx, v: &Y, what: &str) -> Option<Vec<Volume>> {
    let Value::Seq(items) = &v.value else {
        cx.err(
            v.pos,
            format!(
                "{what}: volumes must be a list of name:/path or {{name, path, size}}, found {}",
                v.describe()
            ),
        );
        return None;
    };
    let mut out: Vec<Volume> = Vec::new();
    let mut names: HashSet<String> = HashSet::new();
    let mut ok = true;
    for item in items {
        let vol = if let Value::Map(_) = &item.value {
            let mut name = None;
            let mut path = None;
            let mut size = None;
            let fs = fields(cx, item, &format!("a volume of {what}"), VOLUME_KEYS);
            for (k, _, fv) in fs {
                match k {
                    "name" => {
                        name = string(cx, fv, &format!("{what}: volume name")).map(|s| (s, fv.pos))
                    }
                    "path" => {
                        path = string(cx, fv, &format!("{what}: volume path")).map(|s| (s, fv.pos))
                    }
                    "size" => match string(cx, fv, &format!("{what}: volume size"))
                        .map(|s| units::parse_bytes(&s))
                    {
                        Some(Ok(b)) => size = Some(b),
                        Some(Err(e)) => {
                            cx.err(fv.pos, format!("{what}: volume size {e}"));
                            ok = false;
                        }
                        None => ok = false,
                    },
                    _ => {}
                }
            }
            match (name, path) {
                (Some((n, np)), Some((p, pp))) => Some((n, np, p, pp, size)),
                _ => {
                    cx.err(item.pos, format!("{what}: a volume needs name: and path:"));
                    None
                }
            }
        } else if let Some(s) = item.str() {
            match s.split_once(':') {
                Some((n, p)) => Some((n.to_owned(), item.pos, p.to_owned(), item.pos, None)),
                None => {
                    cx.err(item.pos, format!("{what}: volume {:?} is not name:/path/in/node; write e.g. data:/var/lib/postgresql", clip(s)));
                    None
                }
            }
        } else {
            cx.err(
                item.pos,
                format!(
                    "{what}: a volume must be name:/path or a mapping with name and path, found {}",
                    item.describe()
                ),
            );
            None
        };
        let Some((name, npos, path, ppos, size_bytes)) = vol else {
            ok = false;
            continue;
        };
        if let Err(e) = check_name(&name) {
            cx.err(npos, format!("{what}: volume name {e}"));
            ok = false;
        } else if !names.insert(name.clone()) {
            cx.err(
                npos,
                format!("{what}: volume {name:?} is listed twice; give each volume its own name"),
            );
            ok = false;
        }
        if let Err(e) = volume_path(&path) {
            cx.err(ppos, format!("{what}: volume {e}"));
            ok = false;
        }
        out.push(Volume {
            name,
            path,
            size_bytes,
        });
    }
    ok.then_some(out)
}

fn addresses(cx: &mut Cx, v: &Y, what: &str) -> Option<Vec<(Cidr, Pos)>> {
    let items: Vec<&Y> = match &v.value {
        Value::Seq(items) => items.iter().collect(),
        Value::Scalar { .. } if !v.is_null() => vec![v],
        _ => {
            cx.err(
                v.pos,
                format!(
                    "{what}: addresses must be a list of CIDRs such as [10.0.0.5/24], found {}",
                    v.describe()
                ),
            );
            return None;
        }
    };
    let mut out: Vec<(Cidr, Pos)> = Vec::new();
    let mut seen: HashSet<IpAddr> = HashSet::new();
    let mut ok = true;
    for item in items {
        let Some(s) = string(cx, item, &format!("{what}: an address")) else {
            ok = false;
            continue;
        };
        match s.parse::<Cidr>() {
            Ok(c) if !seen.insert(c.addr) => {
                cx.err(
                    item.pos,
                    format!("{what}: address {} is listed twice; remove one", c.addr),
                );
                ok = false;
            }
            Ok(c) => out.push((c, item.pos)),
            Err(e) => {
                cx.err(item.pos, format!("{what}: bad address: {e}"));
                ok = false;
            }
        }
    }
    out.sort();
    ok.then_some(out)
}

fn env(cx: &mut Cx, v: &Y, what: &str) -> Option<BTreeMap<String, String>> {
    let ctx = format!("env of {what}");
    let es = entries(cx, v, &ctx, &|k, first| {
        format!(
            "duplicate variable {k:?} in {ctx} (first at line {}); keep one",
            first.line
        )
    });
    if !v.is_null() && !matches!(v.value, Value::Map(_)) {
        return None;
    }
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (k, kn, val) in es {
        let valid = k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            cx.err(kn.pos, format!("{ctx}: {:?} is not a variable name; use letters, digits and _, not starting with a digit", clip(k)));
            ok = false;
            continue;
        }
        let value = if val.is_null() {
            String::new()
        } else if let Some(s) = val.str() {
            s.to_owned()
        } else {
            cx.err(
                val.pos,
                format!("{ctx}: {k} must be a string, found {}", val.describe()),
            );
            ok = false;
            continue;
        };
        out.insert(k.to_owned(), value);
    }
    ok.then_some(out)
}

/// A connection or security key as written.
struct PairKey<'a> {
    a: &'a str,
    a_off: usize,
    b: &'a str,
    b_off: usize,
    /// `<->`, `->` or `<-`.
    arrow: &'static str,
}

impl PairKey<'_> {
    /// (from, to, direction) in canonical form.
    fn canonical(&self) -> (String, String, Direction) {
        match self.arrow {
            "<->" if self.a <= self.b => (self.a.to_owned(), self.b.to_owned(), Direction::Both),
            "<->" => (self.b.to_owned(), self.a.to_owned(), Direction::Both),
            "->" => (self.a.to_owned(), self.b.to_owned(), Direction::Forward),
            _ => (self.b.to_owned(), self.a.to_owned(), Direction::Forward),
        }
    }
}

fn parse_pair(text: &str) -> Option<PairKey<'_>> {
    let (at, arrow) = ["<->", "->", "<-"]
        .iter()
        .find_map(|a| text.find(a).map(|i| (i, *a)))?;
    let left = &text[..at];
    let right = &text[at + arrow.len()..];
    let a = left.trim();
    let b = right.trim();
    if a.is_empty() || b.is_empty() || b.contains("->") || b.contains("<-") {
        return None;
    }
    let a_off = left.len() - left.trim_start().len();
    let b_byte = at + arrow.len() + (right.len() - right.trim_start().len());
    Some(PairKey {
        a,
        a_off: text[..a_off].chars().count(),
        b,
        b_off: text[..b_byte].chars().count(),
        arrow,
    })
}

/// Whether two (from, to, direction) overlap: the same pair with a direction in common.
fn overlaps(x: (&str, &str, Direction), y: (&str, &str, Direction)) -> bool {
    let same_pair = (x.0 == y.0 && x.1 == y.1) || (x.0 == y.1 && x.1 == y.0);
    same_pair && (x.2 == Direction::Both || y.2 == Direction::Both || (x.0 == y.0 && x.1 == y.1))
}

/// The unordered pair of two names, for indexing connections and rules by pair.
fn unordered(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

fn network(cx: &mut Cx, root: &Y) -> Option<Network> {
    if root.is_null() {
        cx.err(root.pos, EMPTY);
        return None;
    }
    if !matches!(root.value, Value::Map(_)) {
        cx.err(
            root.pos,
            format!(
                "the file must be a mapping with network:, nodes: and so on, found {}",
                root.describe()
            ),
        );
        return None;
    }
    let top: HashMap<&str, (&Y, &Y)> = fields(cx, root, "the file (top level)", TOP_KEYS)
        .into_iter()
        .map(|(k, kn, v)| (k, (kn, v)))
        .collect();

    // network:
    let name = match top.get("network") {
        None => {
            cx.err(root.pos, "missing `network: <name>`; add it as the first line, e.g. network: production_us_east");
            None
        }
        Some((_, v)) => string(cx, v, "network").and_then(|n| match check_name(&n) {
            Ok(()) => Some(n),
            Err(e) => {
                cx.err(v.pos, format!("network name {e}"));
                None
            }
        }),
    };
    let vni = top
        .get("vni")
        .and_then(|(_, v)| int(cx, v, "vni", 1, 16_777_215))
        .map(|n| n as u32);
    let vlan = top
        .get("vlan")
        .and_then(|(_, v)| int(cx, v, "vlan", 1, 4094))
        .map(|n| n as u16);
    let mtu = top
        .get("mtu")
        .and_then(|(_, v)| int(cx, v, "mtu", 576, 9216))
        .map(|n| n as u16);

    // addressing:
    let mut shards = None;
    let mut families = vec![Family::Ipv4];
    if let Some((_, v)) = top.get("addressing") {
        for (k, _, fv) in fields(cx, v, "addressing", ADDRESSING_KEYS) {
            if k == "shards" {
                if let Some(s) = string(cx, fv, "addressing: shards") {
                    match check_id(&s) {
                        Ok(()) => shards = Some(s),
                        Err(e) => cx.err(fv.pos, format!("addressing: shards {e}")),
                    }
                }
            } else {
                let items: Vec<&Y> = match &fv.value {
                    Value::Seq(items) => items.iter().collect(),
                    Value::Scalar { .. } if !fv.is_null() => vec![fv],
                    _ => {
                        cx.err(fv.pos, format!("addressing: families must be a list such as [ipv4, ipv6], found {}", fv.describe()));
                        continue;
                    }
                };
                let mut fams = Vec::new();
                let given = items.len();
                for item in items {
                    match item.str() {
                        Some("ipv4") => fams.push(Family::Ipv4),
                        Some("ipv6") => fams.push(Family::Ipv6),
                        Some(s) => cx.err(
                            item.pos,
                            format!(
                                "addressing: unknown family {:?}; use ipv4 and/or ipv6",
                                clip(s)
                            ),
                        ),
                        None => cx.err(
                            item.pos,
                            format!(
                                "addressing: a family must be ipv4 or ipv6, found {}",
                                item.describe()
                            ),
                        ),
                    }
                }
                fams.sort();
                fams.dedup();
                if given == 0 {
                    cx.err(
                        fv.pos,
                        "addressing: families is empty; list ipv4, ipv6 or both",
                    );
                } else {
                    families = fams;
                }
            }
        }
    }
    if let (Some(m), Some((_, v))) = (mtu, top.get("mtu"))
        && m < 1280
        && families.contains(&Family::Ipv6)
    {
        cx.err(v.pos, format!("mtu {m} is below IPv6's minimum of 1280; raise it or drop ipv6 from addressing: families"));
    }

    // defaults: and kinds:
    let defaults = match top.get("defaults") {
        Some((_, v)) => partial(cx, v, "defaults", NODE_KEYS).0,
        None => Partial::default(),
    };
    let kinds = kinds(cx, top.get("kinds").map(|(_, v)| *v));
    if let Some((k, pos)) = &defaults.kind
        && !kinds.contains_key(k.as_str())
    {
        cx.err(*pos, unknown_kind("defaults", k, &kinds));
    }

    // nodes:
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut declared: BTreeSet<&str> = BTreeSet::new();
    let mut address_of: HashMap<IpAddr, String> = HashMap::new();
    match top.get("nodes") {
        None => cx.err(root.pos, "missing `nodes:`; list the network's nodes under nodes:, e.g.\n  nodes:\n    web:\n      image: nginx"),
        Some((kn, v)) => {
            let es = entries(cx, v, "nodes", &|k, first| {
                format!("duplicate node name {k:?} (first defined at line {}); node names must be unique, rename one", first.line)
            });
            if es.is_empty() && (v.is_null() || matches!(&v.value, Value::Map(m) if m.is_empty())) {
                cx.err(kn.pos, "nodes: is empty; a network needs at least one node");
            }
            for (name, npos, v) in es {
                declared.insert(name);
                let what = format!("node {:?}", clip(name));
                let valid = match check_name(name) {
                    Ok(()) => true,
                    Err(e) => {
                        cx.err(npos.pos, format!("node name {e}"));
                        false
                    }
                };
                let (own, _) = partial(cx, v, &what, NODE_KEYS);
                let mut merged = defaults.clone();
                let own_kind = own.kind.is_some();
                if let Some((k, pos)) = own.kind.clone().or_else(|| defaults.kind.clone()) {
                    match kinds.get(k.as_str()) {
                        Some(kp) => merged = merge(&merged, kp),
                        None if own_kind => cx.err(pos, unknown_kind(&what, &k, &kinds)),
                        None => {}
                    }
                }
                let p = merge(&merged, &own);
                for (c, pos) in p.addresses.iter().flatten() {
                    if !families.contains(&c.family()) {
                        let fam = c.family();
                        cx.err(*pos, format!(
                            "{what}: address {c} is {fam} but addressing: families is [{}]; add {fam} to families or remove the address",
                            families.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(", ")
                        ));
                    } else if let Some(other) = address_of.get(&c.addr) {
                        cx.err(*pos, format!("{what}: address {} is also node {other:?}'s; give each node its own address", c.addr));
                    } else {
                        address_of.insert(c.addr, name.to_owned());
                    }
                }
                if valid {
                    nodes.insert(name.to_owned(), finish_node(p));
                }
            }
        }
    }

    // connections:
    let mut conns: Vec<(Connection, Pos, String)> = Vec::new();
    let mut conn_pairs: HashMap<(String, String), Vec<usize>> = HashMap::new();
    if let Some((_, v)) = top.get("connections") {
        let es = entries(cx, v, "connections", &|k, first| {
            format!(
                "duplicate connection {k:?} (first at line {}); keep one",
                first.line
            )
        });
        for (k, kn, v) in es {
            let Some((from, to, direction)) = pair(cx, "connection", k, kn, &declared) else {
                // Still look at the fields, for their errors.
                connection_fields(cx, v, k);
                continue;
            };
            let Some((protocol, ports, bandwidth_bps)) = connection_fields(cx, v, k) else {
                continue;
            };
            let same_pair = conn_pairs.entry(unordered(&from, &to)).or_default();
            if let Some((_, p, text)) = same_pair
                .iter()
                .map(|&i| &conns[i])
                .find(|(c, _, _)| overlaps((&from, &to, direction), (&c.from, &c.to, c.direction)))
            {
                cx.err(kn.pos, format!(
                    "connection {k:?} duplicates {text:?} (line {}); a pair of nodes has one connection (or one -> each way): merge them",
                    p.line
                ));
                continue;
            }
            same_pair.push(conns.len());
            conns.push((
                Connection {
                    from,
                    to,
                    direction,
                    protocol,
                    ports,
                    bandwidth_bps,
                },
                kn.pos,
                k.to_owned(),
            ));
        }
    }

    // security:
    let mut security: Vec<(Security, Pos, String)> = Vec::new();
    let mut security_pairs: HashMap<(String, String), Vec<usize>> = HashMap::new();
    if let Some((_, v)) = top.get("security") {
        let es = entries(cx, v, "security", &|k, first| {
            format!(
                "duplicate security rule {k:?} (first at line {}); keep one",
                first.line
            )
        });
        for (k, kn, v) in es {
            let what = format!("security {:?}", clip(k));
            let rules = security_fields(cx, v, &what, kn.pos);
            let Some((from, to, direction)) = pair(cx, "security", k, kn, &declared) else {
                continue;
            };
            let pair_key = unordered(&from, &to);
            let on_pair: Vec<&Connection> = conn_pairs
                .get(&pair_key)
                .into_iter()
                .flatten()
                .map(|&i| &conns[i].0)
                .collect();
            let compatible = on_pair.iter().any(|c| match direction {
                Direction::Both => c.direction == Direction::Both,
                Direction::Forward => {
                    c.direction == Direction::Both || (c.from == from && c.to == to)
                }
            });
            if on_pair.is_empty() {
                cx.err(kn.pos, format!(
                    "{what}: there is no connection between {from} and {to}; add \"{from} {} {to}\" under connections: or remove this rule",
                    direction.arrow()
                ));
                continue;
            }
            if !compatible {
                let written: Vec<String> = on_pair.iter().map(|c| c.key()).collect();
                cx.err(kn.pos, format!(
                    "{what}: the connection between {from} and {to} is {}, which does not go {}; write the rule for the connection's direction",
                    written.iter().map(|w| format!("{w:?}")).collect::<Vec<_>>().join(" and "),
                    if direction == Direction::Both { "both ways".to_owned() } else { format!("from {from} to {to}") }
                ));
                continue;
            }
            let same_pair = security_pairs.entry(pair_key).or_default();
            if let Some((_, p, text)) = same_pair
                .iter()
                .map(|&i| &security[i])
                .find(|(s, _, _)| overlaps((&from, &to, direction), (&s.from, &s.to, s.direction)))
            {
                cx.err(kn.pos, format!(
                    "{what} overlaps {text:?} (line {}); put all firewall rules of a connection in one entry",
                    p.line
                ));
                continue;
            }
            if rules.is_some() {
                same_pair.push(security.len());
            }
            if let Some(rules) = rules {
                security.push((
                    Security {
                        from,
                        to,
                        direction,
                        rules,
                    },
                    kn.pos,
                    k.to_owned(),
                ));
            }
        }
    }

    let name = name?;
    let mut connections: Vec<Connection> = conns.into_iter().map(|(c, _, _)| c).collect();
    connections.sort_by(|a, b| (&a.from, &a.to, a.direction).cmp(&(&b.from, &b.to, b.direction)));
    let mut security: Vec<Security> = security.into_iter().map(|(s, _, _)| s).collect();
    security.sort_by(|a, b| (&a.from, &a.to, a.direction).cmp(&(&b.from, &b.to, b.direction)));
    Some(Network {
        addressing: Addressing {
            shards: shards.unwrap_or_else(|| name.clone()),
            families,
        },
        name,
        vni,
        vlan,
        mtu,
        nodes,
        connections,
        security,
    })
}

fn unknown_kind(what: &str, kind: &str, kinds: &BTreeMap<String, Partial>) -> String {
    if kinds.is_empty() {
        format!(
            "{what}: no kind named {:?} (there is no kinds: section); define it under kinds: or remove kind:",
            clip(kind)
        )
    } else {
        format!(
            "{what}: no kind named {:?} (kinds are: {}); define it under kinds: or fix the name",
            clip(kind),
            list(kinds.keys().map(String::as_str))
        )
    }
}

fn finish_node(p: Partial) -> Node {
    Node {
        node_type: p.node_type.unwrap_or_default(),
        image: p.image,
        cpu_millis: p.cpu,
        memory_bytes: p.memory,
        ports: p.ports.unwrap_or_default(),
        command: p.command,
        volumes: p.volumes.unwrap_or_default(),
        host: p.host,
        addresses: p
            .addresses
            .unwrap_or_default()
            .into_iter()
            .map(|(c, _)| c)
            .collect(),
        env: p.env.unwrap_or_default(),
    }
}

/// `kinds:`: each kind's fields merged along its `inherits` chain. Unknown parents and
/// cycles are reported (a cycle once, at its first kind in the file) and cut.
fn kinds(cx: &mut Cx, v: Option<&Y>) -> BTreeMap<String, Partial> {
    let Some(v) = v else {
        return BTreeMap::new();
    };
    let es = entries(cx, v, "kinds", &|k, first| {
        format!(
            "duplicate kind {k:?} (first at line {}); rename one",
            first.line
        )
    });
    let mut names: Vec<&str> = Vec::new();
    let mut own: Vec<Partial> = Vec::new();
    let mut parent: Vec<Option<usize>> = Vec::new();
    let mut inherits_at: Vec<Option<(String, Pos)>> = Vec::new();
    for (k, kn, kv) in &es {
        if let Err(e) = check_name(k) {
            cx.err(kn.pos, format!("kind name {e}"));
        }
        let (p, inh) = partial(cx, kv, &format!("kind {:?}", clip(k)), KIND_KEYS);
        names.push(k);
        own.push(p);
        inherits_at.push(inh);
    }
    let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let sorted: BTreeSet<&str> = names.iter().copied().collect();
    for (i, inh) in inherits_at.iter().enumerate() {
        parent.push(match inh {
            None => None,
            Some((p, pos)) => match index.get(p.as_str()) {
                Some(j) => Some(*j),
                None => {
                    cx.err(*pos, format!(
                        "kind {:?} inherits {:?}, which is not a kind (kinds are: {}); define it under kinds: or fix the name",
                        names[i], clip(p), list(sorted.iter().copied())
                    ));
                    None
                }
            },
        });
    }
    // Cycles: each kind has at most one parent, so walk each chain once (0 new, 1 on the
    // current walk, 2 done).
    let mut state = vec![0u8; names.len()];
    for start in 0..names.len() {
        let mut path = Vec::new();
        let mut cur = Some(start);
        while let Some(i) = cur {
            if state[i] == 2 {
                break;
            }
            if state[i] == 1 {
                let at = path.iter().position(|&j| j == i).unwrap_or(0);
                let cycle: Vec<usize> = path[at..].to_vec();
                let first = *cycle
                    .iter()
                    .min_by_key(|&&j| inherits_at[j].as_ref().map(|(_, p)| *p))
                    .unwrap_or(&i);
                let from = cycle.iter().position(|&j| j == first).unwrap_or(0);
                let mut chain: Vec<&str> = cycle[from..]
                    .iter()
                    .chain(&cycle[..from])
                    .map(|&j| names[j])
                    .collect();
                chain.push(names[first]);
                if let Some((_, pos)) = &inherits_at[first] {
                    cx.err(
                        *pos,
                        format!(
                            "kinds: inherits cycle {}; remove one of these inherits",
                            chain.join(" -> ")
                        ),
                    );
                }
                for &j in &cycle {
                    parent[j] = None;
                }
                break;
            }
            state[i] = 1;
            path.push(i);
            cur = parent[i];
        }
        for j in path {
            state[j] = 2;
        }
    }
    // Merge along the (now acyclic) chains, memoized.
    let mut resolved: Vec<Option<Partial>> = vec![None; names.len()];
    for start in 0..names.len() {
        let mut chain = Vec::new();
        let mut cur = Some(start);
        while let Some(i) = cur {
            if resolved[i].is_some() || chain.len() > names.len() {
                break;
            }
            chain.push(i);
            cur = parent[i];
        }
        let mut base = cur.and_then(|i| resolved[i].clone()).unwrap_or_default();
        for &i in chain.iter().rev() {
            base = merge(&base, &own[i]);
            resolved[i] = Some(base.clone());
        }
    }
    names
        .iter()
        .zip(resolved)
        .map(|(n, p)| (n.to_string(), p.unwrap_or_default()))
        .collect()
}

/// A `a <-> b` / `a -> b` / `b <- a` key whose nodes exist and differ, canonical.
fn pair(
    cx: &mut Cx,
    section: &str,
    k: &str,
    kn: &Y,
    declared: &BTreeSet<&str>,
) -> Option<(String, String, Direction)> {
    let Some(pk) = parse_pair(k) else {
        cx.err(kn.pos, format!(
            "{section} key {:?} is not \"a <-> b\", \"a -> b\" or \"b <- a\"; name two nodes joined by an arrow",
            clip(k)
        ));
        return None;
    };
    let quote = usize::from(!kn.plain());
    let mut ok = true;
    for (name, off) in [(pk.a, pk.a_off), (pk.b, pk.b_off)] {
        if !declared.contains(name) {
            let nodes = if declared.is_empty() {
                "there are no nodes".to_owned()
            } else {
                format!("nodes are: {}", list(declared.iter().copied()))
            };
            cx.err(kn.pos.right(off + quote), format!(
                "{section} {:?}: no node named {:?} ({nodes}); add it under nodes: or fix the name",
                clip(k), clip(name)
            ));
            ok = false;
        }
    }
    if pk.a == pk.b {
        cx.err(
            kn.pos,
            format!(
                "{section} {:?} joins {} to itself; remove it (a node always reaches itself)",
                clip(k),
                clip(pk.a)
            ),
        );
        ok = false;
    }
    ok.then(|| pk.canonical())
}

type ConnFields = (Protocol, Vec<u16>, Option<u64>);

fn connection_fields(cx: &mut Cx, v: &Y, k: &str) -> Option<ConnFields> {
    let what = format!("connection {:?}", clip(k));
    let mut ok = true;
    let mut protocol = Protocol::Tcp;
    let mut port_list: Option<(Vec<u16>, Pos)> = None;
    let mut bandwidth = None;
    let fs = fields(cx, v, &what, CONNECTION_KEYS);
    if !v.is_null() && !matches!(v.value, Value::Map(_)) {
        return None;
    }
    if fs.iter().any(|(k, _, _)| *k == "port") && fs.iter().any(|(k, _, _)| *k == "ports") {
        let (_, kn, _) = fs.iter().find(|(k, _, _)| *k == "ports")?;
        cx.err(kn.pos, format!("{what}: give port: or ports:, not both"));
        ok = false;
    }
    for (key, _, fv) in &fs {
        match *key {
            "protocol" => match fv.str() {
                Some("tcp") => protocol = Protocol::Tcp,
                Some("udp") => protocol = Protocol::Udp,
                Some("icmp") => protocol = Protocol::Icmp,
                Some("any") => protocol = Protocol::Any,
                _ => {
                    let shown = fv
                        .str()
                        .map(|s| format!("{:?}", clip(s)))
                        .unwrap_or_else(|| fv.describe());
                    cx.err(
                        fv.pos,
                        format!("{what}: unknown protocol {shown}; use tcp, udp, icmp or any"),
                    );
                    ok = false;
                }
            },
            "port" => match port(cx, fv, &what) {
                Some(p) => port_list = Some((vec![p], fv.pos)),
                None => ok = false,
            },
            "ports" => match ports(cx, fv, &what) {
                Some(p) => port_list = Some((p, fv.pos)),
                None => ok = false,
            },
            "bandwidth" => {
                match string(cx, fv, &format!("{what}: bandwidth")).map(|s| units::parse_bits(&s)) {
                    Some(Ok(b)) => bandwidth = Some(b),
                    Some(Err(e)) => {
                        cx.err(fv.pos, format!("{what}: bandwidth {e}"));
                        ok = false;
                    }
                    None => ok = false,
                }
            }
            _ => {}
        }
    }
    let ports = match port_list {
        Some((p, pos)) if !protocol.has_ports() && !p.is_empty() => {
            cx.err(
                pos,
                format!(
                    "{what}: {protocol} has no ports; remove port(s) or use protocol tcp or udp"
                ),
            );
            ok = false;
            Vec::new()
        }
        Some((p, _)) => p,
        None => Vec::new(),
    };
    ok.then_some((protocol, ports, bandwidth))
}

fn security_fields(cx: &mut Cx, v: &Y, what: &str, key_pos: Pos) -> Option<Vec<FirewallRule>> {
    let fs = fields(cx, v, what, SECURITY_KEYS);
    if !v.is_null() && !matches!(v.value, Value::Map(_)) {
        return None;
    }
    let Some((_, _, rv)) = fs.into_iter().find(|(k, _, _)| *k == "firewall_rule") else {
        cx.err(key_pos, format!("{what} has no firewall_rule; add e.g. firewall_rule: allow_tcp_5432 (or a list of rules)"));
        return None;
    };
    let items: Vec<&Y> = match &rv.value {
        Value::Seq(items) => items.iter().collect(),
        Value::Scalar { .. } if !rv.is_null() => vec![rv],
        _ => {
            cx.err(
                rv.pos,
                format!(
                    "{what}: firewall_rule must be a rule or a list of rules, found {}",
                    rv.describe()
                ),
            );
            return None;
        }
    };
    if items.is_empty() {
        cx.err(rv.pos, format!("{what}: firewall_rule is an empty list; write at least one rule or remove the entry"));
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for item in items {
        match item.str().map(str::parse::<FirewallRule>) {
            Some(Ok(r)) => out.push(r),
            Some(Err(e)) => {
                cx.err(item.pos, format!("{what}: {e}"));
                ok = false;
            }
            None => {
                cx.err(
                    item.pos,
                    format!(
                        "{what}: a firewall rule must be a string such as allow_tcp_5432, found {}",
                        item.describe()
                    ),
                );
                ok = false;
            }
        }
    }
    out.sort();
    out.dedup();
    ok.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_and_suggestions() {
        assert_eq!(distance("imgae", "image"), 2);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(suggest("imgae", NODE_KEYS.iter().copied()), Some("image"));
        assert_eq!(suggest("prot", ["protocol", "port"]), Some("port"));
        assert_eq!(suggest("zzzzzz", NODE_KEYS.iter().copied()), None);
    }

    #[test]
    fn names() {
        assert!(check_name("web_server-1").is_ok());
        assert!(check_name(&"a".repeat(48)).is_ok());
        assert!(check_name(&"a".repeat(49)).is_err());
        assert!(
            check_name("Web")
                .unwrap_err()
                .contains("did you mean \"web\"")
        );
        assert!(check_name("-x").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name("").is_err());
    }

    #[test]
    fn pair_keys() {
        let p = parse_pair("web <-> db").unwrap();
        assert_eq!(
            (p.a, p.a_off, p.b, p.b_off, p.arrow),
            ("web", 0, "db", 8, "<->")
        );
        assert_eq!(p.canonical(), ("db".into(), "web".into(), Direction::Both));
        let p = parse_pair("db <- web").unwrap();
        assert_eq!(
            p.canonical(),
            ("web".into(), "db".into(), Direction::Forward)
        );
        let p = parse_pair("web->db").unwrap();
        assert_eq!(
            p.canonical(),
            ("web".into(), "db".into(), Direction::Forward)
        );
        assert!(parse_pair("web - db").is_none());
        assert!(parse_pair("<-> db").is_none());
        assert!(parse_pair("a -> b -> c").is_none());
    }
}
