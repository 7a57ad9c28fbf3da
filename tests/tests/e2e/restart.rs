//! The agent restarted under load: its programs stay attached between the two agents (the
//! new one takes the pinned links over), so no datagram is lost or unobserved, and the
//! flow table and the records' baseline are pinned, so the one flow's counters continue and
//! the controller sees each byte once.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use weft_lab::process::Child;
use weft_lab::weft::{Agent, Controller, sum_metric};
use weft_lab::{Lab, Workload, eventually, skip_unless_root};

use crate::support::{self, Weft};

const PORT: u16 = 5599;
const SOURCE_PORT: u16 = 40_001;
/// Datagrams per second, and bytes of UDP payload each.
const RATE: u32 = 300;
const SIZE: usize = 200;
/// Datagrams per burst (6 s at RATE); one restart in each.
const BURST: u32 = 1_800;
/// The lab's agents drain the flow map every second (`--drain-interval-ms 1000`).
const DRAIN: Duration = Duration::from_secs(1);

/// Counts every sequence number until it has `total` or its time is up, then prints
/// `received=N missing=M duplicates=D first_missing=[...]`.
const RECEIVER: &str = r#"
import socket, struct, sys, time
port, total, limit = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(("0.0.0.0", port))
s.settimeout(0.2)
print("ready", flush=True)
seen = bytearray(total)
got = dup = 0
end = time.monotonic() + limit
while got < total and time.monotonic() < end:
    try:
        data = s.recv(65535)
    except socket.timeout:
        continue
    (seq,) = struct.unpack_from("!Q", data)
    if seq >= total:
        continue
    if seen[seq]:
        dup += 1
    else:
        seen[seq] = 1
        got += 1
missing = [i for i in range(total) if not seen[i]]
print(f"received={got} missing={len(missing)} duplicates={dup} first_missing={missing[:10]}", flush=True)
"#;

/// Sends `count` datagrams numbered from `first` at `rate` per second from one source
/// port (one flow), then prints `sent=N`.
const SENDER: &str = r#"
import socket, struct, sys, time
dst, port, sport, first, count, rate, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", sport))
pad = b"x" * (size - 8)
t0 = time.monotonic()
for i in range(count):
    due = t0 + i / rate
    now = time.monotonic()
    if due > now:
        time.sleep(due - now)
    s.sendto(struct.pack("!Q", first + i) + pad, (dst, port))
print(f"sent={count}", flush=True)
"#;

fn send_burst(lab: &Lab, from: &Workload, to: &Workload, first: u32, n: &str) -> Result<Child> {
    let script = lab.dir().join("udp-seq-sender.py");
    std::fs::write(&script, SENDER)?;
    from.netns.spawn(
        lab.dir(),
        &format!("udp-seq-sender-{n}"),
        &[
            "python3",
            &script.to_string_lossy(),
            &to.ipv4,
            &PORT.to_string(),
            &SOURCE_PORT.to_string(),
            &first.to_string(),
            &BURST.to_string(),
            &RATE.to_string(),
            &SIZE.to_string(),
        ],
    )
}

/// The sender's entry of the one flow in the pinned flow table, read with bpftool:
/// (`first_seen_ns`, packets out, layer-3 bytes out).
fn flow_entry(flows_pin: &Path, sender: &Workload) -> Result<(u64, u64, u64)> {
    let out = weft_lab::cmd::run(std::process::Command::new("bpftool").args([
        "-j",
        "map",
        "dump",
        "pinned",
        &flows_pin.to_string_lossy(),
    ]))?;
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(&out).with_context(|| format!("bpftool output: {out}"))?;
    let bytes = |v: &serde_json::Value| -> Result<Vec<u8>> {
        v.as_array()
            .context("not an array")?
            .iter()
            .map(|b| {
                let s = b.as_str().context("not a string")?;
                u8::from_str_radix(s.trim_start_matches("0x"), 16).context("not a hex byte")
            })
            .collect()
    };
    let ip: std::net::Ipv4Addr = sender.ipv4.parse()?;
    let u64_at = |v: &[u8], at: usize| u64::from_ne_bytes(v[at..at + 8].try_into().unwrap());
    for e in &entries {
        // FlowKey: local_addr[16], remote_addr[16], ifindex u32, local_port u16,
        // remote_port u16 (host order), proto, family. FlowStats: first_seen_ns,
        // last_seen_ns, packets[2], bytes[2], ... (agent-common/src/flow.rs).
        let key = bytes(&e["key"])?;
        let value = bytes(&e["value"])?;
        ensure!(key.len() == 44 && value.len() == 96, "FLOWS layout: {e}");
        let remote_port = u16::from_ne_bytes([key[38], key[39]]);
        if key[..4] == ip.octets() && remote_port == PORT && key[40] == 17 {
            return Ok((u64_at(&value, 0), u64_at(&value, 16), u64_at(&value, 32)));
        }
    }
    anyhow::bail!(
        "no entry of {}:{SOURCE_PORT} -> :{PORT} in {out}",
        sender.ipv4
    )
}

/// Waits until the agent has drained the flow map twice more and handed every record to
/// the controller (which merges a batch before acknowledging it).
fn exported(lab: &Lab, agent: &Agent) -> Result<()> {
    let drains = sum_metric(&agent.metrics(lab)?, "weft_agent_drains_total");
    eventually(Duration::from_secs(15), Duration::from_millis(200), || {
        let m = agent.metrics(lab)?;
        let (d, queued) = (
            sum_metric(&m, "weft_agent_drains_total"),
            sum_metric(&m, "weft_agent_records_queued"),
        );
        ensure!(
            d >= drains + 2.0 && queued == 0.0,
            "drains {d} (from {drains}), queued {queued}"
        );
        Ok(())
    })
}

fn payload_sent(controller: &Controller) -> Result<(u64, u64, u64)> {
    let d = controller.topology()?.edge("sender", "receiver")?.clone();
    ensure!(d.transport.eq_ignore_ascii_case("udp"), "{d:?}");
    Ok((d.payload_bytes_sent, d.bytes_sent, d.flows))
}

#[test]
fn agent_restarted_under_load_loses_no_packet_and_continues_its_flow_counters() -> Result<()> {
    if skip_unless_root(
        "agent_restarted_under_load_loses_no_packet_and_continues_its_flow_counters",
    ) {
        return Ok(());
    }
    let lab = support::lab(&["sender", "receiver"])?;
    let pins_dir = lab.bpffs_dir();
    let flows_pin = pins_dir.join("hv1/maps/FLOWS");
    let sender = lab.workload("sender")?;
    let receiver = lab.workload("receiver")?;
    let controller = Controller::start(&lab)?;
    let url = controller.grpc_url();
    let keep = ["--keep-pins-on-exit"];
    let agent = Agent::start_with(&lab, 0, &url, &keep)?;
    let mut weft = Weft { controller, agent };

    let script = lab.dir().join("udp-seq-receiver.py");
    std::fs::write(&script, RECEIVER)?;
    let total = 2 * BURST;
    let mut rx = receiver.netns.spawn(
        lab.dir(),
        "udp-seq-receiver",
        &[
            "python3",
            &script.to_string_lossy(),
            &PORT.to_string(),
            &total.to_string(),
            "60",
        ],
    )?;
    rx.wait_for_line(&["ready"], Duration::from_secs(10))?;

    // Burst 1, the agent stopped by SIGTERM (a systemd restart) after 2 s and started again.
    let mut tx = send_burst(&lab, sender, receiver, 0, "1")?;
    eventually(Duration::from_secs(10), Duration::from_millis(200), || {
        payload_sent(&weft.controller).map(|_| ())
    })
    .with_context(|| weft.logs())?;
    let before_term = flow_entry(&flows_pin, sender)?;
    weft.agent
        .child
        .terminate(Duration::from_secs(15))
        .context("SIGTERM")?;
    let during = flow_entry(&flows_pin, sender)?;
    weft.agent = Agent::start_with(&lab, 0, &url, &keep)?;
    let after_term = flow_entry(&flows_pin, sender)?;
    println!(
        "SIGTERM: flow entry (first_seen_ns, packets, bytes) before {before_term:?}, between the agents {during:?}, after {after_term:?}"
    );
    ensure!(
        before_term.0 == after_term.0 && during.1 >= before_term.1 && after_term.1 >= during.1,
        "the flow entry was reset or went back: {before_term:?} {during:?} {after_term:?}"
    );
    tx.wait_for_line(&["sent="], Duration::from_secs(30))?;
    exported(&lab, &weft.agent).with_context(|| weft.logs())?;
    let first = u64::from(BURST);
    let (payload, bytes, flows) = payload_sent(&weft.controller)?;
    println!("after burst 1: payload {payload} bytes {bytes} flows {flows}");
    // Exact: the stopped agent drained and exported everything before it exited, the
    // programs counted on between the agents, and the new one continued from the baseline.
    ensure!(
        payload == first * SIZE as u64 && bytes == first * (SIZE as u64 + 28) && flows == 1,
        "after a SIGTERM restart the controller must have exactly {first} datagrams of {SIZE} bytes in one flow: payload {payload}, bytes {bytes}, flows {flows}\n{}",
        weft.logs()
    );

    // Burst 2, the agent killed with SIGKILL after 2 s and started again.
    let mut tx = send_burst(&lab, sender, receiver, BURST, "2")?;
    let before_kill = eventually(Duration::from_secs(10), Duration::from_millis(100), || {
        let e = flow_entry(&flows_pin, sender)?;
        ensure!(e.1 >= first + u64::from(RATE) * 2, "{e:?}");
        Ok(e)
    })?;
    weft.agent.child.kill_hard();
    weft.agent = Agent::start_with(&lab, 0, &url, &keep)?;
    let after_kill = flow_entry(&flows_pin, sender)?;
    println!("SIGKILL: flow entry before {before_kill:?}, after {after_kill:?}");
    ensure!(
        before_kill.0 == after_kill.0 && after_kill.1 >= before_kill.1,
        "the flow entry was reset or went back: {before_kill:?} {after_kill:?}"
    );
    tx.wait_for_line(&["sent="], Duration::from_secs(30))?;

    // (a) Every datagram arrived once: observation never dropped one.
    let line = rx.wait_for_line(&["received="], Duration::from_secs(30))?;
    println!("receiver: {line}");
    ensure!(
        line.starts_with(&format!("received={total} missing=0 duplicates=0")),
        "datagrams were lost: {line}"
    );
    // The kernel counted every one of them on the sender's interface, in one entry.
    let last = flow_entry(&flows_pin, sender)?;
    ensure!(
        last.0 == before_term.0 && last.1 == u64::from(total),
        "the flow table has {last:?}, {total} datagrams were sent"
    );

    // (b) The controller has each byte at most once; after the SIGKILL it may lack the
    // records the killed agent had made and the controller had not yet acknowledged: the
    // baseline is written as a record is made, so those are lost, never sent twice. That
    // is at most one drain's record of this flow (the queue was empty before each drain).
    exported(&lab, &weft.agent).with_context(|| weft.logs())?;
    let (payload, bytes, flows) = payload_sent(&weft.controller)?;
    let sent = u64::from(total) * SIZE as u64;
    let lost = sent.saturating_sub(payload);
    let drain_window = (u64::from(RATE) as f64 * (DRAIN.as_secs_f64() + 0.5)) as u64 * SIZE as u64;
    println!(
        "after burst 2: payload {payload} of {sent} bytes sent (short by {lost}, {} datagrams), bytes {bytes}, flows {flows}",
        lost / SIZE as u64
    );
    ensure!(
        payload <= sent && bytes <= u64::from(total) * (SIZE as u64 + 28),
        "counted twice: payload {payload} > {sent}"
    );
    ensure!(
        lost <= drain_window && lost % SIZE as u64 == 0,
        "short by {lost} bytes, more than one drain interval's records ({drain_window})"
    );
    ensure!(flows == 1, "the flow was counted again as new: {flows}");
    // Both new agents took the links over instead of attaching anew.
    let log = weft.agent.child.output();
    ensure!(
        log.contains("took over the pinned link") && log.contains("reusing the pinned map"),
        "the last agent did not take the pins over:\n{}",
        weft.agent.child.tail(30)
    );

    // Everything goes with the lab, pins included (the last agent kept them at its exit).
    drop(rx);
    drop(weft);
    ensure!(pins_dir.exists(), "the last agent kept its pins");
    drop(lab);
    ensure!(!pins_dir.exists(), "{} left behind", pins_dir.display());
    Ok(())
}
