//! One shard's address bitmap: which offsets are allocated, and where the next search
//! for a free one starts.

use std::net::IpAddr;

use crate::cidr::{Family, to_u128};
use crate::model::Shard;

#[derive(Debug, Clone)]
pub(super) struct Slot {
    pub(super) shard: Shard,
    /// One bit per address offset.
    pub(super) used: Vec<u64>,
    /// Where the next search for a free address starts (round robin, so a released
    /// address is not handed out again at once).
    pub(super) cursor: u64,
}

impl Slot {
    pub(super) fn new(shard: Shard) -> Self {
        let size = shard.cidr.size();
        let words = usize::try_from(size.div_ceil(64)).unwrap_or(0);
        Self {
            shard,
            used: vec![0; words],
            cursor: 0,
        }
    }

    pub(super) fn size(&self) -> u64 {
        u64::try_from(self.shard.cidr.size()).unwrap_or(u64::MAX)
    }

    /// Usable offsets: not the network address (0), not the gateway (1), and for IPv4 not
    /// the broadcast address (the last).
    pub(super) fn usable(&self) -> (u64, u64) {
        let last = match self.shard.family {
            Family::Ipv4 => self.size() - 2,
            Family::Ipv6 => self.size() - 1,
        };
        (2, last)
    }

    pub(super) fn capacity(&self) -> u64 {
        let (first, last) = self.usable();
        last + 1 - first
    }

    pub(super) fn has_room(&self) -> bool {
        self.shard.resource_count < self.capacity()
    }

    pub(super) fn is_set(&self, offset: u64) -> bool {
        let (w, b) = (offset / 64, offset % 64);
        self.used
            .get(usize::try_from(w).unwrap_or(usize::MAX))
            .is_some_and(|word| word & (1 << b) != 0)
    }

    pub(super) fn set(&mut self, offset: u64, value: bool) {
        let (w, b) = (offset / 64, offset % 64);
        if let Some(word) = self.used.get_mut(usize::try_from(w).unwrap_or(usize::MAX)) {
            if value {
                *word |= 1 << b;
            } else {
                *word &= !(1 << b);
            }
        }
    }

    /// A free usable offset, searching from the cursor.
    pub(super) fn find_free(&self) -> Option<u64> {
        let (first, last) = self.usable();
        let span = last + 1 - first;
        let start = self.cursor.clamp(first, last);
        (0..span)
            .map(|i| first + (start - first + i) % span)
            .find(|o| !self.is_set(*o))
    }

    pub(super) fn offset_of(&self, ip: IpAddr) -> u64 {
        u64::try_from(to_u128(ip) - self.shard.cidr.start).unwrap_or(u64::MAX)
    }
}
