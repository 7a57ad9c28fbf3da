//! `weft.v1.TopologyService` over a real socket: the spec's example through the library
//! path of the controller, read back over gRPC.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::server::TcpIncoming;
use weft_controller::AppState;
use weft_controller::api::grpc_topology::TopologyApi;
use weft_proto::v1::topology_service_client::TopologyServiceClient;
use weft_proto::v1::{
    FindBottlenecksRequest, GetDependenciesRequest, TopologyDiffRequest, TopologyQuery,
};
use weft_topology::mapper::{NoDirectory, create_traffic_observation};

async fn serve(state: AppState) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    // The server lives as long as the test's runtime; dropping the runtime stops it.
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TopologyApi::new(state).into_service())
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    addr
}

fn seeded() -> AppState {
    let state = AppState::default();
    for (source, target, port, protocol, latency, n) in [
        ("web", "api", 8080, "http", 10.0, 4),
        ("api", "db", 5432, "postgres", 50.0, 2),
        ("api", "cache", 6379, "redis", 1.0, 1),
    ] {
        for _ in 0..n {
            let mut o = create_traffic_observation(source, 1, target, port, protocol);
            o.latency_ms = latency;
            state
                .topology
                .observe_traffic(&o, &NoDirectory)
                .expect("valid");
        }
    }
    state
}

#[tokio::test]
async fn topology_service_answers_like_rest() {
    let addr = serve(seeded()).await;
    let mut client = TopologyServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let map = client
        .get_topology(TopologyQuery::default())
        .await
        .expect("topology")
        .into_inner();
    assert_eq!(map.services.len(), 4);
    assert_eq!(map.dependencies.len(), 3);
    let services = client
        .list_services(TopologyQuery::default())
        .await
        .expect("services")
        .into_inner();
    let db = services
        .services
        .iter()
        .find(|s| s.name == "db")
        .expect("db");
    assert_eq!(db.service_type, "database");

    let deps = client
        .get_dependencies(GetDependenciesRequest {
            window: None,
            service: "api".into(),
            direction: "outbound".into(),
        })
        .await
        .expect("deps")
        .into_inner();
    let targets: Vec<&str> = deps
        .dependencies
        .iter()
        .map(|d| d.target.as_str())
        .collect();
    assert_eq!(targets, vec!["cache", "db"]);

    let critical = client
        .find_critical(TopologyQuery::default())
        .await
        .expect("critical")
        .into_inner();
    assert_eq!(critical.services[0].service, "api");
    assert_eq!(critical.services[0].disconnects, 2);

    let slow = client
        .find_bottlenecks(FindBottlenecksRequest {
            window: None,
            threshold_ms: 20.0,
            stat: "avg".into(),
        })
        .await
        .expect("bottlenecks")
        .into_inner();
    assert_eq!(slow.dependencies.len(), 1);
    assert_eq!(slow.dependencies[0].target, "db");

    let patterns = client
        .analyze_patterns(TopologyQuery::default())
        .await
        .expect("patterns")
        .into_inner();
    assert_eq!(patterns.total_observations, 7);
    assert_eq!(patterns.protocol_distribution.get("http"), Some(&4));
}

#[tokio::test]
async fn bad_arguments_name_their_field() {
    let addr = serve(seeded()).await;
    let mut client = TopologyServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let status = client
        .get_topology(TopologyQuery {
            since: "yesterday".into(),
            until: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("`since`"), "{}", status.message());
    let status = client
        .get_dependencies(GetDependenciesRequest {
            window: None,
            service: "api".into(),
            direction: "up".into(),
        })
        .await
        .unwrap_err();
    assert!(
        status.message().contains("`direction`"),
        "{}",
        status.message()
    );
    let status = client
        .find_bottlenecks(FindBottlenecksRequest {
            window: None,
            threshold_ms: f64::NAN,
            stat: String::new(),
        })
        .await
        .unwrap_err();
    assert!(
        status.message().contains("`threshold_ms`"),
        "{}",
        status.message()
    );
    let status = client
        .diff(TopologyDiffRequest {
            from: "1h".into(),
            to: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("`from`"), "{}", status.message());
    let status = client
        .get_dependencies(GetDependenciesRequest {
            window: None,
            service: "nobody".into(),
            direction: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}
