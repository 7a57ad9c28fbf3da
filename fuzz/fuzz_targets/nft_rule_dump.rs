//! nf_tables rule dumps as the agent reads a node's `inet weft` table: anyone with
//! `CAP_NET_ADMIN` in the node's namespace (its workload may have it) writes what the
//! agent decodes there. Any bytes: no panic; a rule decoded as one of weft's kinds is
//! described as that kind, and a user rule of it reads back as a rule of the model.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_firewall::RuleKind;

fuzz_target!(|data: &[u8]| {
    let Ok(Some((_chain, rule))) = weft_firewall::decode_rule(data) else {
        return;
    };
    if let Some(k) = rule.kind {
        assert_eq!(rule.text, k.to_string());
        if let RuleKind::User(atom) = k
            && let Some(r) = atom.to_rule()
        {
            // What the model reads back is a rule it would write.
            r.validate().expect("a decoded rule is valid");
        }
    }
    if let Some(c) = &rule.comment {
        assert!(c.len() <= data.len());
    }
});
