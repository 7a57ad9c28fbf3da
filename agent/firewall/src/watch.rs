//! [`Watcher`]: nf_tables change events (multicast group `NFNLGRP_NFTABLES`) of one
//! namespace, as they arrive.
//!
//! No thread and no channel of its own: the socket is non-blocking, its kernel receive
//! queue is the bounded buffer, and the caller waits on it, blocking with a timeout
//! ([`Watcher::next_timeout`]) or on tokio ([`Watcher::next`]), so a thousand namespaces
//! cost a thousand sockets on one reactor, not a thousand threads. When the queue
//! overflows the kernel drops events and the watcher yields [`EventKind::Overrun`]: the
//! caller must then compare the whole table (which is what it does on any event anyway).
//!
//! The agent's loop per namespace: on an event with [`Event::needs_check`], take the
//! rest of what is queued (the events of one batch arrive together, its
//! [`EventKind::Generation`] last), then [`NamespaceFirewall::read`], [`drift`] and, if
//! it is not empty, [`NamespaceFirewall::apply`]. The repair's own events are marked
//! [`Event::own`] and ask for nothing.
//!
//! [`NamespaceFirewall::read`]: crate::NamespaceFirewall::read
//! [`NamespaceFirewall::apply`]: crate::NamespaceFirewall::apply
//! [`drift`]: crate::drift

use std::collections::{HashSet, VecDeque};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;

use crate::error::{Error, Result};
use crate::firewall::TABLE;
use crate::netns;
use crate::nl::{self, Socket};

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    NewTable,
    DelTable,
    NewChain,
    DelChain,
    NewRule,
    DelRule,
    NewSet,
    DelSet,
    NewSetElem,
    DelSetElem,
    NewObj,
    DelObj,
    NewFlowtable,
    DelFlowtable,
    /// A batch was committed (sent after its changes): the new generation id, and the
    /// pid and name of the process that committed it.
    Generation {
        id: u32,
        pid: u32,
        process: String,
    },
    /// Another nf_tables message type.
    Other(u16),
    /// The receive queue overflowed: events were lost.
    Overrun,
}

/// One nf_tables change in the watched namespace.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: EventKind,
    /// nfproto family of the table (`1` inet, `2` ip, `10` ip6, ...).
    pub family: u8,
    pub table: Option<String>,
    /// For chain and rule events.
    pub chain: Option<String>,
    /// For rule events.
    pub handle: Option<u64>,
    /// Netlink port id of the socket whose batch made the change (0: the kernel).
    pub portid: u32,
    /// Whether that socket is one of ours (see [`Watcher::ignore_portid`]). Only batches
    /// of a kept [`NamespaceFirewall`](crate::NamespaceFirewall) whose port id the watcher
    /// knows are marked; the one-shot [`apply`](crate::apply) uses a socket of its own, so
    /// its events look foreign: comparing then finds no drift and nothing is written.
    pub own: bool,
    /// When the watcher read it from the socket.
    pub received: Instant,
}

impl Event {
    /// Whether it concerns table `inet weft`.
    pub fn is_weft(&self) -> bool {
        self.family == nl::NFPROTO_INET && self.table.as_deref() == Some(TABLE)
    }

    /// Whether the agent should compare table `inet weft` now: a change to it by someone
    /// else, or lost events.
    pub fn needs_check(&self) -> bool {
        self.kind == EventKind::Overrun || (!self.own && self.is_weft())
    }
}

struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// nf_tables events of one namespace. Create with [`Watcher::open`] or
/// [`NamespaceFirewall::open_with_watcher`](crate::NamespaceFirewall::open_with_watcher).
pub struct Watcher {
    // Dropped before `sock`: deregisters the fd while it is still open.
    async_fd: Option<AsyncFd<Fd>>,
    sock: Socket,
    label: String,
    own: HashSet<u32>,
    pending: VecDeque<Event>,
}

/// Receive queue of a watcher socket (the kernel doubles it): room for thousands of
/// events between two reads.
const WATCH_RCVBUF: usize = 4 << 20;

impl Watcher {
    /// Subscribes to nf_tables events in the namespace of `netns` (current one: `None`).
    pub fn open(netns: Option<&Path>) -> Result<Watcher> {
        let (sock, _) = netns::run_in(netns, Self::socket)?;
        Self::from_socket(sock, netns::label(netns))
    }

    pub(crate) fn socket() -> std::io::Result<Socket> {
        let s = Socket::open(true, WATCH_RCVBUF)?;
        s.join_group(nl::NFNLGRP_NFTABLES)?;
        Ok(s)
    }

    pub(crate) fn from_socket(sock: Socket, label: String) -> Result<Watcher> {
        Ok(Watcher {
            async_fd: None,
            sock,
            label,
            own: HashSet::new(),
            pending: VecDeque::new(),
        })
    }

    /// Events caused by batches from the socket with this port id are marked `own`.
    pub fn ignore_portid(&mut self, portid: u32) {
        self.own.insert(portid);
    }

    fn io_err(&self, source: std::io::Error) -> Error {
        Error::Io {
            netns: self.label.clone(),
            op: "watch nf_tables events".into(),
            source,
        }
    }

    /// Reads everything queued on the socket into `pending`. Returns whether it read any.
    fn fill(&mut self) -> Result<bool> {
        let mut any = false;
        loop {
            let n = match self.sock.recv(true) {
                Ok(Some(n)) => n,
                Ok(None) => return Ok(any),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.pending.push_back(Event {
                        kind: EventKind::Overrun,
                        family: 0,
                        table: None,
                        chain: None,
                        handle: None,
                        portid: 0,
                        own: false,
                        received: Instant::now(),
                    });
                    any = true;
                    continue;
                }
                Err(e) => return Err(self.io_err(e)),
            };
            any = true;
            let now = Instant::now();
            let msgs = nl::messages(&self.sock.buf[..n]).map_err(|what| Error::Protocol {
                netns: self.label.clone(),
                op: "watch nf_tables events".into(),
                what,
            })?;
            for (h, p) in msgs {
                if let Some(e) = parse_event(&h, p, now, &self.own) {
                    self.pending.push_back(e);
                }
            }
        }
    }

    /// The next event if one is queued, without waiting.
    pub fn try_next(&mut self) -> Result<Option<Event>> {
        if self.pending.is_empty() {
            self.fill()?;
        }
        Ok(self.pending.pop_front())
    }

    /// Waits up to `timeout` (forever: `None`) for the next event.
    pub fn next_timeout(&mut self, timeout: Option<Duration>) -> Result<Option<Event>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(e) = self.try_next()? {
                return Ok(Some(e));
            }
            let ms = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    left.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int
                }
            };
            let mut pfd = libc::pollfd {
                fd: self.sock.fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(self.io_err(e));
                }
            }
        }
    }

    /// Waits for the next event on the current tokio runtime (which must have its I/O
    /// driver enabled).
    pub async fn next(&mut self) -> Result<Event> {
        loop {
            if let Some(e) = self.try_next()? {
                return Ok(e);
            }
            if self.async_fd.is_none() {
                // SAFETY: the fd belongs to `self.sock`, which stays open and unchanged
                // for as long as `async_fd` exists (it is dropped first).
                let fd = unsafe {
                    AsyncFd::register_with_interest(
                        Fd(self.sock.fd()),
                        tokio::io::Interest::READABLE,
                    )
                }
                .map_err(|e| self.io_err(e.into()))?;
                self.async_fd = Some(fd);
            }
            let Some(afd) = &self.async_fd else { continue };
            let mut guard = afd.readable().await.map_err(|e| self.io_err(e))?;
            guard.clear_ready();
        }
    }

    /// Drops every queued event; returns how many.
    pub fn drain(&mut self) -> Result<usize> {
        self.fill()?;
        let n = self.pending.len();
        self.pending.clear();
        Ok(n)
    }
}

fn parse_event(h: &nl::Header, p: &[u8], now: Instant, own: &HashSet<u32>) -> Option<Event> {
    if h.ty >> 8 != nl::NFNL_SUBSYS_NFTABLES {
        return None;
    }
    let msg = (h.ty & 0xff) as u8;
    let family = *p.first()?;
    let a = nl::attrs(p.get(nl::NFGENMSG_LEN..)?).ok()?;
    let s = |t: u16| nl::find(&a, t).map(nl::string);
    use EventKind::*;
    let kind = match msg {
        nl::NFT_MSG_NEWTABLE => NewTable,
        nl::NFT_MSG_DELTABLE | nl::NFT_MSG_DESTROYTABLE => DelTable,
        nl::NFT_MSG_NEWCHAIN => NewChain,
        nl::NFT_MSG_DELCHAIN | nl::NFT_MSG_DESTROYCHAIN => DelChain,
        nl::NFT_MSG_NEWRULE => NewRule,
        nl::NFT_MSG_DELRULE | nl::NFT_MSG_DESTROYRULE => DelRule,
        nl::NFT_MSG_NEWSET => NewSet,
        nl::NFT_MSG_DELSET | nl::NFT_MSG_DESTROYSET => DelSet,
        nl::NFT_MSG_NEWSETELEM => NewSetElem,
        nl::NFT_MSG_DELSETELEM | nl::NFT_MSG_DESTROYSETELEM => DelSetElem,
        nl::NFT_MSG_NEWOBJ => NewObj,
        nl::NFT_MSG_DELOBJ => DelObj,
        nl::NFT_MSG_NEWFLOWTABLE => NewFlowtable,
        nl::NFT_MSG_DELFLOWTABLE => DelFlowtable,
        nl::NFT_MSG_NEWGEN => Generation {
            id: nl::find(&a, nl::NFTA_GEN_ID)
                .and_then(nl::be32)
                .unwrap_or(0),
            pid: nl::find(&a, nl::NFTA_GEN_PROC_PID)
                .and_then(nl::be32)
                .unwrap_or(0),
            process: s(nl::NFTA_GEN_PROC_NAME).unwrap_or_default(),
        },
        _ => Other(h.ty),
    };
    let is_gen = matches!(kind, Generation { .. });
    // Attribute 1 is the table's name in every table, chain, rule, set, element, object
    // and flowtable message; 2 is the chain of chain (3 there) and rule messages.
    let (table, chain, handle) = if is_gen {
        (None, None, None)
    } else {
        match kind {
            NewChain | DelChain => (s(1), s(nl::NFTA_CHAIN_NAME), None),
            NewRule | DelRule => (
                s(1),
                s(nl::NFTA_RULE_CHAIN),
                nl::find(&a, nl::NFTA_RULE_HANDLE).and_then(nl::be64),
            ),
            _ => (s(1), None, None),
        }
    };
    Some(Event {
        kind,
        family,
        table,
        chain,
        handle,
        portid: h.pid,
        own: own.contains(&h.pid),
        received: now,
    })
}
