//! Request routers: routing by a key from the request (an HTTP/1.1 header), which the
//! kernel cannot do. A connection is placed at its SYN, before its first byte, so a steer
//! whose spec has request rules does not steer to the target node but to this host's
//! router for that origin, which terminates the connection and sends each request to the
//! origin or the target by the rules of its port.
//!
//! ```text
//!  C --Bp--> Vo egress [steer_origin] --(steered: every new connection to a routed port)-->
//!      Vr (host end) --> R: namespace "<prefix>.router.<hash>", eth0 with the origin's
//!                        addresses (NOARP: it answers for them only to steered frames)
//!      router (a listener per routed port in R, in the router's own process):
//!        request matches a rule of its port --> socket made in T's namespace --> T (A:port)
//!        any other request                  --> socket made in O's namespace --> O (A:port)
//!  R's answers --> Vr ingress [steer_return] --> Vo ingress --Bp--> C (as O's)
//! ```
//!
//! - Why a namespace of its own: the router answers as the origin (same address and
//!   port, so the client sees nothing change), and that address is O's and T's already;
//!   in R it is the router's. Steering's kernel path is the one every target uses: R is
//!   simply the target's interface ([`super::Steering::ensure_steer`]).
//! - Why sockets made in O's and T's namespaces: both have the same address; a socket
//!   belongs to the namespace it was made in, so each side is reached at A:port locally,
//!   without routes between namespaces ([`sockets`]).
//! - Per request ([`proxy`]): HTTP/1.1 cut by `weft-reqroute` (bodies stream through),
//!   answers returned in request order. Per stream ([`h2proxy`]): a connection that
//!   starts with HTTP/2's preface (h2c, gRPC) is served by an HTTP/2 server, and each
//!   stream goes over the router's own HTTP/2 connection to its side. A port whose rules
//!   are empty (routed whole) is relayed whole to the target.
//!
//! # Limits
//! - The servers see the client's address: each connection to a side leaves from it
//!   ([`transparent`]); where a side's namespace cannot be prepared for that, the router
//!   connects from the server's own address (A) and says so in its log and counters.
//! - The node's firewall judges each connection to a side by its source address, as it
//!   would judge the client's own connection ([`weft_firewall::ROUTED_MARK`]): a client
//!   the node's rules do not let in gets a 502 after the connect timeout (their drop),
//!   not the server. A connection from A (above) is judged as the node's own.
//!   The flow observer on Vo sees the client's connection as it was.
//! - HTTP/1.1 and h2c by request; TLS (not terminated: the router has no keys) by
//!   connection, whole, on its ClientHello's server name as a `host` rule ([`tls`]); a
//!   connection whose first bytes are none of these goes whole to the origin. An upgrade (WebSocket, h2c by `Upgrade`) or
//!   CONNECT pins the connection to the side its request went to. HTTP/2 streams are
//!   decoded and encoded anew (HPACK), so their bytes differ from the client's.
//! - The connections live in the router's own process ([`process`]; in the agent's
//!   tests, in the agent: [`RouterRuntime`]), which an agent restart leaves serving and
//!   the next agent adopts. A rule change applies to the next request of every
//!   connection; a port added or removed applies to new connections.
//! - The target must be on this host.

pub mod h2proxy;
#[cfg(test)]
mod h2proxy_tests;
pub mod process;
pub mod proxy;
#[cfg(test)]
mod proxy_tests;
pub mod serving;
pub mod sockets;
pub mod tls;
#[cfg(test)]
mod tls_tests;
pub mod transparent;

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use futures::TryStreamExt as _;
use rtnetlink::Handle;
use tokio::task::JoinHandle;
use tracing::{debug, info};
use weft_reqroute::HeaderRule;

use crate::networks::{links, names, namespaces};
use crate::realize::Cidr;
use sockets::SocketMaker;

/// Client connections served at once per router; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 4096;
const BACKLOG: u32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("request router {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("request router: {0}")]
    Link(#[from] links::LinkError),
    #[error("request router namespace: {0}")]
    Namespace(#[from] namespaces::NamespaceError),
    #[error("request router: {0}")]
    Other(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> RouterError {
    let what = what.into();
    move |source| RouterError::Io { what, source }
}

/// What a router does: its ports and their rules (empty: the whole port to the target).
pub type RouterRules = BTreeMap<u16, Vec<HeaderRule>>;

/// A port's rules, read by its connections at every request.
pub type PortRules = RwLock<Arc<Vec<HeaderRule>>>;

/// A client's connection as the router accepted it: who connected, and to what (the
/// origin's address and port, which the target has too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ends {
    pub client: SocketAddr,
    pub dst: SocketAddr,
}

/// How a router reaches its two sides.
enum Upstreams {
    /// A socket made in the side's namespace, to the address the client asked for.
    Namespaces([SocketMaker; 2]),
    /// Tests: each side at an address of its own, in this namespace.
    #[cfg(test)]
    Fixed([SocketAddr; 2]),
}

/// A router's ports: their rules and the task accepting their connections.
type Listeners = BTreeMap<u16, (Arc<PortRules>, JoinHandle<()>)>;

/// What a router's connections share.
pub struct RouterShared {
    upstreams: Upstreams,
    pub requests: [AtomicU64; 2],
    pub connections: AtomicU64,
    pub not_http: AtomicU64,
    /// Connections served as h2c, stream by stream.
    pub h2c: AtomicU64,
    /// TLS connections relayed whole, per side (by their server name).
    pub tls: [AtomicU64; 2],
    pub failed: AtomicU64,
    slots: Arc<tokio::sync::Semaphore>,
    /// Set when the router goes: its connections end.
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl RouterShared {
    /// A connection to `ends.dst` inside the namespace of `side` ([`proxy::ORIGIN`] or
    /// [`proxy::TARGET`]), from the client's address where the namespace allows it
    /// ([`transparent`]).
    pub async fn connect(&self, side: usize, ends: Ends) -> io::Result<tokio::net::TcpStream> {
        let dst = ends.dst;
        let made = match &self.upstreams {
            Upstreams::Namespaces(m) => {
                m[side]
                    .connect(Some(ends.client), dst, proxy::CONNECT_TIMEOUT)
                    .await
            }
            #[cfg(test)]
            Upstreams::Fixed(a) => tokio::net::TcpStream::connect(a[side])
                .await
                .and_then(|s| s.set_nodelay(true).map(|()| s)),
        };
        made.map_err(|e| io::Error::new(e.kind(), format!("{} {dst}: {e}", proxy::SIDES[side])))
    }

    /// Whether `side`'s server sees the client's address on the router's connections.
    pub fn keeps_client_address(&self, side: usize) -> bool {
        match &self.upstreams {
            Upstreams::Namespaces(m) => m[side].transparent(),
            #[cfg(test)]
            Upstreams::Fixed(_) => false,
        }
    }

    fn new(upstreams: Upstreams) -> Self {
        Self {
            upstreams,
            requests: [AtomicU64::new(0), AtomicU64::new(0)],
            connections: AtomicU64::new(0),
            not_http: AtomicU64::new(0),
            h2c: AtomicU64::new(0),
            tls: [AtomicU64::new(0), AtomicU64::new(0)],
            failed: AtomicU64::new(0),
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
            shutdown: tokio::sync::watch::channel(false).0,
        }
    }

    /// Tests: sides at fixed addresses.
    #[cfg(test)]
    pub fn fixed(origin: SocketAddr, target: SocketAddr) -> Self {
        Self::new(Upstreams::Fixed([origin, target]))
    }

    pub fn count_request(&self, side: usize) {
        self.requests[side].fetch_add(1, Relaxed);
    }
}

/// Where a router serves its clients.
#[derive(Debug, Clone)]
pub enum RouterRuntime {
    /// In a process of its own, which outlives the agent ([`process`]).
    Process {
        /// The agent's executable (`/proc/self/exe`).
        exe: PathBuf,
        /// Control sockets and logs.
        run_dir: PathBuf,
    },
    /// Tasks of the agent: its connections end with the agent (the agent's own tests,
    /// whose test binary cannot be the router).
    InProcess,
}

enum Serves {
    Process(process::RouterProcess),
    InProcess(serving::Serving),
}

/// One origin's router.
pub struct Router {
    pub key: String,
    pub netns: PathBuf,
    /// The host end of its veth: the steer's target interface.
    pub host_if: (String, u32),
    pub mac: [u8; 6],
    pub addresses: Vec<Cidr>,
    origin_netns: PathBuf,
    target_netns: PathBuf,
    serves: Serves,
}

impl Router {
    /// Makes (or finds from a previous agent) the router of steer `key`: namespace, veth
    /// (host end `names::router_veth(key)` in the namespace of `host`), the origin's
    /// addresses on its eth0 (`origin`: its interface as [`origin_interface`] read it),
    /// and what serves it (a router process that a previous agent left serving these
    /// namespaces is adopted). `on_gone`: called if its process stops answering.
    #[allow(clippy::too_many_arguments)]
    pub async fn make(
        key: &str,
        netns_prefix: &str,
        host: &Handle,
        origin_netns: &Path,
        target_netns: &Path,
        origin: &OriginInterface,
        runtime: &RouterRuntime,
        on_gone: Box<dyn Fn() + Send + Sync>,
    ) -> Result<Self, RouterError> {
        let netns = namespaces::path_of(&names::router_netns(netns_prefix, key));
        let veth = names::router_veth(key);
        let addresses = origin.addresses.clone();
        if !namespaces::is_mounted(&netns) {
            let path = netns.clone();
            let made = tokio::task::spawn_blocking(move || -> Result<(), RouterError> {
                namespaces::prepare_dir()?;
                let home = namespaces::home().map_err(io_err("opening the agent's namespace"))?;
                namespaces::create(&path, &home, None, || Ok(()))
                    .map(|_| ())
                    .map_err(|(e, _)| RouterError::Namespace(e))
            })
            .await
            .map_err(|e| RouterError::Other(format!("making the namespace: {e}")))?;
            made?;
        }
        let inner = crate::realize::netns::connect(Some(&netns))
            .await
            .map_err(|e| RouterError::Other(format!("netlink in {}: {e}", netns.display())))?;
        let eth0 = links::by_name(&inner.handle, names::NODE_IF).await?;
        let host_end = links::by_name(host, &veth).await?;
        if eth0.is_none() || host_end.is_none() {
            if let Some(h) = &host_end {
                links::delete(host, h.index, &veth).await?;
            }
            let file = std::fs::File::open(&netns)
                .map_err(io_err(format!("opening {}", netns.display())))?;
            use std::os::fd::AsRawFd as _;
            links::add_veth(host, &veth, file.as_raw_fd(), origin.mtu, None).await?;
        }
        let host_end = links::by_name(host, &veth)
            .await?
            .ok_or_else(|| RouterError::Other(format!("{veth} is gone right after it was made")))?;
        let eth0 = links::by_name(&inner.handle, names::NODE_IF)
            .await?
            .ok_or_else(|| {
                RouterError::Other(format!("no {} in {}", names::NODE_IF, netns.display()))
            })?;
        let mac = configure_inside(&inner.handle, eth0.index, &addresses).await?;
        let v6 = addresses.iter().any(|a| a.addr.is_ipv6());
        let serves = match runtime {
            RouterRuntime::Process { exe, run_dir } => {
                let identity = process::Identity {
                    key: key.to_owned(),
                    netns: netns.clone(),
                    origin: origin_netns.to_owned(),
                    target: target_netns.to_owned(),
                    v6,
                };
                Serves::Process(
                    process::RouterProcess::find_or_start(exe, run_dir, &identity, on_gone).await?,
                )
            }
            RouterRuntime::InProcess => Serves::InProcess(serving::Serving::start(
                key,
                &netns,
                origin_netns,
                target_netns,
                v6,
            )?),
        };
        info!(steer = key, namespace = %netns.display(), interface = %veth, "request router made");
        Ok(Self {
            key: key.to_owned(),
            netns,
            host_if: (veth, host_end.index),
            mac,
            addresses,
            origin_netns: origin_netns.to_owned(),
            target_netns: target_netns.to_owned(),
            serves,
        })
    }

    /// Whether this router serves that origin and target, and its process answers.
    pub fn serves(
        &self,
        origin_netns: &Path,
        target_netns: &Path,
        origin: &OriginInterface,
    ) -> bool {
        self.origin_netns == origin_netns
            && self.target_netns == target_netns
            && self.addresses == origin.addresses
            && self.alive()
    }

    /// Whether what serves it answers (its process, when it has one).
    pub fn alive(&self) -> bool {
        match &self.serves {
            Serves::Process(p) => p.alive(),
            Serves::InProcess(_) => true,
        }
    }

    /// Its process's pid.
    pub fn process(&self) -> Option<u32> {
        match &self.serves {
            Serves::Process(p) => Some(p.pid),
            Serves::InProcess(_) => None,
        }
    }

    /// Makes the ports and their rules `want`: listeners opened and closed, rules
    /// replaced in place. Returns the changes made.
    pub async fn set_rules(&self, want: &RouterRules) -> Result<usize, RouterError> {
        match &self.serves {
            Serves::Process(p) => p.set_rules(want).await,
            Serves::InProcess(s) => s.set_rules(want).await,
        }
    }

    /// Counters for the steer's report.
    pub fn measurements(&self) -> Vec<(String, f64)> {
        match &self.serves {
            Serves::Process(p) => p.measurements(),
            Serves::InProcess(s) => s.measurements(),
        }
    }

    /// Stops serving (a router process too), blocking: the agent's exit without its
    /// pins kept.
    pub fn stop_now(&self) {
        match &self.serves {
            Serves::Process(p) => p.stop_now(),
            Serves::InProcess(s) => s.stop(),
        }
    }

    /// The namespaces of the servers it connects to (the origin's and the target's).
    pub fn sides(&self) -> [&Path; 2] {
        [&self.origin_netns, &self.target_netns]
    }

    /// The sides of the router it replaced when it was made (a previous agent's that
    /// served other namespaces), but for its own: what that one gave them is the
    /// caller's to undo ([`transparent::undo`]) where no router connects.
    pub fn replaced_sides(&self) -> Vec<PathBuf> {
        let Serves::Process(p) = &self.serves else {
            return Vec::new();
        };
        p.replaced()
            .map(|old| {
                [&old.origin, &old.target]
                    .into_iter()
                    .filter(|s| !self.sides().contains(&s.as_path()))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Removes the router: its listeners and connections (its process), its veth and
    /// namespace. What [`transparent`] gave its sides is the caller's to undo, where no
    /// other router connects ([`Self::sides`]).
    pub async fn remove(&self, host: &Handle) {
        match &self.serves {
            Serves::Process(p) => p.stop().await,
            Serves::InProcess(s) => s.stop_and_wait(std::time::Duration::from_secs(1)).await,
        }
        let (veth, index) = self.host_if.clone();
        let netns = self.netns.clone();
        info!(steer = %self.key, namespace = %netns.display(), "request router removed");
        if let Err(e) = links::delete(host, index, &veth).await {
            debug!(interface = %veth, error = %e, "removing a request router's veth");
        }
        if let Err(e) = namespaces::remove(&netns) {
            debug!(namespace = %netns.display(), error = %e, "removing a request router's namespace");
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    rules: Arc<PortRules>,
    shared: Arc<RouterShared>,
    key: String,
) {
    loop {
        let Ok(slot) = shared.slots.clone().acquire_owned().await else {
            return;
        };
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                debug!(steer = %key, error = %e, "request router: accept");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let dst = match client.local_addr() {
            Ok(a) => SocketAddr::new(a.ip().to_canonical(), a.port()),
            Err(_) => continue,
        };
        let ends = Ends {
            client: SocketAddr::new(peer.ip().to_canonical(), peer.port()),
            dst,
        };
        shared.connections.fetch_add(1, Relaxed);
        let (rules, shared, key) = (rules.clone(), shared.clone(), key.clone());
        let mut shutdown = shared.shutdown.subscribe();
        tokio::spawn(async move {
            let _slot = slot;
            let served = tokio::select! {
                r = proxy::serve(client, ends, rules, shared.clone()) => r,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            match served {
                Ok(o) => {
                    if o.not_http {
                        shared.not_http.fetch_add(1, Relaxed);
                    }
                    if let Some(side) = o.tls {
                        shared.tls[side].fetch_add(1, Relaxed);
                    }
                }
                Err(e) => {
                    shared.failed.fetch_add(1, Relaxed);
                    debug!(steer = %key, client = %peer, %dst, error = %e, "request router: connection ended with an error");
                }
            }
        });
    }
}

/// What a router copies of its origin's eth0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginInterface {
    /// Its addresses (link-local ones left out), sorted.
    pub addresses: Vec<Cidr>,
    pub mtu: u32,
}

fn link_local(c: &Cidr) -> bool {
    matches!(c.addr, IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80)
}

/// Reads the origin node's eth0 inside its namespace.
pub async fn origin_interface(netns: &Path) -> Result<OriginInterface, RouterError> {
    let conn = crate::realize::netns::connect(Some(netns))
        .await
        .map_err(|e| RouterError::Other(format!("netlink in {}: {e}", netns.display())))?;
    let eth0 = links::by_name(&conn.handle, names::NODE_IF)
        .await?
        .ok_or_else(|| {
            RouterError::Other(format!("no {} in {}", names::NODE_IF, netns.display()))
        })?;
    let addresses: Vec<Cidr> = links::addresses(&conn.handle, eth0.index)
        .await?
        .into_iter()
        .filter(|c| !c.addr.is_loopback() && !link_local(c))
        .collect();
    if addresses.is_empty() {
        return Err(RouterError::Other(format!(
            "the origin ({}) has no address on {}",
            netns.display(),
            names::NODE_IF
        )));
    }
    Ok(OriginInterface {
        addresses,
        mtu: eth0.mtu,
    })
}

/// Inside R: lo up; eth0 without ARP (its neighbours are its own MAC: the steer's return
/// path addresses every answer to the client anyway), up, with `addresses` and a default
/// route of each family through it. Returns eth0's MAC.
async fn configure_inside(
    h: &Handle,
    eth0: u32,
    addresses: &[Cidr],
) -> Result<[u8; 6], RouterError> {
    if let Some(lo) = links::by_name(h, "lo").await? {
        links::set_up(h, lo.index, "lo", None, true).await?;
    }
    h.link()
        .set(
            rtnetlink::LinkUnspec::new_with_index(eth0)
                .arp(false)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(|e| {
            RouterError::Other(format!("setting {} up without ARP: {e}", names::NODE_IF))
        })?;
    let have = links::addresses(h, eth0).await?;
    for c in addresses {
        if !have.contains(c) {
            add_address_nodad(h, eth0, *c).await?;
        }
    }
    // The origin's former addresses (a router found from before a re-addressing).
    for c in have
        .iter()
        .filter(|c| !addresses.contains(c) && !link_local(c))
    {
        links::del_address(h, eth0, *c).await?;
    }
    for v6 in [false, true] {
        if !addresses.iter().any(|c| c.addr.is_ipv6() == v6) {
            continue;
        }
        let msg = if v6 {
            rtnetlink::RouteMessageBuilder::<Ipv6Addr>::new()
                .output_interface(eth0)
                .scope(rtnetlink::packet_route::route::RouteScope::Link)
                .build()
        } else {
            rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
                .output_interface(eth0)
                .scope(rtnetlink::packet_route::route::RouteScope::Link)
                .build()
        };
        h.route().add(msg).replace().execute().await.map_err(|e| {
            RouterError::Other(format!("the default route through {}: {e}", names::NODE_IF))
        })?;
    }
    let link = h
        .link()
        .get()
        .match_index(eth0)
        .execute()
        .try_next()
        .await
        .map_err(|e| RouterError::Other(format!("reading {}: {e}", names::NODE_IF)))?
        .ok_or_else(|| RouterError::Other(format!("{} is gone", names::NODE_IF)))?;
    link.attributes
        .iter()
        .find_map(|a| match a {
            rtnetlink::packet_route::link::LinkAttribute::Address(m) if m.len() == 6 => {
                let mut out = [0u8; 6];
                out.copy_from_slice(m);
                Some(out)
            }
            _ => None,
        })
        .ok_or_else(|| RouterError::Other(format!("{} has no MAC address", names::NODE_IF)))
}

/// An address without duplicate address detection (IPv6: usable at once; R's address
/// is the origin's on purpose).
async fn add_address_nodad(h: &Handle, index: u32, c: Cidr) -> Result<(), RouterError> {
    let mut req = h.address().add(index, c.addr, c.prefix);
    if c.addr.is_ipv6() {
        let m = req.message_mut();
        m.header.flags |= rtnetlink::packet_route::address::AddressHeaderFlags::Nodad;
    }
    match req.execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(m)) if -m.raw_code() == libc::EEXIST => Ok(()),
        Err(e) => Err(RouterError::Other(format!("adding address {c}: {e}"))),
    }
}
