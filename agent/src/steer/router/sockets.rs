//! Sockets made inside another network namespace. A socket stays in the namespace it was
//! made in wherever it is used from, so one thread per namespace, `setns(2)`ed there once,
//! makes them on request; connecting and everything after runs on the runtime. One
//! request costs a channel round trip (no thread per connection).

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;

/// Requests waiting for the maker at most.
const QUEUE: usize = 256;

type Reply = oneshot::Sender<io::Result<std::net::TcpStream>>;

/// Makes TCP sockets inside one namespace. The thread ends when this is dropped.
pub struct SocketMaker {
    requests: std_mpsc::SyncSender<(bool, Reply)>,
    /// Whether its connections leave from the client's address
    /// ([`super::transparent`]): the namespace was prepared for it.
    transparent: bool,
    /// A server's namespace ([`Self::start_upstream`]): every connection carries
    /// [`super::transparent::MARK`], so the node's firewall judges it by its source.
    upstream: bool,
}

impl SocketMaker {
    /// Starts the maker's thread inside the namespace of `netns`.
    pub fn start(netns: &Path) -> io::Result<Self> {
        Self::start_with(netns, false)
    }

    /// [`Self::start`] for a server's namespace whose connections keep the client's
    /// address: the namespace is prepared first ([`super::transparent::prepare_here`]).
    /// Where that fails the maker still serves, from the namespace's own address, and
    /// says why in the log. Its connections are marked either way ([`Self::connect`]).
    pub fn start_upstream(netns: &Path) -> io::Result<Self> {
        Self::start_with(netns, true)
    }

    fn start_with(netns: &Path, upstream: bool) -> io::Result<Self> {
        let file = std::fs::File::open(netns)?;
        let (tx, rx) = std_mpsc::sync_channel::<(bool, Reply)>(QUEUE);
        let (ready_tx, ready_rx) = std_mpsc::sync_channel::<io::Result<bool>>(1);
        let label = netns.display().to_string();
        std::thread::Builder::new()
            .name("weft-router-ns".into())
            .spawn(move || {
                // SAFETY: setns on a valid, open namespace fd; it changes this thread only,
                // and the thread never runs anything but making sockets.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let _ = ready_tx.send(Err(io::Error::last_os_error()));
                    return;
                }
                drop(file);
                let prepared = upstream
                    && match super::transparent::prepare_here() {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!(namespace = %label, error = %e, "request router: the servers here will see connections come from their own address, not the client's");
                            false
                        }
                    };
                let _ = ready_tx.send(Ok(prepared));
                while let Ok((v6, reply)) = rx.recv() {
                    let _ = reply.send(new_socket(v6));
                }
            })?;
        let transparent = ready_rx
            .recv()
            .map_err(|_| io::Error::other("the namespace thread ended early"))??;
        Ok(Self {
            requests: tx,
            transparent,
            upstream,
        })
    }

    /// Whether connections made by [`Self::connect`] keep the client's address.
    pub fn transparent(&self) -> bool {
        self.transparent
    }

    /// A new TCP socket of the namespace (IPv6 ones take IPv4 too, as mapped addresses).
    pub async fn unconnected(&self, v6: bool) -> io::Result<TcpSocket> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .try_send((v6, tx))
            .map_err(|_| io::Error::other("the namespace's socket maker is busy or gone"))?;
        let std = rx
            .await
            .map_err(|_| io::Error::other("the namespace's socket maker is gone"))??;
        Ok(TcpSocket::from_std_stream(std))
    }

    /// Connects to `to` from inside the namespace (TCP_NODELAY on), within `timeout`;
    /// from `client`'s address and port when the namespace was prepared for it and
    /// `client` is of `to`'s family (its address with a port the kernel picks when that
    /// four-tuple is still taken here: see [`super::transparent::bind_as`]), else from the
    /// namespace's own. In a server's namespace the connection is marked either way, so
    /// the node's firewall judges it by that source address (a firewall that drops it
    /// makes this time out).
    pub async fn connect(
        &self,
        client: Option<SocketAddr>,
        to: SocketAddr,
        timeout: Duration,
    ) -> io::Result<TcpStream> {
        let from = client.filter(|c| self.transparent && c.is_ipv6() == to.is_ipv6());
        let attempt = |own_port: bool| async move {
            let socket = self.unconnected(to.is_ipv6()).await?;
            if self.upstream {
                super::transparent::mark(&socket)?;
            }
            if let Some(c) = from
                && let Err(e) = super::transparent::bind_as(&socket, c, own_port)
            {
                // An address that cannot be bound here (an IPv6 link-local one has no
                // scope in this namespace): this connection leaves from the namespace's own.
                tracing::debug!(client = %c, error = %e, "request router: connecting from the server's own address");
            }
            let stream = tokio::time::timeout(timeout, socket.connect(to))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {to}"))
                })??;
            stream.set_nodelay(true)?;
            Ok::<_, io::Error>(stream)
        };
        match attempt(true).await {
            // The client's port is still taken here towards `to` (the router's connection
            // for the client's previous one, not reusable yet): any port of its address.
            Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable && from.is_some() => {
                attempt(false).await
            }
            r => r,
        }
    }
}

/// A non-blocking, close-on-exec TCP socket of the calling thread's namespace.
fn new_socket(v6: bool) -> io::Result<std::net::TcpStream> {
    use std::os::fd::FromRawFd as _;
    let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain socket(2); the fd is owned by the stream made from it right after.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::IPPROTO_TCP,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket nobody else owns.
    Ok(unsafe { std::net::TcpStream::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_socket_made_in_a_namespace_connects_there() {
        // This process's own namespace: a listener here is reached through the maker.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let maker = SocketMaker::start(Path::new("/proc/self/ns/net")).unwrap();
        let (out, accepted) = tokio::join!(
            maker.connect(None, addr, Duration::from_secs(5)),
            listener.accept()
        );
        let out = out.unwrap();
        assert_eq!(out.peer_addr().unwrap(), addr);
        assert_eq!(accepted.unwrap().1, out.local_addr().unwrap());
        assert!(out.nodelay().unwrap());
        // Nothing listening: the error says so.
        drop(listener);
        let e = maker
            .connect(None, addr, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    }

    /// A server in a namespace prepared for it sees the client's address and port (IPv4 and IPv6),
    /// and its answers reach the router's socket (not eth0): a whole request and answer,
    /// twice (the server closing first); the namespace is as it was once undone.
    #[tokio::test]
    async fn a_prepared_namespace_shows_the_servers_the_clients_address() {
        crate::testns::require_root!();
        let ns = crate::testns::TestNetns::new();
        crate::testns::in_ns(&ns.path, || {
            crate::testns::ip(&["link", "set", "lo", "up"]);
            crate::testns::ip(&["addr", "add", "198.18.231.1/32", "dev", "lo"]);
            crate::testns::ip(&["-6", "addr", "add", "fd00:231::1/128", "dev", "lo"]);
        });
        // `ip rule show` in the namespace.
        let ip_rules = || {
            let out = crate::testns::in_ns(&ns.path, || {
                std::process::Command::new("ip")
                    .args(["rule", "show"])
                    .output()
                    .unwrap()
            });
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        let maker = SocketMaker::start_upstream(&ns.path).unwrap();
        assert!(maker.transparent(), "the namespace was prepared");
        for (server, client) in [
            ("198.18.231.1:8080", "198.19.231.7:41234"),
            ("[fd00:231::1]:8080", "[fd00:232::7]:41234"),
        ] {
            let server_addr: SocketAddr = server.parse().unwrap();
            let client: SocketAddr = client.parse().unwrap();
            let listener = {
                let plain = SocketMaker::start(&ns.path).unwrap();
                let s = plain.unconnected(server_addr.is_ipv6()).await.unwrap();
                s.set_reuseaddr(true).unwrap();
                s.bind(server_addr).unwrap();
                s.listen(16).unwrap()
            };
            for round in 0..2 {
                let (out, accepted) = tokio::time::timeout(
                    Duration::from_secs(10),
                    futures::future::join(
                        maker.connect(Some(client), server_addr, Duration::from_secs(5)),
                        listener.accept(),
                    ),
                )
                .await
                .unwrap_or_else(|_| panic!("{client} round {round}: no connection within 10 s"));
                let mut out = out.unwrap();
                let (mut served, peer) = accepted.unwrap();
                // Its address and port (the first connection, closed by the server, left
                // its TIME_WAIT on the server's side: the second one takes it over).
                assert_eq!(peer, client, "round {round}: the server saw {peer}");
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                out.write_all(b"ping").await.unwrap();
                let mut buf = [0u8; 4];
                served.read_exact(&mut buf).await.unwrap();
                assert_eq!(&buf, b"ping");
                served.write_all(b"pong").await.unwrap();
                tokio::time::timeout(Duration::from_secs(5), out.read_exact(&mut buf))
                    .await
                    .expect("the answer came back to the router's socket")
                    .unwrap();
                assert_eq!(&buf, b"pong");
                // The server closes first (as a server that ends the connection does).
                drop(served);
                let n = tokio::time::timeout(Duration::from_secs(5), out.read(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(n, 0);
            }
        }
        let rules = ip_rules();
        assert!(rules.contains("0x57460001"), "the fwmark rule: {rules}");
        let removed = super::super::transparent::undo(&ns.path).await.unwrap();
        assert!(removed >= 2, "a rule and a route removed: {removed}");
        let rules = ip_rules();
        assert!(!rules.contains("0x57460001"), "the rule is gone: {rules}");
    }

    /// The node's firewall judges a routed connection by its client's address: one its
    /// rules let in connects, one they do not is refused at once (the firewall's reset
    /// for marked connections, carried back over `lo` by `fwmark_reflect`: no wait for a
    /// connect timeout), and one that leaves from the node's own address is judged as the
    /// node's. A port the rules let in with nothing listening is refused at once too.
    /// The node's own local connections (not marked) are still loopback.
    #[tokio::test]
    async fn the_nodes_firewall_judges_a_routed_connection_by_its_client() {
        use weft_firewall::{InboundRule, Protocol, Ruleset, Verdict};
        crate::testns::require_root!();
        let ns = crate::testns::TestNetns::new();
        crate::testns::in_ns(&ns.path, || {
            crate::testns::ip(&["link", "set", "lo", "up"]);
            crate::testns::ip(&["addr", "add", "198.18.233.1/32", "dev", "lo"]);
            crate::testns::ip(&["-6", "addr", "add", "fd00:233::1/128", "dev", "lo"]);
        });
        let ruleset = Ruleset {
            rules: vec![InboundRule {
                sources: vec![
                    "198.19.233.0/28".parse().unwrap(),
                    "fd00:234::/64".parse().unwrap(),
                ],
                protocol: Protocol::Tcp,
                ports: vec!["8080-8081".parse().unwrap()],
                verdict: Verdict::Accept,
            }],
        };
        weft_firewall::apply(Some(&ns.path), &ruleset).unwrap();
        let maker = SocketMaker::start_upstream(&ns.path).unwrap();
        assert!(maker.transparent(), "the namespace was prepared");
        let plain = SocketMaker::start(&ns.path).unwrap();
        for (server, allowed, denied) in [
            ("198.18.233.1:8080", "198.19.233.7:1", "198.19.240.9:1"),
            ("[fd00:233::1]:8080", "[fd00:234::7]:1", "[fd00:235::9]:1"),
        ] {
            let server: SocketAddr = server.parse().unwrap();
            let (allowed, denied): (SocketAddr, SocketAddr) =
                (allowed.parse().unwrap(), denied.parse().unwrap());
            let listener = {
                let s = plain.unconnected(server.is_ipv6()).await.unwrap();
                s.set_reuseaddr(true).unwrap();
                s.bind(server).unwrap();
                s.listen(16).unwrap()
            };
            // Refusals come at once: a timeout of this length would be the old drop.
            let wait = Duration::from_secs(3);
            // Let in: the server sees the client.
            let (out, accepted) = tokio::join!(
                maker.connect(Some(allowed), server, Duration::from_secs(5)),
                listener.accept()
            );
            out.unwrap_or_else(|e| panic!("{allowed} -> {server}: {e}"));
            assert_eq!(accepted.unwrap().1.ip(), allowed.ip());
            // Not let in: the client's address, and the node's own (no client address).
            let closed = SocketAddr::new(server.ip(), 8081);
            let (from_denied, from_own, to_closed) = tokio::join!(
                maker.connect(Some(denied), server, wait),
                maker.connect(None, server, wait),
                maker.connect(Some(allowed), closed, wait)
            );
            for (who, r) in [
                (denied.to_string(), from_denied),
                ("own".into(), from_own),
                (format!("{allowed} to the closed port"), to_closed),
            ] {
                let e = r.err().unwrap_or_else(|| {
                    panic!("{who} -> {server}: connected, past the node's firewall")
                });
                assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{who}: {e}");
            }
            // The node's own local connection (not the router's): loopback, let in.
            let (out, accepted) = tokio::join!(
                plain.connect(None, server, Duration::from_secs(5)),
                listener.accept()
            );
            out.unwrap_or_else(|e| panic!("local -> {server}: {e}"));
            assert!(accepted.is_ok());
            // Nothing of the refused ones was queued behind it.
            assert!(
                tokio::time::timeout(Duration::from_millis(200), listener.accept())
                    .await
                    .is_err(),
                "a refused connection reached the server"
            );
        }
    }

    /// The router's connections end router-first when their client goes (its FIN first),
    /// so their ports wait in TIME_WAIT; a prepared namespace reuses them after a second
    /// (`tcp_tw_reuse=1`), else one client address could open only as many routed
    /// connections per minute as there are ephemeral ports (here a range of 50).
    #[tokio::test]
    async fn a_prepared_namespace_reuses_the_routers_time_wait_ports() {
        use tokio::io::AsyncReadExt as _;
        crate::testns::require_root!();
        let ns = crate::testns::TestNetns::new();
        crate::testns::in_ns(&ns.path, || {
            crate::testns::ip(&["link", "set", "lo", "up"]);
            crate::testns::ip(&["addr", "add", "198.18.234.1/32", "dev", "lo"]);
            std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "40000 40049")
                .expect("ip_local_port_range");
        });
        let maker = SocketMaker::start_upstream(&ns.path).unwrap();
        assert!(maker.transparent(), "the namespace was prepared");
        let plain = SocketMaker::start(&ns.path).unwrap();
        let server: SocketAddr = "198.18.234.1:8080".parse().unwrap();
        let client: SocketAddr = "198.19.234.7:1".parse().unwrap();
        let listener = {
            let s = plain.unconnected(false).await.unwrap();
            s.set_reuseaddr(true).unwrap();
            s.bind(server).unwrap();
            s.listen(64).unwrap()
        };
        // `n` connections, each closed by the router first, then by the server.
        let round = |n: usize| {
            let (maker, listener) = (&maker, &listener);
            async move {
                for i in 0..n {
                    let (out, accepted) = tokio::join!(
                        maker.connect(Some(client), server, Duration::from_secs(2)),
                        tokio::time::timeout(Duration::from_secs(2), listener.accept())
                    );
                    let out = out.map_err(|e| format!("connection {i}: {e}"))?;
                    drop(out);
                    let (mut served, _) = accepted
                        .map_err(|_| format!("connection {i}: not accepted"))?
                        .map_err(|e| format!("connection {i}: {e}"))?;
                    let mut b = [0u8; 1];
                    let _ = served.read(&mut b).await;
                }
                Ok::<(), String>(())
            }
        };
        round(50).await.unwrap();
        // Every port of the range is in TIME_WAIT now; reusable a second on.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        round(50)
            .await
            .unwrap_or_else(|e| panic!("the router's ports in TIME_WAIT were not reused: {e}"));
    }

    /// A connection the client made straight to the server before a route (still open
    /// in the server's namespace) and the router's connection for the client's next one
    /// do not collide: the router leaves from the client's own port, which the client's
    /// kernel keeps apart from its open connections. (The server's namespace here has one
    /// ephemeral port, the direct connection's: a port the kernel picked would be it, and
    /// the router's SYN would land on that connection.)
    #[tokio::test]
    async fn a_routed_connection_does_not_collide_with_the_clients_direct_one() {
        use std::io::{Read as _, Write as _};
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        crate::testns::require_root!();
        let (server_ns, client_ns) = (
            crate::testns::TestNetns::new(),
            crate::testns::TestNetns::new(),
        );
        crate::testns::in_ns(&server_ns.path, || {
            crate::testns::ip(&["link", "set", "lo", "up"]);
            crate::testns::ip(&[
                "link",
                "add",
                "wrs",
                "type",
                "veth",
                "peer",
                "name",
                "wrk",
                "netns",
                &client_ns.name,
            ]);
            crate::testns::ip(&["addr", "add", "198.18.235.1/24", "dev", "wrs"]);
            crate::testns::ip(&["link", "set", "wrs", "up"]);
            std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "40000 40000")
                .expect("ip_local_port_range");
        });
        crate::testns::in_ns(&client_ns.path, || {
            crate::testns::ip(&["link", "set", "lo", "up"]);
            crate::testns::ip(&["addr", "add", "198.18.235.7/24", "dev", "wrk"]);
            crate::testns::ip(&["link", "set", "wrk", "up"]);
        });
        let maker = SocketMaker::start_upstream(&server_ns.path).unwrap();
        assert!(maker.transparent(), "the namespace was prepared");
        let plain = SocketMaker::start(&server_ns.path).unwrap();
        let server: SocketAddr = "198.18.235.1:8080".parse().unwrap();
        let listener = {
            let s = plain.unconnected(false).await.unwrap();
            s.set_reuseaddr(true).unwrap();
            s.bind(server).unwrap();
            s.listen(16).unwrap()
        };
        // The client's direct connection, from port 40000, made before the route.
        let direct = crate::testns::in_ns(&client_ns.path, move || {
            let s = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )
            .unwrap();
            s.bind(&"198.18.235.7:40000".parse::<SocketAddr>().unwrap().into())
                .unwrap();
            s.connect_timeout(&server.into(), Duration::from_secs(5))
                .unwrap();
            std::net::TcpStream::from(s)
        });
        let (mut direct_served, peer) =
            tokio::time::timeout(Duration::from_secs(5), listener.accept())
                .await
                .expect("the direct connection")
                .unwrap();
        assert_eq!(peer, "198.18.235.7:40000".parse().unwrap());
        // The client's next connection (port 40001), through the router.
        let client: SocketAddr = "198.18.235.7:40001".parse().unwrap();
        let (out, accepted) = tokio::join!(
            maker.connect(Some(client), server, Duration::from_secs(3)),
            tokio::time::timeout(Duration::from_secs(3), listener.accept())
        );
        let mut out = out.expect("the routed connection");
        let (mut served, peer) = accepted.expect("accepted").unwrap();
        assert_eq!(
            peer, client,
            "the server sees the client's address and port"
        );
        out.write_all(b"routed").await.unwrap();
        let mut buf = [0u8; 6];
        served.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"routed");
        // The direct connection is untouched.
        let mut direct = direct;
        direct.write_all(b"direct").unwrap();
        direct_served.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"direct");
        direct_served.write_all(b"answer").await.unwrap();
        direct
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        direct.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"answer");
    }
}
