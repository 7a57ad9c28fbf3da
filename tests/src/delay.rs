//! Delaying a workload's egress by a fixed time: `tc qdisc add dev eth0 root netem delay`
//! where the kernel has netem, otherwise (this machine's kernel is built without
//! CONFIG_NET_SCH_NETEM) every packet leaving eth0 goes through an NFQUEUE and a small
//! python3 program hands it back after the delay. Both delay SYN-ACKs and responses alike,
//! which is what handshake-RTT and latency tests need.

use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::lab::Workload;
use crate::links;
use crate::process::Child;
use crate::rawframes::python;

/// The queue number the delayer binds (one delayer per workload namespace).
const QUEUE: u16 = 7;

/// How a delay is applied; dropping it removes the delay (netem goes with the namespace).
pub enum Delay {
    Netem,
    /// The delayer process; `--queue-bypass` lets packets through if it ever dies.
    Nfqueue(Child),
}

impl Delay {
    pub fn method(&self) -> &'static str {
        match self {
            Delay::Netem => "tc netem",
            Delay::Nfqueue(_) => "NFQUEUE delayer (no netem in this kernel)",
        }
    }
}

/// Delays every packet leaving `w`'s eth0 by `ms` milliseconds.
pub fn egress_delay(w: &Workload, ms: u32) -> Result<Delay> {
    match links::netem_delay(&w.netns, "eth0", ms) {
        Ok(()) => return Ok(Delay::Netem),
        Err(e) if format!("{e:#}").contains("qdisc kind is unknown") => {}
        Err(e) => return Err(e),
    }
    let script = w.dir.join("nfqdelay.py");
    std::fs::write(&script, SCRIPT).with_context(|| format!("write {}", script.display()))?;
    let script_s = script.to_string_lossy().into_owned();
    let q = QUEUE.to_string();
    let delay = ms.to_string();
    let mut child = w.netns.spawn(
        &w.dir,
        &format!("nfq-delay-{}", w.name),
        &[&python(), "-u", &script_s, &q, &delay],
    )?;
    child.wait_for_line(&["delayer ready"], Duration::from_secs(10))?;
    for tool in ["iptables", "ip6tables"] {
        w.netns
            .exec(&[
                tool,
                "-A",
                "OUTPUT",
                "-o",
                "eth0",
                "-j",
                "NFQUEUE",
                "--queue-num",
                &q,
                "--queue-bypass",
            ])
            .with_context(|| format!("{tool} NFQUEUE rule (is the iptables package installed?)"))?;
    }
    if !child.is_running() {
        bail!("the NFQUEUE delayer exited: {}", child.tail(20));
    }
    Ok(Delay::Nfqueue(child))
}

const SCRIPT: &str = r#"
# NFQUEUE delayer over raw netlink: every queued packet gets its ACCEPT verdict DELAY ms
# after it was queued, in order.
import collections, select, socket, struct, sys, time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS = 1, 2
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
CMD_BIND = 1
COPY_META = 1
NF_ACCEPT = 1
NLM_F_REQUEST = 1
NLMSG_ERROR = 2

queue = int(sys.argv[1])
delay = float(sys.argv[2]) / 1000.0
sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
sock.bind((0, 0))
seq = 0

def attr(t, data):
    pad = (4 - len(data) % 4) % 4
    return struct.pack("=HH", 4 + len(data), t) + data + b"\0" * pad

def send(msg_type, attrs):
    global seq
    seq += 1
    body = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack("!H", queue) + b"".join(attrs)
    hdr = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg_type, NLM_F_REQUEST, seq, 0)
    sock.send(hdr + body)

send(NFQNL_MSG_CONFIG, [attr(NFQA_CFG_CMD, struct.pack("!BxH", CMD_BIND, 0))])
send(NFQNL_MSG_CONFIG, [attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, COPY_META))])
print("delayer ready queue", queue, "delay_ms", sys.argv[2], flush=True)

pending = collections.deque()
while True:
    now = time.monotonic()
    timeout = max(0.0, pending[0][0] - now) if pending else 1.0
    r, _, _ = select.select([sock], [], [], timeout)
    if r:
        data = sock.recv(1 << 20)
        off = 0
        while off + 16 <= len(data):
            length, mtype, _, _, _ = struct.unpack_from("=IHHII", data, off)
            if length < 16:
                break
            if mtype == NLMSG_ERROR:
                err = struct.unpack_from("=i", data, off + 16)[0]
                if err != 0:
                    print("netlink error", err, file=sys.stderr, flush=True)
            elif mtype == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                a = off + 20
                end = off + length
                while a + 4 <= end:
                    alen, atype = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    if (atype & 0x7FFF) == NFQA_PACKET_HDR:
                        pid = struct.unpack_from("!I", data, a + 4)[0]
                        pending.append((time.monotonic() + delay, pid))
                    a += (alen + 3) & ~3
            off += (length + 3) & ~3
    now = time.monotonic()
    while pending and pending[0][0] <= now:
        _, pid = pending.popleft()
        send(NFQNL_MSG_VERDICT, [attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, pid))])
"#;
