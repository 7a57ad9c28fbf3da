use super::*;
use crate::FLOW_OBJECT;
use crate::attach::{PROG_EGRESS, PROG_INGRESS};
use crate::testns::{TempPins, TestNetns, in_ns, require_root};
use aya::programs::SchedClassifier;

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

#[tokio::test]
async fn attach_all_makes_links_of_distinct_programs_at_once_in_the_order_asked_for() {
    require_root!();
    let ns = TestNetns::new();
    let h = ns.handle().await;
    let a = ns.veth(&h, "dpa").await;
    let b = ns.veth(&h, "dpb").await;
    let mut dp = loaded();
    in_ns(&ns.path, || {
        dp.attach("dpa", a, Hook::Ingress, PROG_INGRESS, Order::First)
            .unwrap();
        // Two programs on two interfaces in one call (parallel links), one of them
        // ordered after a program already there; one already attached is left alone.
        dp.attach_all(&[
            AttachRequest {
                interface: "dpa",
                ifindex: a,
                hook: Hook::Ingress,
                program: PROG_EGRESS,
                order: Order::Before(PROG_INGRESS),
            },
            AttachRequest {
                interface: "dpb",
                ifindex: b,
                hook: Hook::Egress,
                program: PROG_INGRESS,
                order: Order::Last,
            },
            AttachRequest {
                interface: "dpa",
                ifindex: a,
                hook: Hook::Ingress,
                program: PROG_INGRESS,
                order: Order::Last,
            },
        ])
        .unwrap();
        assert_eq!(
            names(&dp.query("dpa", Hook::Ingress).unwrap()),
            vec![PROG_EGRESS, PROG_INGRESS]
        );
        assert_eq!(
            names(&dp.query("dpb", Hook::Egress).unwrap()),
            vec![PROG_INGRESS]
        );
        assert!(dp.is_attached(b, Hook::Egress, PROG_INGRESS));
        // An anchor that is not there: an error naming it, and nothing of that request.
        let err = dp
            .attach_all(&[
                AttachRequest {
                    interface: "dpb",
                    ifindex: b,
                    hook: Hook::Ingress,
                    program: PROG_EGRESS,
                    order: Order::After("flow_missing"),
                },
                AttachRequest {
                    interface: "dpb",
                    ifindex: b,
                    hook: Hook::Ingress,
                    program: PROG_INGRESS,
                    order: Order::Last,
                },
            ])
            .unwrap_err();
        assert!(matches!(err, DatapathError::NoAnchor { .. }), "{err}");
        assert!(dp.query("dpb", Hook::Ingress).unwrap().is_empty());
        assert_eq!(dp.detach_interface(a), 2);
        assert_eq!(dp.detach_interface(b), 1);
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

fn tcx_ids(interface: &str, hook: Hook) -> Vec<u32> {
    let (_, infos) = SchedClassifier::query_tcx(interface, hook.attach_type()).unwrap();
    infos.iter().map(|i| i.id()).collect()
}

#[tokio::test]
async fn a_restarted_datapath_swaps_its_programs_into_the_pinned_links_and_keeps_the_maps() {
    require_root!();
    use agent_common::{FlowKey, FlowStats};
    use aya::maps::HashMap as BpfHashMap;

    let ns = TestNetns::new();
    let h = ns.handle().await;
    let index = ns.veth(&h, "dp0").await;
    let pins = TempPins::new("takeover");
    let programs = [PROG_INGRESS, PROG_EGRESS];
    let key = FlowKey {
        ifindex: 42,
        ..Default::default()
    };
    let mut stats = FlowStats::ZERO;
    stats.first_seen_ns = 7;
    stats.packets = [5, 3];
    in_ns(&ns.path, || {
        let start = |pinned: &std::path::Path| {
            let mut dp = Datapath::load_pinned(
                FLOW_OBJECT,
                Pins::open(pinned).expect("bpffs"),
                &pins::PINNED_GROUPS,
                &programs,
            )
            .expect("flow object");
            for (p, hook) in [(PROG_INGRESS, Hook::Ingress), (PROG_EGRESS, Hook::Egress)] {
                dp.load_classifier(p).unwrap();
                dp.attach("dp0", index, hook, p, Order::First).unwrap();
            }
            dp
        };
        // The first agent: a flow in its table, then an exit that keeps the pins.
        let mut first = start(&pins.0);
        BpfHashMap::<_, FlowKey, FlowStats>::try_from(first.map_mut("FLOWS").unwrap())
            .unwrap()
            .insert(key, stats, 0)
            .unwrap();
        let old = tcx_ids("dp0", Hook::Ingress);
        assert_eq!(old.len(), 1);
        assert_eq!(first.release_keeping_pins(), 2);
        drop(first);
        assert_eq!(
            tcx_ids("dp0", Hook::Ingress),
            old,
            "the program stays attached between two agents"
        );

        // The second: same table, the links taken over (one program on each hook, its own).
        // As after an upgrade from an agent that did not pin FLOW_EVENTS: the ring is made
        // anew, the table and its baseline are still reused.
        let events_pin = Pins::open(&pins.0).expect("bpffs").map_path("FLOW_EVENTS");
        pins::remove_file(&events_pin).expect("FLOW_EVENTS was pinned");
        let mut second = start(&pins.0);
        assert!(events_pin.exists(), "FLOW_EVENTS pinned again");
        let flows = BpfHashMap::<_, FlowKey, FlowStats>::try_from(second.map_mut("FLOWS").unwrap())
            .unwrap();
        assert_eq!(
            flows.get(&key, 0).unwrap(),
            stats,
            "the flow table continues"
        );
        for hook in [Hook::Ingress, Hook::Egress] {
            let on = second.query("dp0", hook).unwrap();
            assert_eq!(on.len(), 1, "{hook}: {on:?}");
            assert!(
                on[0].ours,
                "{hook}: the new program runs in the link: {on:?}"
            );
        }
        assert_ne!(tcx_ids("dp0", Hook::Ingress), old);
        assert_eq!(second.remove_unheld_link_pins(&programs).unwrap(), 0);

        // A clean exit that does not keep them: nothing attached, no link pinned.
        assert_eq!(second.detach_all(), 2);
        for hook in [Hook::Ingress, Hook::Egress] {
            assert!(tcx_ids("dp0", hook).is_empty(), "{hook}");
        }
        let p = second.pins().unwrap().clone();
        assert!(p.link_pins(&programs).unwrap().is_empty());
        assert_eq!(
            p.remove_all().unwrap(),
            pins::Removed { links: 0, maps: 14 }
        );
        assert!(!pins.0.exists());
    });
}

#[test]
fn a_pinned_map_of_another_layout_is_started_fresh() {
    require_root!();
    use aya::maps::{MapInfo, MapType, PerCpuArray};

    let pins = TempPins::new("layout");
    let p = Pins::open(&pins.0).unwrap();
    // An "older agent's" FLOWS of another layout: a per-CPU array pinned in its place.
    let mut other = Datapath::load(FLOW_OBJECT).unwrap();
    PerCpuArray::<_, u64>::try_from(other.take_map("PAYLOADS_LOST").unwrap())
        .unwrap()
        .pin(p.map_path("FLOWS"))
        .unwrap();
    let mut dp = Datapath::load_pinned(FLOW_OBJECT, p.clone(), &pins::PINNED_GROUPS, &[])
        .expect("loads anyway");
    let info = MapInfo::from_pin(p.map_path("FLOWS")).unwrap();
    assert_eq!(info.map_type().unwrap(), MapType::LruHash);
    assert_eq!((info.key_size(), info.value_size()), (44, 96));
    assert!(dp.map_mut("FLOWS").is_ok());
}
