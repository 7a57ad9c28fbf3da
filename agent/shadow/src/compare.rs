//! Response comparison with Diffy's noise cancellation.
//!
//! A response becomes flat fields ([`fields`]): `status`, `header.<name>`, JSON bodies as
//! paths (`body.user.name`, arrays by index: `body.items[2].id`), other bodies as one
//! `body` field; Redis replies as `reply`, `reply[0]`; PostgreSQL results as `columns`,
//! `row[0].<column>`, `command[0]`, `error`.
//!
//! [`Diffy`] keeps, per endpoint and field, how often production and the shadow differed
//! (raw) and how often production and the noise baseline differed (noise). The baseline is
//! Diffy's *secondary*: a second copy of production (mirrored like the shadow, replayed the
//! same way), so what differs between production and it is what differs between any two
//! runs of the same thing. As in Diffy (`DifferencesFilterFactory`), a field is reported
//! only when `raw > noise`, `|raw − noise| / (raw + noise) > 20 %` and `|raw − noise| /
//! compared > 0.03 %`: timestamps, ids and ordering differ between production and its
//! second copy as often as between production and the shadow, and are cancelled without
//! being configured; what only the shadow does is not.

use std::collections::{BTreeMap, BTreeSet};

use crate::{BodyKind, Response};

/// Diffy's default relative threshold, percent.
pub const RELATIVE_THRESHOLD: f64 = 20.0;
/// Diffy's default absolute threshold, percent of the endpoint's compared responses.
pub const ABSOLUTE_THRESHOLD: f64 = 0.03;
/// Fields taken from one response at most.
pub const MAX_FIELDS: usize = 512;
/// Longest value kept as is; longer ones are kept as their length and a digest.
const MAX_VALUE: usize = 256;

/// A 64-bit FNV-1a digest and the length of `b`, as a field value.
pub fn digest(b: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &c in b {
        h ^= u64::from(c);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{}B:{h:016x}", b.len())
}

/// `b` as a field value: as text when short, else its digest.
pub fn short(b: &[u8]) -> String {
    if b.len() <= MAX_VALUE {
        String::from_utf8_lossy(b).into_owned()
    } else {
        digest(b)
    }
}

fn flatten_json(v: &serde_json::Value, path: &mut String, out: &mut Vec<(String, String)>) {
    if out.len() >= MAX_FIELDS {
        return;
    }
    match v {
        serde_json::Value::Object(m) => {
            if m.is_empty() {
                out.push((path.clone(), "{}".into()));
            }
            for (k, v) in m {
                let len = path.len();
                path.push('.');
                path.push_str(k);
                flatten_json(v, path, out);
                path.truncate(len);
            }
        }
        serde_json::Value::Array(a) => {
            if a.is_empty() {
                out.push((path.clone(), "[]".into()));
            }
            for (i, v) in a.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                flatten_json(v, path, out);
                path.truncate(len);
            }
        }
        other => out.push((path.clone(), short(other.to_string().as_bytes()))),
    }
}

/// The fields of a response.
pub fn fields(r: &Response) -> Vec<(String, String)> {
    let mut out = vec![("status".to_owned(), r.status.clone())];
    match r.kind {
        BodyKind::Http => {
            for (n, v) in &r.headers {
                out.push((format!("header.{n}"), short(v.as_bytes())));
            }
            let json = r
                .headers
                .iter()
                .any(|(n, v)| n == "content-type" && v.contains("json"))
                || matches!(r.body.first(), Some(b'{') | Some(b'['));
            let parsed = if json && !r.body.is_empty() {
                serde_json::from_slice::<serde_json::Value>(&r.body).ok()
            } else {
                None
            };
            match parsed {
                Some(v) => flatten_json(&v, &mut "body".to_owned(), &mut out),
                None => out.push(("body".into(), short(&r.body))),
            }
        }
        BodyKind::Redis => crate::redis::fields(&r.body, MAX_FIELDS, &mut out),
        BodyKind::Postgres => crate::postgres::fields(&r.body, MAX_FIELDS, &mut out),
    }
    out.truncate(MAX_FIELDS);
    out
}

/// Paths whose values differ between `a` and `b` (present in one only counts).
pub fn differences(a: &[(String, String)], b: &[(String, String)]) -> BTreeSet<String> {
    let a: BTreeMap<&str, &str> = a.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let b: BTreeMap<&str, &str> = b.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut out = BTreeSet::new();
    for (k, v) in &a {
        if b.get(k) != Some(v) {
            out.insert((*k).to_owned());
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            out.insert((*k).to_owned());
        }
    }
    out
}

/// Raw and noise difference counts of one field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FieldCounts {
    /// Production and the shadow differed.
    pub raw: u64,
    /// Production and the noise baseline differed.
    pub noise: u64,
}

/// Diffy's filter: whether a field with `c` differs beyond the noise, out of `compared`.
pub fn beyond_noise(c: FieldCounts, compared: u64) -> bool {
    if c.raw <= c.noise || compared == 0 {
        return false;
    }
    let d = (c.raw - c.noise) as f64;
    let relative = d / (c.raw + c.noise) as f64 * 100.0;
    let absolute = d / compared as f64 * 100.0;
    relative > RELATIVE_THRESHOLD && absolute > ABSOLUTE_THRESHOLD
}

/// One endpoint's comparison so far.
#[derive(Debug, Clone, Default)]
pub struct EndpointDiff {
    /// Responses compared (production with the shadow).
    pub compared: u64,
    /// Of those, responses with a field that differs beyond the noise (judged with the
    /// counts at the time the response came).
    pub differing: u64,
    pub fields: BTreeMap<String, FieldCounts>,
    /// Fields not tracked because the endpoint had too many already.
    pub fields_dropped: u64,
}

impl EndpointDiff {
    /// Fields that differ beyond the noise, with their raw difference counts.
    pub fn differing_fields(&self) -> BTreeMap<String, u64> {
        self.fields
            .iter()
            .filter(|(_, c)| beyond_noise(**c, self.compared))
            .map(|(k, c)| (k.clone(), c.raw))
            .collect()
    }
}

/// Diffy's differential analysis, per endpoint.
#[derive(Debug, Clone)]
pub struct Diffy {
    /// Distinct fields tracked per endpoint.
    pub max_fields: usize,
    endpoints: BTreeMap<String, EndpointDiff>,
}

impl Default for Diffy {
    fn default() -> Self {
        Self {
            max_fields: 4096,
            endpoints: BTreeMap::new(),
        }
    }
}

/// What comparing one response found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Fields where production and the shadow differed.
    pub raw: BTreeSet<String>,
    /// Fields where production and the noise baseline differed.
    pub noise: BTreeSet<String>,
    /// A raw difference in a field that differs beyond the noise.
    pub differing: bool,
}

impl Diffy {
    /// Compares production's response with the shadow's, and with the noise baseline's
    /// (`baseline`) when there is one.
    pub fn compare(
        &mut self,
        endpoint: &str,
        production: &Response,
        shadow: &Response,
        baseline: Option<&Response>,
    ) -> Outcome {
        let p = fields(production);
        let s = fields(shadow);
        let raw = differences(&p, &s);
        let noise = baseline
            .map(|b| differences(&p, &fields(b)))
            .unwrap_or_default();
        let max = self.max_fields;
        let e = self.endpoints.entry(endpoint.to_owned()).or_default();
        e.compared += 1;
        for (set, raw_side) in [(&raw, true), (&noise, false)] {
            for f in set {
                if !e.fields.contains_key(f) && e.fields.len() >= max {
                    e.fields_dropped += 1;
                    continue;
                }
                let c = e.fields.entry(f.clone()).or_default();
                if raw_side {
                    c.raw += 1;
                } else {
                    c.noise += 1;
                }
            }
        }
        let differing = raw.iter().any(|f| {
            e.fields
                .get(f)
                .is_some_and(|c| beyond_noise(*c, e.compared))
        });
        if differing {
            e.differing += 1;
        }
        Outcome {
            raw,
            noise,
            differing,
        }
    }

    pub fn endpoint(&self, endpoint: &str) -> Option<&EndpointDiff> {
        self.endpoints.get(endpoint)
    }

    pub fn endpoints(&self) -> impl Iterator<Item = (&String, &EndpointDiff)> {
        self.endpoints.iter()
    }
}
