use super::*;
use crate::topology::rules::Rules;

fn facts(name: &str, endpoints: &[(&str, u16, &str)]) -> ServiceFacts {
    ServiceFacts {
        name: name.into(),
        registered: false,
        endpoints: endpoints
            .iter()
            .map(|(h, p, pr)| ((*h).into(), *p, (*pr).into()))
            .collect(),
        ..Default::default()
    }
}

fn classify(f: &ServiceFacts) -> ServiceType {
    ServiceClassifier::new().classify(f)
}

#[test]
fn well_known_ports_name_their_protocol() {
    let cases = [
        (80, "http"),
        (8080, "http"),
        (443, "https"),
        (5432, "postgres"),
        (3306, "mysql"),
        (6379, "redis"),
        (27017, "mongodb"),
        (9092, "kafka"),
        (5672, "amqp"),
        (53, "dns"),
        (50051, "grpc"),
    ];
    for (port, protocol) in cases {
        assert_eq!(protocol_for(Transport::Tcp, port), protocol, "port {port}");
    }
    assert_eq!(protocol_for(Transport::Udp, 9999), "udp");
}

#[test]
fn served_protocol_decides_database_cache_and_queue() {
    assert_eq!(
        classify(&facts("x", &[("10.0.0.2", 9999, "postgres")])),
        ServiceType::Database
    );
    assert_eq!(
        classify(&facts("x", &[("10.0.0.2", 7000, "redis")])),
        ServiceType::Cache
    );
    assert_eq!(
        classify(&facts("x", &[("10.0.0.2", 1, "amqp")])),
        ServiceType::MessageQueue
    );
    assert_eq!(
        classify(&facts(
            "x",
            &[("10.0.0.2", 80, "http"), ("10.0.0.2", 3306, "mysql")]
        )),
        ServiceType::Database,
        "the most specific protocol wins"
    );
}

#[test]
fn hostname_patterns_suggest_types() {
    let tcp = |name: &str| classify(&facts(name, &[("10.0.0.2", 9000, "tcp")]));
    assert_eq!(tcp("edge-gateway"), ServiceType::ApiGateway);
    assert_eq!(tcp("haproxy.lab"), ServiceType::LoadBalancer);
    assert_eq!(tcp("lb-1"), ServiceType::LoadBalancer);
    assert_eq!(tcp("orders-db"), ServiceType::Database);
    assert_eq!(tcp("session_cache"), ServiceType::Cache);
    assert_eq!(tcp("rabbit.internal"), ServiceType::MessageQueue);
    assert_eq!(tcp("kafka-0"), ServiceType::MessageQueue);
    assert_eq!(tcp("nginx"), ServiceType::WebServer);
    assert_eq!(
        tcp("dbx-tool"),
        ServiceType::Microservice,
        "tokens, not substrings"
    );
}

#[test]
fn http_fan_out_to_two_http_services_is_a_gateway() {
    let mut f = facts("edge.internal", &[("10.0.0.2", 443, "https")]);
    f.clients = 1;
    f.http_upstreams = 2;
    f.upstreams = 2;
    assert_eq!(classify(&f), ServiceType::ApiGateway);
    f.http_upstreams = 1;
    assert_eq!(
        classify(&f),
        ServiceType::Microservice,
        "one upstream, one client"
    );
}

#[test]
fn http_proxy_with_one_upstream_and_many_clients_is_a_load_balancer() {
    let mut f = facts("front.internal", &[("10.0.0.2", 80, "http")]);
    f.clients = 3;
    f.http_upstreams = 1;
    f.upstreams = 1;
    assert_eq!(classify(&f), ServiceType::LoadBalancer);
}

#[test]
fn public_addresses_and_outside_names_are_external() {
    assert_eq!(
        classify(&facts(
            "93.184.216.34:443",
            &[("93.184.216.34", 443, "https")]
        )),
        ServiceType::ExternalApi
    );
    assert_eq!(
        classify(&facts(
            "api.stripe.com",
            &[("api.stripe.com", 443, "https")]
        )),
        ServiceType::ExternalApi
    );
    assert_eq!(
        classify(&facts("10.0.0.9:443", &[("10.0.0.9", 443, "https")])),
        ServiceType::WebServer
    );
    let mut registered = facts("api.stripe.com", &[("api.stripe.com", 443, "https")]);
    registered.registered = true;
    assert_ne!(classify(&registered), ServiceType::ExternalApi);
    assert!(is_external_host("2a00:1450::1"));
    assert!(!is_external_host("fd00::1"));
    assert!(!is_external_host("user-service.internal"));
    assert!(!is_external_host("web"));
}

#[test]
fn api_paths_and_onward_calls_make_a_microservice_else_web_server() {
    let mut f = facts("front.internal", &[("10.0.0.2", 80, "http")]);
    assert_eq!(classify(&f), ServiceType::WebServer);
    f.paths = vec!["/api/users".into()];
    assert_eq!(classify(&f), ServiceType::Microservice);
    f.paths.clear();
    f.upstreams = 1;
    assert_eq!(classify(&f), ServiceType::Microservice);
    assert_eq!(
        classify(&facts(
            "auth-service.internal",
            &[("auth-service.internal", 8080, "http")]
        )),
        ServiceType::Microservice
    );
}

#[test]
fn a_service_that_serves_nothing_is_a_client() {
    assert_eq!(
        classify(&facts("client.external", &[])),
        ServiceType::Client
    );
}

#[test]
fn user_rules_come_first_and_match_name_port_protocol() {
    let rules = Rules::parse(
        r#"
[[rule]]
match_name = "pay-*"
type = "external_api"

[[rule]]
match_port = 9000
match_protocol = "tcp"
type = "message_queue"

[[rule]]
match_protocol = "redis"
type = "database"
"#,
        "rules.toml",
    )
    .expect("valid rules");
    let c = ServiceClassifier::with_rules(rules);
    assert_eq!(
        c.classify(&facts("PAY-api", &[("10.0.0.2", 80, "http")])),
        ServiceType::ExternalApi
    );
    assert_eq!(
        c.classify(&facts("x", &[("10.0.0.2", 9000, "tcp")])),
        ServiceType::MessageQueue
    );
    assert_eq!(
        c.classify(&facts("x", &[("10.0.0.2", 9001, "tcp")])),
        ServiceType::Microservice
    );
    assert_eq!(
        c.classify(&facts("x", &[("10.0.0.2", 6379, "redis")])),
        ServiceType::Database
    );
}

#[test]
fn bad_rules_name_the_line_or_field() {
    let unknown_type = Rules::parse("[[rule]]\nmatch_port = 1\ntype = \"toaster\"\n", "r.toml")
        .unwrap_err()
        .to_string();
    assert!(
        unknown_type.contains("r.toml") && unknown_type.contains("line 3"),
        "{unknown_type}"
    );
    let unknown_field = Rules::parse("[[rule]]\nmatch_nmae = \"x\"\ntype = \"cache\"\n", "r.toml")
        .unwrap_err()
        .to_string();
    assert!(unknown_field.contains("match_nmae"), "{unknown_field}");
    let no_match = Rules::parse("[[rule]]\ntype = \"cache\"\n", "r.toml")
        .unwrap_err()
        .to_string();
    assert!(no_match.contains("rule 1"), "{no_match}");
    let bad_port = Rules::parse("[[rule]]\nmatch_port = 70000\ntype = \"cache\"\n", "r.toml")
        .unwrap_err()
        .to_string();
    assert!(bad_port.contains("line 2"), "{bad_port}");
    let bad_protocol = Rules::parse(
        "[[rule]]\nmatch_protocol = \"gopher\"\ntype = \"cache\"\n",
        "r.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(bad_protocol.contains("match_protocol"), "{bad_protocol}");
}

#[test]
fn classify_service_reads_one_endpoint_and_one_observation() {
    use crate::mapper::create_traffic_observation;
    use crate::observation::Protocol;
    let c = ServiceClassifier::new();
    let db = create_traffic_observation(
        "user-service.internal",
        8080,
        "10.0.0.9",
        5432,
        Protocol::Postgres,
    );
    assert_eq!(
        c.classify_service(&db.destination, &db),
        ServiceType::Database
    );
    assert_eq!(c.classify_service(&db.source, &db), ServiceType::Client);
    let guessed = create_traffic_observation("a", 1, "10.0.0.9", 6379, "");
    assert_eq!(
        c.classify_service(&guessed.destination, &guessed),
        ServiceType::Cache
    );
    let mut api = create_traffic_observation("web", 1, "orders.internal", 8080, Protocol::Http);
    api.path = Some("/api/orders".into());
    assert_eq!(
        c.classify_service(&api.destination, &api),
        ServiceType::Microservice
    );
    api.path = Some("/index.html".into());
    assert_eq!(
        c.classify_service(&api.destination, &api),
        ServiceType::WebServer
    );
    let ext = create_traffic_observation("web", 1, "api.stripe.com", 443, Protocol::Https);
    assert_eq!(
        c.classify_service(&ext.destination, &ext),
        ServiceType::ExternalApi
    );
    let gw = create_traffic_observation("edge-gateway", 443, "orders.internal", 8080, "http");
    assert_eq!(c.classify_service(&gw.source, &gw), ServiceType::ApiGateway);
}
