//! Request header rules: which requests go to the target.

use crate::RequestHead;
use crate::head::is_token;

/// Longest header name a rule accepts.
const MAX_NAME: usize = 128;
/// Longest header value a rule accepts.
const MAX_VALUE: usize = 1024;

/// A request header rule: `name` (case-insensitive) present, and when `value` is Some,
/// equal to it exactly (case-sensitive, after trimming spaces and tabs from the header's
/// value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRule {
    /// The header name (an RFC 9110 token).
    pub name: String,
    /// The exact value required, or `None`: any value (the header only has to be present).
    pub value: Option<String>,
}

impl HeaderRule {
    /// Checks a name (an RFC 9110 token, 1..=128 bytes) and value (visible ASCII and
    /// spaces, at most 1024 bytes, no CR/LF; leading and trailing spaces are trimmed, as a
    /// header's value is); the error text names the field and the problem.
    pub fn new(name: &str, value: Option<&str>) -> Result<Self, String> {
        if name.is_empty() {
            return Err("header name: empty".into());
        }
        if name.len() > MAX_NAME {
            return Err(format!(
                "header name: {} bytes, over the limit of {MAX_NAME}",
                name.len()
            ));
        }
        if !is_token(name.as_bytes()) {
            return Err(format!(
                "header name {name:?}: not a token (letters, digits and !#$%&'*+-.^_`|~ only)"
            ));
        }
        if let Some(v) = value {
            if v.len() > MAX_VALUE {
                return Err(format!(
                    "header value: {} bytes, over the limit of {MAX_VALUE}",
                    v.len()
                ));
            }
            if v.contains(['\r', '\n']) {
                return Err("header value: contains CR or LF".into());
            }
            if let Some(c) = v.chars().find(|&c| !(c == ' ' || c.is_ascii_graphic())) {
                return Err(format!(
                    "header value {v:?}: character {c:?} is not visible ASCII or a space"
                ));
            }
        }
        Ok(Self {
            name: name.to_owned(),
            value: value.map(|v| v.trim_matches(' ').to_owned()),
        })
    }

    /// Whether the request has a header of this name (case-insensitive) with the value
    /// (exactly), or of any value when the rule has none; any field of that name counts.
    pub fn matches(&self, head: &RequestHead) -> bool {
        head.headers.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case(&self.name) && self.value.as_ref().is_none_or(|want| want == v)
        })
    }
}
