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
}

impl SocketMaker {
    /// Starts the maker's thread inside the namespace of `netns`.
    pub fn start(netns: &Path) -> io::Result<Self> {
        let file = std::fs::File::open(netns)?;
        let (tx, rx) = std_mpsc::sync_channel::<(bool, Reply)>(QUEUE);
        let (ready_tx, ready_rx) = std_mpsc::sync_channel::<io::Result<()>>(1);
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
                let _ = ready_tx.send(Ok(()));
                while let Ok((v6, reply)) = rx.recv() {
                    let _ = reply.send(new_socket(v6));
                }
            })?;
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("the namespace thread ended early"))??;
        Ok(Self { requests: tx })
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

    /// Connects to `to` from inside the namespace (TCP_NODELAY on), within `timeout`.
    pub async fn connect(&self, to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        let socket = self.unconnected(to.is_ipv6()).await?;
        let stream = tokio::time::timeout(timeout, socket.connect(to))
            .await
            .map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {to}"))
            })??;
        stream.set_nodelay(true)?;
        Ok(stream)
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
            maker.connect(addr, Duration::from_secs(5)),
            listener.accept()
        );
        let out = out.unwrap();
        assert_eq!(out.peer_addr().unwrap(), addr);
        assert_eq!(accepted.unwrap().1, out.local_addr().unwrap());
        assert!(out.nodelay().unwrap());
        // Nothing listening: the error says so.
        drop(listener);
        let e = maker
            .connect(addr, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    }
}
