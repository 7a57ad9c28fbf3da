//! Names of everything the lab creates. Namespace names carry the creating process id so a
//! later run can tell leftovers of a killed run (their process is gone) from a live lab.

use anyhow::{Result, bail};

/// Prefix of every namespace and root-namespace link the lab creates.
pub const PREFIX: &str = "wft";

/// Linux limit for interface names (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// Run id: the process id in hex (short, unique among live processes).
pub fn run_id() -> String {
    format!("{:x}", std::process::id())
}

/// Namespace name for `role` in lab `x` of run `run`: `wft-<run>-<x>-<role>`.
pub fn netns_name(run: &str, x: u8, role: &str) -> String {
    format!("{PREFIX}-{run}-{x}-{role}")
}

/// The process id that created namespace `name`, when it is one of the lab's.
pub fn netns_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?.strip_prefix('-')?;
    let (run, _) = rest.split_once('-')?;
    u32::from_str_radix(run, 16).ok()
}

/// Root-namespace end of the controller uplink of hypervisor `hv` in lab `x`.
pub fn uplink_name(x: u8, hv: usize) -> String {
    format!("{PREFIX}{x:03}up{hv}")
}

/// Host-side interface of workload `name` (in its hypervisor namespace).
pub fn host_ifname(workload: &str) -> String {
    format!("wl-{workload}")
}

/// Checks a workload or hypervisor name: lowercase letters, digits and '-', 1..=12
/// characters, so `wl-<name>` fits an interface name.
pub fn validate_role(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_IFNAME - 3 {
        bail!("name {name:?} must have 1 to {} characters", MAX_IFNAME - 3);
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        bail!("name {name:?} may only hold a-z, 0-9 and '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_name_round_trips_its_owner() {
        let n = netns_name("1a2b", 7, "web");
        assert_eq!(n, "wft-1a2b-7-web");
        assert_eq!(netns_owner(&n), Some(0x1a2b));
    }

    #[test]
    fn foreign_namespaces_have_no_owner() {
        assert_eq!(netns_owner("blue"), None);
        assert_eq!(netns_owner("wftx-1-a"), None);
        assert_eq!(netns_owner("wft-zz-1-a"), None);
    }

    #[test]
    fn interface_names_fit_ifnamsiz() {
        assert!(uplink_name(255, 9).len() <= MAX_IFNAME);
        assert_eq!(uplink_name(3, 0), "wft003up0");
        let longest = "a".repeat(12);
        validate_role(&longest).unwrap();
        assert!(host_ifname(&longest).len() <= MAX_IFNAME);
    }

    #[test]
    fn bad_role_names_are_rejected() {
        assert!(validate_role("").is_err());
        assert!(validate_role("thirteen-char").is_err());
        assert!(validate_role("Web").is_err());
        assert!(validate_role("a b").is_err());
        assert!(validate_role("db-1").is_ok());
    }
}
