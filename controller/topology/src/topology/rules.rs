//! User classification rules, from a TOML file:
//!
//! ```toml
//! [[rule]]
//! match_name = "pay-*"        # glob over the service name
//! match_port = 9000           # a port the service serves
//! match_protocol = "redis"    # a protocol the service serves
//! type = "cache"
//! ```
//!
//! Rules are tried in order; the first whose every given `match_*` holds decides. A rule
//! needs at least one `match_*`.

use serde::Deserialize;

use super::classify::{ServiceFacts, ServiceType};
use agent_common::glob::glob_match_ignore_case as glob_match;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub match_name: Option<String>,
    pub match_port: Option<u16>,
    pub match_protocol: Option<String>,
    #[serde(rename = "type")]
    pub service_type: ServiceType,
}

impl Rule {
    fn matches(&self, facts: &ServiceFacts) -> bool {
        self.match_name
            .as_ref()
            .is_none_or(|glob| glob_match(glob, &facts.name))
            && self
                .match_port
                .is_none_or(|port| facts.endpoints.iter().any(|(_, p, _)| *p == port))
            && self.match_protocol.as_ref().is_none_or(|protocol| {
                facts
                    .endpoints
                    .iter()
                    .any(|(_, _, p)| p.eq_ignore_ascii_case(protocol))
            })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
}

/// Why a rules file was refused; the message names the line or the rule and field.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("reading classifier rules {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("classifier rules {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Rules {
    /// Parses rules from TOML text; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, RulesError> {
        let invalid = |message: String| RulesError::Invalid {
            path: origin.to_owned(),
            message,
        };
        let rules: Self = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        for (index, rule) in rules.rules.iter().enumerate() {
            if rule.match_name.is_none()
                && rule.match_port.is_none()
                && rule.match_protocol.is_none()
            {
                return Err(invalid(format!(
                    "rule {} (type = \"{}\") has no match_name, match_port or match_protocol",
                    index + 1,
                    rule.service_type.as_str()
                )));
            }
            if let Some(protocol) = &rule.match_protocol
                && !crate::observation::is_known_protocol(&protocol.to_ascii_lowercase())
            {
                return Err(invalid(format!(
                    "rule {}: field match_protocol: unknown protocol `{protocol}`",
                    index + 1
                )));
            }
        }
        Ok(rules)
    }

    pub fn load(path: &std::path::Path) -> Result<Self, RulesError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
            path: origin.clone(),
            source,
        })?;
        Self::parse(&text, &origin)
    }

    /// The type the first matching rule gives.
    pub fn classify(&self, facts: &ServiceFacts) -> Option<ServiceType> {
        self.rules
            .iter()
            .find(|rule| rule.matches(facts))
            .map(|rule| rule.service_type)
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}
