//! `cargo xtask bench spoof`: the controller's memory while 1,000,000 spoofed sources send
//! one UDP datagram each to a workload (issue 10: "Memory of the controller stays under a
//! configured cap").
//!
//! A namespace lab with one hypervisor, the workload `web` (observed by the release agent)
//! and a `spoofer` namespace the agent does not manage. From the spoofer's eth0, an
//! AF_PACKET socket sends Ethernet/IPv6/UDP frames to web's MAC and address, each from a
//! different source in `fd00:X:5::/48` (the lab's own fd00::/8 range), paced under what
//! the agent's flow map (65,536 entries, drained every second in the lab) reports in
//! full. Every datagram is a new flow at web's interface, so a new client service and a
//! new dependency at the controller.
//!
//! Two runs in the same invocation: the controller with its default limits (the cap
//! under test), and with caps high enough not to act and no eviction (the baseline),
//! stopped early if its RSS passes [`UNCAPPED_RSS_BOUND_MIB`]. The RSS of the controller
//! process is sampled every 250 ms. Both loops are bounded in count and in time.

use std::fmt::Write as _;
use std::net::Ipv6Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use weft_lab::Lab;
use weft_lab::rawframes::mac_of;
use weft_lab::weft::{Agent, Controller, free_port};

use crate::sh;

/// Spoofed sources, one datagram each.
const SOURCES: u32 = 1_000_000;
/// Datagrams per second: under the 65,536-entry flow map per one-second drain.
const RATE_PPS: u32 = 20_000;
/// The sending loop stops after this long whatever it sent.
const SEND_BOUND: Duration = Duration::from_secs(150);
/// How long the controller may take to merge what the agent still holds.
const SETTLE_BOUND: Duration = Duration::from_secs(60);
/// The memory budget the default limits are to hold the controller under here.
const CAP_MIB: f64 = 256.0;
/// The run without caps stops sending when the controller's RSS passes this.
const UNCAPPED_RSS_BOUND_MIB: u64 = 6 * 1024;
/// UDP port the datagrams go to (nothing listens: web's kernel drops them).
const PORT: u16 = 9_999;

const BEGIN: &str = "<!-- spoof -->";
const END: &str = "<!-- /spoof -->";

#[derive(Debug, Default)]
struct Run {
    label: &'static str,
    flags: String,
    baseline_kib: u64,
    peak_kib: u64,
    end_kib: u64,
    sent: u64,
    send_seconds: f64,
    stopped: Option<String>,
    records: f64,
    services: f64,
    dependencies: f64,
    refused: f64,
    agent_dropped: f64,
    agent_evicted: f64,
}

pub fn run() -> Result<()> {
    sh::step("spoofed sources: release controller and agent");
    sh::run_inherit(sh::cargo().args([
        "build",
        "--release",
        "-p",
        "weft-controller",
        "-p",
        "weft-agent",
        "-p",
        "weft-cli",
    ]))?;
    ensure!(
        weft_lab::is_root(),
        "the spoof benchmark needs root (namespace lab, raw sockets)"
    );
    // SAFETY: set before any thread of this process starts (the lab and the children read it).
    unsafe { std::env::set_var("WEFT_LAB_PROFILE", "release") };
    let started = Instant::now();
    let capped = run_once("default limits", &[])?;
    let uncapped = run_once(
        "no caps, no eviction",
        &[
            "--max-services",
            "4000000",
            "--max-dependencies",
            "4000000",
            "--max-names-per-address",
            "4000000",
            "--idle-timeout",
            "7d",
            "--agent-record-rate",
            "100000000",
            "--agent-record-burst",
            "100000000",
            "--metrics-max-edges",
            "500",
            // A scrape of a million dependencies takes longer than the default 30 s.
            "--http-request-timeout",
            "300s",
        ],
    )?;
    let md = render(&capped, &uncapped, started.elapsed());
    println!("{md}");
    splice(&md)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn run_once(label: &'static str, flags: &[&str]) -> Result<Run> {
    sh::step(&format!("spoof run: {label}"));
    let lab = Lab::builder()
        .hypervisor("hv1")
        .workload("web")
        .workload("spoofer")
        .build()?;
    let hv = lab.hypervisor();
    let ip = hv.uplink_root_addr.clone();
    let grpc = format!("{ip}:{}", free_port(&ip)?);
    let http = format!("127.0.0.1:{}", free_port("127.0.0.1")?);
    let mut args: Vec<&str> = vec!["--log", "warn"];
    args.extend(flags);
    let c = Controller::start_with(&lab, &grpc, &http, &args)?;
    let agent = Agent::start_excluding(&lab, 0, &c.grpc_url(), &["spoofer"], &[])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.metric("weft_controller_agents_connected").unwrap_or(0.0) < 1.0 {
        ensure!(Instant::now() < deadline, "the agent never connected");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let pid = c.child.pid();
    let baseline_kib = rss_kib(pid).context("RSS of the controller")?;

    let web = lab.workload("web")?;
    let spoofer = lab.workload("spoofer")?;
    let target = Target {
        netns: format!("/run/netns/{}", spoofer.netns.name()),
        dst_mac: parse_mac(&mac_of(web)?)?,
        src_mac: parse_mac(&mac_of(spoofer)?)?,
        dst: web.ipv6.parse().context("web's IPv6 address")?,
        lab: u16::from(lab.x()),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || send(&target, &stop, &sent))
    };
    let send_started = Instant::now();
    let mut peak_kib = baseline_kib;
    let mut stopped = None;
    while !sender.is_finished() {
        std::thread::sleep(Duration::from_millis(250));
        if let Some(rss) = rss_kib(pid) {
            peak_kib = peak_kib.max(rss);
            if rss > UNCAPPED_RSS_BOUND_MIB * 1024 && stopped.is_none() {
                stopped = Some(format!(
                    "stopped at {:.0} MiB RSS (bound {UNCAPPED_RSS_BOUND_MIB} MiB)",
                    mib(rss)
                ));
                stop.store(true, Ordering::Relaxed);
            }
        } else {
            stop.store(true, Ordering::Relaxed);
            bail!("the controller exited:\n{}", c.child.tail(30));
        }
    }
    let send_seconds = send_started.elapsed().as_secs_f64();
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sending thread panicked"))??;
    let sent = sent.load(Ordering::Relaxed);
    if stopped.is_none() && sent < u64::from(SOURCES) {
        stopped = Some(format!("sending bound {SEND_BOUND:?} reached"));
    }

    // Until the agent has handed over what it held (its queue empty, its count of records
    // sent still for 3 s), or the bound. The agent's metrics: the controller's own
    // /metrics is slow to render with a million dependencies (the run without caps).
    let settle = Instant::now() + SETTLE_BOUND;
    let mut last = -1.0;
    let mut still = 0;
    while Instant::now() < settle && still < 6 {
        std::thread::sleep(Duration::from_millis(500));
        if let Some(rss) = rss_kib(pid) {
            peak_kib = peak_kib.max(rss);
        }
        let text = agent.metrics(&lab).unwrap_or_default();
        let sent = weft_lab::weft::sum_metric(&text, "weft_agent_records_sent_total");
        let queued = weft_lab::weft::sum_metric(&text, "weft_agent_records_queued");
        if queued == 0.0 && (sent - last).abs() < f64::EPSILON {
            still += 1;
        } else {
            still = 0;
            last = sent;
        }
    }
    let end_kib = rss_kib(pid).unwrap_or(0);
    peak_kib = peak_kib.max(end_kib);
    // Read after the peak: the scrape's own transient memory is not what is held.
    let metrics = c.get_within("/metrics", Duration::from_secs(300))?;
    let sum = |name: &str, label: Option<&str>| {
        metrics
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
            })
            .filter(|l| label.is_none_or(|x| l.contains(x)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let agent_metrics = agent.metrics(&lab).unwrap_or_default();
    let agent_sum = |name: &str| weft_lab::weft::sum_metric(&agent_metrics, name);
    let run = Run {
        label,
        flags: if flags.is_empty() {
            "(defaults: --max-services 20000 --max-dependencies 50000 --idle-timeout 1h)".into()
        } else {
            flags.join(" ")
        },
        baseline_kib,
        peak_kib,
        end_kib,
        sent,
        send_seconds,
        stopped,
        records: sum("weft_controller_records_ingested_total", None),
        services: sum("weft_controller_topology_services", None),
        dependencies: sum("weft_controller_topology_dependencies", None),
        refused: sum(
            "weft_controller_limit_hits_total",
            Some(r#"limit="services""#),
        ) + sum(
            "weft_controller_limit_hits_total",
            Some(r#"limit="dependencies""#),
        ),
        agent_dropped: agent_sum("weft_agent_records_dropped_total"),
        agent_evicted: agent_sum("weft_agent_flows_evicted_unreported_total"),
    };
    println!(
        "    {label}: sent {sent} in {send_seconds:.0} s; controller RSS {:.0} MiB before, peak {:.0} MiB, end {:.0} MiB; records merged {:.0}, services {:.0}, dependencies {:.0}, refused by caps {:.0}{}",
        mib(run.baseline_kib),
        mib(run.peak_kib),
        mib(run.end_kib),
        run.records,
        run.services,
        run.dependencies,
        run.refused,
        run.stopped
            .as_ref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default()
    );
    drop(agent);
    drop(c);
    drop(lab);
    Ok(run)
}

fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC {text:?}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("MAC {text:?} is not 6 bytes"))
}

struct Target {
    netns: String,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    dst: Ipv6Addr,
    lab: u16,
}

/// The spoofed source number `i`: `fd00:X:5:<high 16 bits>::<low 16 bits + 1>`.
fn source(lab: u16, i: u32) -> Ipv6Addr {
    let high = u16::try_from(i >> 16).unwrap_or(u16::MAX);
    let low = u16::try_from(i & 0xffff).unwrap_or(0);
    Ipv6Addr::new(0xfd00, lab, 5, high, 0, 0, 0, low.wrapping_add(1))
}

/// One Ethernet/IPv6/UDP frame with an 8-byte payload and a correct UDP checksum.
fn frame(t: &Target, src: Ipv6Addr, src_port: u16) -> Vec<u8> {
    let payload = *b"weftspof";
    let udp_len = 8 + payload.len() as u16;
    let mut f = Vec::with_capacity(14 + 40 + usize::from(udp_len));
    f.extend(t.dst_mac);
    f.extend(t.src_mac);
    f.extend(0x86ddu16.to_be_bytes());
    f.extend([0x60, 0, 0, 0]);
    f.extend(udp_len.to_be_bytes());
    f.extend([17, 64]);
    f.extend(src.octets());
    f.extend(t.dst.octets());
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    };
    add(&src.octets());
    add(&t.dst.octets());
    add(&u32::from(udp_len).to_be_bytes());
    add(&[0, 0, 0, 17]);
    add(&src_port.to_be_bytes());
    add(&PORT.to_be_bytes());
    add(&udp_len.to_be_bytes());
    add(&payload);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let checksum = match !(sum as u16) {
        0 => 0xffff,
        c => c,
    };
    f.extend(src_port.to_be_bytes());
    f.extend(PORT.to_be_bytes());
    f.extend(udp_len.to_be_bytes());
    f.extend(checksum.to_be_bytes());
    f.extend(payload);
    f
}

/// In the spoofer's namespace (this thread only): sends [`SOURCES`] frames at
/// [`RATE_PPS`], until `stop` or [`SEND_BOUND`].
fn send(t: &Target, stop: &AtomicBool, sent: &AtomicU64) -> Result<()> {
    let ns = std::fs::File::open(&t.netns).with_context(|| format!("opening {}", t.netns))?;
    // SAFETY: setns on this thread with a valid namespace fd.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {}: {}", t.netns, std::io::Error::last_os_error());
    }
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
    ensure!(ifindex != 0, "no eth0 in {}", t.netns);
    // SAFETY: a plain socket call; the fd is owned at once.
    let fd = unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        ensure!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        OwnedFd::from_raw_fd(fd)
    };
    // SAFETY: zeroed sockaddr_ll is valid; the fields set below are plain integers.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = 0x86ddu16.to_be();
    to.sll_ifindex = i32::try_from(ifindex).context("ifindex")?;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&t.dst_mac);
    let started = Instant::now();
    let batch = RATE_PPS / 100;
    for i in 0..SOURCES {
        if i % batch == 0 {
            if stop.load(Ordering::Relaxed) || started.elapsed() > SEND_BOUND {
                break;
            }
            // Paced: frame i leaves no earlier than i / RATE seconds after the start.
            let due = Duration::from_secs_f64(f64::from(i) / f64::from(RATE_PPS));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let f = frame(
            t,
            source(t.lab, i),
            40_000 + u16::try_from(i % 1_000).unwrap_or(0),
        );
        // SAFETY: our buffer and address, on our socket.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                f.as_ptr().cast(),
                f.len(),
                0,
                std::ptr::addr_of!(to).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        ensure!(
            n == f.len() as isize,
            "sendto: {}",
            std::io::Error::last_os_error()
        );
        sent.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

fn render(capped: &Run, uncapped: &Run, took: Duration) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "{BEGIN}");
    let _ = writeln!(md, "## Spoofed sources: controller memory\n");
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench spoof` ({} s, {}; load {}). A namespace lab: {} spoofed IPv6 sources (`fd00:X:5::/48`) send one UDP datagram each to the workload `web`, {} per second from a namespace the agent does not manage (an AF_PACKET socket); the release agent observes web's interface and streams the flow records; the release controller merges them. RSS of the controller process sampled every 250 ms. The budget: the default limits are to hold the controller under {CAP_MIB:.0} MiB here.\n",
        took.as_secs(),
        date(),
        loadavg(),
        fmt_int(f64::from(SOURCES)),
        fmt_int(f64::from(RATE_PPS)),
    );
    let _ = writeln!(
        md,
        "| run | flags | datagrams sent | records merged | services | dependencies | refused by caps | RSS before | RSS peak | RSS end |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in [capped, uncapped] {
        let _ = writeln!(
            md,
            "| {} | `{}` | {} in {:.0} s{} | {} | {} | {} | {} | {:.0} MiB | {:.0} MiB | {:.0} MiB |",
            r.label,
            r.flags,
            fmt_int(r.sent as f64),
            r.send_seconds,
            r.stopped
                .as_ref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default(),
            fmt_int(r.records),
            fmt_int(r.services),
            fmt_int(r.dependencies),
            fmt_int(r.refused),
            mib(r.baseline_kib),
            mib(r.peak_kib),
            mib(r.end_kib),
        );
    }
    let growth = |r: &Run| mib(r.peak_kib.saturating_sub(r.baseline_kib));
    let per_source = if uncapped.dependencies > 0.0 {
        (uncapped.peak_kib.saturating_sub(uncapped.baseline_kib) as f64 * 1024.0)
            / uncapped.dependencies
    } else {
        0.0
    };
    let _ = writeln!(
        md,
        "\nWith the default limits the controller's peak RSS is {:.0} MiB, {:.2} of the {CAP_MIB:.0} MiB budget ({}); it grew {:.0} MiB while {} sources were refused. Without caps or eviction, in the same run, it grew {:.0} MiB ({:.1}x the capped growth) to hold {} dependencies, about {} bytes per spoofed source: at that rate {} sources would take {:.0} MiB.",
        mib(capped.peak_kib),
        mib(capped.peak_kib) / CAP_MIB,
        if mib(capped.peak_kib) <= CAP_MIB {
            "met"
        } else {
            "not met"
        },
        growth(capped),
        fmt_int(capped.refused),
        growth(uncapped),
        growth(uncapped) / growth(capped).max(1.0),
        fmt_int(uncapped.dependencies),
        fmt_int(per_source),
        fmt_int(f64::from(SOURCES)),
        per_source * f64::from(SOURCES) / 1_048_576.0 + mib(uncapped.baseline_kib),
    );
    let _ = writeln!(
        md,
        "The agent's queue dropped {} records in the capped run ({} without caps); {} flows ({}) left its LRU flow map before their final record, their first one sent: when the records merged equal the datagrams sent, every source reached the controller.",
        fmt_int(capped.agent_dropped),
        fmt_int(uncapped.agent_dropped),
        fmt_int(capped.agent_evicted),
        fmt_int(uncapped.agent_evicted),
    );
    let _ = writeln!(md, "{END}");
    md
}

fn fmt_int(value: f64) -> String {
    let digits = format!("{value:.0}");
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 && c != '-' {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn date() -> String {
    let (_, out) =
        sh::probe(std::process::Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]));
    out.trim().to_owned()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Replaces the spoof section of BENCHMARKS.md (or appends it).
fn splice(section: &str) -> Result<()> {
    let path = sh::root().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => format!(
            "{}{}{}",
            &old[..b],
            section,
            old[e + END.len()..].trim_start_matches('\n')
        ),
        _ => format!("{}\n\n{section}", old.trim_end()),
    };
    std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))?;
    println!("==> wrote the spoof section of {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_a_valid_udp_checksum() {
        let t = Target {
            netns: String::new(),
            dst_mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 2],
            dst: "fd00:7::12".parse().unwrap(),
            lab: 7,
        };
        let f = frame(&t, source(7, 70_000), 40_000);
        assert_eq!(f.len(), 14 + 40 + 16);
        assert_eq!(
            &f[22..38],
            &"fd00:7:5:1::1171".parse::<Ipv6Addr>().unwrap().octets()
        );
        // The ones' complement sum over pseudo-header and datagram is 0xffff.
        let mut sum: u32 = 0;
        let udp = &f[54..];
        for chunk in [&f[22..38], &f[38..54]] {
            for pair in chunk.chunks(2) {
                sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
            }
        }
        sum += udp.len() as u32 + 17;
        for pair in udp.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
        assert_ne!(source(7, 0), source(7, 65_536));
    }
}
