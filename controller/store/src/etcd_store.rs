//! The etcd back end: the [`Store`] trait on an etcd v3 cluster (Debian's `etcd-server`,
//! 3.4 or later), through etcd's own JSON gateway of its v3 API (`POST /v3/kv/range`,
//! `/v3/kv/txn`, `/v3/lease/...` on every client URL): blocking calls, as the trait is, with
//! no protobuf compiler at build time.
//!
//! - Keys live under a prefix (`weft/` by default), so a cluster can hold other data.
//! - Every write is one etcd transaction; etcd acknowledges it once a quorum has it on
//!   disk, so an acknowledged write survives the loss of a minority of members.
//! - **Fence.** [`EtcdStore::acquire_fence`] makes this store the only writer: it takes an
//!   election key under a lease (waiting while another holder's lease lives), and from then
//!   on every write carries a compare on that key's create revision. If the lease is lost
//!   (the process stalled past its TTL and another controller took over), every later write
//!   fails with [`FENCED`] instead of overwriting the new holder's state.
//! - Endpoints are tried in order; a request that could not be sent (connection refused)
//!   goes to the next one; a request whose outcome is unknown (a timeout after it was sent)
//!   fails rather than being sent twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::{Compare, Op, Store, StoreError};

/// The start of a write refused because another controller holds the fence.
pub const FENCED: &str = "fenced";

/// Keys returned per range request while scanning.
const PAGE: usize = 1_000;

/// How this store finds and names its cluster.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs (`http://127.0.0.1:2379`), tried in order.
    pub endpoints: Vec<String>,
    /// Prefix of every key (`weft/`).
    pub prefix: String,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl EtcdConfig {
    /// Parses `etcd://host:port[,host:port...][/prefix]` (or `etcd+http://`).
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let rest = url
            .strip_prefix("etcd://")
            .or_else(|| url.strip_prefix("etcd+http://"))
            .ok_or_else(|| {
                StoreError(format!(
                    "{url:?}: an etcd store is etcd://HOST:PORT[,HOST:PORT...][/PREFIX]"
                ))
            })?;
        let (hosts, prefix) = match rest.split_once('/') {
            Some((hosts, prefix)) if !prefix.is_empty() => {
                (hosts, format!("{}/", prefix.trim_end_matches('/')))
            }
            Some((hosts, _)) => (hosts, "weft/".to_owned()),
            None => (rest, "weft/".to_owned()),
        };
        let endpoints: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("http://{h}"))
            .collect();
        if endpoints.is_empty() {
            return Err(StoreError(format!("{url:?}: no etcd endpoint (HOST:PORT)")));
        }
        for host in hosts.split(',').filter(|h| !h.is_empty()) {
            let port_ok = host
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !port_ok {
                return Err(StoreError(format!(
                    "{url:?}: endpoint {host:?} is not HOST:PORT"
                )));
            }
        }
        Ok(Self {
            endpoints,
            prefix,
            timeout: Duration::from_secs(5),
        })
    }
}

/// The fence this store writes under: the election key and its create revision.
#[derive(Debug)]
struct Fence {
    key: String,
    create_revision: i64,
    lease: i64,
    lost: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

#[derive(Debug)]
pub struct EtcdStore {
    config: EtcdConfig,
    agent: ureq::Agent,
    /// The endpoint that answered last.
    current: AtomicUsize,
    fence: std::sync::RwLock<Option<Fence>>,
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

fn unb64(value: &Value) -> Result<Vec<u8>, StoreError> {
    match value.as_str() {
        None => Ok(Vec::new()),
        Some(s) => B64
            .decode(s)
            .map_err(|e| StoreError(format!("etcd answered bad base64: {e}"))),
    }
}

/// etcd writes 64-bit integers as JSON strings.
fn int(value: &Value) -> i64 {
    match value {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The first key after every key starting with `prefix` (etcd's `range_end`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: to the end of the keyspace.
    vec![0]
}

impl EtcdStore {
    /// Connects to `config`'s cluster and checks that it answers.
    pub fn open(config: EtcdConfig) -> Result<Self, StoreError> {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(2))
            .timeout(config.timeout)
            .build();
        let store = Self {
            config,
            agent,
            current: AtomicUsize::new(0),
            fence: std::sync::RwLock::new(None),
        };
        store.call("/v3/maintenance/status", &json!({}))?;
        Ok(store)
    }

    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    fn key(&self, key: &str) -> String {
        b64(format!("{}{key}", self.config.prefix).as_bytes())
    }

    fn strip<'k>(&self, key: &'k str) -> &'k str {
        key.strip_prefix(self.config.prefix.as_str()).unwrap_or(key)
    }

    /// POSTs `body` to `path` on the first endpoint that takes it.
    pub(crate) fn call(&self, path: &str, body: &Value) -> Result<Value, StoreError> {
        let n = self.config.endpoints.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut errors = Vec::new();
        for i in 0..n {
            let at = (first + i) % n;
            let url = format!("{}{path}", self.config.endpoints[at]);
            match self.agent.post(&url).send_json(body.clone()) {
                Ok(response) => {
                    self.current.store(at, Ordering::Relaxed);
                    return response
                        .into_json::<Value>()
                        .map_err(|e| StoreError(format!("reading etcd's answer from {url}: {e}")));
                }
                Err(ureq::Error::Status(code, response)) => {
                    let text = response.into_string().unwrap_or_default();
                    let message = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| {
                            v.get("message")
                                .or_else(|| v.get("error"))
                                .and_then(|m| m.as_str())
                                .map(str::to_owned)
                        })
                        .unwrap_or(text);
                    // "no leader" / "leader changed" mean the request was not applied:
                    // another member may have a leader.
                    if code == 503 || message.contains("leader") {
                        errors.push(format!("{url}: {code} {message}"));
                        continue;
                    }
                    return Err(StoreError(format!("etcd {url}: {code} {message}")));
                }
                Err(ureq::Error::Transport(t)) => {
                    let not_sent = matches!(
                        t.kind(),
                        ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Dns
                    );
                    if not_sent {
                        errors.push(format!("{url}: {t}"));
                        continue;
                    }
                    // Sent, outcome unknown: never sent twice.
                    return Err(StoreError(format!(
                        "etcd {url}: {t} (the write may or may not have been applied)"
                    )));
                }
            }
        }
        Err(StoreError(format!(
            "no etcd endpoint answered: {}",
            errors.join("; ")
        )))
    }

    /// The fence compare of every write, when this store holds one.
    fn fence_compares(&self) -> Result<Vec<Value>, StoreError> {
        let fence = self.fence.read().unwrap_or_else(|e| e.into_inner());
        match fence.as_ref() {
            None => Ok(Vec::new()),
            Some(f) if f.lost.load(Ordering::SeqCst) => Err(StoreError(format!(
                "{FENCED}: the lease on {} was lost; another controller may hold it",
                f.key
            ))),
            Some(f) => Ok(vec![json!({
                "key": b64(f.key.as_bytes()),
                "target": "CREATE",
                "result": "EQUAL",
                "create_revision": f.create_revision.to_string(),
            })]),
        }
    }

    /// One transaction: `compares` (with the fence's) then `success`. Ok(false) when a
    /// compare of the caller failed; Err([`FENCED`]) when the fence did.
    fn transact(&self, compares: Vec<Value>, success: Vec<Value>) -> Result<Value, StoreError> {
        let fence = self.fence_compares()?;
        let fenced = !fence.is_empty();
        let mut all = fence;
        all.extend(compares);
        let fence_key = self
            .fence
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|f| (f.key.clone(), f.create_revision));
        // The failure branch reads the fence key, to tell a lost fence from a failed
        // compare of the caller.
        let failure = match &fence_key {
            Some((key, _)) => vec![json!({"request_range": {"key": b64(key.as_bytes())}})],
            None => Vec::new(),
        };
        let answer = self.call(
            "/v3/kv/txn",
            &json!({"compare": all, "success": success, "failure": failure}),
        )?;
        if answer["succeeded"].as_bool() != Some(true)
            && fenced
            && let Some((key, revision)) = fence_key
        {
            let held =
                answer["responses"][0]["response_range"]["kvs"][0]["create_revision"].clone();
            if int(&held) != revision {
                if let Some(f) = self
                    .fence
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                {
                    f.lost.store(true, Ordering::SeqCst);
                }
                return Err(StoreError(format!(
                    "{FENCED}: {key} is no longer this controller's (another controller holds it)"
                )));
            }
        }
        Ok(answer)
    }

    fn compare(&self, key: &str, expected: Option<&[u8]>) -> Value {
        match expected {
            Some(value) => json!({
                "key": self.key(key),
                "target": "VALUE",
                "result": "EQUAL",
                "value": b64(value),
            }),
            None => json!({
                "key": self.key(key),
                "target": "CREATE",
                "result": "EQUAL",
                "create_revision": "0",
            }),
        }
    }

    fn op(&self, key: &str, value: Option<&[u8]>) -> Value {
        match value {
            Some(value) => json!({"request_put": {"key": self.key(key), "value": b64(value)}}),
            None => json!({"request_delete_range": {"key": self.key(key)}}),
        }
    }

    /// Up to `limit` pairs of keys in [`from`, `end`).
    fn range(
        &self,
        from: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let answer = self.call(
            "/v3/kv/range",
            &json!({"key": b64(from), "range_end": b64(end), "limit": limit.to_string()}),
        )?;
        let mut out = Vec::new();
        for kv in answer["kvs"].as_array().into_iter().flatten() {
            let key = String::from_utf8(unb64(&kv["key"])?)
                .map_err(|_| StoreError("etcd holds a key that is not UTF-8".into()))?;
            out.push((self.strip(&key).to_owned(), unb64(&kv["value"])?));
        }
        Ok(out)
    }

    /// Every pair from `start` (at or after `prefix`) within `prefix`, at most `limit`.
    fn scan(
        &self,
        prefix: &str,
        start: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let full_prefix = format!("{}{prefix}", self.config.prefix);
        let end = prefix_end(full_prefix.as_bytes());
        let mut from = if start > prefix {
            format!("{}{start}", self.config.prefix).into_bytes()
        } else {
            full_prefix.into_bytes()
        };
        let mut out = Vec::new();
        while out.len() < limit {
            let page = self.range(&from, &end, PAGE.min(limit - out.len()))?;
            let done = page.len() < PAGE.min(limit - out.len());
            if let Some((last, _)) = page.last() {
                // The next page starts just after the last key.
                from = format!("{}{last}\0", self.config.prefix).into_bytes();
            }
            out.extend(page);
            if done {
                break;
            }
        }
        Ok(out)
    }

    /// Makes this store the only writer under `key` (an election key, outside the store's
    /// prefix or in it): grants a lease of `ttl`, waits (up to `wait`) until no one else
    /// holds `key`, takes it, and keeps the lease alive from a thread. Every write from now
    /// on is fenced. Returns the lease id.
    pub fn acquire_fence(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<i64, StoreError> {
        let ttl_s = ttl.as_secs().max(2);
        let grant = self.call("/v3/lease/grant", &json!({"TTL": ttl_s.to_string()}))?;
        let lease = int(&grant["ID"]);
        if lease == 0 {
            return Err(StoreError(format!("etcd granted no lease: {grant}")));
        }
        let deadline = Instant::now() + wait;
        let key_b64 = b64(key.as_bytes());
        loop {
            let answer = self.call(
                "/v3/kv/txn",
                &json!({
                    "compare": [{"key": key_b64, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
                    "success": [
                        {"request_put": {"key": key_b64, "value": b64(holder.as_bytes()), "lease": lease.to_string()}},
                        {"request_range": {"key": key_b64}},
                    ],
                    "failure": [{"request_range": {"key": key_b64}}],
                }),
            )?;
            if answer["succeeded"].as_bool() == Some(true) {
                let create_revision =
                    int(&answer["responses"][1]["response_range"]["kvs"][0]["create_revision"]);
                let lost = Arc::new(AtomicBool::new(false));
                let stop = Arc::new(AtomicBool::new(false));
                self.keep_alive(lease, ttl_s, lost.clone(), stop.clone());
                *self.fence.write().unwrap_or_else(|e| e.into_inner()) = Some(Fence {
                    key: key.to_owned(),
                    create_revision,
                    lease,
                    lost,
                    stop,
                });
                return Ok(lease);
            }
            if Instant::now() >= deadline {
                let holder = answer["responses"][0]["response_range"]["kvs"][0]["value"].clone();
                let holder = String::from_utf8_lossy(&unb64(&holder)?).into_owned();
                let _ = self.call("/v3/lease/revoke", &json!({"ID": lease.to_string()}));
                return Err(StoreError(format!(
                    "{key} is held by {holder:?}: another controller writes this store"
                )));
            }
            // Keep our own lease alive while waiting for the other holder's to lapse.
            let _ = self.call("/v3/lease/keepalive", &json!({"ID": lease.to_string()}));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether this store holds its fence (false before [`Self::acquire_fence`] and after
    /// losing it).
    pub fn holds_fence(&self) -> bool {
        self.fence
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|f| !f.lost.load(Ordering::SeqCst))
    }

    /// Gives the fence up (revokes the lease: the key goes at once).
    pub fn release_fence(&self) {
        if let Some(f) = self.fence.write().unwrap_or_else(|e| e.into_inner()).take() {
            f.stop.store(true, Ordering::SeqCst);
            let _ = self.call("/v3/lease/revoke", &json!({"ID": f.lease.to_string()}));
        }
    }

    /// Who holds the election key `key` (its value), if anyone.
    pub fn holder(&self, key: &str) -> Result<Option<String>, StoreError> {
        let answer = self.call("/v3/kv/range", &json!({"key": b64(key.as_bytes())}))?;
        match answer["kvs"].as_array().and_then(|kvs| kvs.first()) {
            Some(kv) => Ok(Some(
                String::from_utf8_lossy(&unb64(&kv["value"])?).into_owned(),
            )),
            None => Ok(None),
        }
    }

    /// Keeps `key` (outside the store's prefix or in it, as given) set to `value` while
    /// this process lives: under a lease of `ttl` renewed from a thread, put again under a
    /// new lease if the old one lapsed (etcd was away longer than `ttl`). A process that
    /// dies takes the key with it after `ttl`: membership.
    pub fn advertise(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let ttl_s = ttl.as_secs().max(2);
        let mut lease = put_under_new_lease(self, key, value, ttl_s)?;
        let client = EtcdStore::open(self.config.clone())?;
        let (key, value) = (key.to_owned(), value.to_vec());
        let every = Duration::from_millis(ttl_s * 1000 / 3);
        std::thread::Builder::new()
            .name("etcd-advertise".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    match client.call("/v3/lease/keepalive", &json!({"ID": lease.to_string()})) {
                        Ok(answer) if int(&answer["result"]["TTL"]) > 0 => {}
                        // Gone (or etcd unreachable): put it again under a new lease, and
                        // retry at the next turn if that fails too.
                        _ => {
                            if let Ok(new) = put_under_new_lease(&client, &key, &value, ttl_s) {
                                lease = new;
                            }
                        }
                    }
                }
            })
            .map_err(|e| StoreError(format!("starting the advertising thread: {e}")))?;
        Ok(())
    }

    /// Puts `key` (as given, unfenced) = `value` for good.
    pub fn advertise_forever(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.call(
            "/v3/kv/put",
            &json!({"key": b64(key.as_bytes()), "value": b64(value)}),
        )?;
        Ok(())
    }

    fn keep_alive(&self, lease: i64, ttl_s: u64, lost: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
        let config = self.config.clone();
        let every = Duration::from_millis(ttl_s * 1000 / 3);
        std::thread::Builder::new()
            .name("etcd-lease".into())
            .spawn(move || {
                // Its own client: a keepalive must not wait behind a slow write.
                let Ok(client) = EtcdStore::open(config) else {
                    lost.store(true, Ordering::SeqCst);
                    return;
                };
                let mut last_ok = Instant::now();
                while !stop.load(Ordering::SeqCst) {
                    match client.call("/v3/lease/keepalive", &json!({"ID": lease.to_string()})) {
                        Ok(answer) if int(&answer["result"]["TTL"]) > 0 => last_ok = Instant::now(),
                        Ok(_) => {
                            // TTL 0: the lease is gone.
                            lost.store(true, Ordering::SeqCst);
                            return;
                        }
                        Err(_) if last_ok.elapsed() >= Duration::from_secs(ttl_s) => {
                            lost.store(true, Ordering::SeqCst);
                            return;
                        }
                        Err(_) => {}
                    }
                    std::thread::sleep(every);
                }
            })
            .ok();
    }
}

/// Puts `key` = `value` under a new lease of `ttl_s` seconds; returns the lease.
fn put_under_new_lease(
    client: &EtcdStore,
    key: &str,
    value: &[u8],
    ttl_s: u64,
) -> Result<i64, StoreError> {
    let grant = client.call("/v3/lease/grant", &json!({"TTL": ttl_s.to_string()}))?;
    let lease = int(&grant["ID"]);
    if lease == 0 {
        return Err(StoreError(format!("etcd granted no lease: {grant}")));
    }
    client.call(
        "/v3/kv/put",
        &json!({"key": b64(key.as_bytes()), "value": b64(value), "lease": lease.to_string()}),
    )?;
    Ok(lease)
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        if let Some(f) = self
            .fence
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            f.stop.store(true, Ordering::SeqCst);
        }
    }
}

impl Store for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let answer = self.call("/v3/kv/range", &json!({"key": self.key(key)}))?;
        match answer["kvs"].as_array().and_then(|kvs| kvs.first()) {
            Some(kv) => Ok(Some(unb64(&kv["value"])?)),
            None => Ok(None),
        }
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.transact(Vec::new(), vec![self.op(key, Some(value))])?;
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let answer = self.transact(Vec::new(), vec![self.op(key, None)])?;
        Ok(int(&answer["responses"][0]["response_delete_range"]["deleted"]) > 0)
    }

    fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.scan(prefix, "", usize::MAX)
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let answer = self.transact(vec![self.compare(key, expected)], vec![self.op(key, new)])?;
        Ok(answer["succeeded"].as_bool() == Some(true))
    }

    fn txn(&self, compares: &[Compare<'_>], ops: &[Op<'_>]) -> Result<bool, StoreError> {
        let compares = compares.iter().map(|(k, v)| self.compare(k, *v)).collect();
        let ops = ops.iter().map(|(k, v)| self.op(k, *v)).collect();
        let answer = self.transact(compares, ops)?;
        Ok(answer["succeeded"].as_bool() == Some(true))
    }

    fn scan_from(
        &self,
        prefix: &str,
        start: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.scan(prefix, start, limit)
    }
}
