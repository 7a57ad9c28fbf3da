//! What serves a router's clients: a listener per routed port inside the router's
//! namespace, each connection proxied by [`super::proxy`]. It runs in the router's own
//! process ([`super::process`]), or inside the agent (the agent's tests).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};

use super::sockets::SocketMaker;
use super::{
    BACKLOG, Listeners, PortRules, RouterError, RouterRules, RouterShared, Upstreams, accept_loop,
    io_err, proxy,
};

/// A router's listeners and the state its connections share.
pub struct Serving {
    key: String,
    netns: PathBuf,
    /// Whether the origin has IPv6 addresses (the listeners must take them).
    v6: bool,
    shared: Arc<RouterShared>,
    ports: Mutex<Listeners>,
    /// Makes the listeners in the router's namespace.
    inside: SocketMaker,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Serving {
    /// Enters the router's namespace `netns` and its sides' (threads that make sockets
    /// there); listens on nothing yet.
    pub fn start(
        key: &str,
        netns: &Path,
        origin_netns: &Path,
        target_netns: &Path,
        v6: bool,
    ) -> Result<Self, RouterError> {
        let maker =
            |p: &Path| SocketMaker::start(p).map_err(io_err(format!("entering {}", p.display())));
        // The servers' sides keep the client's address on the router's connections.
        let upstream = |p: &Path| {
            SocketMaker::start_upstream(p).map_err(io_err(format!("entering {}", p.display())))
        };
        let shared = Arc::new(RouterShared::new(Upstreams::Namespaces([
            upstream(origin_netns)?,
            upstream(target_netns)?,
        ])));
        Ok(Self {
            key: key.to_owned(),
            inside: maker(netns)?,
            netns: netns.to_owned(),
            v6,
            shared,
            ports: Mutex::new(BTreeMap::new()),
        })
    }

    /// Makes the ports and their rules `want`: listeners opened and closed, rules
    /// replaced in place. Returns the changes made.
    pub async fn set_rules(&self, want: &RouterRules) -> Result<usize, RouterError> {
        let mut changes = 0;
        let have: Vec<u16> = self.lock_ports().keys().copied().collect();
        for port in have.iter().filter(|p| !want.contains_key(p)) {
            if let Some((_, task)) = self.lock_ports().remove(port) {
                task.abort();
                changes += 1;
            }
        }
        for (port, rules) in want {
            let existing = self.lock_ports().get(port).map(|(r, _)| r.clone());
            match existing {
                Some(r) => {
                    let mut cur = r.write().unwrap_or_else(|p| p.into_inner());
                    if **cur != *rules {
                        *cur = Arc::new(rules.clone());
                        changes += 1;
                    }
                }
                None => {
                    let listener = self.listen(*port).await?;
                    let port_rules: Arc<PortRules> = Arc::new(RwLock::new(Arc::new(rules.clone())));
                    let task = tokio::spawn(accept_loop(
                        listener,
                        port_rules.clone(),
                        self.shared.clone(),
                        self.key.clone(),
                    ));
                    self.lock_ports().insert(*port, (port_rules, task));
                    changes += 1;
                }
            }
        }
        Ok(changes)
    }

    fn lock_ports(&self) -> std::sync::MutexGuard<'_, Listeners> {
        self.ports.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A listener on every address of the namespace (IPv4 and IPv6) at `port`.
    async fn listen(&self, port: u16) -> Result<tokio::net::TcpListener, RouterError> {
        let what = || format!("listening on port {port} in {}", self.netns.display());
        // One dual-stack listener; an IPv4 one on a host without IPv6 (booted with
        // ipv6.disable=1: no AF_INET6 sockets), unless the origin has IPv6 addresses.
        let (socket, any) = match self.inside.unconnected(true).await {
            Ok(s) => (s, SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))),
            Err(e) if self.v6 => return Err(io_err(what())(e)),
            Err(_) => (
                self.inside
                    .unconnected(false)
                    .await
                    .map_err(io_err(what()))?,
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
            ),
        };
        socket.set_reuseaddr(true).map_err(io_err(what()))?;
        socket.bind(any).map_err(io_err(what()))?;
        socket.listen(BACKLOG).map_err(io_err(what()))
    }

    /// Counters for the steer's report.
    pub fn measurements(&self) -> Vec<(String, f64)> {
        let s = &self.shared;
        let n = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed) as f64;
        vec![
            ("router_connections".into(), n(&s.connections)),
            (
                "router_requests_origin".into(),
                n(&s.requests[proxy::ORIGIN]),
            ),
            (
                "router_requests_target".into(),
                n(&s.requests[proxy::TARGET]),
            ),
            ("router_connections_not_http".into(), n(&s.not_http)),
            ("router_connections_h2c".into(), n(&s.h2c)),
            (
                "router_connections_tls_origin".into(),
                n(&s.tls[proxy::ORIGIN]),
            ),
            (
                "router_connections_tls_target".into(),
                n(&s.tls[proxy::TARGET]),
            ),
            ("router_connections_failed".into(), n(&s.failed)),
            // 1: the side's server sees the client's address ([`super::transparent`]).
            (
                "router_client_address_origin".into(),
                f64::from(u8::from(s.keeps_client_address(proxy::ORIGIN))),
            ),
            (
                "router_client_address_target".into(),
                f64::from(u8::from(s.keeps_client_address(proxy::TARGET))),
            ),
        ]
    }

    /// Closes the listeners and ends the connections (their tasks end at their next
    /// turn on the runtime).
    pub fn stop(&self) {
        for (_, (_, task)) in std::mem::take(&mut *self.lock_ports()) {
            task.abort();
        }
        self.shared.shutdown.send_replace(true);
    }

    /// [`Self::stop`], then waits (at most `bound`) until every listener's and
    /// connection's task has ended, each closing its socket: the caller may take the
    /// router's interface away after it, and the connections' ends still reach their
    /// clients (a router process gets that from its exit).
    pub async fn stop_and_wait(&self, bound: std::time::Duration) {
        self.stop();
        let end = std::time::Instant::now() + bound;
        while self.shared.slots.available_permits() < super::MAX_CONNECTIONS
            && std::time::Instant::now() < end
        {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}
