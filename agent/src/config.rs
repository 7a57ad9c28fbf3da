//! Agent configuration: command-line flags and the workloads file.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::Parser;
use serde::Deserialize;

#[derive(Debug, Parser)]
#[command(
    name = "weft-agent",
    version,
    about = "weft's per-hypervisor eBPF flow agent"
)]
pub struct Args {
    /// A TOML file of settings: any flag by its long name (`data-dir = "/var/lib/weft"`,
    /// `insecure = true`, lists for repeated flags). The command line wins over the file,
    /// the file over the environment. deploy/config/ has a commented example.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Identity of this hypervisor, as the controller shows it.
    #[arg(long, env = "WEFT_HOST_ID")]
    pub host_id: String,
    /// Controller gRPC endpoint: https://HOST:PORT (mutual TLS with --ca, --cert, --key),
    /// or http://HOST:PORT with --insecure. Several, separated by commas, for the
    /// controllers of a site (a writer and its standbys): a controller that refuses the
    /// connection or goes away sends the agent to the next.
    #[arg(
        long,
        env = "WEFT_CONTROLLER",
        default_value = "https://127.0.0.1:7071"
    )]
    pub controller: String,
    /// CA (PEM) the controller's certificate must chain to (`weft certs init`).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// This agent's certificate (PEM), naming --host-id (`weft certs issue agent`).
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Talk to an http:// controller in plain text, unauthenticated (a lab on one machine).
    #[arg(long)]
    pub insecure: bool,
    /// TOML file listing the workloads on this host (`[[workload]]` name, interface, addresses).
    #[arg(long)]
    pub workloads: Option<PathBuf>,
    /// Glob (`*`, `?`) of the workload interfaces to attach to; only veth and tap/tun
    /// devices are considered. Repeat for several patterns.
    #[arg(long = "interfaces", default_value = "*")]
    pub interfaces: Vec<String>,
    /// Interfaces never to attach to (globs), e.g. the host's uplink.
    #[arg(long = "exclude")]
    pub exclude: Vec<String>,
    /// Where /metrics is served.
    #[arg(long, default_value = "127.0.0.1:9101")]
    pub metrics_listen: std::net::SocketAddr,
    /// How often the flow map is read.
    #[arg(long, default_value_t = 2000)]
    pub drain_interval_ms: u64,
    /// A flow with no packet for this long is reported ended and removed from the map.
    #[arg(long, default_value_t = 120)]
    pub idle_timeout_s: u64,
    /// Flow records held while the controller is unreachable; beyond this the oldest are
    /// dropped and counted.
    #[arg(long, default_value_t = 100_000)]
    pub queue_capacity: usize,
    /// Records per batch sent to the controller.
    #[arg(long, default_value_t = 2_000)]
    pub batch_size: usize,
    /// Encoded bytes per batch at most (keep it under the controller's
    /// --grpc-max-message-size, 4 MiB by default; a batch the controller still refuses as
    /// too large is split in halves, and a single record too large alone is dropped).
    #[arg(long, default_value_t = 1 << 20)]
    pub batch_max_bytes: usize,
    /// Encoded bytes of acknowledged batches kept until the controller holds them durably
    /// (its next topology checkpoint): a controller killed between checkpoints gets them
    /// again and counts each once. Beyond this the oldest are forgotten (counted in
    /// weft_agent_records_unretained_total).
    #[arg(long, default_value_t = crate::outbox::DEFAULT_RESEND_BUFFER_BYTES)]
    pub resend_buffer_bytes: usize,
    /// Network namespace file (e.g. /run/netns/hv1) whose neighbour cache is updated for
    /// re-addressed workloads (new addresses set, old ones deleted), and where their
    /// gateways' hardware addresses are looked up: where the workloads' bridge is.
    /// Default: the agent's own.
    #[arg(long)]
    pub neighbour_netns: Option<PathBuf>,
    /// File where the agent keeps which workload addresses are weft's, so that after a
    /// restart it still removes an address it set before (a migration interrupted by the
    /// restart). Without it that memory is lost with the process.
    #[arg(long)]
    pub state_file: Option<PathBuf>,
    /// Milliseconds after a re-address before the neighbour entries of the old addresses
    /// are deleted (until then stray packets to them reach the workload and are dropped
    /// there instead of starting an ARP broadcast each).
    #[arg(long, default_value_t = 3000)]
    pub old_neighbour_grace_ms: u64,
    /// How a workload is moved to a new address: `down-up` (the specification's interface
    /// shutdown and restart) or `make-before-break` (no link change: the new address and
    /// route first, the old address removed after).
    #[arg(long, value_enum, default_value_t = crate::realize::ReaddressMode::DownUp)]
    pub readdress_mode: crate::realize::ReaddressMode,
    /// How drift of what weft manages is found: `events` (netlink host events, repaired at
    /// once, and the periodic full resync) or `resync` (the periodic full resync only).
    #[arg(long, value_enum, default_value_t = DriftRepair::Events)]
    pub drift_repair: DriftRepair,
    /// This host's underlay address: the source of the VXLAN devices of networks that span
    /// this host and others (sent to the controller at registration). Without it, networks
    /// can be placed on this host alone.
    #[arg(long, value_name = "IP")]
    pub underlay_address: Option<IpAddr>,
    /// Name prefix of the network namespaces of the network nodes this agent makes
    /// (`<prefix>-<network>-<node>` under /run/netns). Two agents on one machine (a lab)
    /// need different prefixes.
    #[arg(long, default_value = "weft")]
    pub node_netns_prefix: String,
    /// Where network nodes keep their data, volumes and logs (`<dir>/<network>/<node>`).
    #[arg(long, default_value = "/var/lib/weft/nodes")]
    pub node_dir: PathBuf,
    /// Where nodes' copy-on-write volumes and snapshots live (nodes whose spec has volume
    /// snapshots, a clone or syncs): with the btrfs store, the mount point of a btrfs
    /// filesystem kept in the sparse file `<dir>.btrfs` (made when a node first needs it,
    /// reused after; unmounted at the agent's exit); with the copy store, a plain directory.
    #[arg(long, default_value = "/var/lib/weft/volume-pool")]
    pub volume_pool: PathBuf,
    /// How volumes are snapshotted and cloned: `btrfs` (atomic subvolume snapshots,
    /// nothing copied; needs the kernel's btrfs and mkfs.btrfs), `copy` (cp -a
    /// --reflink=auto, not atomic) or `auto` (btrfs when possible, else copy).
    #[arg(long, value_enum, default_value_t = crate::networks::cow::StoreKind::Auto)]
    pub volume_store: crate::networks::cow::StoreKind,
    /// Size of the btrfs pool's sparse file when it is made (only what is written takes
    /// disk space); an existing file keeps its size.
    #[arg(long, default_value_t = 64 << 30)]
    pub volume_pool_bytes: u64,
    /// Write the btrfs pool's dirty data back every this many ms (syncfs), so that a
    /// snapshot (a weave from "now") finds at most about that much of the nodes' writes
    /// still to write; 0 leaves it to the kernel (up to vm.dirty_expire_centisecs).
    #[arg(long, default_value_t = 1000)]
    pub volume_pool_flush_ms: u64,
    /// Where request routers (processes the agent starts for steers with request rules,
    /// which outlive it) keep their control sockets and logs.
    #[arg(long, value_name = "DIR", default_value = crate::steer::router::process::DEFAULT_RUN_DIR)]
    pub router_run_dir: PathBuf,
    /// Name of the cgroup under which network nodes get theirs (`<name>/<network>/<node>`
    /// in every hierarchy).
    #[arg(long, default_value = "weft")]
    pub node_cgroup: String,
    /// TOML file of node profiles (image glob -> what runs), tried before the built-in
    /// ones (nginx*, postgres:*, redis*, and a shell for anything else).
    #[arg(long, value_name = "FILE")]
    pub node_profiles: Option<PathBuf>,
    /// Directory on bpffs where the agent pins its flow table, the baseline of its flow
    /// records, steering's and the shadow taps' maps (the taps' ring of copies included)
    /// and the links of their programs, so that a restart or an upgrade continues them
    /// without a gap (docs/operations.md, "Restarts and upgrades"). One per agent.
    /// Default: `/sys/fs/bpf/weft/<host-id>`.
    #[arg(long, value_name = "DIR")]
    pub bpffs_dir: Option<PathBuf>,
    /// At exit, leave the flow observer, steering and the shadow taps attached and their
    /// maps pinned for the next agent
    /// (restarts and upgrades: set in deploy/config/agent.toml). Without it the agent
    /// detaches its programs and removes its pins at exit. After a kill -9 the pins stay
    /// either way, and the next agent takes them over.
    #[arg(long)]
    pub keep_pins_on_exit: bool,
    /// Remove what agents left in --bpffs-dir (detaching their programs) and exit: for an
    /// uninstall, with the agent stopped.
    #[arg(long)]
    pub cleanup: bool,
    /// Log filter (tracing EnvFilter syntax).
    /// (netlink-packet-route warns about every attribute newer than itself: kept quiet.)
    #[arg(
        long,
        env = "WEFT_LOG",
        default_value = "info,netlink_packet_route=error"
    )]
    pub log: String,
}

/// See [`Args::drift_repair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DriftRepair {
    Events,
    Resync,
}

impl Args {
    pub fn drain_interval(&self) -> Duration {
        Duration::from_millis(self.drain_interval_ms.max(100))
    }
}

/// A workload on this host, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadSpec {
    pub name: String,
    pub interface: String,
    pub addresses: Vec<IpAddr>,
    /// Network namespace holding the workload's own interface (where the controller's
    /// addresses go); `None` = not managed by the agent.
    pub netns: Option<Netns>,
    /// The workload's own interface inside `netns`.
    pub device: String,
}

/// Default name of the workload's own interface inside its namespace.
pub const DEFAULT_DEVICE: &str = "eth0";

/// Where a workload's network namespace is: a name under /run/netns or a netns file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Netns {
    Named(String),
    Path(PathBuf),
}

impl Netns {
    /// The file to `setns(2)` into.
    pub fn path(&self) -> PathBuf {
        match self {
            Netns::Named(n) => std::path::Path::new("/run/netns").join(n),
            Netns::Path(p) => p.clone(),
        }
    }

    fn parse(text: &str) -> Result<Self, String> {
        if text.starts_with('/') {
            return Ok(Netns::Path(PathBuf::from(text)));
        }
        if text.is_empty()
            || text == "."
            || text == ".."
            || text.contains('/')
            || text.contains('\0')
        {
            return Err(format!(
                "field `netns` {text:?} is neither a name under /run/netns nor an absolute path"
            ));
        }
        Ok(Netns::Named(text.to_owned()))
    }
}

impl std::fmt::Display for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Netns::Named(n) => f.write_str(n),
            Netns::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: workload #{index} ({name:?}): {message}")]
    Workload {
        path: PathBuf,
        index: usize,
        name: String,
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadsFile {
    #[serde(default)]
    workload: Vec<RawWorkload>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    name: String,
    interface: String,
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    netns: Option<String>,
    #[serde(default)]
    device: Option<String>,
}

fn is_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

/// Parses a workloads file. Errors name the line (TOML syntax) or the workload and field.
pub fn parse_workloads(
    path: &std::path::Path,
    text: &str,
) -> Result<Vec<WorkloadSpec>, ConfigError> {
    let file: WorkloadsFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let mut out: Vec<WorkloadSpec> = Vec::with_capacity(file.workload.len());
    for (i, w) in file.workload.into_iter().enumerate() {
        let err = |message: String| ConfigError::Workload {
            path: path.to_owned(),
            index: i + 1,
            name: w.name.clone(),
            message,
        };
        if w.name.trim().is_empty() {
            return Err(err("field `name` is empty".into()));
        }
        if w.interface.is_empty() || w.interface.len() > 15 {
            return Err(err(format!(
                "field `interface` {:?} is not a Linux interface name (1-15 characters)",
                w.interface
            )));
        }
        if out.iter().any(|o| o.interface == w.interface) {
            return Err(err(format!("interface {:?} is listed twice", w.interface)));
        }
        let mut addresses = Vec::with_capacity(w.addresses.len());
        for a in &w.addresses {
            let ip: IpAddr = a
                .parse()
                .map_err(|_| err(format!("field `addresses`: {a:?} is not an IP address")))?;
            addresses.push(ip);
        }
        let netns = w
            .netns
            .as_deref()
            .map(Netns::parse)
            .transpose()
            .map_err(err)?;
        let device = match &w.device {
            Some(d) if netns.is_none() => {
                return Err(err(format!(
                    "field `device` {d:?} needs `netns` (the namespace it lives in)"
                )));
            }
            Some(d) if !is_interface_name(d) => {
                return Err(err(format!(
                    "field `device` {d:?} is not a Linux interface name (1-15 characters, no '/', ':' or spaces)"
                )));
            }
            Some(d) => d.clone(),
            None => DEFAULT_DEVICE.to_owned(),
        };
        out.push(WorkloadSpec {
            name: w.name.clone(),
            interface: w.interface,
            addresses,
            netns,
            device,
        });
    }
    Ok(out)
}

pub fn load_workloads(path: &std::path::Path) -> Result<Vec<WorkloadSpec>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_workloads(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The shipped example file is a valid configuration and its settings reach the flags.
    #[test]
    fn example_config_file_sets_the_flags() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/agent.toml");
        let args: Args = agent_common::config_file::parse_from(
            ["weft-agent", "--config", path.to_str().unwrap()]
                .map(std::ffi::OsString::from)
                .to_vec(),
        )
        .expect("the example parses");
        assert_eq!(args.host_id, "hv1");
        assert_eq!(args.controller, "https://controller.example:7071");
        assert_eq!(args.interfaces, ["tap*", "vnet*"]);
        assert_eq!(args.metrics_listen.to_string(), "0.0.0.0:9101");
        assert_eq!(
            args.state_file.as_deref(),
            Some(Path::new("/var/lib/weft/agent-state.json"))
        );
        // A systemd restart or upgrade keeps the flow state.
        assert!(args.keep_pins_on_exit && !args.cleanup);
        assert_eq!(
            args.bpffs_dir.as_deref(),
            Some(Path::new("/sys/fs/bpf/weft/hv1"))
        );
        assert_eq!(args.router_run_dir, Path::new("/run/weft/request-routers"));
    }

    #[test]
    fn parses_workloads_file() {
        let w = parse_workloads(
            Path::new("w.toml"),
            "[[workload]]\nname = \"web\"\ninterface = \"wl-web\"\naddresses = [\"198.18.1.11\", \"fd00:1::11\"]\n",
        )
        .unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].name, "web");
        assert_eq!(w[0].addresses.len(), 2);
        assert!(w[0].addresses[1].is_ipv6());
    }

    #[test]
    fn bad_address_names_workload_and_field() {
        let e = parse_workloads(
            Path::new("w.toml"),
            "[[workload]]\nname = \"db\"\ninterface = \"wl-db\"\naddresses = [\"300.1.1.1\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("workload #1") && e.contains("\"db\"") && e.contains("addresses"),
            "{e}"
        );
    }

    #[test]
    fn toml_syntax_error_names_the_line() {
        let e = parse_workloads(Path::new("w.toml"), "[[workload]]\nname = \"db\nx")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn unknown_field_and_duplicate_interface_are_refused() {
        let e = parse_workloads(
            Path::new("w.toml"),
            "[[workload]]\nname=\"a\"\ninterface=\"x\"\nport=1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("port"), "{e}");
        let e = parse_workloads(
            Path::new("w.toml"),
            "[[workload]]\nname=\"a\"\ninterface=\"x\"\n[[workload]]\nname=\"b\"\ninterface=\"x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("workload #2") && e.contains("twice"), "{e}");
    }

    #[test]
    fn netns_and_device_are_parsed_with_defaults() {
        let w = parse_workloads(
            Path::new("w.toml"),
            "[[workload]]\nname=\"a\"\ninterface=\"wl-a\"\nnetns=\"wl-a\"\n\
             [[workload]]\nname=\"b\"\ninterface=\"wl-b\"\nnetns=\"/proc/1/ns/net\"\ndevice=\"ens3\"\n\
             [[workload]]\nname=\"c\"\ninterface=\"wl-c\"\n",
        )
        .unwrap();
        assert_eq!(w[0].netns, Some(Netns::Named("wl-a".into())));
        assert_eq!(
            w[0].netns.as_ref().unwrap().path(),
            PathBuf::from("/run/netns/wl-a")
        );
        assert_eq!(w[0].device, "eth0");
        assert_eq!(
            w[1].netns.as_ref().unwrap().path(),
            PathBuf::from("/proc/1/ns/net")
        );
        assert_eq!(w[1].device, "ens3");
        assert_eq!(w[2].netns, None);
    }

    #[test]
    fn bad_netns_or_device_names_workload_and_field() {
        for (body, field) in [
            ("netns=\"../x\"", "netns"),
            ("netns=\"\"", "netns"),
            ("netns=\"a/b\"", "netns"),
            ("netns=\"n\"\ndevice=\"a-name-that-is-too-long\"", "device"),
            ("netns=\"n\"\ndevice=\"eth 0\"", "device"),
            ("device=\"eth1\"", "device"),
        ] {
            let e = parse_workloads(
                Path::new("w.toml"),
                &format!("[[workload]]\nname=\"db\"\ninterface=\"wl-db\"\n{body}\n"),
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("workload #1") && e.contains("\"db\"") && e.contains(field),
                "{body}: {e}"
            );
        }
    }
}
