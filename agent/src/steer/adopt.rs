//! Steering across an agent restart: what a previous agent left in the pinned steering
//! maps (`crate::datapath::pins::STEER_MAPS`), read once at start.
//!
//! The slot (`steer_id`) of a steer is part of the key of its steered connections and
//! ports, so it must stay the same across a restart. It is read back from the maps, keyed
//! by what identifies a resource on a host: a steer by its origin interface (one steer per
//! origin interface; its `STEER_ORIGINS` entry holds the slot), a steer target by its
//! (origin host, tunnel id) (its `STEER_TUNNELS` entry). Until the entries are adopted
//! their slots are reserved, so a new resource never takes a slot whose connections are
//! still steered. Each resource ensured claims the keys it writes: they stop being
//! leftovers. After the first full reconcile of both kinds, what nobody claimed (resources
//! removed while no agent ran) is removed: the entries, then the slots' ports and
//! connections.

use std::collections::{BTreeSet, HashMap};

use agent_common::steer::{SteerOrigin, SteerReturn, SteerTunnel, SteerTunnelKey};
use aya::maps::HashMap as BpfHashMap;

use super::{SteerError, map_err};
use crate::datapath::Datapath;

/// The two kinds that share the steering maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Steer = 0,
    Target = 1,
}

/// The pinned entries no resource of this agent has claimed yet.
#[derive(Debug, Default)]
pub struct Leftovers {
    pub origins: HashMap<u32, SteerOrigin>,
    pub returns: HashMap<u32, SteerReturn>,
    pub tunnels: HashMap<SteerTunnelKey, SteerTunnel>,
    /// Kinds whose first full reconcile is done.
    full_done: [bool; 2],
    swept: bool,
}

/// What a sweep of the [`Leftovers`] (`Steering::sweep_leftovers`) says to remove from the maps.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    pub origins: Vec<u32>,
    pub returns: Vec<u32>,
    pub tunnels: Vec<SteerTunnelKey>,
    /// Slots whose ports and connections go (no resource of this agent uses them).
    pub slots: Vec<u32>,
}

fn read_all<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod>(
    dp: &mut Datapath,
    name: &'static str,
) -> Result<HashMap<K, V>, SteerError> {
    let m = BpfHashMap::<_, K, V>::try_from(dp.map_mut(name)?).map_err(map_err(name))?;
    m.iter()
        .collect::<Result<HashMap<K, V>, _>>()
        .map_err(map_err(name))
}

impl Leftovers {
    /// Reads the entries of the maps (empty when they were created by this agent).
    pub fn read(dp: &mut Datapath) -> Result<Self, SteerError> {
        Ok(Self {
            origins: read_all(dp, "STEER_ORIGINS")?,
            returns: read_all(dp, "STEER_RETURNS")?,
            tunnels: read_all(dp, "STEER_TUNNELS")?,
            ..Default::default()
        })
    }

    pub fn is_empty(&self) -> bool {
        self.origins.is_empty() && self.returns.is_empty() && self.tunnels.is_empty()
    }

    /// The slots the entries hold: not free for a new resource.
    pub fn slots(&self) -> BTreeSet<u32> {
        self.origins
            .values()
            .map(|o| o.steer_id)
            .chain(self.returns.values().map(|r| r.steer_id))
            .chain(self.tunnels.values().map(|t| t.steer_id))
            .collect()
    }

    /// A steer of origin interface `origin` is ensured, writing the return entry of
    /// `ret` (same-host target) or the tunnel entry of `tunnel` (target on another host):
    /// those keys stop being leftovers. Returns the previous agent's entry of the origin
    /// (its slot and failover state), if there was one.
    pub fn claim_steer(
        &mut self,
        origin: u32,
        ret: Option<u32>,
        tunnel: Option<SteerTunnelKey>,
    ) -> Option<SteerOrigin> {
        if let Some(r) = ret {
            self.returns.remove(&r);
        }
        if let Some(t) = tunnel {
            self.tunnels.remove(&t);
        }
        self.origins.remove(&origin)
    }

    /// A steer target of interface `target` and tunnel key `tunnel` is ensured. Returns
    /// the previous agent's slot of that tunnel key, if it had one.
    pub fn claim_target(&mut self, target: u32, tunnel: SteerTunnelKey) -> Option<u32> {
        self.returns.remove(&target);
        self.tunnels.remove(&tunnel).map(|t| t.steer_id)
    }

    /// Records that `kind` finished a full reconcile. Once both have (and only that once),
    /// returns what is left to remove; `in_use`: the slots of this agent's resources.
    pub fn full_reconcile_done(&mut self, kind: Kind, in_use: &BTreeSet<u32>) -> Option<Sweep> {
        self.full_done[kind as usize] = true;
        if self.swept || !self.full_done.iter().all(|d| *d) {
            return None;
        }
        self.swept = true;
        let slots = self.slots().difference(in_use).copied().collect();
        let mut sweep = Sweep {
            origins: self.origins.drain().map(|(k, _)| k).collect(),
            returns: self.returns.drain().map(|(k, _)| k).collect(),
            tunnels: self.tunnels.drain().map(|(k, _)| k).collect(),
            slots,
        };
        sweep.origins.sort_unstable();
        sweep.returns.sort_unstable();
        sweep
            .tunnels
            .sort_unstable_by_key(|k| (k.remote, k.tunnel_id));
        Some(sweep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::steer::role;

    fn origin(slot: u32, failover: u8) -> SteerOrigin {
        SteerOrigin {
            steer_id: slot,
            failover,
            ..Default::default()
        }
    }

    fn tunnel_key(id: u32) -> SteerTunnelKey {
        SteerTunnelKey {
            remote: agent_common::steer::Underlay::from(std::net::IpAddr::from([10, 0, 0, 2])),
            tunnel_id: id,
        }
    }

    /// A host that had a same-host steer (slot 3, in failover), a cross-host steer (slot
    /// 5) and a target (slot 7).
    fn left() -> Leftovers {
        let mut l = Leftovers::default();
        l.origins.insert(10, origin(3, 1));
        l.returns.insert(
            11,
            SteerReturn {
                steer_id: 3,
                ifindex: 10,
                role: role::ORIGIN_LOCAL,
                _pad: [0; 7],
            },
        );
        l.origins.insert(20, origin(5, 0));
        l.tunnels.insert(
            tunnel_key(50),
            SteerTunnel {
                steer_id: 5,
                ifindex: 20,
                role: role::ORIGIN_TUNNEL,
                ..Default::default()
            },
        );
        l.returns.insert(
            30,
            SteerReturn {
                steer_id: 7,
                ifindex: 99,
                role: role::TARGET,
                _pad: [0; 7],
            },
        );
        l.tunnels.insert(
            tunnel_key(70),
            SteerTunnel {
                steer_id: 7,
                ifindex: 30,
                role: role::TARGET,
                ..Default::default()
            },
        );
        l
    }

    #[test]
    fn every_slot_of_a_previous_agent_is_reserved_until_swept() {
        assert_eq!(left().slots(), BTreeSet::from([3, 5, 7]));
    }

    #[test]
    fn a_resource_ensured_again_gets_its_slot_and_failover_state_back() {
        let mut l = left();
        let o = l.claim_steer(10, Some(11), None).expect("adopted");
        assert_eq!((o.steer_id, o.failover), (3, 1));
        assert_eq!(l.claim_target(30, tunnel_key(70)), Some(7));
        assert_eq!(l.slots(), BTreeSet::from([5]));
        // Claimed once: a second claim adopts nothing (the resource is active by then).
        assert_eq!(l.claim_steer(10, Some(11), None), None);
    }

    #[test]
    fn nothing_is_swept_before_both_kinds_had_a_full_reconcile() {
        let mut l = left();
        assert_eq!(l.full_reconcile_done(Kind::Steer, &BTreeSet::new()), None);
        assert_eq!(l.slots().len(), 3, "still reserved");
    }

    #[test]
    fn what_no_resource_claimed_is_swept_once() {
        let mut l = left();
        l.claim_steer(10, Some(11), None);
        assert_eq!(l.full_reconcile_done(Kind::Target, &BTreeSet::new()), None);
        let sweep = l
            .full_reconcile_done(Kind::Steer, &BTreeSet::from([3]))
            .expect("both kinds done");
        assert_eq!(
            sweep,
            Sweep {
                origins: vec![20],
                returns: vec![30],
                tunnels: vec![tunnel_key(50), tunnel_key(70)],
                slots: vec![5, 7],
            }
        );
        assert!(l.is_empty());
        assert_eq!(l.full_reconcile_done(Kind::Steer, &BTreeSet::new()), None);
    }
}
