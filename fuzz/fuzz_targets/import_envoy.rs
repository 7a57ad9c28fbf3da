//! The Envoy access-log importer: default text format and JSON lines, with and without a
//! caller-given source name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_fuzz::observation::{check_lines, check_report};
use weft_topology::import::{ImportOptions, envoy};

fuzz_target!(|data: &[u8]| {
    let r = envoy::import(data, &ImportOptions::default());
    check_lines(&r, data);
    check_report(&r);
    let named = ImportOptions {
        source: Some("caller".into()),
    };
    let n = envoy::import(data, &named);
    check_report(&n);
    // The source name replaces the downstream: every observation is from it, and the only
    // lines it rescues are those whose downstream address (or X-Forwarded-For address, when
    // there is none) was bad.
    assert!(
        n.observations
            .iter()
            .all(|o| o.source.host == "caller" && o.source.port == 0)
    );
    for e in &n.errors {
        assert!(r.errors.contains(e), "{e:?} only with a source name");
    }
    for e in r.errors.iter().filter(|e| !n.errors.contains(e)) {
        assert!(
            e.message.contains("downstream_remote_address")
                || e.message.starts_with("field X-Forwarded-For: "),
            "{e:?} rescued"
        );
    }
    assert_eq!(n.units_read, r.units_read);
});
