//! `weft.v1.ShadowService` against the running `weft-controller` (`--insecure`, tokens):
//! shadows created, read, their policy replaced and deleted over gRPC with REST's errors,
//! refused without a token or with a token of too low a role (REST and gRPC), and their
//! events streamed. No agent runs: the shadow waits for its hosts' underlay addresses
//! (degraded, saying which host).

use std::time::Duration;

use serde_json::{Value, json};
use tonic::Code;
use weft_proto::v1 as wire;
use weft_proto::v1::shadow_service_client::ShadowServiceClient;

mod insecure;
use insecure::{channel, http, start, with_token};

const TDL: &str = "\
network: shop
nodes:
  web:
    image: nginx
    ports: [80]
    addresses: [10.9.0.2/24]
  db:
    image: alpine:3
    ports: [5432]
    addresses: [10.9.0.3/24]
";

async fn next_event(stream: &mut tonic::Streaming<wire::CloudEvent>) -> wire::CloudEvent {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("an event in time")
        .expect("the stream stays open")
        .expect("an event, not the end")
}

fn create() -> wire::CreateShadowRequest {
    wire::CreateShadowRequest {
        id: "shop-shadow".into(),
        production: "shop".into(),
        nodes: vec![],
        hosts: vec!["hv2".into()],
        policy: Some(wire::ShadowPolicy {
            share_ppm: 100_000,
            ..Default::default()
        }),
        noise_baseline: false,
    }
}

#[tokio::test]
async fn shadows_over_grpc_with_rest_semantics_auth_and_events() {
    let c = start("grpc-shadows", &[]);
    let admin = c.admin.clone();
    let (s, _) = http(
        &c,
        "POST",
        "/networks",
        &admin,
        &json!({"tdl": TDL, "file_name": "shop.tdl", "hosts": ["hv1"]}),
    );
    assert_eq!(s, 201);
    let mut grpc = ShadowServiceClient::new(channel(&c).await);

    // Without a token: refused, reads and the stream included.
    let e = grpc
        .create_shadow(with_token(create(), None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    let e = grpc
        .watch_shadow_events(with_token(wire::WatchShadowEventsRequest::default(), None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    let (s, _) = http(&c, "GET", "/shadows", "not-a-token", &Value::Null);
    assert_eq!(s, 401);
    // A read token reads and follows but changes nothing (gRPC and REST).
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
        .create_shadow(with_token(create(), Some(&read)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let (s, _) = http(
        &c,
        "POST",
        "/shadows",
        &read,
        &json!({"id": "x", "production": "shop", "hosts": ["hv2"]}),
    );
    assert_eq!(s, 403);
    let listed = grpc
        .list_shadows(with_token(wire::ListShadowsRequest {}, Some(&read)))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.shadows.is_empty());
    let mut events = grpc
        .watch_shadow_events(with_token(
            wire::WatchShadowEventsRequest::default(),
            Some(&read),
        ))
        .await
        .unwrap()
        .into_inner();

    // Create: every node with ports is sampled; no agent gave hv1 or hv2 an underlay
    // address, so nothing is published yet and the shadow says why.
    let made = grpc
        .create_shadow(with_token(create(), Some(&admin)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(made.id, "shop-shadow");
    assert_eq!(made.nodes, ["db", "web"]);
    assert_eq!(made.networks, ["shop-shadow"]);
    assert_eq!(made.policy.as_ref().unwrap().key, "connection");
    assert_eq!(made.state, "degraded");
    assert!(made.error.contains("no underlay address"), "{}", made.error);
    let e = next_event(&mut events).await;
    assert_eq!(e.r#type, "weft.shadow.created");
    assert_eq!(e.subject, "shop-shadow");
    let data: Value = serde_json::from_str(&e.data_json).unwrap();
    assert_eq!(data["production"], "shop");
    // The controller tells it is degraded by itself.
    let e = next_event(&mut events).await;
    assert_eq!(e.r#type, "weft.shadow.degraded");
    assert!(e.data_json.contains("underlay"), "{}", e.data_json);

    // Errors: the same id ALREADY_EXISTS, a bad field INVALID_ARGUMENT naming it.
    let e = grpc
        .create_shadow(with_token(create(), Some(&admin)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e}");
    let mut bad = create();
    bad.id = "other".into();
    bad.policy.as_mut().unwrap().ports = vec![70_000];
    let e = grpc
        .create_shadow(with_token(bad, Some(&admin)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("`policy.ports[0]`"), "{e}");
    let e = grpc
        .get_shadow(with_token(
            wire::GetShadowRequest { id: "nope".into() },
            Some(&read),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");

    // The policy is replaced.
    let e = grpc
        .update_shadow_policy(with_token(
            wire::UpdateShadowPolicyRequest {
                id: "shop-shadow".into(),
                policy: None,
            },
            Some(&admin),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let changed = grpc
        .update_shadow_policy(with_token(
            wire::UpdateShadowPolicyRequest {
                id: "shop-shadow".into(),
                policy: Some(wire::ShadowPolicy {
                    share_ppm: 500_000,
                    key: "source".into(),
                    ..Default::default()
                }),
            },
            Some(&admin),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changed.policy.as_ref().unwrap().share_ppm, 500_000);
    let e = next_event(&mut events).await;
    assert_eq!(e.r#type, "weft.shadow.policy.changed");
    let got = grpc
        .get_shadow(with_token(
            wire::GetShadowRequest {
                id: "shop-shadow".into(),
            },
            Some(&read),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.policy.unwrap().key, "source");
    assert!(got.counters.is_some());

    // Synthetic load: operate's; a bad multiplier is INVALID_ARGUMENT naming it.
    let run = |multiplier: f64, token: &str| {
        with_token(
            wire::RunSyntheticLoadRequest {
                id: "shop-shadow".into(),
                multiplier,
                duration_seconds: 30,
            },
            Some(token),
        )
    };
    let e = grpc.run_synthetic_load(run(3.0, &read)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let e = grpc
        .run_synthetic_load(run(-2.0, &admin))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("multiplier"), "{e}");
    grpc.run_synthetic_load(run(3.0, &admin)).await.unwrap();
    let e = next_event(&mut events).await;
    assert_eq!(e.r#type, "weft.shadow.synthetic.asked");
    assert!(e.data_json.contains("\"generation\":1"), "{}", e.data_json);

    // Delete: gone, and so is its network.
    let e = grpc
        .delete_shadow(with_token(
            wire::DeleteShadowRequest {
                id: "shop-shadow".into(),
            },
            Some(&read),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    grpc.delete_shadow(with_token(
        wire::DeleteShadowRequest {
            id: "shop-shadow".into(),
        },
        Some(&admin),
    ))
    .await
    .unwrap();
    let e = next_event(&mut events).await;
    assert_eq!(e.r#type, "weft.shadow.deleted");
    let (s, _) = http(&c, "GET", "/networks/shop-shadow", &read, &Value::Null);
    assert_eq!(s, 404);
    let (s, all) = http(&c, "GET", "/shadows", &read, &Value::Null);
    assert_eq!(s, 200);
    assert_eq!(all, json!({"shadows": []}));
}
