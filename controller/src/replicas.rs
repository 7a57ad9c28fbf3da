//! Controller replicas on one etcd (`--etcd`): one of them, the *leader*, holds the
//! writer's lease and owns the desired state (shards and migrations, networks, shadows,
//! weaves, the control plane, snapshots: every singleton loop runs there); the others,
//! *followers*, serve what needs no writer: agents' flow records (each replica holds the
//! records its own agents sent) and every topology read, which merges the replicas'
//! topologies. Any other request to a follower is forwarded to the leader (event streams
//! redirected there, 307); an
//! agent's desired-state stream is refused with `UNAVAILABLE`, and the agent moves its
//! control stream to the next controller of its list while its flow records stay.
//!
//! Membership: each replica keeps `replicas/members/<name>` (its REST URL) under a lease
//! of its own, and `replicas/known/<name>` for good. Its topology checkpoint lives under
//! `replica-checkpoints/<name>/`. A topology query on any replica folds together its own
//! live topology, every live member's (`GET /replica/topology`, with the caller's
//! credentials) and the last checkpoint of every known replica that is not live (or does
//! not answer): the merge is associative and commutative, so the answer is the same
//! whichever replica is asked. A merged view is reused for [`MERGED_FOR`]. Replicas ask
//! each other with a `read` token of their own ([`TOKEN_NAME`]), made by the first leader
//! and kept in etcd.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tower::ServiceExt as _;
use weft_store::{EtcdStore, PrefixedStore, Store, StoreError};
use weft_topology::topology::CHECKPOINT_PREFIX;

use crate::api::error::problem_response;
use crate::state::AppState;

const MEMBERS: &str = "replicas/members/";
const KNOWN: &str = "replicas/known/";
const CHECKPOINTS: &str = "replica-checkpoints/";
/// The token replicas ask each other with (made by the first leader; kept in etcd, which
/// every replica trusts with everything else too).
const SECRET: &str = "replicas/secret";
/// The name of that token among the site's tokens (role `read`).
pub const TOKEN_NAME: &str = "weft-replicas";
/// How long a merged topology answers before it is made again.
pub const MERGED_FOR: Duration = Duration::from_secs(1);
/// How long a follower forwards to the leader it found before asking etcd again.
const LEADER_FOR: Duration = Duration::from_secs(1);
/// A member's lease: a replica that dies leaves the members this long after.
const MEMBER_TTL: Duration = Duration::from_secs(5);

/// A live replica, as its member key says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// Its REST API, e.g. `http://10.0.0.5:7070`.
    pub http: String,
}

/// An HTTP client of the other replicas, trusting `tls`'s CA; no redirects followed.
fn agent(tls: Option<Arc<rustls::ClientConfig>>, timeout: Duration) -> ureq::Agent {
    let builder = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(1))
        .timeout(timeout)
        .redirects(0);
    match tls {
        Some(tls) => builder.tls_config(tls),
        None => builder,
    }
    .build()
}

/// A replica name: letters, digits, `-`, `_`, `.`; it names keys.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "--replica-name {name:?}: 1 to 128 letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

/// Where replica `name` keeps its topology checkpoint in the shared store.
pub fn checkpoint_store(etcd: Arc<EtcdStore>, name: &str) -> Arc<dyn Store> {
    Arc::new(PrefixedStore::new(etcd, format!("{CHECKPOINTS}{name}/")))
}

#[derive(Debug)]
pub struct Replicas {
    etcd: Arc<EtcdStore>,
    pub name: String,
    /// The writer's election key (its value is the leader's name).
    fence_key: String,
    /// Whether this replica is a follower (it forwards what the leader serves).
    pub follower: bool,
    client: ureq::Agent,
    /// Requests a follower forwards to the leader (long: a weave waits for its agents).
    forwarder: ureq::Agent,
    merged: Mutex<Option<(Instant, AppState, String)>>,
    leader: Mutex<Option<(Instant, Member)>>,
}

impl Replicas {
    /// Joins the replicas: this one is a member (reachable at `http`) while it lives.
    pub fn join(
        etcd: Arc<EtcdStore>,
        name: &str,
        http: &str,
        fence_key: &str,
        follower: bool,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, StoreError> {
        let member = Member {
            name: name.to_owned(),
            http: http.trim_end_matches('/').to_owned(),
        };
        let prefix = etcd.config().prefix.clone();
        let value = serde_json::to_vec(&member).map_err(|e| StoreError(e.to_string()))?;
        etcd.advertise(&format!("{prefix}{MEMBERS}{name}"), &value, MEMBER_TTL)?;
        // Unfenced on purpose (a follower writes it too): nothing else writes this key.
        etcd.advertise_forever(&format!("{prefix}{KNOWN}{name}"), b"1")?;
        Ok(Self {
            etcd,
            name: name.to_owned(),
            fence_key: fence_key.to_owned(),
            follower,
            client: agent(tls.clone(), Duration::from_secs(10)),
            forwarder: agent(tls, Duration::from_secs(180)),
            merged: Mutex::new(None),
            leader: Mutex::new(None),
        })
    }

    /// The replicas' token: made (by a leader) if there is none yet.
    pub fn secret(&self) -> Result<Option<String>, StoreError> {
        if let Some(secret) = self.etcd.get(SECRET)? {
            return Ok(Some(String::from_utf8_lossy(&secret).into_owned()));
        }
        if self.follower {
            return Ok(None);
        }
        let hex = |n: usize| -> String {
            (0..n)
                .map(|_| format!("{:02x}", rand::random::<u8>()))
                .collect()
        };
        let made = format!("weft_{}_{}", hex(8), hex(32));
        self.etcd
            .compare_and_swap(SECRET, None, Some(made.as_bytes()))?;
        Ok(self
            .etcd
            .get(SECRET)?
            .map(|s| String::from_utf8_lossy(&s).into_owned()))
    }

    /// The live members.
    pub fn members(&self) -> Result<Vec<Member>, StoreError> {
        Ok(self
            .etcd
            .scan_prefix(MEMBERS)?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect())
    }

    /// Every replica that ever joined.
    fn known(&self) -> Result<BTreeSet<String>, StoreError> {
        Ok(self
            .etcd
            .scan_prefix(KNOWN)?
            .into_iter()
            .map(|(k, _)| k[KNOWN.len()..].to_owned())
            .collect())
    }

    /// The leader now, if one holds the lease and is a member.
    pub fn leader(&self) -> Result<Option<Member>, StoreError> {
        let Some(holder) = self.etcd.holder(&self.fence_key)? else {
            return Ok(None);
        };
        Ok(self.members()?.into_iter().find(|m| m.name == holder))
    }

    /// The leader, as known within the last [`LEADER_FOR`] (a forward that fails forgets
    /// it): no etcd round trip per forwarded request.
    fn cached_leader(&self) -> Result<Option<Member>, StoreError> {
        let mut cache = self.leader.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, member)) = cache.as_ref()
            && at.elapsed() < LEADER_FOR
        {
            return Ok(Some(member.clone()));
        }
        let leader = self.leader()?;
        *cache = leader.clone().map(|m| (Instant::now(), m));
        Ok(leader)
    }

    fn forget_leader(&self) {
        *self.leader.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Whether no one holds the writer's lease (a follower may take it).
    pub fn lease_free(&self) -> Result<bool, StoreError> {
        Ok(self.etcd.holder(&self.fence_key)?.is_none())
    }

    /// Replica `member`'s own topology entries.
    fn fetch(&self, member: &Member) -> Result<Vec<(String, Vec<u8>)>, String> {
        let url = format!("{}/replica/topology", member.http);
        let mut request = self.client.get(&url);
        if let Some(secret) = self.secret().map_err(|e| e.to_string())? {
            request = request.set("Authorization", &format!("Bearer {secret}"));
        }
        let body: serde_json::Value = request
            .call()
            .map_err(|e| format!("{url}: {e}"))?
            .into_json()
            .map_err(|e| format!("{url}: {e}"))?;
        let entries = body["entries"]
            .as_array()
            .ok_or_else(|| format!("{url}: no `entries`"))?;
        Ok(entries
            .iter()
            .filter_map(|e| {
                let key = e.get(0)?.as_str()?.to_owned();
                Some((key, serde_json::to_vec(e.get(1)?).ok()?))
            })
            .collect())
    }

    /// The last checkpoint of replica `name`.
    fn stored(&self, name: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        checkpoint_store(self.etcd.clone(), name).scan_prefix(CHECKPOINT_PREFIX)
    }

    /// `state` with the topology of every replica folded in (and which replica came from
    /// where, for the `Weft-Replicas` header); `None` when this replica is the only one
    /// there ever was.
    pub fn merged(&self, state: &AppState) -> Result<Option<(AppState, String)>, StoreError> {
        if let Some((at, merged, sources)) = self
            .merged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            && at.elapsed() < MERGED_FOR
        {
            return Ok(Some((merged.clone(), sources.clone())));
        }
        let members = self.members()?;
        let known = self.known()?;
        if members.iter().all(|m| m.name == self.name) && known.iter().all(|n| *n == self.name) {
            return Ok(None);
        }
        let topology = state.topology.empty_like();
        topology.merge_from(&state.topology);
        let mut sources = vec![format!("{}=self", self.name)];
        for name in &known {
            if *name == self.name {
                continue;
            }
            let live = members.iter().find(|m| m.name == *name);
            let (entries, source) = match live.map(|m| self.fetch(m)) {
                Some(Ok(entries)) => (entries, "live"),
                Some(Err(error)) => {
                    tracing::warn!(replica = %name, %error, "replica did not answer: its last checkpoint is merged instead");
                    (self.stored(name)?, "checkpoint")
                }
                None => (self.stored(name)?, "checkpoint"),
            };
            let theirs = state.topology.empty_like();
            let read = theirs.restore_checkpoint(&entries);
            for error in &read.refused {
                tracing::warn!(replica = %name, %error, "replica topology entry not merged");
            }
            topology.merge_from(&theirs);
            sources.push(format!("{name}={source}"));
        }
        let mut merged = state.clone();
        merged.topology = Arc::new(topology);
        let sources = sources.join(",");
        *self.merged.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), merged.clone(), sources.clone()));
        Ok(Some((merged, sources)))
    }
}

/// A follower's duties beside serving, until `stop`: the site's tokens read again every
/// [`TOKENS_EVERY`] (the leader makes and revokes them), and `promote` set once no one
/// holds the writer's lease (checked every [`LEASE_EVERY`]).
pub async fn follow(
    replicas: Arc<Replicas>,
    state: AppState,
    promote: tokio::sync::watch::Sender<bool>,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut tokens = tokio::time::interval(TOKENS_EVERY);
    let mut lease = tokio::time::interval(LEASE_EVERY);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tokens.tick() => {
                let state = state.clone();
                if let Ok(Err(error)) = tokio::task::spawn_blocking(move || state.auth.tokens.reload()).await {
                    tracing::warn!(%error, "reading the tokens again failed");
                }
            }
            _ = lease.tick() => {
                let r = replicas.clone();
                match tokio::task::spawn_blocking(move || r.lease_free()).await {
                    Ok(Ok(true)) => {
                        let _ = promote.send(true);
                        return;
                    }
                    Ok(Err(error)) => tracing::warn!(%error, "etcd: checking the writer's lease failed"),
                    _ => {}
                }
            }
        }
    }
}

/// How often a follower reads the tokens again.
const TOKENS_EVERY: Duration = Duration::from_secs(2);
/// How often a follower checks whether the writer's lease lapsed.
const LEASE_EVERY: Duration = Duration::from_millis(500);

/// A topology read: answered from the replicas' merged topology.
fn is_topology_read(method: &Method, path: &str) -> bool {
    method == Method::GET
        && (path == "/topology"
            || path.starts_with("/topology.")
            || path == "/services"
            || path.starts_with("/services/")
            || path.starts_with("/analytics/"))
}

/// What a follower answers itself; anything else goes to the leader.
fn follower_serves(method: &Method, path: &str) -> bool {
    is_topology_read(method, path)
        || matches!(
            path,
            "/healthz" | "/metrics" | "/openapi.json" | "/replica/topology" | "/flows" | "/ui"
        )
        || path.starts_with("/ui/")
        || (method == Method::POST && path == "/observations")
}

/// The replicas' layer around the REST API: topology reads answered from the merged
/// topology; on a follower, what the leader serves forwarded there.
pub fn layer(router: axum::Router, replicas: Arc<Replicas>, state: AppState) -> axum::Router {
    router.layer(axum::middleware::from_fn(
        move |request: Request, next: axum::middleware::Next| {
            let replicas = replicas.clone();
            let state = state.clone();
            async move { route(replicas, state, request, next).await }
        },
    ))
}

async fn route(
    replicas: Arc<Replicas>,
    state: AppState,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    if is_topology_read(&method, &path) {
        let r = replicas.clone();
        let merged = tokio::task::spawn_blocking(move || r.merged(&state)).await;
        return match merged {
            Ok(Ok(Some((merged, sources)))) => {
                let mut response = crate::api::http::app(merged)
                    .oneshot(request)
                    .await
                    .unwrap_or_else(|never| match never {});
                if let Ok(v) = header::HeaderValue::from_str(&sources) {
                    response.headers_mut().insert("weft-replicas", v);
                }
                response
            }
            Ok(Ok(None)) => next.run(request).await,
            Ok(Err(error)) => problem_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("merging the replicas' topologies: {error}"),
            ),
            Err(error) => problem_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("merging the replicas' topologies: {error}"),
            ),
        };
    }
    if !replicas.follower || follower_serves(&method, &path) {
        return next.run(request).await;
    }
    let target = request
        .uri()
        .path_and_query()
        .map_or(path.clone(), |p| p.as_str().to_owned());
    let r = replicas.clone();
    let leader = match tokio::task::spawn_blocking(move || r.cached_leader()).await {
        Ok(Ok(Some(leader))) => leader,
        Ok(Ok(None)) => {
            let mut response = problem_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "this controller is a follower replica and no leader holds the writer's lease now; retry shortly".into(),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            return response;
        }
        Ok(Err(error)) => {
            return problem_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("finding the leader replica: {error}"),
            );
        }
        Err(error) => {
            return problem_response(StatusCode::INTERNAL_SERVER_ERROR, error.to_string());
        }
    };
    let url = format!("{}{target}", leader.http);
    if path.starts_with("/events") {
        // A stream: the client follows the leader itself.
        return Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header(header::LOCATION, url)
            .header(LEADER_HEADER, leader.name)
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::TEMPORARY_REDIRECT.into_response());
    }
    forward(replicas, request, url, leader.name).await
}

/// The response header naming the leader a follower forwarded to (or redirected to).
const LEADER_HEADER: &str = "weft-leader";
/// The largest request body a follower forwards.
const MAX_FORWARDED_BODY: usize = 64 << 20;
/// Request headers not forwarded (hop by hop, or the follower's own).
const NOT_FORWARDED: [&str; 6] = [
    "host",
    "content-length",
    "connection",
    "transfer-encoding",
    "keep-alive",
    "upgrade",
];

/// Sends `request` to the leader at `url` and answers what it answered: clients may talk
/// to any replica. The caller's credentials go with it; the leader checks them.
async fn forward(
    replicas: Arc<Replicas>,
    request: Request,
    url: String,
    leader: String,
) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_FORWARDED_BODY).await {
        Ok(body) => body,
        Err(error) => {
            return problem_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "a follower forwards request bodies up to {MAX_FORWARDED_BODY} bytes: {error}"
                ),
            );
        }
    };
    let answer = tokio::task::spawn_blocking(move || {
        let mut call = replicas.forwarder.request(parts.method.as_str(), &url);
        for (name, value) in &parts.headers {
            if NOT_FORWARDED.contains(&name.as_str()) {
                continue;
            }
            if let Ok(value) = value.to_str() {
                call = call.set(name.as_str(), value);
            }
        }
        let response = match call.send_bytes(&body) {
            Ok(response) | Err(ureq::Error::Status(_, response)) => response,
            Err(error) => {
                replicas.forget_leader();
                return Err(format!("forwarding to the leader at {url}: {error}"));
            }
        };
        let status = response.status();
        let headers: Vec<(String, String)> = response
            .headers_names()
            .into_iter()
            .filter(|name| !NOT_FORWARDED.contains(&name.as_str()))
            .filter_map(|name| Some((name.clone(), response.header(&name)?.to_owned())))
            .collect();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(response.into_reader(), MAX_FORWARDED_BODY as u64),
            &mut bytes,
        )
        .map_err(|e| format!("reading the leader's answer from {url}: {e}"))?;
        Ok((status, headers, bytes))
    })
    .await;
    match answer {
        Ok(Ok((status, headers, bytes))) => {
            let mut builder = Response::builder().status(status);
            for (name, value) in headers {
                builder = builder.header(name, value);
            }
            builder
                .header(LEADER_HEADER, leader)
                .body(Body::from(bytes))
                .unwrap_or_else(|e| {
                    problem_response(StatusCode::BAD_GATEWAY, format!("the leader's answer: {e}"))
                })
        }
        Ok(Err(error)) => problem_response(StatusCode::BAD_GATEWAY, error),
        Err(error) => problem_response(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_answers_reads_and_sends_the_rest_to_the_leader() {
        assert!(follower_serves(&Method::GET, "/topology"));
        assert!(follower_serves(&Method::GET, "/services/web/timeseries"));
        assert!(follower_serves(&Method::GET, "/analytics/critical"));
        assert!(follower_serves(&Method::POST, "/observations"));
        assert!(!follower_serves(&Method::POST, "/shards"));
        assert!(!follower_serves(&Method::GET, "/shards"));
        assert!(!follower_serves(&Method::GET, "/events/topology"));
        assert!(!follower_serves(&Method::POST, "/topology.dot"));
        assert!(check_name("ctl-a.1").is_ok());
        assert!(check_name("a/b").is_err());
        assert!(check_name("").is_err());
    }
}
