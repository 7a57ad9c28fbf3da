use super::*;
use crate::FLOW_OBJECT;
use crate::attach::{PROG_EGRESS, PROG_INGRESS};
use crate::testns::{TestNetns, in_ns, require_root};

fn names(on: &[OnHook]) -> Vec<&str> {
    on.iter().map(|p| p.name.as_str()).collect()
}

fn loaded() -> Datapath {
    let mut dp = Datapath::load(FLOW_OBJECT).expect("flow object");
    for p in [PROG_INGRESS, PROG_EGRESS] {
        dp.load_classifier(p).expect("verifier");
    }
    dp
}

#[tokio::test]
async fn programs_share_a_hook_in_the_order_asked_for() {
    require_root!();
    let ns = TestNetns::new();
    let h = ns.handle().await;
    let index = ns.veth(&h, "dp0").await;
    let mut dp = loaded();
    in_ns(&ns.path, || {
        // Ingress: the observer first, a second program after it.
        dp.attach("dp0", index, Hook::Ingress, PROG_INGRESS, Order::First)
            .unwrap();
        dp.attach(
            "dp0",
            index,
            Hook::Ingress,
            PROG_EGRESS,
            Order::After(PROG_INGRESS),
        )
        .unwrap();
        // Egress: the second program last, then the observer before it.
        dp.attach("dp0", index, Hook::Egress, PROG_EGRESS, Order::Last)
            .unwrap();
        dp.attach(
            "dp0",
            index,
            Hook::Egress,
            PROG_INGRESS,
            Order::Before(PROG_EGRESS),
        )
        .unwrap();
        // A repeated attach keeps the program's place.
        dp.attach("dp0", index, Hook::Ingress, PROG_INGRESS, Order::Last)
            .unwrap();

        for hook in [Hook::Ingress, Hook::Egress] {
            let on = dp.query("dp0", hook).unwrap();
            assert_eq!(names(&on), vec![PROG_INGRESS, PROG_EGRESS], "{hook}");
            assert!(on.iter().all(|p| p.ours));
        }
        // (bpftool 7.1 here does not list tcx links in `bpftool net show`; aya's query does.)

        // A program cannot be ordered relative to one that is not on the hook.
        dp.detach(index, Hook::Ingress, PROG_EGRESS);
        let err = dp
            .attach(
                "dp0",
                index,
                Hook::Ingress,
                PROG_EGRESS,
                Order::After("flow_missing"),
            )
            .unwrap_err();
        assert!(matches!(err, DatapathError::NoAnchor { .. }), "{err}");
        assert_eq!(
            names(&dp.query("dp0", Hook::Ingress).unwrap()),
            vec![PROG_INGRESS]
        );

        // The interface goes: everything of it is detached.
        assert_eq!(dp.detach_interface(index), 3);
        assert!(dp.attached(index).is_empty());
        for hook in [Hook::Ingress, Hook::Egress] {
            assert!(dp.query("dp0", hook).unwrap().is_empty(), "{hook}");
        }
    });
}

#[test]
fn maps_by_name() {
    require_root!();
    let mut dp = loaded();
    assert!(dp.map_mut("FLOWS").is_ok());
    assert!(dp.take_map("FLOWS").is_ok());
    assert!(matches!(dp.take_map("FLOWS"), Err(DatapathError::NoMap(_))));
    assert!(matches!(dp.map_mut("NOPE"), Err(DatapathError::NoMap(_))));
}
