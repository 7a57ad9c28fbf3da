//! Drift repair: how long after an address is deleted by hand from a workload weft manages
//! it is back. Release controller and agent in the namespace lab; the address comes from a
//! shard; a netlink socket in the workload's namespace deletes it and waits for the
//! agent's RTM_NEWADDR, 100 times (measured outside the agent, on the kernel's word).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use weft_lab::Lab;
use weft_lab::weft::{Agent, Controller, free_port, sum_metric};

use crate::sh;

const DELETIONS: usize = 100;
const NETWORK: &str = "drift";

pub fn run() -> Result<()> {
    sh::step("drift repair: release controller and agent");
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
        "the drift benchmark needs root (namespace lab)"
    );
    // SAFETY: set before any thread of this process starts (the lab and the children read it).
    unsafe { std::env::set_var("WEFT_LAB_PROFILE", "release") };
    let lab = Lab::builder().hypervisor("hv1").workload("web").build()?;
    let hv = lab.hypervisor();
    let ip = hv.uplink_root_addr.clone();
    let grpc = format!("{ip}:{}", free_port(&ip)?);
    let http = format!("127.0.0.1:{}", free_port("127.0.0.1")?);
    let pool = format!("198.19.{}.128/25", lab.x());
    let c = Controller::start_with(&lab, &grpc, &http, &["--shard-pool", &pool])?;
    let agent = Agent::start(&lab, 0, &c.grpc_url())?;
    c.json(
        "POST",
        "/shards",
        Some(&json!({"prefix_len": 28, "network_id": NETWORK})),
    )?;
    let a = c.json(
        "POST",
        &format!("/networks/{NETWORK}/addresses"),
        Some(&json!({"workload": "web", "host_id": hv.name, "family": "ipv4"})),
    )?;
    let addr: Ipv4Addr = a["address"].as_str().context("address")?.parse()?;
    let prefix = a["prefix_len"].as_u64().unwrap_or(28) as u8;
    let web = lab.workload("web")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !web
        .netns
        .ip(&["-4", "addr", "show", "dev", "eth0"])?
        .contains(&format!("{addr}/"))
    {
        ensure!(
            Instant::now() < deadline,
            "the agent never put {addr} on web's eth0"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let netns = format!("/run/netns/{}", web.netns.name());
    let times = std::thread::spawn(move || measure(&netns, addr, prefix))
        .join()
        .map_err(|_| anyhow::anyhow!("measuring thread panicked"))??;
    let drift = sum_metric(&agent.metrics(&lab)?, "weft_agent_drift_repaired_total");
    let mut sorted = times.clone();
    sorted.sort();
    let pct = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    println!(
        "drift repair over {} deletions of {addr}/{prefix}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 <= 100 ms); the agent counted {drift} repairs",
        sorted.len(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        sorted[sorted.len() - 1].as_secs_f64() * 1e3,
    );
    Ok(())
}

/// In `netns` (this thread only): deletes `addr` from eth0 and waits for it to come back,
/// `DELETIONS` times; the restore times.
fn measure(netns: &str, addr: Ipv4Addr, prefix: u8) -> Result<Vec<Duration>> {
    let f = std::fs::File::open(netns).with_context(|| format!("opening {netns}"))?;
    // SAFETY: setns on this thread with a valid namespace fd.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {netns}: {}", std::io::Error::last_os_error());
    }
    let ifindex = {
        let name = c"eth0";
        // SAFETY: a NUL-terminated name.
        unsafe { libc::if_nametoindex(name.as_ptr()) }
    };
    ensure!(ifindex != 0, "no eth0 in {netns}");
    let listen = socket(libc::RTMGRP_IPV4_IFADDR as u32)?;
    let request = socket(0)?;
    let mut times = Vec::with_capacity(DELETIONS);
    for seq in 1..=DELETIONS as u32 {
        std::thread::sleep(Duration::from_millis(20));
        let t0 = Instant::now();
        send_deladdr(&request, seq, ifindex, addr, prefix)?;
        wait_newaddr(&listen, addr, Duration::from_secs(2))
            .with_context(|| format!("deletion {seq}"))?;
        times.push(t0.elapsed());
    }
    Ok(times)
}

fn socket(groups: u32) -> Result<OwnedFd> {
    // SAFETY: plain socket calls; the fd is owned at once.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        ensure!(
            fd >= 0,
            "netlink socket: {}",
            std::io::Error::last_os_error()
        );
        let fd = OwnedFd::from_raw_fd(fd);
        let mut sa: libc::sockaddr_nl = std::mem::zeroed();
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = groups;
        let rc = libc::bind(
            fd.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        );
        ensure!(rc == 0, "netlink bind: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        Ok(fd)
    }
}

fn send_deladdr(fd: &OwnedFd, seq: u32, ifindex: u32, addr: Ipv4Addr, prefix: u8) -> Result<()> {
    let mut m: Vec<u8> = Vec::with_capacity(40);
    let len: u32 = 16 + 8 + 8 + 8;
    m.extend(len.to_ne_bytes());
    m.extend((libc::RTM_DELADDR).to_ne_bytes());
    m.extend(((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    m.extend(seq.to_ne_bytes());
    m.extend(0u32.to_ne_bytes());
    // ifaddrmsg: family, prefixlen, flags, scope, index
    m.extend([libc::AF_INET as u8, prefix, 0, 0]);
    m.extend(ifindex.to_ne_bytes());
    for kind in [libc::IFA_LOCAL, libc::IFA_ADDRESS] {
        m.extend(8u16.to_ne_bytes());
        m.extend(kind.to_ne_bytes());
        m.extend(addr.octets());
    }
    // SAFETY: sending our own buffer on our socket (to the kernel: no address needed).
    let sent = unsafe { libc::send(fd.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) };
    ensure!(
        sent == m.len() as isize,
        "RTM_DELADDR: {}",
        std::io::Error::last_os_error()
    );
    let mut buf = [0u8; 4096];
    // SAFETY: reading into our own buffer.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    ensure!(
        n >= 20,
        "no ack to RTM_DELADDR: {}",
        std::io::Error::last_os_error()
    );
    let error = i32::from_ne_bytes(buf[16..20].try_into().expect("4 bytes"));
    ensure!(
        error == 0,
        "RTM_DELADDR failed: {}",
        std::io::Error::from_raw_os_error(-error)
    );
    Ok(())
}

/// Waits for an RTM_NEWADDR of `addr`.
fn wait_newaddr(fd: &OwnedFd, addr: Ipv4Addr, limit: Duration) -> Result<()> {
    let end = Instant::now() + limit;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < end {
        // SAFETY: reading into our own buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        let mut off = 0usize;
        let n = n as usize;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4")) as usize;
            let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2"));
            if len < 16 || off + len > n {
                break;
            }
            if kind == libc::RTM_NEWADDR {
                let mut a = off + 16 + 8;
                while a + 4 <= off + len {
                    let alen = u16::from_ne_bytes(buf[a..a + 2].try_into().expect("2")) as usize;
                    let akind = u16::from_ne_bytes(buf[a + 2..a + 4].try_into().expect("2"));
                    if alen < 4 {
                        break;
                    }
                    if (akind == libc::IFA_LOCAL || akind == libc::IFA_ADDRESS)
                        && alen == 8
                        && buf[a + 4..a + 8] == addr.octets()
                    {
                        return Ok(());
                    }
                    a += (alen + 3) & !3;
                }
            }
            off += (len + 3) & !3;
        }
    }
    bail!("{addr} did not come back within {limit:?}")
}
