//! A VXLAN device in a lab namespace, made with `ip` and `bridge`: a VNI, a local underlay
//! address, remote peers as all-zeros FDB entries (head-end replication: broadcast,
//! unknown unicast and multicast go to every peer), optionally on a bridge. Multicast
//! groups are left out: their addresses are outside the lab's 198.18.0.0/15 and fd00::/8.
//! Drop deletes the device.

use anyhow::{Context, Result, bail};

use crate::netns::{self, Netns};

/// The IANA VXLAN port.
pub const VXLAN_PORT: u16 = 4789;
/// VXLAN's overhead on an IPv4 underlay (outer IP, UDP, VXLAN and inner Ethernet headers).
pub const VXLAN_OVERHEAD: u32 = 50;

/// What to create.
#[derive(Debug, Clone)]
pub struct VxlanSpec {
    /// Device name (at most 15 characters).
    pub name: String,
    pub vni: u32,
    /// The local underlay address (IPv4 or IPv6) the tunnel's packets leave from.
    pub local: String,
    /// The underlay device (e.g. the lab's `ul0`).
    pub underlay_dev: String,
    /// Underlay addresses of the remote ends.
    pub peers: Vec<String>,
    /// Bridge to enslave the device to, if any.
    pub bridge: Option<String>,
    /// UDP port; [`VXLAN_PORT`] by default.
    pub port: u16,
    /// MTU of the device; 1500 by default (the lab's underlay has room for it).
    pub mtu: u32,
}

impl Default for VxlanSpec {
    fn default() -> Self {
        VxlanSpec {
            name: String::new(),
            vni: 0,
            local: String::new(),
            underlay_dev: String::new(),
            peers: Vec::new(),
            bridge: None,
            port: VXLAN_PORT,
            mtu: 1500,
        }
    }
}

impl VxlanSpec {
    /// `ip link add` arguments for this device.
    pub fn link_add_args(&self) -> Result<Vec<String>> {
        if self.name.is_empty() || self.name.len() > crate::names::MAX_IFNAME {
            bail!(
                "VXLAN device name {:?} must have 1 to 15 characters",
                self.name
            );
        }
        if self.vni == 0 || self.vni >= 1 << 24 {
            bail!("VNI {} is outside 1..2^24", self.vni);
        }
        if self.local.is_empty() || self.underlay_dev.is_empty() {
            bail!("a VXLAN device needs a local address and an underlay device");
        }
        Ok([
            "link",
            "add",
            &self.name,
            "type",
            "vxlan",
            "id",
            &self.vni.to_string(),
            "local",
            &self.local,
            "dev",
            &self.underlay_dev,
            "dstport",
            &self.port.to_string(),
        ]
        .map(str::to_string)
        .to_vec())
    }
}

/// A VXLAN device that exists as long as this guard (or its namespace).
#[derive(Debug)]
pub struct Vxlan {
    netns: String,
    name: String,
    vni: u32,
}

impl Vxlan {
    /// Creates the device in `ns`, adds a flooding FDB entry per peer, enslaves it to the
    /// bridge (when given) and brings it up.
    pub fn create(ns: &Netns, spec: &VxlanSpec) -> Result<Vxlan> {
        let args = spec.link_add_args()?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ns.ip(&args).with_context(|| {
            format!(
                "create VXLAN {} (VNI {}) in {}",
                spec.name,
                spec.vni,
                ns.name()
            )
        })?;
        // From here on the guard removes the device, also when a step below fails.
        let v = Vxlan {
            netns: ns.name().to_string(),
            name: spec.name.clone(),
            vni: spec.vni,
        };
        ns.ip(&["link", "set", &spec.name, "mtu", &spec.mtu.to_string()])?;
        for p in &spec.peers {
            v.add_peer(ns, p)?;
        }
        if let Some(br) = &spec.bridge {
            ns.ip(&["link", "set", &spec.name, "master", br])
                .with_context(|| format!("enslave {} to {br}", spec.name))?;
        }
        ns.ip(&["link", "set", &spec.name, "up"])?;
        Ok(v)
    }

    /// Adds `remote` (an underlay address) as a flooding peer.
    pub fn add_peer(&self, ns: &Netns, remote: &str) -> Result<()> {
        ns.exec(&[
            "bridge",
            "fdb",
            "append",
            "00:00:00:00:00:00",
            "dev",
            &self.name,
            "dst",
            remote,
        ])
        .with_context(|| format!("add VXLAN peer {remote} to {}", self.name))?;
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn vni(&self) -> u32 {
        self.vni
    }

    /// The namespace the device lives in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Flooding peers, read back from the FDB.
    pub fn peers(&self) -> Result<Vec<String>> {
        let out = crate::cmd::run(&mut netns::command_in(
            &self.netns,
            &["bridge", "fdb", "show", "dev", &self.name],
        ))?;
        Ok(parse_flood_peers(&out))
    }
}

impl Drop for Vxlan {
    fn drop(&mut self) {
        // Gone with its namespace when the lab dropped first.
        if netns::exists(&self.netns) {
            let _ = crate::cmd::output(std::process::Command::new("ip").args([
                "-n",
                &self.netns,
                "link",
                "del",
                "dev",
                &self.name,
            ]));
        }
    }
}

/// The `dst` of every all-zeros entry in `bridge fdb show` output.
pub fn parse_flood_peers(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.starts_with("00:00:00:00:00:00"))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            it.find(|w| *w == "dst")?;
            it.next().map(str::to_string)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_add_arguments_and_bad_specs() {
        let spec = VxlanSpec {
            name: "vx42".into(),
            vni: 42,
            local: "198.19.3.65".into(),
            underlay_dev: "ul0".into(),
            ..VxlanSpec::default()
        };
        assert_eq!(
            spec.link_add_args().unwrap().join(" "),
            "link add vx42 type vxlan id 42 local 198.19.3.65 dev ul0 dstport 4789"
        );
        let mut bad = spec.clone();
        bad.vni = 1 << 24;
        assert!(bad.link_add_args().is_err());
        let mut bad = spec.clone();
        bad.name = "a-very-long-name".into();
        assert!(bad.link_add_args().is_err());
        let mut bad = spec;
        bad.local.clear();
        assert!(bad.link_add_args().is_err());
    }

    #[test]
    fn reads_flooding_peers_from_the_fdb() {
        let out = "00:00:00:00:00:00 dst 198.19.3.66 self permanent\n\
                   00:00:00:00:00:00 dst 198.19.3.67 self permanent\n\
                   5a:01:02:03:04:05 dst 198.19.3.66 self\n";
        assert_eq!(parse_flood_peers(out), vec!["198.19.3.66", "198.19.3.67"]);
    }
}
