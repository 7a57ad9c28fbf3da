//! `POST /observations` bodies: a JSON array or JSON lines of TrafficObservations.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_controller::api::observations::parse_body;
use weft_fuzz::observation::serde_round_trip;

fuzz_target!(|data: &[u8]| {
    // The handler takes the body as a String: axum refuses bodies that are not UTF-8.
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(items) = parse_body(body) else {
        return;
    };
    let lines = body.lines().count();
    for (i, (place, parsed)) in items.iter().enumerate() {
        match (place.line, place.index) {
            (Some(line), None) => {
                assert!(line >= 1 && line <= lines, "line {line} of {lines}");
                if let Some((before, _)) = i.checked_sub(1).and_then(|j| items.get(j)) {
                    assert!(before.line < place.line, "lines out of order");
                }
            }
            (None, Some(index)) => assert_eq!(index, i, "array items out of order"),
            other => panic!("an item is at {other:?}"),
        }
        match parsed {
            Ok(o) => {
                serde_round_trip(o);
            }
            Err(message) => assert!(!message.is_empty()),
        }
    }
});
