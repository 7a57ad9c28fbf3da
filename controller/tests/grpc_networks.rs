//! `weft.v1.MirrorService` against the running `weft-controller` (`--insecure`, tokens):
//! networks and mirrors created, read, updated and deleted over gRPC with REST's errors,
//! refused without a token or with a token of too low a role, and their events streamed in
//! order, without holding a slot of `--grpc-concurrency`.

use std::time::Duration;

use serde_json::{Value, json};
use tonic::Code;
use weft_proto::v1 as wire;
use weft_proto::v1::mirror_service_client::MirrorServiceClient;

mod insecure;
use insecure::{channel, http, start, with_token};

const TDL: &str = "\
network: shop
nodes:
  web:
    image: nginx
    addresses: [10.9.0.2/24]
  db:
    image: alpine:3
    ports: [5432]
    addresses: [10.9.0.3/24]
connections:
  web -> db:
    port: 5432
";

fn create(tdl: &str, file_name: &str, hosts: &[&str]) -> wire::CreateNetworkRequest {
    wire::CreateNetworkRequest {
        tdl: tdl.into(),
        file_name: file_name.into(),
        hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        source_drift: String::new(),
    }
}

async fn next_event(stream: &mut tonic::Streaming<wire::NetworkEvent>) -> wire::NetworkEvent {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("an event in time")
        .expect("the stream stays open")
        .expect("an event, not the end")
}

#[tokio::test]
async fn networks_over_grpc_with_rest_semantics_auth_and_ordered_events() {
    let c = start("grpc-networks", &[]);
    let admin = c.admin.clone();
    let mut grpc = MirrorServiceClient::new(channel(&c).await);

    // Without a token: refused, reads and the stream included; nothing is made.
    let e = grpc
        .create_network(with_token(create(TDL, "shop.tdl", &["hv1"]), None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    let e = grpc
        .watch_network_events(with_token(wire::WatchNetworkEventsRequest::default(), None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    let e = grpc
        .list_networks(with_token(
            wire::ListNetworksRequest {},
            Some("not-a-token"),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    // A read token reads and follows, but changes nothing.
    let (s, read) = http(
        &c,
        "POST",
        "/tokens",
        &admin,
        &json!({"name": "dashboards", "role": "read"}),
    );
    assert_eq!(s, 201, "{read}");
    let read = read["token"].as_str().unwrap().to_owned();
    let e = grpc
        .create_network(with_token(create(TDL, "shop.tdl", &["hv1"]), Some(&read)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let listed = grpc
        .list_networks(with_token(wire::ListNetworksRequest {}, Some(&read)))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.networks.is_empty(), "{listed:?}");

    let mut events = grpc
        .watch_network_events(with_token(
            wire::WatchNetworkEventsRequest::default(),
            Some(&read),
        ))
        .await
        .unwrap()
        .into_inner();

    // Create: placed on hv1 with the TDL's addresses.
    let shop = grpc
        .create_network(with_token(create(TDL, "shop.tdl", &["hv1"]), Some(&admin)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shop.network_id, "shop");
    assert_eq!(shop.role, "source");
    assert_eq!(shop.hosts, ["hv1"]);
    assert_eq!(shop.node_count, 2);
    assert!(shop.vni >= 10_000, "{}", shop.vni);
    let web = shop.nodes.iter().find(|n| n.name == "web").unwrap();
    assert_eq!(
        (web.host.as_str(), web.addresses.as_slice()),
        ("hv1", &["10.9.0.2/24".to_string()][..])
    );
    assert!(!web.namespace.is_empty());
    assert_eq!(
        weft_tdl::parse("t", &shop.tdl).unwrap(),
        weft_tdl::parse("t", TDL).unwrap()
    );

    // The same id again: ALREADY_EXISTS; a VNI another network has: FAILED_PRECONDITION.
    let e = grpc
        .create_network(with_token(create(TDL, "shop.tdl", &["hv1"]), Some(&admin)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e}");
    assert!(e.message().contains("\"shop\" exists"), "{e}");
    let taken = TDL.replace(
        "network: shop",
        &format!("network: other\nvni: {}", shop.vni),
    );
    let e = grpc
        .create_network(with_token(
            create(&taken, "other.tdl", &["hv1"]),
            Some(&admin),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");

    // A wrong TDL: INVALID_ARGUMENT with the file, line and column of the mistake.
    let bad = "network: bad\nnodes:\n  web:\n    ports: [0]\n";
    let e = grpc
        .create_network(with_token(create(bad, "bad.tdl", &["hv1"]), Some(&admin)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().starts_with("bad.tdl:4:"), "{}", e.message());
    let e = grpc
        .create_network(with_token(create("", "", &[]), Some(&admin)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");

    // Status: on hv1, not applied (no agent there).
    let st = grpc
        .get_network_status(with_token(
            wire::GetNetworkRequest {
                network_id: "shop".into(),
            },
            Some(&read),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.network_id, "shop");
    assert!(!st.in_sync);
    assert_eq!(st.hosts.len(), 1, "{st:?}");
    assert_eq!(st.hosts[0].host, "hv1");
    assert!(
        st.hosts[0]
            .resources
            .iter()
            .any(|r| r.kind == "network-node" && r.key == "shop/web" && r.state == "pending"),
        "{st:?}"
    );
    let e = grpc
        .get_network_status(with_token(
            wire::GetNetworkRequest {
                network_id: "nope".into(),
            },
            Some(&read),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e = grpc
        .get_network(with_token(wire::GetNetworkRequest::default(), Some(&read)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");

    // A mirror on hv2 with the source's addresses; an unknown source is NOT_FOUND.
    let e = grpc
        .create_mirror(with_token(
            wire::CreateMirrorRequest {
                source: "nope".into(),
                destination: "x".into(),
                hosts: vec!["hv2".into()],
                ..Default::default()
            },
            Some(&admin),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let dr = grpc
        .create_mirror(with_token(
            wire::CreateMirrorRequest {
                source: "shop".into(),
                destination: "shopdr".into(),
                hosts: vec!["hv2".into()],
                ..Default::default()
            },
            Some(&admin),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((dr.role.as_str(), dr.source.as_str()), ("mirror", "shop"));
    let drweb = dr.nodes.iter().find(|n| n.name == "web").unwrap();
    assert_eq!(drweb.addresses, web.addresses);
    assert_ne!(dr.vni, shop.vni);

    // Update: the changes, and the mirror follows.
    let grown = TDL.replace("    image: nginx\n", "    image: nginx:1.27\n");
    let up = grpc
        .update_network(with_token(
            wire::UpdateNetworkRequest {
                network_id: "shop".into(),
                tdl: grown,
                file_name: "shop.tdl".into(),
            },
            Some(&admin),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(up.changes.iter().any(|c| c.contains("image")), "{up:?}");
    assert_eq!(up.network.unwrap().revision, 2);
    let listed = grpc
        .list_networks(with_token(wire::ListNetworksRequest {}, Some(&read)))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = listed
        .networks
        .iter()
        .map(|n| n.network_id.as_str())
        .collect();
    assert_eq!(ids, ["shop", "shopdr"]);

    let gone = grpc
        .delete_network(with_token(
            wire::DeleteNetworkRequest {
                network_id: "shop".into(),
            },
            Some(&admin),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gone.network_id, "shop");
    let e = grpc
        .delete_network(with_token(
            wire::DeleteNetworkRequest {
                network_id: "shop".into(),
            },
            Some(&admin),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");

    // Every change, in the order it was made, and nothing of the refused ones.
    let mut seen = Vec::new();
    for _ in 0..5 {
        let e = next_event(&mut events).await;
        assert_eq!(e.specversion, "1.0");
        let data: Value = serde_json::from_str(&e.data_json).unwrap();
        assert_eq!(data["network"], e.network_id, "{e:?}");
        seen.push((e.r#type, e.network_id));
    }
    let expected = [
        ("weft.network.created", "shop"),
        ("weft.network.created", "shopdr"),
        ("weft.network.updated", "shop"),
        ("weft.network.synced", "shopdr"),
        ("weft.network.deleted", "shop"),
    ];
    let seen: Vec<(&str, &str)> = seen.iter().map(|(t, n)| (t.as_str(), n.as_str())).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn followers_get_their_networks_events_and_hold_no_unary_slot() {
    let c = start(
        "grpc-networks",
        &["--grpc-concurrency", "1", "--grpc-queue-wait", "200ms"],
    );
    let admin = c.admin.clone();
    let mut grpc = MirrorServiceClient::new(channel(&c).await);
    // Two followers of one network; then unary calls still get the one slot.
    let mut followers = Vec::new();
    for _ in 0..2 {
        followers.push(
            grpc.watch_network_events(with_token(
                wire::WatchNetworkEventsRequest {
                    network_id: "solo".into(),
                },
                Some(&admin),
            ))
            .await
            .unwrap()
            .into_inner(),
        );
    }
    let solo = TDL.replace("network: shop", "network: solo");
    grpc.create_network(with_token(
        create(&solo, "solo.tdl", &["hv1"]),
        Some(&admin),
    ))
    .await
    .unwrap();
    grpc.create_network(with_token(create(TDL, "shop.tdl", &["hv1"]), Some(&admin)))
        .await
        .unwrap();
    grpc.list_networks(with_token(wire::ListNetworksRequest {}, Some(&admin)))
        .await
        .unwrap();
    for f in &mut followers {
        let e = next_event(f).await;
        assert_eq!(
            (e.r#type.as_str(), e.network_id.as_str()),
            ("weft.network.created", "solo")
        );
    }
}
