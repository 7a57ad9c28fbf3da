//! Allow-list bodies (`PUT /policy/allowed-dependencies`): TOML `allow = [...]`, a JSON list, or
//! `{"allow": [...]}` of `source -> target [protocol]` rules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_topology::history::allow::AllowList;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(list) = AllowList::parse(text, "body") else {
        return;
    };
    // Each rule written back as `source -> target [protocol]` parses to the same rule.
    let entries: Vec<String> = list
        .rules
        .iter()
        .map(|r| match &r.protocol {
            Some(p) => format!("{} -> {} [{p}]", r.source, r.target),
            None => format!("{} -> {}", r.source, r.target),
        })
        .collect();
    for r in &list.rules {
        assert!(
            !r.source.is_empty() && !r.source.contains(char::is_whitespace),
            "{r:?}"
        );
        assert!(
            !r.target.is_empty() && !r.target.contains(char::is_whitespace),
            "{r:?}"
        );
    }
    let json = serde_json::to_string(&entries).expect("strings serialise");
    let back = AllowList::parse(&json, "again").unwrap_or_else(|e| panic!("{json}: {e}"));
    assert_eq!(back, list);
});
