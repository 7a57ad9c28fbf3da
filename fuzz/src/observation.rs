//! Checks of imported and posted observations: the topology takes them, and weft's own
//! JSON of them reads back to the same observation.

use weft_topology::import::{ImportReport, jsonl};
use weft_topology::mapper::NoDirectory;
use weft_topology::observation::TrafficObservation;
use weft_topology::topology::{BucketConfig, Topology, TopologyLimits, check_fields};

use crate::l7::assert_label;

/// Equal, with the latency compared to the last few bits (JSON numbers are decimal).
pub fn assert_same(a: &TrafficObservation, b: &TrafficObservation, how: &str) {
    let close = a.latency_ms == b.latency_ms
        || (a.latency_ms - b.latency_ms).abs() <= 4.0 * f64::EPSILON * a.latency_ms.abs();
    assert!(
        close,
        "{how}: latency {} became {}",
        a.latency_ms, b.latency_ms
    );
    let mut b = b.clone();
    b.latency_ms = a.latency_ms;
    assert_eq!(*a, b, "{how} changed the observation");
}

/// Serialises `o` as weft does and reads it back with serde.
pub fn serde_round_trip(o: &TrafficObservation) -> String {
    let text = serde_json::to_string(o).expect("an observation serialises");
    let back: TrafficObservation =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text} does not read back: {e}"));
    assert_same(o, &back, "a JSON round trip");
    text
}

/// What an importer promises of its report: observations sorted by time, `flow_only`
/// sorted indices into them, every observation one the topology takes, with printable hosts
/// and labels, whose JSON (as weft writes it) reads back through the JSON-lines importer
/// unchanged.
pub fn check_report(r: &ImportReport) {
    let times: Vec<u64> = r.observations.iter().map(|o| o.timestamp_unix_ns).collect();
    assert!(
        times.is_sorted(),
        "observations not sorted by time: {times:?}"
    );
    assert!(
        r.flow_only.windows(2).all(|w| w[0] < w[1]),
        "flow_only not strictly increasing: {:?}",
        r.flow_only
    );
    assert!(r.flow_only.iter().all(|i| *i < r.observations.len()));
    assert_eq!(
        r.requests().count(),
        r.observations.len() - r.flow_only.len()
    );
    // What the topology checks of an observation itself; the import's size is no property
    // of one observation, so the merge runs without caps on services and dependencies.
    let topology = Topology::with_config(BucketConfig::default(), TopologyLimits::unbounded());
    for o in &r.observations {
        if let Err(e) = check_fields(o) {
            panic!("the topology would refuse an imported observation ({e}): {o:?}");
        }
        if let Err(e) = topology.observe_traffic(o, &NoDirectory) {
            panic!("the topology refuses an imported observation ({e}): {o:?}");
        }
        assert_label("source host", &o.source.host);
        assert_label("destination host", &o.destination.host);
        for label in [&o.method, &o.path].into_iter().flatten() {
            assert_label("label", label);
        }
        let text = serde_round_trip(o);
        let back = jsonl::parse_line(&text, 0)
            .unwrap_or_else(|e| panic!("the JSON-lines importer refuses {text}: {e}"));
        assert_same(o, &back, "export then JSON-lines import");
    }
}

/// Line-based importers: every non-blank line read is an observation or an error that
/// names its line, in input order.
pub fn check_lines(r: &ImportReport, input: &[u8]) {
    assert_eq!(
        r.units_read as usize,
        r.observations.len() + r.errors.len(),
        "lines read != observations + errors"
    );
    let lines = input.split(|b| *b == b'\n').count();
    let mut last = 0;
    for e in &r.errors {
        let n: usize = e
            .location
            .strip_prefix("line ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("error location {:?} is not a line", e.location));
        assert!(n > last && n <= lines, "line {n} after {last} of {lines}");
        last = n;
    }
}
