//! TDL files: any bytes (as UTF-8, lossily) through `weft_tdl::parse`. What parses must
//! format back to the same network, plan on two hosts (or fail only on a pinned host that
//! is not one of them), and have no diff with itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(net) = weft_tdl::parse("fuzz.tdl", &text) else {
        return;
    };
    let out = weft_tdl::format(&net);
    match weft_tdl::parse("formatted.tdl", &out) {
        Ok(again) => assert_eq!(again, net, "format changed the network:\n{out}"),
        Err(e) => panic!("format wrote text that does not parse:\n{e}\n---\n{out}"),
    }
    let hosts = ["hv1".to_owned(), "hv2".to_owned()];
    match weft_tdl::plan(&net, &hosts) {
        Ok(p) => assert_eq!(
            p.hosts.iter().map(|h| h.nodes.len()).sum::<usize>(),
            net.nodes.len(),
            "every node placed once"
        ),
        Err(weft_tdl::PlanError::UnknownHosts(..)) => {
            assert!(net.nodes.values().any(|n| {
                n.host
                    .as_deref()
                    .is_some_and(|h| !hosts.iter().any(|x| x == h))
            }));
        }
        Err(e) => panic!("{e}"),
    }
    for name in net.nodes.keys() {
        let _ = weft_tdl::firewall(&net, name);
    }
    assert!(weft_tdl::diff(&net, &net).is_empty());
});
