//! [`NamespaceFirewall`]: one nf_tables socket inside one namespace, and what it does
//! there: read table `inet weft`, compare it with a [`Ruleset`], make it so in one batch.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::expr::{self, RuleKind};
use crate::model::{Ruleset, Verdict};
use crate::netns::{self, Identity};
use crate::nl::{self, Header, Msg, Socket};
use crate::watch::Watcher;

/// The table this crate owns in every namespace (family `inet`).
pub const TABLE: &str = "weft";
/// Its one chain: `type filter hook input priority 0; policy drop;`.
pub const CHAIN: &str = "input";
const CHAIN_TYPE: &str = "filter";
const PRIORITY: i32 = 0;
/// How long a request waits for the kernel's answer before it is an error.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts of read-compare-write when someone else commits in between.
const APPLY_ATTEMPTS: u32 = 5;
/// `ERESTART`: the batch's generation id is not the current one.
const ERESTART: i32 = 85;
/// nftables' comment in rule user data (`NFTNL_UDATA_RULE_COMMENT`).
const UDATA_RULE_COMMENT: u8 = 0;

/// What `read` found: table `inet weft` at one ruleset generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Observed {
    /// nf_tables' generation id the read is consistent with.
    pub generation: u32,
    /// `None`: there is no table `inet weft`.
    pub table: Option<ObservedTable>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObservedTable {
    /// Table flags (`0x1` dormant: the table's chains are not hooked).
    pub flags: u32,
    pub chains: Vec<ObservedChain>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObservedChain {
    pub name: String,
    /// `None` for a regular (non-base) chain.
    pub base: Option<BaseChain>,
    pub rules: Vec<ObservedRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BaseChain {
    pub chain_type: String,
    /// `NF_INET_*` hook number (1 = input).
    pub hook: u32,
    pub priority: i32,
    /// `NF_DROP` (0) or `NF_ACCEPT` (1).
    pub policy: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObservedRule {
    pub handle: u64,
    /// What the rule is, when it is exactly one of the shapes this crate writes.
    #[serde(skip)]
    pub kind: Option<RuleKind>,
    /// Readable form (the kind, or the expressions of a foreign rule).
    pub text: String,
    /// The rule's nftables comment, if any (ours say which rule they come from).
    pub comment: Option<String>,
}

impl Observed {
    /// The rules of chain `input`, if the table and chain exist.
    pub fn input_rules(&self) -> Option<&[ObservedRule]> {
        let t = self.table.as_ref()?;
        let c = t.chains.iter().find(|c| c.name == CHAIN)?;
        Some(&c.rules)
    }
}

/// What chain `input` holds now, read as a ruleset: see [`Observed::live_rules`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRules {
    /// The chain's rules of shapes this crate writes, in order, one rule per kernel rule
    /// (built-in rules left out).
    pub ruleset: Ruleset,
    /// The text of rules of other shapes (added with `nft` in a form weft does not write).
    pub foreign: Vec<String>,
}

impl Observed {
    /// The inbound rules the table holds now, when it still has weft's shape (table flags
    /// 0, one base chain `input` of type filter, hook input, priority 0, policy drop): what
    /// a change made by hand to the rules left. `None` when the shape itself was changed.
    pub fn live_rules(&self) -> Option<LiveRules> {
        let t = self.table.as_ref()?;
        if t.flags != 0 || t.chains.len() != 1 {
            return None;
        }
        let c = &t.chains[0];
        let b = c.base.as_ref()?;
        if c.name != CHAIN
            || b.chain_type != CHAIN_TYPE
            || b.hook != nl::NF_INET_LOCAL_IN
            || b.priority != PRIORITY
            || b.policy != nl::NF_DROP
        {
            return None;
        }
        let mut rules = Vec::new();
        let mut foreign = Vec::new();
        for r in &c.rules {
            match r.kind {
                Some(RuleKind::User(a)) => match a.to_rule() {
                    Some(rule) => rules.push(rule),
                    None => foreign.push(r.text.clone()),
                },
                Some(_) => {}
                None => foreign.push(r.text.clone()),
            }
        }
        Some(LiveRules {
            ruleset: Ruleset { rules },
            foreign,
        })
    }
}

/// What one `apply` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    /// Whether a batch was committed (false: the table already was the ruleset).
    pub changed: bool,
    /// Messages in the committed batch, batch begin and end included (0 if unchanged).
    pub messages: usize,
    /// Bytes of that batch.
    pub bytes: usize,
    /// Kernel rules in chain `input` afterwards (preamble included).
    pub rules: usize,
    /// The differences found before writing.
    pub drift_before: Vec<String>,
    /// Read-compare-write rounds (more than 1 when someone committed in between).
    pub attempts: u32,
    /// Time spent reading and comparing.
    pub read: Duration,
    /// Time spent sending the batch and reading its acks.
    pub write: Duration,
    pub total: Duration,
}

/// The kernel rules chain `input` must hold for `ruleset`, in order, each with how drift
/// reports name it and the comment it carries.
pub(crate) struct Wanted {
    pub kind: RuleKind,
    pub name: String,
    pub comment: String,
}

pub(crate) fn wanted(ruleset: &Ruleset) -> Vec<Wanted> {
    let mut out: Vec<Wanted> = [
        RuleKind::Established,
        RuleKind::Loopback,
        RuleKind::NeighbourDiscovery,
    ]
    .into_iter()
    .map(|k| Wanted {
        kind: k,
        name: format!("built-in rule ({k})"),
        comment: "weft built-in".into(),
    })
    .collect();
    for (i, r) in ruleset.rules.iter().enumerate() {
        let atoms = expr::expand(r);
        let n = atoms.len();
        for a in atoms {
            let name = if n == 1 {
                format!("rule {} ({r})", i + 1)
            } else {
                format!("rule {} ({r}) part ({a})", i + 1)
            };
            out.push(Wanted {
                kind: RuleKind::User(a),
                name,
                comment: format!("weft rule {}", i + 1),
            });
        }
    }
    let last = RuleKind::RoutedReject;
    out.push(Wanted {
        kind: last,
        name: format!("built-in rule ({last})"),
        comment: "weft built-in".into(),
    });
    out
}

/// Human-readable differences between the desired ruleset and what is in the kernel;
/// empty when table `inet weft` is exactly the ruleset. Rules are numbered from 1.
pub fn drift(desired: &Ruleset, observed: &Observed) -> Vec<String> {
    let mut out = Vec::new();
    let Some(t) = &observed.table else {
        out.push(format!("table inet {TABLE} deleted"));
        return out;
    };
    if t.flags != 0 {
        let dormant = if t.flags & 1 != 0 { " (dormant)" } else { "" };
        out.push(format!(
            "table inet {TABLE} flags {:#x}{dormant}, want 0",
            t.flags
        ));
    }
    for c in t.chains.iter().filter(|c| c.name != CHAIN) {
        out.push(format!("extra chain {} ({} rules)", c.name, c.rules.len()));
    }
    let Some(input) = t.chains.iter().find(|c| c.name == CHAIN) else {
        out.push(format!("chain {CHAIN} deleted"));
        return out;
    };
    match &input.base {
        None => out.push(format!(
            "chain {CHAIN} is not a base chain, want type {CHAIN_TYPE} hook input priority {PRIORITY}"
        )),
        Some(b) => {
            if b.chain_type != CHAIN_TYPE || b.hook != nl::NF_INET_LOCAL_IN || b.priority != PRIORITY {
                out.push(format!(
                    "chain {CHAIN} is type {} hook {} priority {}, want type {CHAIN_TYPE} hook {} priority {PRIORITY}",
                    b.chain_type,
                    b.hook,
                    b.priority,
                    nl::NF_INET_LOCAL_IN
                ));
            }
            if b.policy != nl::NF_DROP {
                let p = if b.policy == nl::NF_ACCEPT {
                    "accept".to_owned()
                } else {
                    b.policy.to_string()
                };
                out.push(format!("chain {CHAIN} policy {p}, want drop"));
            }
        }
    }
    let want = wanted(desired);
    let have = &input.rules;
    if want.len() == have.len() && want.iter().zip(have).all(|(w, h)| h.kind == Some(w.kind)) {
        return out;
    }
    let mut used = vec![false; have.len()];
    let mut missing = 0;
    for w in &want {
        match have
            .iter()
            .enumerate()
            .find(|(i, h)| !used[*i] && h.kind == Some(w.kind))
        {
            Some((i, _)) => used[i] = true,
            None => {
                missing += 1;
                out.push(format!("{} missing", w.name));
            }
        }
    }
    let mut extra = 0;
    for (h, _) in have.iter().zip(&used).filter(|(_, u)| !**u) {
        extra += 1;
        if h.kind == Some(RuleKind::LegacyLoopback) {
            // Written by an agent before ROUTED_MARK: replaced like a built-in rule.
            out.push(format!(
                "built-in rule ({}) of an older agent, handle {}",
                h.text, h.handle
            ));
            continue;
        }
        out.push(format!("extra rule handle {} ({})", h.handle, h.text));
    }
    if missing == 0 && extra == 0 {
        let order: Vec<String> = have.iter().map(|h| h.text.clone()).collect();
        out.push(format!("rules out of order: {}", order.join("; ")));
    }
    out
}

/// The two sockets of a [`NamespaceFirewall`] and its [`Watcher`], opened by
/// [`NamespaceFirewall::sockets_here`] and not used yet.
pub struct NamespaceSockets {
    request: Socket,
    watch: Socket,
}

impl std::fmt::Debug for NamespaceSockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespaceSockets")
            .field("request_fd", &self.request.fd())
            .field("watch_fd", &self.watch.fd())
            .finish()
    }
}

/// An nf_tables netlink socket opened inside one namespace, kept for reuse: the agent
/// holds one per node namespace and calls [`read`](Self::read) / [`apply`](Self::apply)
/// on it without a thread or `setns` per operation.
pub struct NamespaceFirewall {
    sock: Socket,
    seq: u32,
    label: String,
    identity: Option<Identity>,
}

fn comment_udata(c: &str) -> Vec<u8> {
    let b = &c.as_bytes()[..c.len().min(250)];
    let mut v = vec![UDATA_RULE_COMMENT, (b.len() + 1) as u8];
    v.extend_from_slice(b);
    v.push(0);
    v
}

fn comment_of(udata: &[u8]) -> Option<String> {
    let mut d = udata;
    while d.len() >= 2 {
        let (ty, len) = (d[0], d[1] as usize);
        let v = d.get(2..2 + len)?;
        if ty == UDATA_RULE_COMMENT {
            return Some(nl::string(v));
        }
        d = &d[2 + len..];
    }
    None
}

/// One `NFT_MSG_NEWRULE` message of a dump (its payload: `nfgenmsg` then attributes),
/// decoded: its chain and the rule; `None` for a rule of another table. The rules are
/// what anyone with `CAP_NET_ADMIN` in the namespace wrote (a node's workload may have
/// it), so this never panics on any bytes (fuzzed: `fuzz/fuzz_targets/nft_rule_dump.rs`).
pub fn decode_rule(payload: &[u8]) -> std::result::Result<Option<(String, ObservedRule)>, String> {
    let a = nl::attrs(payload.get(nl::NFGENMSG_LEN..).unwrap_or(&[]))?;
    if nl::find(&a, nl::NFTA_RULE_TABLE).map(nl::string).as_deref() != Some(TABLE) {
        return Ok(None);
    }
    let chain = nl::find(&a, nl::NFTA_RULE_CHAIN)
        .map(nl::string)
        .unwrap_or_default();
    let handle = nl::find(&a, nl::NFTA_RULE_HANDLE)
        .and_then(nl::be64)
        .unwrap_or(0);
    let exprs = expr::decode_exprs(nl::find(&a, nl::NFTA_RULE_EXPRESSIONS).unwrap_or(&[]))
        .map_err(|w| format!("rule handle {handle}: {w}"))?;
    let kind = expr::decode_kind(&exprs);
    let text = kind.map_or_else(|| expr::describe(&exprs), |k| k.to_string());
    let comment = nl::find(&a, nl::NFTA_RULE_USERDATA).and_then(comment_of);
    Ok(Some((
        chain,
        ObservedRule {
            handle,
            kind,
            text,
            comment,
        },
    )))
}

/// One received message: header and payload.
type Received = (Header, Vec<u8>);

enum Route {
    /// No table: create it.
    Fresh,
    /// Table with only our base chain: keep the chain, flush and refill it.
    Flush,
    /// Table with something else in it: delete and recreate it.
    Recreate,
}

impl NamespaceFirewall {
    /// Opens the socket in the namespace of `netns` (a namespace file such as
    /// `/run/netns/x`), or in the current one when `None`.
    pub fn open(netns: Option<&Path>) -> Result<Self> {
        let (sock, identity) = netns::run_in(netns, Self::request_socket)?;
        Ok(Self::from_socket(sock, netns, identity))
    }

    /// Opens the socket and a [`Watcher`] in the namespace with one `setns`; the watcher
    /// marks the events this handle's own changes cause as [`own`](crate::Event::own).
    pub fn open_with_watcher(netns: Option<&Path>) -> Result<(Self, Watcher)> {
        let ((sock, wsock), identity) =
            netns::run_in(netns, || Ok((Self::request_socket()?, Watcher::socket()?)))?;
        let fw = Self::from_socket(sock, netns, identity);
        let mut w = Watcher::from_socket(wsock, fw.label.clone())?;
        w.ignore_portid(fw.portid());
        Ok((fw, w))
    }

    /// Opens the sockets of [`from_sockets`](Self::from_sockets) in the calling thread's
    /// namespace: for a thread that is in the node's namespace anyway (the one that made
    /// it), so that opening the firewall costs no second thread and `setns`.
    pub fn sockets_here() -> std::io::Result<NamespaceSockets> {
        Ok(NamespaceSockets {
            request: Self::request_socket()?,
            watch: Watcher::socket()?,
        })
    }

    /// The handle and its [`Watcher`] (as [`open_with_watcher`](Self::open_with_watcher)
    /// makes them) from sockets opened by [`sockets_here`](Self::sockets_here) inside the
    /// namespace `netns` names.
    pub fn from_sockets(s: NamespaceSockets, netns: &Path) -> Result<(Self, Watcher)> {
        let identity = netns::identity_of(netns)?;
        let fw = Self::from_socket(s.request, Some(netns), Some(identity));
        let mut w = Watcher::from_socket(s.watch, fw.label.clone())?;
        w.ignore_portid(fw.portid());
        Ok((fw, w))
    }

    fn request_socket() -> std::io::Result<Socket> {
        let s = Socket::open(false, 1 << 20)?;
        let tv = libc::timeval {
            tv_sec: REPLY_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: a valid fd and a timeval that lives for the call.
        let r = unsafe {
            libc::setsockopt(
                s.fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(s)
    }

    fn from_socket(sock: Socket, netns: Option<&Path>, identity: Option<Identity>) -> Self {
        NamespaceFirewall {
            sock,
            seq: 1,
            label: netns::label(netns),
            identity,
        }
    }

    /// The netlink port id of this handle's socket: nf_tables events caused by our own
    /// batches carry it as their `nlmsg_pid`.
    pub fn portid(&self) -> u32 {
        self.sock.portid
    }

    /// The namespace's (device, inode) when opened; `None` for the current namespace.
    pub fn identity(&self) -> Option<Identity> {
        self.identity
    }

    /// Whether `netns` still names the namespace this handle was opened in (a namespace
    /// deleted and made again under the same name is another one: open a new handle).
    pub fn still_names(&self, netns: &Path) -> bool {
        netns::identity_of(netns).ok() == self.identity
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    fn io_err(&self, op: &str, source: std::io::Error) -> Error {
        Error::Io {
            netns: self.label.clone(),
            op: op.to_owned(),
            source,
        }
    }

    fn proto_err(&self, op: &str, what: impl Into<String>) -> Error {
        Error::Protocol {
            netns: self.label.clone(),
            op: op.to_owned(),
            what: what.into(),
        }
    }

    fn kernel_err(&self, op: &str, errno: i32, message: Option<String>) -> Error {
        Error::Kernel {
            netns: self.label.clone(),
            op: op.to_owned(),
            errno,
            message,
        }
    }

    /// Receives one datagram (blocking up to the reply timeout) and returns its messages.
    fn recv_messages(&mut self, op: &str, dontwait: bool) -> Result<Option<Vec<Received>>> {
        let n = match self.sock.recv(dontwait) {
            Ok(Some(n)) => n,
            Ok(None) if dontwait => return Ok(None),
            Ok(None) => {
                return Err(self.io_err(
                    op,
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "no reply from nf_tables"),
                ));
            }
            Err(e) => return Err(self.io_err(op, e)),
        };
        let msgs = nl::messages(&self.sock.buf[..n])
            .map(|v| v.into_iter().map(|(h, p)| (h, p.to_vec())).collect())
            .map_err(|w| self.proto_err(op, w))?;
        Ok(Some(msgs))
    }

    /// A request answered by data messages and an ack (or an error).
    fn request(&mut self, op: &str, msg: Msg, seq: u32) -> Result<Vec<Vec<u8>>> {
        let bytes = msg.finish();
        self.sock.send(&bytes).map_err(|e| self.io_err(op, e))?;
        let mut data = Vec::new();
        loop {
            let Some(msgs) = self.recv_messages(op, false)? else {
                continue;
            };
            for (h, p) in msgs {
                if h.seq != seq {
                    continue; // a late answer to something that timed out
                }
                match h.ty {
                    nl::NLMSG_ERROR => {
                        let (errno, _, m) =
                            nl::parse_error(&h, &p).map_err(|w| self.proto_err(op, w))?;
                        if errno != 0 {
                            return Err(self.kernel_err(op, errno, m));
                        }
                        return Ok(data);
                    }
                    nl::NLMSG_NOOP => {}
                    nl::NLMSG_DONE | nl::NLMSG_OVERRUN => {
                        return Err(self.proto_err(op, format!("message type {}", h.ty)));
                    }
                    _ => data.push(p),
                }
            }
        }
    }

    /// A dump: data messages until `NLMSG_DONE`. `Ok(None)` when the kernel says the
    /// dump was interrupted by a change (retry).
    fn dump(&mut self, op: &str, msg: Msg, seq: u32) -> Result<Option<Vec<Vec<u8>>>> {
        let bytes = msg.finish();
        self.sock.send(&bytes).map_err(|e| self.io_err(op, e))?;
        let mut data = Vec::new();
        let mut interrupted = false;
        loop {
            let Some(msgs) = self.recv_messages(op, false)? else {
                continue;
            };
            for (h, p) in msgs {
                if h.seq != seq {
                    continue;
                }
                if h.flags & nl::NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match h.ty {
                    nl::NLMSG_ERROR => {
                        let (errno, _, m) =
                            nl::parse_error(&h, &p).map_err(|w| self.proto_err(op, w))?;
                        if errno != 0 {
                            return Err(self.kernel_err(op, errno, m));
                        }
                    }
                    nl::NLMSG_DONE => {
                        if p.len() >= 4 {
                            let e = -i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
                            if e != 0 {
                                return Err(self.kernel_err(op, e, None));
                            }
                        }
                        return Ok((!interrupted).then_some(data));
                    }
                    nl::NLMSG_NOOP => {}
                    _ => data.push(p),
                }
            }
        }
    }

    /// nf_tables' current generation id.
    pub fn generation(&mut self) -> Result<u32> {
        let op = "get generation";
        let seq = self.next_seq();
        let m = Msg::new(
            nl::nft_type(nl::NFT_MSG_GETGEN),
            nl::NLM_F_REQUEST | nl::NLM_F_ACK,
            seq,
            0,
            0,
        );
        let replies = self.request(op, m, seq)?;
        let p = replies
            .first()
            .ok_or_else(|| self.proto_err(op, "no NEWGEN reply"))?;
        let a = nl::attrs(p.get(nl::NFGENMSG_LEN..).unwrap_or(&[]))
            .map_err(|w| self.proto_err(op, w))?;
        nl::find(&a, nl::NFTA_GEN_ID)
            .and_then(nl::be32)
            .ok_or_else(|| self.proto_err(op, "NEWGEN without NFTA_GEN_ID"))
    }

    /// What is in table `inet weft` now, consistent with one generation.
    pub fn read(&mut self) -> Result<Observed> {
        for _ in 0..APPLY_ATTEMPTS {
            let generation = self.generation()?;
            let Some(table) = self.read_table()? else {
                continue;
            };
            if self.generation()? == generation {
                return Ok(Observed { generation, table });
            }
        }
        Err(Error::Contended {
            netns: self.label.clone(),
            op: "read",
            attempts: APPLY_ATTEMPTS,
        })
    }

    /// `Ok(None)`: a dump was interrupted, read again.
    #[allow(clippy::type_complexity)]
    fn read_table(&mut self) -> Result<Option<Option<ObservedTable>>> {
        let op = "get table inet weft";
        let seq = self.next_seq();
        let mut m = Msg::new(
            nl::nft_type(nl::NFT_MSG_GETTABLE),
            nl::NLM_F_REQUEST | nl::NLM_F_ACK,
            seq,
            nl::NFPROTO_INET,
            0,
        );
        m.str(nl::NFTA_TABLE_NAME, TABLE);
        let replies = match self.request(op, m, seq) {
            Ok(r) => r,
            Err(Error::Kernel {
                errno: libc::ENOENT,
                ..
            }) => return Ok(Some(None)),
            Err(e) => return Err(e),
        };
        let p = replies
            .first()
            .ok_or_else(|| self.proto_err(op, "no NEWTABLE reply"))?;
        let a = nl::attrs(p.get(nl::NFGENMSG_LEN..).unwrap_or(&[]))
            .map_err(|w| self.proto_err(op, w))?;
        let flags = nl::find(&a, nl::NFTA_TABLE_FLAGS)
            .and_then(nl::be32)
            .unwrap_or(0);

        let op = "dump chains";
        let seq = self.next_seq();
        let mut m = Msg::new(
            nl::nft_type(nl::NFT_MSG_GETCHAIN),
            nl::NLM_F_REQUEST | nl::NLM_F_DUMP,
            seq,
            nl::NFPROTO_INET,
            0,
        );
        m.str(nl::NFTA_CHAIN_TABLE, TABLE);
        let Some(chain_msgs) = self.dump(op, m, seq)? else {
            return Ok(None);
        };
        let mut chains = Vec::new();
        for p in &chain_msgs {
            let a = nl::attrs(p.get(nl::NFGENMSG_LEN..).unwrap_or(&[]))
                .map_err(|w| self.proto_err(op, w))?;
            if nl::find(&a, nl::NFTA_CHAIN_TABLE)
                .map(nl::string)
                .as_deref()
                != Some(TABLE)
            {
                continue;
            }
            let name = nl::find(&a, nl::NFTA_CHAIN_NAME)
                .map(nl::string)
                .ok_or_else(|| self.proto_err(op, "chain without a name"))?;
            let base = match nl::find(&a, nl::NFTA_CHAIN_HOOK) {
                None => None,
                Some(h) => {
                    let h = nl::attrs(h).map_err(|w| self.proto_err(op, w))?;
                    Some(BaseChain {
                        chain_type: nl::find(&a, nl::NFTA_CHAIN_TYPE)
                            .map(nl::string)
                            .unwrap_or_default(),
                        hook: nl::find(&h, nl::NFTA_HOOK_HOOKNUM)
                            .and_then(nl::be32)
                            .unwrap_or(u32::MAX),
                        priority: nl::find(&h, nl::NFTA_HOOK_PRIORITY)
                            .and_then(nl::be32)
                            .map(|p| p as i32)
                            .unwrap_or(i32::MIN),
                        policy: nl::find(&a, nl::NFTA_CHAIN_POLICY)
                            .and_then(nl::be32)
                            .unwrap_or(u32::MAX),
                    })
                }
            };
            chains.push(ObservedChain {
                name,
                base,
                rules: Vec::new(),
            });
        }

        let op = "dump rules";
        let seq = self.next_seq();
        let mut m = Msg::new(
            nl::nft_type(nl::NFT_MSG_GETRULE),
            nl::NLM_F_REQUEST | nl::NLM_F_DUMP,
            seq,
            nl::NFPROTO_INET,
            0,
        );
        m.str(nl::NFTA_RULE_TABLE, TABLE);
        let Some(rule_msgs) = self.dump(op, m, seq)? else {
            return Ok(None);
        };
        for p in &rule_msgs {
            let Some((chain, rule)) = decode_rule(p).map_err(|w| self.proto_err(op, w))? else {
                continue;
            };
            match chains.iter_mut().find(|c| c.name == chain) {
                Some(c) => c.rules.push(rule),
                // A chain made after the chain dump: the generation check will retry.
                None => return Ok(None),
            }
        }
        Ok(Some(Some(ObservedTable { flags, chains })))
    }

    /// Makes table `inet weft` exactly `ruleset`: reads it, and unless it already is the
    /// ruleset, commits one nf_tables batch (conditional on the generation it read, so a
    /// concurrent change makes it read and try again) that rebuilds it. Idempotent:
    /// applying the ruleset the table already holds writes nothing.
    pub fn apply(&mut self, ruleset: &Ruleset) -> Result<ApplyReport> {
        for r in &ruleset.rules {
            r.validate()?;
        }
        let start = Instant::now();
        let want = wanted(ruleset);
        let mut read = Duration::ZERO;
        let mut write = Duration::ZERO;
        for attempt in 1..=APPLY_ATTEMPTS {
            let t0 = Instant::now();
            let before = self.read()?;
            let d = drift(ruleset, &before);
            read += t0.elapsed();
            if d.is_empty() {
                return Ok(ApplyReport {
                    changed: false,
                    messages: 0,
                    bytes: 0,
                    rules: want.len(),
                    drift_before: d,
                    attempts: attempt,
                    read,
                    write,
                    total: start.elapsed(),
                });
            }
            let route = match &before.table {
                None => Route::Fresh,
                Some(t)
                    if t.chains.len() == 1
                        && t.chains[0].name == CHAIN
                        && t.chains[0].base.as_ref().is_some_and(|b| {
                            b.chain_type == CHAIN_TYPE
                                && b.hook == nl::NF_INET_LOCAL_IN
                                && b.priority == PRIORITY
                        }) =>
                {
                    Route::Flush
                }
                Some(_) => Route::Recreate,
            };
            let t1 = Instant::now();
            let (bytes, msgs) = self.batch(before.generation, &route, &want);
            let outcome = self.commit(&bytes, &msgs);
            write += t1.elapsed();
            match outcome {
                Ok(()) => {
                    return Ok(ApplyReport {
                        changed: true,
                        messages: msgs.len() + 2,
                        bytes: bytes.len(),
                        rules: want.len(),
                        drift_before: d,
                        attempts: attempt,
                        read,
                        write,
                        total: start.elapsed(),
                    });
                }
                Err(Error::Kernel {
                    errno: ERESTART, ..
                }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Contended {
            netns: self.label.clone(),
            op: "apply",
            attempts: APPLY_ATTEMPTS,
        })
    }

    /// The batch and, for each message in it, (seq, what it does).
    fn batch(
        &mut self,
        generation: u32,
        route: &Route,
        want: &[Wanted],
    ) -> (Vec<u8>, Vec<(u32, String)>) {
        let mut out = Vec::with_capacity(256 + want.len() * 256);
        let mut what = Vec::new();
        let seq = self.next_seq();
        let mut begin = Msg::new(
            nl::NFNL_MSG_BATCH_BEGIN,
            nl::NLM_F_REQUEST,
            seq,
            0,
            nl::NFNL_SUBSYS_NFTABLES,
        );
        begin.be32(nl::NFNL_BATCH_GENID, generation);
        out.extend(begin.finish());
        let ack = nl::NLM_F_REQUEST | nl::NLM_F_ACK;
        let mut push = |this: &mut Self, ty: u8, flags: u16, desc: String, f: &dyn Fn(&mut Msg)| {
            let seq = this.next_seq();
            let mut m = Msg::new(nl::nft_type(ty), ack | flags, seq, nl::NFPROTO_INET, 0);
            f(&mut m);
            out.extend(m.finish());
            what.push((seq, desc));
        };
        let table = |m: &mut Msg| {
            m.str(nl::NFTA_TABLE_NAME, TABLE)
                .be32(nl::NFTA_TABLE_FLAGS, 0);
        };
        if let Route::Recreate = route {
            push(
                self,
                nl::NFT_MSG_DELTABLE,
                0,
                format!("delete table inet {TABLE}"),
                &|m| {
                    m.str(nl::NFTA_TABLE_NAME, TABLE);
                },
            );
        }
        push(
            self,
            nl::NFT_MSG_NEWTABLE,
            nl::NLM_F_CREATE,
            format!("add table inet {TABLE}"),
            &table,
        );
        push(
            self,
            nl::NFT_MSG_NEWCHAIN,
            nl::NLM_F_CREATE,
            format!("add chain {CHAIN}"),
            &|m| {
                m.str(nl::NFTA_CHAIN_TABLE, TABLE)
                    .str(nl::NFTA_CHAIN_NAME, CHAIN);
                m.begin(nl::NFTA_CHAIN_HOOK)
                    .be32(nl::NFTA_HOOK_HOOKNUM, nl::NF_INET_LOCAL_IN)
                    .be32(nl::NFTA_HOOK_PRIORITY, PRIORITY as u32)
                    .end();
                m.be32(nl::NFTA_CHAIN_POLICY, nl::NF_DROP)
                    .str(nl::NFTA_CHAIN_TYPE, CHAIN_TYPE);
            },
        );
        if let Route::Flush = route {
            push(
                self,
                nl::NFT_MSG_DELRULE,
                0,
                format!("flush chain {CHAIN}"),
                &|m| {
                    m.str(nl::NFTA_RULE_TABLE, TABLE)
                        .str(nl::NFTA_RULE_CHAIN, CHAIN);
                },
            );
        }
        for w in want {
            let exprs = expr::encode_kind(&w.kind);
            push(
                self,
                nl::NFT_MSG_NEWRULE,
                nl::NLM_F_CREATE | nl::NLM_F_APPEND,
                format!("add {}", w.name),
                &|m| {
                    m.str(nl::NFTA_RULE_TABLE, TABLE)
                        .str(nl::NFTA_RULE_CHAIN, CHAIN);
                    expr::encode_exprs(m, &exprs);
                    m.attr(nl::NFTA_RULE_USERDATA, &comment_udata(&w.comment));
                },
            );
        }
        let seq = self.next_seq();
        out.extend(
            Msg::new(
                nl::NFNL_MSG_BATCH_END,
                nl::NLM_F_REQUEST,
                seq,
                0,
                nl::NFNL_SUBSYS_NFTABLES,
            )
            .finish(),
        );
        (out, what)
    }

    /// Sends a batch and waits for an ack of every message in it; the first error the
    /// kernel reports (the batch is then not committed) names the message it refused.
    fn commit(&mut self, bytes: &[u8], msgs: &[(u32, String)]) -> Result<()> {
        let op = "apply";
        self.sock.send(bytes).map_err(|e| self.io_err(op, e))?;
        let first = msgs.first().map_or(0, |m| m.0);
        let begin_seq = first.wrapping_sub(1);
        let mut acked = 0usize;
        let mut error: Option<Error> = None;
        // The kernel processes the batch inside sendmsg: its answers are queued already,
        // so read what is there, and block only while acks are still missing.
        loop {
            let dontwait = error.is_some() || acked == msgs.len();
            let Some(got) = self.recv_messages(op, dontwait)? else {
                break;
            };
            for (h, p) in got {
                if h.ty != nl::NLMSG_ERROR {
                    continue;
                }
                let (errno, seq, m) = nl::parse_error(&h, &p).map_err(|w| self.proto_err(op, w))?;
                let idx = msgs.iter().position(|(s, _)| *s == seq);
                if seq != begin_seq && idx.is_none() {
                    continue; // not this batch's
                }
                if errno == 0 {
                    acked += 1;
                    continue;
                }
                if seq == begin_seq {
                    // The whole batch was refused (ERESTART: the generation moved).
                    return Err(self.kernel_err(op, errno, m));
                }
                if error.is_none() {
                    let what = idx.map_or("batch", |i| msgs[i].1.as_str());
                    error = Some(self.kernel_err(&format!("{op}: {what}"), errno, m));
                }
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Deletes one rule of chain `input` by handle, as someone else would: for tools and
    /// tests that inject drift. Not used by `apply`.
    pub fn delete_rule(&mut self, handle: u64) -> Result<()> {
        let op = format!("delete rule handle {handle}");
        let seq = self.next_seq();
        let mut out = Msg::new(
            nl::NFNL_MSG_BATCH_BEGIN,
            nl::NLM_F_REQUEST,
            seq,
            0,
            nl::NFNL_SUBSYS_NFTABLES,
        )
        .finish();
        let seq = self.next_seq();
        let mut m = Msg::new(
            nl::nft_type(nl::NFT_MSG_DELRULE),
            nl::NLM_F_REQUEST | nl::NLM_F_ACK,
            seq,
            nl::NFPROTO_INET,
            0,
        );
        m.str(nl::NFTA_RULE_TABLE, TABLE)
            .str(nl::NFTA_RULE_CHAIN, CHAIN)
            .attr(nl::NFTA_RULE_HANDLE, &handle.to_be_bytes());
        out.extend(m.finish());
        let end = self.next_seq();
        out.extend(
            Msg::new(
                nl::NFNL_MSG_BATCH_END,
                nl::NLM_F_REQUEST,
                end,
                0,
                nl::NFNL_SUBSYS_NFTABLES,
            )
            .finish(),
        );
        self.commit(&out, &[(seq, op)])
    }
}

impl Verdict {
    /// The kernel's verdict code.
    pub fn code(self) -> u32 {
        match self {
            Verdict::Accept => nl::NF_ACCEPT,
            Verdict::Drop => nl::NF_DROP,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{InboundRule, Protocol};

    /// A rule message as the kernel dumps it (`nfgenmsg`, then the attributes): payload
    /// only, without the netlink header.
    fn dumped(kind: &RuleKind, handle: u64, comment: &str) -> Vec<u8> {
        let mut m = Msg::new(nl::nft_type(nl::NFT_MSG_NEWRULE), 0, 0, nl::NFPROTO_INET, 0);
        m.str(nl::NFTA_RULE_TABLE, TABLE)
            .str(nl::NFTA_RULE_CHAIN, CHAIN)
            .attr(nl::NFTA_RULE_HANDLE, &handle.to_be_bytes());
        expr::encode_exprs(&mut m, &expr::encode_kind(kind));
        m.attr(nl::NFTA_RULE_USERDATA, &comment_udata(comment));
        m.finish()[nl::NLMSG_HDRLEN..].to_vec()
    }

    /// Every rule this crate writes decodes from its dump to itself, with its handle and
    /// comment; a rule of another table is skipped; bytes cut short are an error, not a
    /// panic. With `WEFT_FUZZ_SEEDS=<dir>` the dumps are also written there (the seeds of
    /// `fuzz/corpus/nft_rule_dump/`).
    #[test]
    fn dumped_rules_decode_to_what_was_written() {
        let ruleset = Ruleset {
            rules: vec![
                InboundRule {
                    sources: vec![
                        "198.18.0.5/32".parse().unwrap(),
                        "fd00::/64".parse().unwrap(),
                    ],
                    protocol: Protocol::Tcp,
                    ports: vec!["8080".parse().unwrap(), "9000-9100".parse().unwrap()],
                    verdict: Verdict::Accept,
                },
                InboundRule {
                    sources: vec![],
                    protocol: Protocol::Icmp,
                    ports: vec![],
                    verdict: Verdict::Drop,
                },
            ],
        };
        let mut kinds: Vec<RuleKind> = wanted(&ruleset).into_iter().map(|w| w.kind).collect();
        kinds.push(RuleKind::LegacyLoopback);
        assert!(kinds.contains(&RuleKind::RoutedReject));
        let seeds = std::env::var_os("WEFT_FUZZ_SEEDS").map(std::path::PathBuf::from);
        for (i, k) in kinds.iter().enumerate() {
            let bytes = dumped(k, 40 + i as u64, "weft rule 1");
            let (chain, rule) = decode_rule(&bytes).unwrap().expect("our table's rule");
            assert_eq!(chain, CHAIN);
            assert_eq!(rule.kind, Some(*k), "{k}");
            assert_eq!(rule.handle, 40 + i as u64);
            assert_eq!(rule.text, k.to_string());
            assert_eq!(rule.comment.as_deref(), Some("weft rule 1"));
            for cut in [1, 7, bytes.len() / 2, bytes.len() - 1] {
                let _ = decode_rule(&bytes[..cut]);
            }
            if let Some(dir) = &seeds {
                std::fs::create_dir_all(dir).unwrap();
                std::fs::write(dir.join(format!("rule-{i:02}")), &bytes).unwrap();
            }
        }
        // Another table's rule is not ours to read.
        let mut m = Msg::new(nl::nft_type(nl::NFT_MSG_NEWRULE), 0, 0, nl::NFPROTO_INET, 0);
        m.str(nl::NFTA_RULE_TABLE, "filter")
            .str(nl::NFTA_RULE_CHAIN, CHAIN);
        let other = m.finish()[nl::NLMSG_HDRLEN..].to_vec();
        assert_eq!(decode_rule(&other).unwrap(), None);
    }
}
