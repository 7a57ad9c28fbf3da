//! Naming protocols and guessing service types from server ports.

use serde::Serialize;

use crate::model::Transport;

/// Application protocol guessed from the server port; the transport otherwise.
pub fn protocol_for(transport: Transport, port: u16) -> &'static str {
    match port {
        80 | 8080 | 8000 => "http",
        443 => "https",
        5432 => "postgres",
        3306 => "mysql",
        6379 => "redis",
        27017 => "mongodb",
        9092 => "kafka",
        5672 => "amqp",
        53 => "dns",
        50051 => "grpc",
        _ => transport.as_str(),
    }
}

/// What a service is, guessed from the protocols it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceType {
    Database,
    Cache,
    MessageQueue,
    WebServer,
    /// A registered workload serving something unclassified.
    Workload,
    /// A registered workload only ever seen as a client.
    Client,
    /// Not a registered workload, serving nothing classified.
    External,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Database => "database",
            Self::Cache => "cache",
            Self::MessageQueue => "message_queue",
            Self::WebServer => "web_server",
            Self::Workload => "workload",
            Self::Client => "client",
            Self::External => "external",
        }
    }

    /// The type a server of `protocol` has, if the protocol says.
    fn from_protocol(protocol: &str) -> Option<Self> {
        match protocol {
            "postgres" | "mysql" | "mongodb" => Some(Self::Database),
            "redis" => Some(Self::Cache),
            "kafka" | "amqp" => Some(Self::MessageQueue),
            "http" | "https" => Some(Self::WebServer),
            _ => None,
        }
    }

    /// Classifies a service from the protocols it serves. When it serves several, the most
    /// specific wins (database, then cache, then message queue, then web server).
    pub fn classify<'a>(
        served_protocols: impl IntoIterator<Item = &'a str>,
        is_workload: bool,
    ) -> Self {
        let mut serves_anything = false;
        let best = served_protocols
            .into_iter()
            .inspect(|_| serves_anything = true)
            .filter_map(Self::from_protocol)
            .min();
        match (best, is_workload, serves_anything) {
            (Some(kind), _, _) => kind,
            (None, false, _) => Self::External,
            (None, true, true) => Self::Workload,
            (None, true, false) => Self::Client,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_ports_name_their_protocol() {
        let cases = [
            (80, "http"),
            (8080, "http"),
            (8000, "http"),
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
    }

    #[test]
    fn other_ports_fall_back_to_the_transport() {
        assert_eq!(protocol_for(Transport::Tcp, 9999), "tcp");
        assert_eq!(protocol_for(Transport::Udp, 9999), "udp");
    }

    #[test]
    fn service_type_follows_the_served_protocol() {
        assert_eq!(
            ServiceType::classify(["postgres"], true),
            ServiceType::Database
        );
        assert_eq!(ServiceType::classify(["redis"], false), ServiceType::Cache);
        assert_eq!(
            ServiceType::classify(["kafka"], true),
            ServiceType::MessageQueue
        );
        assert_eq!(
            ServiceType::classify(["http", "mysql"], true),
            ServiceType::Database
        );
        assert_eq!(
            ServiceType::classify(["https"], false),
            ServiceType::WebServer
        );
        assert_eq!(ServiceType::classify(["tcp"], true), ServiceType::Workload);
        assert_eq!(ServiceType::classify([], true), ServiceType::Client);
        assert_eq!(ServiceType::classify(["tcp"], false), ServiceType::External);
        assert_eq!(ServiceType::classify([], false), ServiceType::External);
    }
}
