//! Query parameters: every one parsed with an error naming it; unknown ones refused.

use std::collections::HashMap;

use weft_topology::analytics::{LatencyStat, TrafficDirection};
use weft_topology::time::{now_unix_ns, parse_time};
use weft_topology::topology::Window;

use super::error::ApiError;

#[derive(Debug, Default)]
pub struct Params(pub HashMap<String, String>);

impl Params {
    /// Refuses parameters outside `allowed`.
    pub fn only(&self, allowed: &[&str]) -> Result<&Self, ApiError> {
        let mut unknown: Vec<&String> = self
            .0
            .keys()
            .filter(|k| !allowed.contains(&k.as_str()))
            .collect();
        unknown.sort();
        match unknown.first() {
            Some(name) => Err(ApiError::parameter(
                name,
                format!(
                    "unknown parameter (this endpoint takes: {})",
                    allowed.join(", ")
                ),
            )),
            None => Ok(self),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    fn time(&self, name: &str, now: u64) -> Result<Option<u64>, ApiError> {
        self.get(name)
            .map(|text| parse_time(text, now).map_err(|e| ApiError::parameter(name, e)))
            .transpose()
    }

    /// `since` and `until`: RFC 3339 or relative (`15m` ago).
    pub fn window(&self) -> Result<Window, ApiError> {
        let now = now_unix_ns();
        let since = self.time("since", now)?;
        let until = self.time("until", now)?;
        if let (Some(s), Some(u)) = (since, until)
            && u < s
        {
            return Err(ApiError::parameter("until", "is before `since`"));
        }
        Ok(Window { since, until })
    }

    /// A required or defaulted point in time.
    pub fn time_or(&self, name: &str, default: Option<u64>) -> Result<u64, ApiError> {
        let now = now_unix_ns();
        match (self.time(name, now)?, default) {
            (Some(t), _) | (None, Some(t)) => Ok(t),
            (None, None) => Err(ApiError::parameter(name, "is required")),
        }
    }

    pub fn direction(&self) -> Result<TrafficDirection, ApiError> {
        self.get("direction")
            .map_or(Ok(TrafficDirection::Both), |d| {
                d.parse()
                    .map_err(|e: String| ApiError::parameter("direction", e))
            })
    }

    pub fn stat(&self) -> Result<LatencyStat, ApiError> {
        self.get("stat").map_or(Ok(LatencyStat::Avg), |s| {
            s.parse()
                .map_err(|e: String| ApiError::parameter("stat", e))
        })
    }

    /// A finite number >= 0.
    pub fn number(&self, name: &str, default: f64) -> Result<f64, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some(text) => text
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| ApiError::parameter(name, format!("`{text}` is not a number >= 0"))),
        }
    }
}
