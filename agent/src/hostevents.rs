//! One rtnetlink listener for the host: links, IPv4/IPv6 addresses, IPv4/IPv6 routes and
//! neighbours, in the agent's own network namespace and in every namespace added with
//! [`HostEvents::watch_netns`], fanned out as typed [`HostEvent`]s to any number of
//! subscribers.
//!
//! ## One socket per namespace
//! Each watched namespace has its own multicast socket, opened by a short-lived thread
//! that `setns(2)`s into the namespace (a netlink socket stays bound to the namespace it
//! was created in) and read by a task on the agent's runtime. The alternative, one socket
//! with `NETLINK_LISTEN_ALL_NSID`, was not taken because:
//! - it delivers the messages of every namespace that has an nsid in the agent's namespace
//!   (the kernel allocates one for the peer of every cross-namespace veth), so unrelated
//!   churn shares, and can overrun, the one receive buffer, and an overrun forces a resync
//!   of *every* namespace; here an overrun is per namespace;
//! - it needs nsid bookkeeping (allocate with `RTM_NEWNSID`, follow `RTM_DELNSID`, ids are
//!   recycled) and `recvmsg` with ancillary data that the netlink crates do not parse.
//!
//! The cost: one fd and one idle task per namespace, and a socket holds a reference on its
//! namespace, so a watched namespace whose file was removed (`ip netns del`) lives on until
//! it is unwatched. The listener therefore checks every [`Config::netns_check`] that the
//! file still names the namespace it opened (device and inode); when it does not, the
//! watch ends by itself and subscribers get [`Change::NetnsGone`].
//!
//! ## What subscribers must do
//! Events only report changes: a subscriber reads the state it cares about with a dump
//! *after* subscribing (so nothing falls between the dump and the first event) and applies
//! events on top; events may repeat what the dump already showed. It must dump again
//! (resync) when it receives
//! - [`Received::Lagged`]: it fell behind the bounded channel and missed events of any
//!   namespace (counted in [`Stats::lagged`]);
//! - [`Change::Overrun`]: the kernel dropped messages for that namespace because its
//!   socket's receive buffer was full (`ENOBUFS`; counted in [`Stats::overruns`]). The
//!   socket keeps `NETLINK_NO_ENOBUFS` off on purpose: without the error a loss is silent.
//!
//! `RTM_NEWLINK` is sent for any change of a link (flags, name, master...), so
//! [`Change::LinkNew`] means "exists now, with these properties".

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtnetlink::packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::{
    RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage},
    route::{RouteAddress, RouteAttribute, RouteMessage},
};
use rtnetlink::sys::{SocketAddr, protocols::NETLINK_ROUTE};
use tokio::io::unix::AsyncFd;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// Legacy multicast group bits (`RTMGRP_*`): links, IPv4/IPv6 addresses and routes.
pub const GROUPS_DEFAULT: u32 = libc::RTMGRP_LINK as u32
    | libc::RTMGRP_IPV4_IFADDR as u32
    | libc::RTMGRP_IPV4_ROUTE as u32
    | libc::RTMGRP_IPV6_IFADDR as u32
    | libc::RTMGRP_IPV6_ROUTE as u32;
/// [`GROUPS_DEFAULT`] and neighbours. Neighbour entries change all the time on a busy host
/// (every state transition of every entry: thousands a second during a migration burst),
/// so they are listened to only by whoever needs them.
#[allow(dead_code, reason = "an option of Config::groups no caller takes yet")]
pub const GROUPS_WITH_NEIGHBOURS: u32 = GROUPS_DEFAULT | libc::RTMGRP_NEIGH as u32;

/// One datagram read; notifications are one message of a few KiB each.
const READ_BUF: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HostEventsError {
    #[error("opening network namespace {path}: {source}")]
    NetnsOpen { path: PathBuf, source: io::Error },
    #[error("entering network namespace {path}: {source}")]
    NetnsEnter { path: PathBuf, source: io::Error },
    #[error("netlink listener socket in {netns}: {source}")]
    Socket { netns: String, source: io::Error },
}

/// Something changed on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEvent {
    /// The watched namespace file; `None` is the agent's own namespace.
    pub netns: Option<PathBuf>,
    /// When the listener read the change from the kernel.
    pub at: Instant,
    pub change: Change,
}

impl HostEvent {
    /// Whether a subscriber must read the state of `netns` again (events were lost).
    #[cfg_attr(not(test), allow(dead_code, reason = "used by tests"))]
    pub fn needs_resync(&self) -> bool {
        matches!(self.change, Change::Overrun)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A link exists now (new, or any of its properties changed). `kind` is the
    /// `IFLA_INFO_KIND` ("veth", "tun", "bridge"...), when the kernel sent it.
    LinkNew {
        ifindex: u32,
        name: String,
        up: bool,
        kind: Option<String>,
    },
    LinkDel {
        ifindex: u32,
        name: String,
    },
    AddrNew {
        ifindex: u32,
        addr: IpAddr,
        prefix: u8,
    },
    AddrDel {
        ifindex: u32,
        addr: IpAddr,
        prefix: u8,
    },
    /// `dst`/`prefix` is `0.0.0.0/0` or `::/0` for a default route; `ifindex` is `None` for
    /// multipath routes; `table` is the routing table (254 = main, 255 = local).
    RouteNew {
        dst: IpAddr,
        prefix: u8,
        gateway: Option<IpAddr>,
        ifindex: Option<u32>,
        table: u32,
    },
    RouteDel {
        dst: IpAddr,
        prefix: u8,
        gateway: Option<IpAddr>,
        ifindex: Option<u32>,
        table: u32,
    },
    /// An IPv4/IPv6 neighbour entry exists now (new or changed); `lladdr` as the kernel
    /// sent it (none while the entry is incomplete).
    NeighNew {
        ifindex: u32,
        addr: IpAddr,
        lladdr: Option<Vec<u8>>,
    },
    NeighDel {
        ifindex: u32,
        addr: IpAddr,
    },
    /// The kernel dropped messages for this namespace (receive buffer full): resync it.
    Overrun,
    /// The watched namespace file is gone or names another namespace: the watch ended.
    NetnsGone,
}

/// What a [`Subscription`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Event(HostEvent),
    /// The subscriber fell behind and `missed` events (of any namespace) are lost: it must
    /// resync everything it follows.
    Lagged {
        missed: u64,
    },
}

/// Listener settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Events buffered per subscriber before it lags.
    pub capacity: usize,
    /// Receive buffer per socket (set with `SO_RCVBUFFORCE`, so beyond `rmem_max` as
    /// root; memory is charged only while messages wait in it).
    pub rcvbuf: usize,
    /// How often a watch checks that its namespace file still names its namespace.
    pub netns_check: Duration,
    /// Multicast groups listened to ([`GROUPS_DEFAULT`] or [`GROUPS_WITH_NEIGHBOURS`]).
    pub groups: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            // A burst of a thousand network nodes made at once is ~20,000 events of the
            // agent's own while the driver is busy making them; fewer slots and the driver
            // lags and reads everything back again for nothing.
            capacity: 65536,
            rcvbuf: 4 << 20,
            netns_check: Duration::from_secs(1),
            groups: GROUPS_DEFAULT,
        }
    }
}

/// Counters, all since start.
#[derive(Debug, Default)]
struct Counters {
    events: AtomicU64,
    overruns: AtomicU64,
    lagged: AtomicU64,
    undecodable: AtomicU64,
}

/// A snapshot of the listener's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Events sent to subscribers.
    pub events: u64,
    /// Receive-buffer overruns (`ENOBUFS`), each announced as [`Change::Overrun`].
    pub overruns: u64,
    /// Events subscribers missed because they fell behind (sum over subscribers).
    pub lagged: u64,
    /// Messages that could not be decoded (skipped).
    pub undecodable: u64,
    /// Namespaces watched now, besides the agent's own.
    pub watched: usize,
}

struct Watch {
    identity: (u64, u64),
    task: JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    tx: broadcast::Sender<HostEvent>,
    counters: Arc<Counters>,
    config: Config,
    own: JoinHandle<()>,
    /// Touched only by watch/unwatch, never per event.
    watches: Mutex<HashMap<PathBuf, Watch>>,
    /// Sockets opened inside namespaces by whoever made them ([`HostEvents::adopt`]),
    /// with the identity of the namespace, for the next watch of that path.
    pending: Mutex<HashMap<PathBuf, Adopted>>,
}

/// A socket adopted for a namespace: the namespace's identity (device, inode) and the socket.
type Adopted = ((u64, u64), rtnetlink::sys::Socket);

/// A netlink socket opened inside a namespace by [`HostEvents::socket_here`], not bound
/// yet: it receives nothing until a watch of the namespace starts with it.
pub struct NetnsSocket(rtnetlink::sys::Socket);

impl std::fmt::Debug for NetnsSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("NetnsSocket")
            .field(&self.0.as_raw_fd())
            .finish()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.own.abort();
    }
}

/// The host's netlink listener. Cheap to clone; the sockets close when the last clone goes.
#[derive(Clone)]
pub struct HostEvents {
    shared: Arc<Shared>,
}

/// A subscriber's end of the fan-out.
pub struct Subscription {
    rx: broadcast::Receiver<HostEvent>,
    counters: Arc<Counters>,
}

impl Subscription {
    /// The next event, or `None` once the listener is gone.
    pub async fn recv(&mut self) -> Option<Received> {
        match self.rx.recv().await {
            Ok(ev) => Some(Received::Event(ev)),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                self.counters.lagged.fetch_add(missed, Relaxed);
                Some(Received::Lagged { missed })
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

impl HostEvents {
    /// Starts listening in the agent's own namespace. Must be called on a tokio runtime.
    pub fn start(config: Config) -> Result<Self, HostEventsError> {
        let (tx, _) = broadcast::channel(config.capacity.max(1));
        let counters = Arc::new(Counters::default());
        let socket = open_socket(config.rcvbuf, config.groups)
            .and_then(register)
            .map_err(|source| HostEventsError::Socket {
                netns: "(agent namespace)".into(),
                source,
            })?;
        let own = tokio::spawn(listen(
            socket,
            None,
            None,
            tx.clone(),
            counters.clone(),
            config.netns_check,
        ));
        Ok(Self {
            shared: Arc::new(Shared {
                tx,
                counters,
                config,
                own,
                watches: Mutex::new(HashMap::new()),
                pending: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn subscribe(&self) -> Subscription {
        Subscription {
            rx: self.shared.tx.subscribe(),
            counters: self.shared.counters.clone(),
        }
    }

    /// Starts listening in the namespace of `path` (a netns file). Changes made after this
    /// returns are delivered. Watching a namespace already watched is a no-op, unless the
    /// file now names another namespace (deleted and made again): then the watch restarts.
    pub async fn watch_netns(&self, path: &Path) -> Result<(), HostEventsError> {
        let file = std::fs::File::open(path).map_err(|source| HostEventsError::NetnsOpen {
            path: path.to_owned(),
            source,
        })?;
        let identity = file
            .metadata()
            .map(|m| (m.dev(), m.ino()))
            .map_err(|source| HostEventsError::NetnsOpen {
                path: path.to_owned(),
                source,
            })?;
        let adopted = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(path)
            .filter(|(id, _)| *id == identity)
            .map(|(_, s)| s);
        if self.watching(path, identity) {
            return Ok(());
        }
        let (rcvbuf, groups) = (self.shared.config.rcvbuf, self.shared.config.groups);
        let socket = match adopted {
            // Opened inside the namespace when it was made: no thread, no setns.
            Some(s) => bind_socket(s, groups),
            None => in_netns_fd(file, path, move || open_socket(rcvbuf, groups)).await?,
        }
        .and_then(register)
        .map_err(|source| HostEventsError::Socket {
            netns: path.display().to_string(),
            source,
        })?;
        let task = tokio::spawn(listen(
            socket,
            Some(path.to_owned()),
            Some(identity),
            self.shared.tx.clone(),
            self.shared.counters.clone(),
            self.shared.config.netns_check,
        ));
        let mut watches = self
            .shared
            .watches
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // A concurrent watch of the same namespace may have won: keep one (either is fine).
        watches.insert(path.to_owned(), Watch { identity, task });
        Ok(())
    }

    fn watching(&self, path: &Path, identity: (u64, u64)) -> bool {
        let watches = self
            .shared
            .watches
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        watches
            .get(path)
            .is_some_and(|w| w.identity == identity && !w.task.is_finished())
    }

    /// Opens, in the calling thread's namespace, the socket a watch of that namespace
    /// will use (see [`adopt`](Self::adopt)); for a thread that is inside a namespace
    /// anyway (the one that made it).
    pub fn socket_here(&self) -> io::Result<NetnsSocket> {
        new_socket(self.shared.config.rcvbuf).map(NetnsSocket)
    }

    /// Keeps `socket`, opened by [`socket_here`](Self::socket_here) inside the namespace
    /// `path` names, for the next [`watch_netns`](Self::watch_netns) of `path`: the watch
    /// then starts as it would otherwise (changes made after it returns are delivered),
    /// without a thread entering the namespace. Until then the socket receives nothing
    /// (but keeps the namespace alive: [`unwatch_netns`](Self::unwatch_netns) drops it).
    pub fn adopt(&self, path: &Path, socket: NetnsSocket) -> Result<(), HostEventsError> {
        let m = std::fs::metadata(path).map_err(|source| HostEventsError::NetnsOpen {
            path: path.to_owned(),
            source,
        })?;
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_owned(), ((m.dev(), m.ino()), socket.0));
        Ok(())
    }

    /// Drops the adopted sockets of the paths `keep` says no to (their namespaces are let
    /// go).
    pub fn retain_adopted(&self, keep: impl Fn(&Path) -> bool) {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|p, _| keep(p));
    }

    /// Stops listening in `path`'s namespace (releasing the socket's hold on it). Returns
    /// whether it was watched.
    pub fn unwatch_netns(&self, path: &Path) -> bool {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(path);
        self.shared
            .watches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(path)
            .is_some()
    }

    /// Namespaces watched now (a watch whose namespace went is not listed).
    pub fn watched(&self) -> Vec<PathBuf> {
        let watches = self
            .shared
            .watches
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        watches
            .iter()
            .filter(|(_, w)| !w.task.is_finished())
            .map(|(p, _)| p.clone())
            .collect()
    }

    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            events: c.events.load(Relaxed),
            overruns: c.overruns.load(Relaxed),
            lagged: c.lagged.load(Relaxed),
            undecodable: c.undecodable.load(Relaxed),
            watched: self.watched().len(),
        }
    }
}

/// The listener's counters in the agent's metrics registry, read at every scrape.
pub struct StatsCollector(pub HostEvents);

impl std::fmt::Debug for StatsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StatsCollector")
            .field(&self.0.stats())
            .finish()
    }
}

impl prometheus_client::collector::Collector for StatsCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::MetricType::{Counter, Gauge};
        let s = self.0.stats();
        for (name, kind, help, value) in [
            (
                "weft_agent_host_events_total",
                Counter,
                "Netlink changes (links, addresses, routes, neighbours) fanned out.",
                s.events,
            ),
            (
                "weft_agent_host_event_overruns_total",
                Counter,
                "Netlink receive-buffer overruns (ENOBUFS); each makes subscribers resync.",
                s.overruns,
            ),
            (
                "weft_agent_host_events_lagged_total",
                Counter,
                "Events subscribers missed by falling behind (they resync).",
                s.lagged,
            ),
            (
                "weft_agent_host_events_undecodable_total",
                Counter,
                "Netlink messages that could not be decoded.",
                s.undecodable,
            ),
            (
                "weft_agent_host_events_namespaces",
                Gauge,
                "Network namespaces watched besides the agent's own.",
                s.watched as u64,
            ),
        ] {
            // Counters as text format 0.0.4 names them (see `metrics::Counter`): the sample
            // is the name, `_total` included.
            encoder
                .encode_descriptor(name, help, None, kind)?
                .encode_gauge(&i64::try_from(value).unwrap_or(i64::MAX))?;
        }
        Ok(())
    }
}

/// Runs `f` on a fresh thread inside the namespace of `path` and returns its result. The
/// thread ends right after (it never has to find its way back to the agent's namespace).
pub async fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, HostEventsError> {
    let file = std::fs::File::open(path).map_err(|source| HostEventsError::NetnsOpen {
        path: path.to_owned(),
        source,
    })?;
    in_netns_fd(file, path, f).await
}

async fn in_netns_fd<T: Send + 'static>(
    file: std::fs::File,
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, HostEventsError> {
    let (tx, rx) = oneshot::channel();
    let enter = |source| HostEventsError::NetnsEnter {
        path: path.to_owned(),
        source,
    };
    std::thread::Builder::new()
        .name("weft-netns".into())
        .spawn(move || {
            // SAFETY: setns on a valid, open namespace fd; it changes this thread only, and
            // the thread ends after `f`.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = tx.send(Err(io::Error::last_os_error()));
                return;
            }
            let _ = tx.send(Ok(f()));
        })
        .map_err(enter)?;
    match rx.await {
        Ok(r) => r.map_err(enter),
        Err(_) => Err(enter(io::Error::other("the namespace thread ended early"))),
    }
}

/// A non-blocking rtnetlink socket in the calling thread's namespace, joined to `groups`.
fn open_socket(rcvbuf: usize, groups: u32) -> io::Result<rtnetlink::sys::Socket> {
    bind_socket(new_socket(rcvbuf)?, groups)
}

/// Binds `socket` (of [`new_socket`]) to `groups`, non-blocking; from any thread (a
/// netlink socket belongs to the namespace it was created in).
fn bind_socket(
    mut socket: rtnetlink::sys::Socket,
    groups: u32,
) -> io::Result<rtnetlink::sys::Socket> {
    socket.bind(&SocketAddr::new(0, groups))?;
    socket.set_non_blocking(true)?;
    Ok(socket)
}

/// An rtnetlink socket in the calling thread's namespace with a receive buffer of
/// `rcvbuf`, not bound yet.
fn new_socket(rcvbuf: usize) -> io::Result<rtnetlink::sys::Socket> {
    let socket = rtnetlink::sys::Socket::new(NETLINK_ROUTE)?;
    let size = libc::c_int::try_from(rcvbuf).unwrap_or(libc::c_int::MAX);
    let set = |opt| {
        // SAFETY: a valid fd and a pointer to a c_int of the given length.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    // FORCE needs CAP_NET_ADMIN; without it the size is capped at net.core.rmem_max.
    if set(libc::SO_RCVBUFFORCE) != 0 && set(libc::SO_RCVBUF) != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

fn register(socket: rtnetlink::sys::Socket) -> io::Result<AsyncFd<rtnetlink::sys::Socket>> {
    // SAFETY: the socket owns its fd, which stays open and the same until the socket is
    // dropped, and the AsyncFd owns the socket.
    unsafe { AsyncFd::register(socket) }.map_err(|e| e.into_parts().1)
}

async fn listen(
    socket: AsyncFd<rtnetlink::sys::Socket>,
    netns: Option<PathBuf>,
    identity: Option<(u64, u64)>,
    tx: broadcast::Sender<HostEvent>,
    counters: Arc<Counters>,
    check_every: Duration,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_BUF);
    let mut check = tokio::time::interval(check_every);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let emit = |at, change| {
        counters.events.fetch_add(1, Relaxed);
        // No subscriber is fine: nobody is waiting for the change.
        let _ = tx.send(HostEvent {
            netns: netns.clone(),
            at,
            change,
        });
    };
    loop {
        tokio::select! {
            ready = socket.readable() => {
                let mut guard = match ready {
                    Ok(g) => g,
                    Err(e) => {
                        warn!(netns = ?netns, error = %e, "netlink listener failed; stopped");
                        emit(Instant::now(), Change::Overrun);
                        return;
                    }
                };
                // Read until the socket is empty, then wait again.
                loop {
                    buf.clear();
                    match guard.try_io(|s| s.get_ref().recv(&mut buf, libc::MSG_TRUNC)) {
                        Err(_would_block) => break,
                        Ok(Ok(n)) => {
                            let at = Instant::now();
                            if n > buf.len() {
                                // Cannot happen with notifications of this size; if it did, the
                                // tail is lost: subscribers must resync.
                                counters.overruns.fetch_add(1, Relaxed);
                                emit(at, Change::Overrun);
                            }
                            for change in decode(&buf, &counters) {
                                emit(at, change);
                            }
                        }
                        Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                            counters.overruns.fetch_add(1, Relaxed);
                            warn!(netns = ?netns, "netlink receive buffer overrun; subscribers resync");
                            emit(Instant::now(), Change::Overrun);
                        }
                        Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                        Ok(Err(e)) => {
                            warn!(netns = ?netns, error = %e, "netlink receive failed; subscribers resync");
                            emit(Instant::now(), Change::Overrun);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            break;
                        }
                    }
                }
            }
            _ = check.tick(), if identity.is_some() => {
                let path = netns.as_deref().unwrap_or(Path::new(""));
                let now = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
                if now != identity {
                    debug!(netns = %path.display(), "watched namespace gone; watch ended");
                    emit(Instant::now(), Change::NetnsGone);
                    return;
                }
            }
        }
    }
}

/// The changes in one datagram (one or more netlink messages).
fn decode(mut buf: &[u8], counters: &Counters) -> Vec<Change> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let len = match NetlinkBuffer::new_checked(buf) {
            Ok(b) => b.length() as usize,
            Err(_) => {
                counters.undecodable.fetch_add(1, Relaxed);
                break;
            }
        };
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[..len]) {
            Ok(msg) => {
                if let NetlinkPayload::InnerMessage(m) = msg.payload {
                    out.extend(change_of(m));
                }
            }
            Err(e) => {
                counters.undecodable.fetch_add(1, Relaxed);
                debug!(error = %e, "undecodable netlink message skipped");
            }
        }
        let next = (len + 3) & !3;
        if len == 0 || next > buf.len() {
            break;
        }
        buf = &buf[next..];
    }
    out
}

fn change_of(msg: RouteNetlinkMessage) -> Option<Change> {
    use RouteNetlinkMessage as M;
    match msg {
        M::NewLink(m) => {
            let (name, kind) = link_name_kind(&m);
            Some(Change::LinkNew {
                ifindex: m.header.index,
                name: name?,
                up: m.header.flags.contains(LinkFlags::Up),
                kind,
            })
        }
        M::DelLink(m) => Some(Change::LinkDel {
            ifindex: m.header.index,
            name: link_name_kind(&m).0?,
        }),
        M::NewAddress(m) => {
            let (ifindex, addr, prefix) = address(&m)?;
            Some(Change::AddrNew {
                ifindex,
                addr,
                prefix,
            })
        }
        M::DelAddress(m) => {
            let (ifindex, addr, prefix) = address(&m)?;
            Some(Change::AddrDel {
                ifindex,
                addr,
                prefix,
            })
        }
        M::NewRoute(m) => {
            let r = route(&m)?;
            Some(Change::RouteNew {
                dst: r.0,
                prefix: r.1,
                gateway: r.2,
                ifindex: r.3,
                table: r.4,
            })
        }
        M::DelRoute(m) => {
            let r = route(&m)?;
            Some(Change::RouteDel {
                dst: r.0,
                prefix: r.1,
                gateway: r.2,
                ifindex: r.3,
                table: r.4,
            })
        }
        M::NewNeighbour(m) => {
            let (ifindex, addr, lladdr) = neighbour(&m)?;
            Some(Change::NeighNew {
                ifindex,
                addr,
                lladdr,
            })
        }
        M::DelNeighbour(m) => {
            let (ifindex, addr, _) = neighbour(&m)?;
            Some(Change::NeighDel { ifindex, addr })
        }
        _ => None,
    }
}

/// The name and `IFLA_INFO_KIND` of a link message.
pub fn link_name_kind(msg: &LinkMessage) -> (Option<String>, Option<String>) {
    let mut name = None;
    let mut kind = None;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        kind = Some(match k {
                            InfoKind::Veth => "veth".to_owned(),
                            InfoKind::Tun => "tun".to_owned(),
                            other => format!("{other:?}").to_lowercase(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    (name, kind)
}

fn address(m: &AddressMessage) -> Option<(u32, IpAddr, u8)> {
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point
    // links and the same as IFA_LOCAL otherwise (IPv6 sends only IFA_ADDRESS).
    let mut local = None;
    let mut address = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    Some((m.header.index, local.or(address)?, m.header.prefix_len))
}

type RouteParts = (IpAddr, u8, Option<IpAddr>, Option<u32>, u32);

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

fn route(m: &RouteMessage) -> Option<RouteParts> {
    use rtnetlink::packet_route::AddressFamily;
    let unspecified = match m.header.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let mut dst = None;
    let mut gateway = None;
    let mut ifindex = None;
    let mut table = u32::from(m.header.table);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = route_ip(d),
            RouteAttribute::Gateway(g) => gateway = route_ip(g),
            RouteAttribute::Oif(i) => ifindex = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    Some((
        dst.unwrap_or(unspecified),
        m.header.destination_prefix_length,
        gateway,
        ifindex,
        table,
    ))
}

fn neighbour(m: &NeighbourMessage) -> Option<(u32, IpAddr, Option<Vec<u8>>)> {
    let mut addr = None;
    let mut lladdr = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                addr = Some(IpAddr::V4(*ip))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                addr = Some(IpAddr::V6(*ip))
            }
            NeighbourAttribute::LinkLocalAddress(l) => lladdr = Some(l.clone()),
            _ => {}
        }
    }
    // Bridge FDB entries (no IP destination) are not neighbours.
    Some((m.header.ifindex, addr?, lladdr))
}

#[cfg(test)]
mod tests;
