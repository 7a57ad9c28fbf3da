//! Frames the flow parser cannot read, sent and received with Debian's python3 raw
//! sockets: an unknown ethertype, IPv4 with an unknown protocol number, IPv4 with IHL 3,
//! IPv6 with an unknown next header, and an 802.1Q frame carrying an unknown IPv4 protocol.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::lab::Workload;
use crate::process::Child;

/// Markers carried by the frames, one per kind.
pub const MARKERS: &[&str] = &[
    "WEFT-ETHERTYPE",
    "WEFT-IPPROTO",
    "WEFT-BADIHL",
    "WEFT-IP6PROTO",
    "WEFT-VLAN",
];

/// Debian's python3 (not a user's shim).
pub fn python() -> String {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3".into()
    } else {
        "python3".into()
    }
}

/// MAC address of the workload's eth0.
pub fn mac_of(w: &Workload) -> Result<String> {
    let out = w.netns.ip(&["-o", "link", "show", "dev", "eth0"])?;
    parse_mac(&out).with_context(|| format!("no MAC in {out:?}"))
}

/// The address after `link/ether` in `ip -o link` output.
pub fn parse_mac(out: &str) -> Option<String> {
    out.split_whitespace()
        .skip_while(|t| *t != "link/ether")
        .nth(1)
        .map(str::to_string)
}

fn script(w: &Workload) -> Result<String> {
    let path = w.dir.join("rawframes.py");
    std::fs::write(&path, SCRIPT).with_context(|| format!("write {}", path.display()))?;
    Ok(path.to_string_lossy().into_owned())
}

/// Starts a receiver on `w`'s eth0 (for at most `seconds`); it prints `got MARKER` for
/// each kind of frame it sees. Returns once it is listening.
pub fn start_receiver(w: &Workload, seconds: u32) -> Result<Child> {
    let script = script(w)?;
    let secs = seconds.to_string();
    let mut rx = w.netns.spawn(
        &w.dir,
        &format!("raw-receiver-{}", w.name),
        &[&python(), "-u", &script, "receive", "eth0", &secs],
    )?;
    rx.wait_for_line(&["receiver ready"], Duration::from_secs(10))?;
    Ok(rx)
}

/// Sends every kind of frame three times from `from`'s eth0 to `to`.
pub fn send(from: &Workload, to: &Workload) -> Result<()> {
    let script = script(from)?;
    let mac = mac_of(to)?;
    from.netns.exec_timeout(
        Duration::from_secs(20),
        &[
            &python(),
            "-u",
            &script,
            "send",
            "eth0",
            &mac,
            &from.ipv4,
            &to.ipv4,
            &from.ipv6,
            &to.ipv6,
        ],
    )?;
    Ok(())
}

/// Waits until the receiver reported every marker.
pub fn wait_all_received(rx: &mut Child, timeout: Duration) -> Result<()> {
    for m in MARKERS {
        rx.wait_for_line(&["got", m], timeout)?;
    }
    Ok(())
}

const SCRIPT: &str = r#"
import socket, struct, sys, time

MARKERS = [b"WEFT-ETHERTYPE", b"WEFT-IPPROTO", b"WEFT-BADIHL", b"WEFT-IP6PROTO", b"WEFT-VLAN"]

def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF

def ipv4(src, dst, proto, payload, ihl=5):
    total = 20 + len(payload)
    h = struct.pack("!BBHHHBBH4s4s", (4 << 4) | ihl, 0, total, 0x1234, 0, 64, proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + payload

def ipv6(src, dst, nh, payload):
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nh, 64,
                       socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)) + payload

def send(iface, dmac, src4, dst4, src6, dst6):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    smac = s.getsockname()[4]
    d = bytes.fromhex(dmac.replace(":", ""))
    pad = b"." * 32
    frames = [
        d + smac + struct.pack("!H", 0x88B5) + MARKERS[0] + pad,
        d + smac + struct.pack("!H", 0x0800) + ipv4(src4, dst4, 253, MARKERS[1] + pad),
        d + smac + struct.pack("!H", 0x0800) + ipv4(src4, dst4, 17, MARKERS[2] + pad, ihl=3),
        d + smac + struct.pack("!H", 0x86DD) + ipv6(src6, dst6, 253, MARKERS[3] + pad),
        d + smac + struct.pack("!HHH", 0x8100, 7, 0x0800) + ipv4(src4, dst4, 253, MARKERS[4] + pad),
    ]
    for _ in range(3):
        for f in frames:
            s.send(f)
        time.sleep(0.05)
    print("sent", len(frames) * 3, "frames", flush=True)

def receive(iface, seconds):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind((iface, 0))
    s.settimeout(0.5)
    print("receiver ready", flush=True)
    seen = set()
    end = time.time() + seconds
    while time.time() < end and len(seen) < len(MARKERS):
        try:
            data = s.recv(65535)
        except socket.timeout:
            continue
        for m in MARKERS:
            if m in data and m not in seen:
                seen.add(m)
                print("got", m.decode(), flush=True)
    print("receiver done", len(seen), "of", len(MARKERS), flush=True)

if __name__ == "__main__":
    if sys.argv[1] == "send":
        send(*sys.argv[2:8])
    else:
        receive(sys.argv[2], float(sys.argv[3]))
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mac_from_ip_link() {
        let out = "7: eth0@if8: <BROADCAST,MULTICAST,UP> mtu 1500 qdisc noqueue state UP mode DEFAULT \\    link/ether 6a:1b:2c:3d:4e:5f brd ff:ff:ff:ff:ff:ff link-netns x";
        assert_eq!(parse_mac(out).as_deref(), Some("6a:1b:2c:3d:4e:5f"));
        assert_eq!(parse_mac("lo: <LOOPBACK>"), None);
    }

    #[test]
    fn script_knows_every_marker() {
        for m in MARKERS {
            assert!(SCRIPT.contains(m), "{m}");
        }
    }
}
