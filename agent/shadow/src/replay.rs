//! One sampled connection replayed against one or more targets (the shadow first, its
//! noise-baseline replica second): production's client bytes framed into requests (those
//! to send, those skipped in read-only mode), production's and each target's answers
//! framed and paired by request, and the pairs compared into [`Stats`].
//!
//! Sampling by a key from the request ([`KeySample`], an HTTP header's value): the tap
//! copies every eligible connection and the replay sends only the requests whose key is in
//! the share, so one key (a user, a session) is always in or always out, whichever
//! connection carries it. HTTP/1 is decided request by request; any other protocol (h2c,
//! whose streams share one HPACK state and cannot be cut out; Redis, PostgreSQL, which carry
//! no header) is decided once for the whole connection by its first request, and nothing is
//! sent before that decision.
//!
//! Latency on both sides runs from a request's last byte to its answer's last byte:
//! production's from the tap's capture times, a target's from when the sink wrote the
//! request ([`Replay::target_sent`]) to when it read the answer.

use std::collections::BTreeMap;

use crate::{ClientFramer, Expect, FrameError, Limits, Protocol, Response, ServerFramer, Stats};

/// Sampling by a key from the request: requests whose header `header` hashes (agent-common's
/// murmur3 with `seed`) below `threshold` are in; requests without the header are out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySample {
    pub header: String,
    /// [`agent_common::hash::threshold_of`] of the share.
    pub threshold: u64,
    pub seed: u32,
}

impl KeySample {
    /// Whether a request with this key value is in the share.
    pub fn takes(&self, value: Option<&str>) -> bool {
        value.is_some_and(|v| {
            agent_common::hash::key_in_share(self.seed, self.threshold, v.as_bytes())
        })
    }
}

/// Settings of a replay.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    /// Targets replayed to (1: the shadow; 2: the shadow and its noise baseline).
    pub targets: usize,
    /// Only requests that read are sent; the others are skipped and counted.
    pub read_only: bool,
    pub limits: Limits,
    /// Requests awaiting answers kept at most; the oldest is dropped beyond it.
    pub max_pending: usize,
    /// Only requests whose key is in the share are sent; `None`: every request (the
    /// connection was sampled as a whole in the kernel).
    pub sample: Option<KeySample>,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            targets: 1,
            read_only: false,
            limits: Limits::default(),
            max_pending: 1024,
            sample: None,
        }
    }
}

/// A request to send to every live target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// 0 for units with no answer of their own.
    pub key: u64,
    pub bytes: Vec<u8>,
    pub endpoint: Option<String>,
    pub request_id: Option<String>,
}

/// A target's answer to a replayed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    pub key: u64,
    pub endpoint: String,
    pub request_id: Option<String>,
    pub error: bool,
}

/// Counters of one replay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayCounters {
    /// Requests sent to the targets (to at least one live target).
    pub requests_replayed: u64,
    /// Requests not sent because they may write (read-only mode).
    pub requests_skipped_write: u64,
    /// Requests forgotten before all answers came (too many awaiting).
    pub pending_dropped: u64,
    /// Requests not sent because their key is out of the share ([`KeySample`]).
    pub requests_unsampled: u64,
}

/// Why nothing more goes to the targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// An h2c stream that writes, in read-only mode.
    Write,
    /// The connection's first request is out of the key's share.
    Unsampled,
}

#[derive(Debug)]
enum Slot {
    NotSent,
    Waiting { sent_ns: Option<u64> },
    Got(Response),
    Lost,
}

#[derive(Debug)]
struct Pending {
    endpoint: String,
    request_id: Option<String>,
    at_ns: u64,
    production: Option<Response>,
    production_done: bool,
    targets: Vec<Slot>,
}

struct Target {
    framer: ServerFramer,
    alive: bool,
    /// When its last answer was complete (ns).
    last_answer_ns: u64,
}

/// One sampled connection's replay.
pub struct Replay {
    cfg: ReplayConfig,
    client: ClientFramer,
    production: ServerFramer,
    production_ok: bool,
    /// Production's answer bytes that came before the protocol was known.
    early: Vec<(Vec<u8>, u64)>,
    h2_set: bool,
    targets: Vec<Target>,
    pending: BTreeMap<u64, Pending>,
    /// No more bytes go to the targets, and why.
    stopped: Option<Stop>,
    /// Sampling by key, connection-wide (not HTTP/1): the first request's decision.
    decided: Option<bool>,
    /// Units (h2 preface, settings) waiting for that decision, at most
    /// `limits.max_head` bytes: a connection with more before its first request is out.
    held: Vec<Outgoing>,
    held_bytes: usize,
    pub counters: ReplayCounters,
}

impl Replay {
    pub fn new(cfg: ReplayConfig) -> Self {
        let mut client = ClientFramer::new(cfg.limits);
        if let Some(s) = &cfg.sample {
            client = client.with_key_header(&s.header);
        }
        Self {
            client,
            production: ServerFramer::new(cfg.limits),
            production_ok: true,
            early: Vec::new(),
            h2_set: false,
            targets: (0..cfg.targets)
                .map(|_| Target {
                    framer: ServerFramer::new(cfg.limits),
                    alive: true,
                    last_answer_ns: 0,
                })
                .collect(),
            pending: BTreeMap::new(),
            stopped: None,
            decided: None,
            held: Vec::new(),
            held_bytes: 0,
            counters: ReplayCounters::default(),
            cfg,
        }
    }

    pub fn protocol(&self) -> Option<Protocol> {
        self.client.protocol()
    }

    /// Whether target `t` still gets requests.
    pub fn alive(&self, t: usize) -> bool {
        self.targets.get(t).is_some_and(|x| x.alive) && self.stopped.is_none()
    }

    /// Requests awaiting answers.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Client bytes production received at `at_ns`: the requests to send to every live
    /// target, in order. An error ends the replay (the stream cannot be framed).
    pub fn client(&mut self, data: &[u8], at_ns: u64) -> Result<Vec<Outgoing>, FrameError> {
        let requests = self.client.push(data)?;
        if !self.h2_set && self.client.protocol() == Some(Protocol::H2c) {
            self.h2_set = true;
            self.production.h2_prior_knowledge();
            for t in &mut self.targets {
                t.framer.h2_prior_knowledge();
            }
        }
        let mut out = Vec::new();
        for r in requests {
            let is_request = r.expect != Expect::None;
            if is_request && self.production_ok && self.production.expect(&r).is_err() {
                self.production_ok = false;
            }
            let undecided = self.decided.is_none();
            let unsampled = self.unsampled(&r);
            if undecided && self.decided == Some(true) {
                // The units held for the decision precede this request in the stream.
                out.append(&mut self.held);
            }
            let skip = unsampled || self.stopped.is_some() || (self.cfg.read_only && !r.read_only);
            if skip {
                if is_request {
                    if unsampled || self.stopped == Some(Stop::Unsampled) {
                        self.counters.requests_unsampled += 1;
                    } else {
                        self.counters.requests_skipped_write += 1;
                    }
                }
                if self.stopped.is_none()
                    && self.cfg.read_only
                    && !r.read_only
                    && self.client.protocol() == Some(Protocol::H2c)
                {
                    // The stream's bytes cannot be cut out of an h2 connection.
                    self.stopped = Some(Stop::Write);
                }
            } else if is_request && self.targets.iter().any(|t| t.alive) {
                self.counters.requests_replayed += 1;
            }
            if is_request {
                let mut targets = Vec::with_capacity(self.targets.len());
                for t in &mut self.targets {
                    if skip || !t.alive {
                        targets.push(Slot::NotSent);
                    } else if t.framer.expect(&r).is_err() {
                        t.alive = false;
                        targets.push(Slot::Lost);
                    } else {
                        targets.push(Slot::Waiting { sent_ns: None });
                    }
                }
                if self.pending.len() >= self.cfg.max_pending
                    && let Some((&k, _)) = self.pending.iter().next()
                {
                    self.pending.remove(&k);
                    self.counters.pending_dropped += 1;
                }
                self.pending.insert(
                    r.key,
                    Pending {
                        endpoint: r.endpoint.clone().unwrap_or_else(|| "unknown".into()),
                        request_id: r.request_id.clone(),
                        at_ns,
                        production: None,
                        production_done: !self.production_ok,
                        targets,
                    },
                );
            }
            if !skip && !self.targets.iter().all(|t| !t.alive) {
                let o = Outgoing {
                    key: r.key,
                    bytes: r.bytes,
                    endpoint: r.endpoint,
                    request_id: r.request_id,
                };
                if self.cfg.sample.is_some() && self.decided.is_none() && !is_request {
                    self.held_bytes += o.bytes.len();
                    self.held.push(o);
                    if self.held_bytes > self.cfg.limits.max_head {
                        // No request in sight to decide by: the connection is out.
                        self.held = Vec::new();
                        self.decided = Some(false);
                        self.stopped = Some(Stop::Unsampled);
                    }
                } else {
                    out.push(o);
                }
            }
        }
        Ok(out)
    }

    /// Whether request `r` is left out by sampling by key; decides a connection that is
    /// not HTTP/1 at its first request (units held until then are released or dropped).
    fn unsampled(&mut self, r: &crate::Request) -> bool {
        let Some(s) = &self.cfg.sample else {
            return false;
        };
        if self.stopped.is_some() {
            return false;
        }
        match r.expect {
            Expect::None => false,
            Expect::Http1 { upgrade_h2c, .. } => {
                let out = !s.takes(r.key_value.as_deref());
                if out && upgrade_h2c {
                    // The h2 frames after it cannot go without it.
                    self.stopped = Some(Stop::Unsampled);
                }
                out
            }
            _ => match self.decided {
                Some(_) => false,
                None => {
                    let takes = s.takes(r.key_value.as_deref());
                    self.decided = Some(takes);
                    if !takes {
                        self.held.clear();
                        self.stopped = Some(Stop::Unsampled);
                    }
                    !takes
                }
            },
        }
    }

    /// Production's answer bytes captured at `at_ns`.
    pub fn production(&mut self, data: &[u8], at_ns: u64, stats: &mut Stats) {
        if self.client.protocol().is_none() {
            // A server that speaks first (not one of ours), or a reordered frame: kept
            // until the client's first bytes say what this is, within the limit.
            let held: usize = self.early.iter().map(|(b, _)| b.len()).sum();
            if held + data.len() <= self.cfg.limits.max_head {
                self.early.push((data.to_vec(), at_ns));
            } else {
                self.production_failed(stats);
            }
            return;
        }
        for (b, at) in std::mem::take(&mut self.early) {
            self.production_bytes(&b, at, stats);
        }
        self.production_bytes(data, at_ns, stats);
    }

    fn production_bytes(&mut self, data: &[u8], at_ns: u64, stats: &mut Stats) {
        if !self.production_ok {
            return;
        }
        match self.production.push(data) {
            Ok(rs) => {
                for r in rs {
                    self.production_answer(r, at_ns, stats);
                }
            }
            Err(_) => self.production_failed(stats),
        }
    }

    /// Production's connection ended.
    pub fn production_closed(&mut self, at_ns: u64, stats: &mut Stats) {
        if self.production_ok {
            match self.production.finish() {
                Ok(rs) => {
                    for r in rs {
                        self.production_answer(r, at_ns, stats);
                    }
                }
                Err(_) => self.production_failed(stats),
            }
        }
        // Requests production never answered are not compared.
        self.production_failed(stats);
    }

    fn production_failed(&mut self, stats: &mut Stats) {
        self.production_ok = false;
        for p in self.pending.values_mut() {
            p.production_done = true;
        }
        self.settle_all(stats);
    }

    fn production_answer(&mut self, r: Response, at_ns: u64, stats: &mut Stats) {
        let Some(p) = self.pending.get_mut(&r.key) else {
            return;
        };
        let latency = at_ns.checked_sub(p.at_ns).map(|ns| ns / 1000);
        stats.production(&p.endpoint, r.error, latency);
        let key = r.key;
        p.production = Some(r);
        p.production_done = true;
        self.settle(key, stats);
    }

    /// Target `t` was written request `key` at `now_ns`.
    pub fn target_sent(&mut self, t: usize, key: u64, now_ns: u64) {
        if let Some(Slot::Waiting { sent_ns }) = self
            .pending
            .get_mut(&key)
            .and_then(|p| p.targets.get_mut(t))
        {
            *sent_ns = Some(now_ns);
        }
    }

    /// Bytes target `t` answered, read at `now_ns`: the answers they complete.
    pub fn target_data(
        &mut self,
        t: usize,
        data: &[u8],
        now_ns: u64,
        stats: &mut Stats,
    ) -> Vec<Answered> {
        let Some(target) = self.targets.get_mut(t) else {
            return Vec::new();
        };
        if !target.alive {
            return Vec::new();
        }
        match target.framer.push(data) {
            Ok(rs) => self.target_answers(t, rs, now_ns, stats),
            Err(_) => {
                self.target_failed(t, stats);
                Vec::new()
            }
        }
    }

    /// Target `t`'s connection ended (a body read until close is complete now).
    pub fn target_closed(&mut self, t: usize, now_ns: u64, stats: &mut Stats) -> Vec<Answered> {
        let Some(target) = self.targets.get_mut(t) else {
            return Vec::new();
        };
        let rs = target.framer.finish().unwrap_or_default();
        let out = self.target_answers(t, rs, now_ns, stats);
        self.target_failed(t, stats);
        out
    }

    /// Target `t` is gone (connection failed, too slow, unframeable): nothing more is
    /// sent to it, and no answer of it is awaited.
    pub fn target_failed(&mut self, t: usize, stats: &mut Stats) {
        let Some(target) = self.targets.get_mut(t) else {
            return;
        };
        target.alive = false;
        for p in self.pending.values_mut() {
            if let Some(s @ Slot::Waiting { .. }) = p.targets.get_mut(t) {
                *s = Slot::Lost;
            }
        }
        self.settle_all(stats);
    }

    fn target_answers(
        &mut self,
        t: usize,
        rs: Vec<Response>,
        now_ns: u64,
        stats: &mut Stats,
    ) -> Vec<Answered> {
        let mut out = Vec::new();
        // In-order protocols answer one request after the other: a request replayed while
        // the previous one was still being answered (production's client sent it after
        // production's answer, the shadow may be slower) waits for that answer, which is
        // not its own latency. Its latency starts when the previous answer was complete.
        // HTTP/2's streams are concurrent: from the send.
        let in_order = self.client.protocol() != Some(Protocol::H2c);
        for r in rs {
            let key = r.key;
            let Some(p) = self.pending.get_mut(&key) else {
                continue;
            };
            let Some(slot) = p.targets.get_mut(t) else {
                continue;
            };
            let Slot::Waiting { sent_ns } = *slot else {
                continue;
            };
            let last = self.targets.get(t).map_or(0, |x| x.last_answer_ns);
            let latency = sent_ns
                .map(|s| if in_order { s.max(last) } else { s })
                .and_then(|s| now_ns.checked_sub(s))
                .map(|ns| ns / 1000);
            if let Some(x) = self.targets.get_mut(t) {
                x.last_answer_ns = now_ns;
            }
            match t {
                0 => stats.shadow(&p.endpoint, r.error, latency),
                1 => stats.baseline(&p.endpoint, r.error, latency),
                _ => {}
            }
            out.push(Answered {
                key,
                endpoint: p.endpoint.clone(),
                request_id: p.request_id.clone(),
                error: r.error,
            });
            *slot = Slot::Got(r);
            self.settle(key, stats);
        }
        out
    }

    fn settle_all(&mut self, stats: &mut Stats) {
        let keys: Vec<u64> = self.pending.keys().copied().collect();
        for k in keys {
            self.settle(k, stats);
        }
    }

    /// Compares and forgets request `key` once every answer it waits for is in.
    fn settle(&mut self, key: u64, stats: &mut Stats) {
        let Some(p) = self.pending.get(&key) else {
            return;
        };
        if !p.production_done || p.targets.iter().any(|s| matches!(s, Slot::Waiting { .. })) {
            return;
        }
        let Some(p) = self.pending.remove(&key) else {
            return;
        };
        if let (Some(prod), Some(Slot::Got(shadow))) = (&p.production, p.targets.first()) {
            let baseline = match p.targets.get(1) {
                Some(Slot::Got(b)) => Some(b),
                _ => None,
            };
            stats.compare(&p.endpoint, prod, shadow, baseline);
        }
    }
}
