//! Pure parts: snapshot ids and which snapshots are kept.

use super::SnapshotMeta;

/// Most scheduled snapshots a node may keep (`VolumeSnapshots.keep`).
pub const MAX_KEEP: u32 = 1000;

/// The milliseconds of id `s-<unix_ms>`.
pub fn id_ms(id: &str) -> Option<u64> {
    id.strip_prefix("s-")
        .filter(|d| !d.is_empty() && d.len() <= 20 && d.bytes().all(|b| b.is_ascii_digit()))?
        .parse()
        .ok()
}

/// The id of a snapshot taken at `now_ms` after snapshots `existing`: `s-<unix_ms>`, later
/// than every existing one (two in one millisecond, or a clock stepped back, still get
/// distinct ids in time order).
pub fn next_id(existing: &[SnapshotMeta], now_ms: u64) -> String {
    let last = existing.iter().filter_map(|s| id_ms(&s.id)).max();
    let ms = match last {
        Some(l) if l >= now_ms => l + 1,
        _ => now_ms,
    };
    format!("s-{ms}")
}

/// Sorts snapshots oldest first (by their ids' time).
pub fn sort(snaps: &mut [SnapshotMeta]) {
    snaps.sort_by_key(|s| (id_ms(&s.id).unwrap_or(0), s.id.clone()));
}

/// Ids of the snapshots to delete from `snaps` (oldest first): kept are the newest `keep`
/// scheduled ones (generation 0), the newest `max(keep, 1)` asked for (generation > 0:
/// the last answers stay visible to the controller until it pins what it uses), and
/// every id in `pinned`.
pub fn to_delete(snaps: &[SnapshotMeta], keep: u32, pinned: &[String]) -> Vec<String> {
    let keep = keep as usize;
    let mut scheduled = 0usize;
    let mut asked = 0usize;
    let mut out = Vec::new();
    for s in snaps.iter().rev() {
        let kept = if pinned.contains(&s.id) {
            true
        } else if s.generation == 0 {
            scheduled += 1;
            scheduled <= keep
        } else {
            asked += 1;
            asked <= keep.max(1)
        };
        if !kept {
            out.push(s.id.clone());
        }
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(ms: u64, generation: u64) -> SnapshotMeta {
        SnapshotMeta {
            id: format!("s-{ms}"),
            taken_unix_ns: ms * 1_000_000,
            generation,
            volumes: vec!["data".into()],
            method: "btrfs".into(),
            took_seconds: 0.001,
        }
    }

    #[test]
    fn ids_are_unique_and_in_time_order() {
        assert_eq!(next_id(&[], 1000), "s-1000");
        // Same millisecond, and a clock stepped back: still later than the last.
        assert_eq!(next_id(&[snap(1000, 0)], 1000), "s-1001");
        assert_eq!(next_id(&[snap(1000, 0), snap(1005, 0)], 990), "s-1006");
        assert_eq!(next_id(&[snap(1000, 0)], 2000), "s-2000");
        // Numeric order, not text order.
        let mut v = vec![snap(10_000, 0), snap(9_999, 0), snap(100_000, 0)];
        sort(&mut v);
        let ids: Vec<&str> = v.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["s-9999", "s-10000", "s-100000"]);
        for bad in ["s-", "s-12a", "x-12", "s--1", "s-123456789012345678901"] {
            assert_eq!(id_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn retention_keeps_the_newest_scheduled_the_last_asked_and_the_pinned() {
        // Oldest first: 1..=6 scheduled, 7 asked (gen 3), 8 scheduled, 9 asked (gen 4).
        let snaps: Vec<SnapshotMeta> = (1..=9)
            .map(|i| match i {
                7 => snap(i, 3),
                9 => snap(i, 4),
                _ => snap(i, 0),
            })
            .collect();
        let gone = to_delete(&snaps, 2, &["s-2".into()]);
        // Kept: scheduled 8 and 6 (newest two), asked 9 and 7 (keep 2), pinned 2.
        assert_eq!(gone, ["s-1", "s-3", "s-4", "s-5"]);
        // keep 0: no scheduled one, the last asked one, the pinned ones.
        let gone = to_delete(&snaps, 0, &["s-5".into()]);
        assert_eq!(gone, ["s-1", "s-2", "s-3", "s-4", "s-6", "s-7", "s-8"]);
        // Nothing to delete when everything fits.
        assert!(to_delete(&snaps, 10, &[]).is_empty());
        // A pinned id that does not exist changes nothing.
        assert_eq!(
            to_delete(&snaps, 2, &["s-77".into()]),
            ["s-1", "s-2", "s-3", "s-4", "s-5"]
        );
    }
}
