//! The best evidence for a dependency's application protocol.
//!
//! Several records of one connection may disagree while the protocol becomes known: the
//! first ones carry only a port guess (or nothing), later ones what the payload showed.
//! The strongest evidence wins; between equal evidence the smaller name wins, which keeps
//! the merge commutative and associative.

use std::borrow::Cow;

/// How a protocol name was found, weakest first.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub enum Evidence {
    /// Nothing known.
    #[default]
    None,
    /// Guessed from the server port.
    Port,
    /// Declared by whoever made the observation (an importer, a library caller).
    Declared,
    /// Parsed from payload bytes.
    Payload,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ProtocolEvidence {
    pub evidence: Evidence,
    /// A name weft knows ([`crate::observation::PROTOCOLS`]) is not copied: a dependency,
    /// each of its time buckets and each endpoint hold one.
    pub name: Cow<'static, str>,
}

/// `name` as a static string when it is one weft knows, else a copy.
fn intern(name: &str) -> Cow<'static, str> {
    crate::observation::PROTOCOLS
        .iter()
        .find(|known| **known == name)
        .map_or_else(
            || Cow::Owned(name.to_owned()),
            |known| Cow::Borrowed(*known),
        )
}

impl ProtocolEvidence {
    pub fn new(evidence: Evidence, name: impl Into<String>) -> Self {
        Self {
            evidence,
            name: intern(&name.into()),
        }
    }

    /// Keeps `name` if its evidence is stronger than what is held (or equal with a smaller
    /// name).
    pub fn offer(&mut self, evidence: Evidence, name: &str) {
        if evidence == Evidence::None || name.is_empty() {
            return;
        }
        let better = evidence > self.evidence || (evidence == self.evidence && name < &*self.name);
        if better {
            self.evidence = evidence;
            self.name = intern(name);
        }
    }

    pub fn merge(&mut self, other: &Self) {
        self.offer(other.evidence, &other.name);
    }

    /// The protocol name, or `fallback` when nothing is known.
    pub fn name_or<'a>(&'a self, fallback: &'a str) -> &'a str {
        if self.evidence == Evidence::None {
            fallback
        } else {
            &self.name
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_beats_a_port_guess_in_either_order() {
        let mut a = ProtocolEvidence::default();
        a.offer(Evidence::Port, "https");
        a.offer(Evidence::Payload, "http");
        let mut b = ProtocolEvidence::default();
        b.offer(Evidence::Payload, "http");
        b.offer(Evidence::Port, "https");
        assert_eq!(a, b);
        assert_eq!(a.name_or("tcp"), "http");
    }

    #[test]
    fn nothing_known_falls_back() {
        let mut e = ProtocolEvidence::default();
        e.offer(Evidence::Port, "");
        assert_eq!(e.name_or("tcp"), "tcp");
    }

    #[test]
    fn equal_evidence_keeps_the_smaller_name_so_merge_commutes() {
        let x = ProtocolEvidence::new(Evidence::Payload, "websocket");
        let y = ProtocolEvidence::new(Evidence::Payload, "http");
        let mut xy = x.clone();
        xy.merge(&y);
        let mut yx = y.clone();
        yx.merge(&x);
        assert_eq!(xy, yx);
        assert_eq!(xy.name, "http");
    }
}
