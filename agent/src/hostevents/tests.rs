use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use rtnetlink::packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::*;
use crate::testns::{TestNetns, require_root};

fn counters() -> Counters {
    Counters::default()
}

fn address_message(index: u32, ip: IpAddr, prefix: u8) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    m.header.prefix_len = prefix;
    m.header.index = index;
    m.attributes.push(AddressAttribute::Address(ip));
    if ip.is_ipv4() {
        m.attributes.push(AddressAttribute::Local(ip));
    }
    m
}

fn serialize(msgs: Vec<RouteNetlinkMessage>) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        let mut nl = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(m));
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        buf.resize(buf.len().next_multiple_of(4), 0);
        out.extend(buf);
    }
    out
}

#[test]
fn decodes_every_message_of_a_datagram() {
    let v4 = IpAddr::V4(Ipv4Addr::new(198, 18, 3, 4));
    let v6 = IpAddr::V6("fd00:3::4".parse::<Ipv6Addr>().unwrap());
    let buf = serialize(vec![
        RouteNetlinkMessage::NewAddress(address_message(7, v4, 24)),
        RouteNetlinkMessage::DelAddress(address_message(8, v6, 64)),
    ]);
    let c = counters();
    assert_eq!(
        decode(&buf, &c),
        vec![
            Change::AddrNew {
                ifindex: 7,
                addr: v4,
                prefix: 24
            },
            Change::AddrDel {
                ifindex: 8,
                addr: v6,
                prefix: 64
            },
        ]
    );
    assert_eq!(c.undecodable.load(Relaxed), 0);
}

#[test]
fn garbage_is_counted_not_fatal() {
    let c = counters();
    assert!(decode(&[1, 2, 3], &c).is_empty());
    assert_eq!(c.undecodable.load(Relaxed), 1);
}

/// Waits for the first event of `netns` that `want` accepts (others are skipped).
async fn expect(
    sub: &mut Subscription,
    netns: &Path,
    what: &str,
    want: impl Fn(&Change) -> bool,
) -> HostEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, sub.recv()).await {
            Err(_) => panic!("no {what} event within 5 s"),
            Ok(None) => panic!("listener gone"),
            Ok(Some(Received::Lagged { missed })) => panic!("lagged by {missed}"),
            Ok(Some(Received::Event(ev)))
                if ev.netns.as_deref() == Some(netns) && want(&ev.change) =>
            {
                return ev;
            }
            Ok(Some(Received::Event(_))) => {}
        }
    }
}

async fn add_addr(h: &Handle, index: u32, ip: IpAddr, prefix: u8) {
    h.address()
        .add(index, ip, prefix)
        .execute()
        .await
        .expect("address add");
}

async fn del_addr(h: &Handle, index: u32, ip: IpAddr, prefix: u8) {
    h.address()
        .del(address_message(index, ip, prefix))
        .execute()
        .await
        .expect("address del");
}

#[tokio::test]
async fn link_address_and_route_changes_in_a_watched_namespace() {
    require_root!();
    let ns = TestNetns::new();
    let events = HostEvents::start(Config::default()).expect("listener");
    let mut sub = events.subscribe();
    events.watch_netns(&ns.path).await.expect("watch");
    let h = ns.handle().await;

    let index = ns.veth(&h, "ev0").await;
    let ev = expect(
        &mut sub,
        &ns.path,
        "link new",
        |c| matches!(c, Change::LinkNew { name, .. } if name == "ev0"),
    )
    .await;
    assert!(
        matches!(ev.change, Change::LinkNew { ifindex, ref kind, .. } if ifindex == index && kind.as_deref() == Some("veth"))
    );
    expect(
        &mut sub,
        &ns.path,
        "link up",
        |c| matches!(c, Change::LinkNew { name, up: true, .. } if name == "ev0"),
    )
    .await;

    let v4 = IpAddr::V4(Ipv4Addr::new(198, 18, 40, 2));
    add_addr(&h, index, v4, 24).await;
    expect(&mut sub, &ns.path, "addr new", |c| {
        *c == Change::AddrNew {
            ifindex: index,
            addr: v4,
            prefix: 24,
        }
    })
    .await;
    let v6: IpAddr = "fd00:40::2".parse().unwrap();
    add_addr(&h, index, v6, 64).await;
    expect(&mut sub, &ns.path, "addr6 new", |c| {
        *c == Change::AddrNew {
            ifindex: index,
            addr: v6,
            prefix: 64,
        }
    })
    .await;

    let dst = Ipv4Addr::new(198, 19, 40, 0);
    let gw = Ipv4Addr::new(198, 18, 40, 1);
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst, 24)
        .gateway(gw)
        .output_interface(index)
        .build();
    h.route()
        .add(route.clone())
        .execute()
        .await
        .expect("route add");
    let want = |c: &Change| {
        matches!(c, Change::RouteNew { dst: d, prefix: 24, gateway: Some(g), ifindex: Some(i), table: 254 }
            if *d == IpAddr::V4(dst) && *g == IpAddr::V4(gw) && *i == index)
    };
    expect(&mut sub, &ns.path, "route new", want).await;
    h.route().del(route).execute().await.expect("route del");
    expect(
        &mut sub,
        &ns.path,
        "route del",
        |c| matches!(c, Change::RouteDel { dst: d, prefix: 24, .. } if *d == IpAddr::V4(dst)),
    )
    .await;

    del_addr(&h, index, v4, 24).await;
    expect(&mut sub, &ns.path, "addr del", |c| {
        *c == Change::AddrDel {
            ifindex: index,
            addr: v4,
            prefix: 24,
        }
    })
    .await;

    h.link().del(index).execute().await.expect("link del");
    expect(&mut sub, &ns.path, "link del", |c| {
        *c == Change::LinkDel {
            ifindex: index,
            name: "ev0".into(),
        }
    })
    .await;

    assert!(events.unwatch_netns(&ns.path));
    assert!(events.watched().is_empty());
}

#[tokio::test]
async fn a_removed_namespace_ends_its_watch() {
    require_root!();
    let ns = TestNetns::new();
    let events = HostEvents::start(Config {
        netns_check: Duration::from_millis(50),
        ..Config::default()
    })
    .unwrap();
    let mut sub = events.subscribe();
    events.watch_netns(&ns.path).await.expect("watch");
    assert_eq!(events.watched(), vec![ns.path.clone()]);
    let path = ns.path.clone();
    drop(ns);
    expect(&mut sub, &path, "netns gone", |c| *c == Change::NetnsGone).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(events.watched().is_empty());
}

#[tokio::test]
async fn a_slow_subscriber_is_told_it_lagged() {
    require_root!();
    let ns = TestNetns::new();
    let events = HostEvents::start(Config {
        capacity: 2,
        ..Config::default()
    })
    .unwrap();
    let mut sub = events.subscribe();
    events.watch_netns(&ns.path).await.expect("watch");
    let h = ns.handle().await;
    let index = ns.veth(&h, "ev0").await;
    for i in 1..=8u8 {
        add_addr(&h, index, IpAddr::V4(Ipv4Addr::new(198, 18, 41, i)), 32).await;
    }
    // Let the listener read them all while this subscriber does not.
    tokio::time::sleep(Duration::from_millis(100)).await;
    match sub.recv().await {
        Some(Received::Lagged { missed }) => assert!(missed > 0),
        other => panic!("expected Lagged, got {other:?}"),
    }
    assert!(events.stats().lagged > 0);
}

/// A full receive buffer is reported as `Overrun`. The test runs on a current-thread
/// runtime and makes the changes with blocking `ip` commands, so the listener cannot read
/// until they are all done; its buffer is as small as the kernel allows.
#[tokio::test(flavor = "current_thread")]
async fn a_receive_buffer_overrun_asks_for_a_resync() {
    require_root!();
    let ns = TestNetns::new();
    let events = HostEvents::start(Config {
        rcvbuf: 1,
        ..Config::default()
    })
    .unwrap();
    let mut sub = events.subscribe();
    events.watch_netns(&ns.path).await.expect("watch");
    let batch: String = (0..64)
        .map(|i| format!("link add ovr{i} type veth peer name ovr{i}p\n"))
        .collect();
    let mut child = std::process::Command::new("ip")
        .args(["-n", &ns.name, "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("ip");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(batch.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let ev = expect(&mut sub, &ns.path, "overrun", |c| *c == Change::Overrun).await;
    assert!(ev.needs_resync());
    let stats = events.stats();
    assert!(stats.overruns >= 1);
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(StatsCollector(events.clone())));
    let text = crate::metrics::render(&registry).unwrap();
    assert!(text.contains(
        "# TYPE weft_agent_host_event_overruns_total counter\nweft_agent_host_event_overruns_total "
    ));
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Latency from a change (just before the request is sent) to the subscriber holding the
/// event, over 100 address additions and 100 removals in a watched namespace. Prints
/// p50/p99; run with `--nocapture` to see them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_latency() {
    require_root!();
    let ns = TestNetns::new();
    let events = HostEvents::start(Config::default()).unwrap();
    let mut sub = events.subscribe();
    events.watch_netns(&ns.path).await.expect("watch");
    let h = ns.handle().await;
    let index = ns.veth(&h, "ev0").await;
    let (mut to_sub, mut to_listener) = (Vec::new(), Vec::new());
    for i in 0..100u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(198, 18, 42, i + 1));
        for add in [true, false] {
            let t0 = Instant::now();
            if add {
                add_addr(&h, index, ip, 32).await;
            } else {
                del_addr(&h, index, ip, 32).await;
            }
            let want = |c: &Change| match c {
                Change::AddrNew { addr, .. } if add => *addr == ip,
                Change::AddrDel { addr, .. } if !add => *addr == ip,
                _ => false,
            };
            let ev = expect(&mut sub, &ns.path, "address", want).await;
            to_sub.push(t0.elapsed());
            to_listener.push(ev.at.duration_since(t0));
        }
    }
    to_sub.sort();
    to_listener.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "hostevents latency over {} address changes: listener read p50 {:.3} ms p99 {:.3} ms; subscriber p50 {:.3} ms p99 {:.3} ms (awaiting the request's ack included)",
        to_sub.len(),
        ms(percentile(&to_listener, 0.5)),
        ms(percentile(&to_listener, 0.99)),
        ms(percentile(&to_sub, 0.5)),
        ms(percentile(&to_sub, 0.99)),
    );
    assert!(
        percentile(&to_sub, 0.99) < Duration::from_millis(100),
        "events are slow"
    );
}
