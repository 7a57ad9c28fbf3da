//! Roles of client tokens and the role each request needs.
//!
//! - `read`: every `GET`/`HEAD` of REST and the read-only gRPC methods (topology queries,
//!   shard, migration and network lookups, event streams).
//! - `operate`: everything that changes state through the API (allocations, shards,
//!   migrations, observations, snapshots, classification), plus what `read` may do.
//! - `admin`: tokens (`/tokens`) and policy (`PUT /policy/allowed-dependencies`, which
//!   turns violation alerts on or off), plus what `operate` may do.

use std::fmt;
use std::str::FromStr;

use axum::http::Method;
use serde::{Deserialize, Serialize};

/// What a token may do; each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Operate,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Operate => "operate",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Self::Read),
            "operate" => Ok(Self::Operate),
            "admin" => Ok(Self::Admin),
            other => Err(format!(
                "unknown role {other:?}; the roles are read, operate and admin"
            )),
        }
    }
}

/// The role a REST request needs.
pub fn for_rest(method: &Method, path: &str) -> Role {
    if path == "/tokens" || path.starts_with("/tokens/") {
        return Role::Admin;
    }
    if *method == Method::GET || *method == Method::HEAD || *method == Method::OPTIONS {
        return Role::Read;
    }
    if path == "/policy/allowed-dependencies" {
        return Role::Admin;
    }
    Role::Operate
}

/// gRPC services of agents (authenticated by their certificate, not by a token).
pub const AGENT_SERVICES: [&str; 2] = ["/weft.v1.AgentService/", "/weft.v1.AgentControlService/"];

/// The role a gRPC request of a client service needs, from its path
/// (`/weft.v1.Service/Method`): methods that only read need `read`, the rest `operate`.
/// Unknown paths need `admin` (tonic answers UNIMPLEMENTED to those who may ask).
pub fn for_grpc(path: &str) -> Role {
    let Some(method) = path
        .strip_prefix("/weft.v1.")
        .and_then(|rest| rest.split_once('/'))
    else {
        return Role::Admin;
    };
    match method {
        ("TopologyService", _) => Role::Read,
        ("ShardService", m) if ["Get", "List", "Watch"].iter().any(|p| m.starts_with(p)) => {
            Role::Read
        }
        ("ShardService", _) => Role::Operate,
        ("MirrorService", m) if ["Get", "List", "Watch"].iter().any(|p| m.starts_with(p)) => {
            Role::Read
        }
        ("MirrorService", _) => Role::Operate,
        ("ShadowService", m) if ["Get", "List", "Watch"].iter().any(|p| m.starts_with(p)) => {
            Role::Read
        }
        ("ShadowService", _) => Role::Operate,
        ("WeaveService", m) if ["Get", "List", "Watch"].iter().any(|p| m.starts_with(p)) => {
            Role::Read
        }
        ("WeaveService", _) => Role::Operate,
        _ => Role::Admin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_reads_writes_and_admin_paths() {
        assert_eq!(for_rest(&Method::GET, "/topology"), Role::Read);
        assert_eq!(
            for_rest(&Method::GET, "/policy/allowed-dependencies"),
            Role::Read
        );
        assert_eq!(
            for_rest(&Method::PUT, "/policy/allowed-dependencies"),
            Role::Admin
        );
        assert_eq!(
            for_rest(&Method::DELETE, "/networks/n/workloads/w/addresses"),
            Role::Operate
        );
        assert_eq!(for_rest(&Method::POST, "/observations"), Role::Operate);
        assert_eq!(for_rest(&Method::GET, "/tokens"), Role::Admin);
        assert_eq!(for_rest(&Method::DELETE, "/tokens/abc"), Role::Admin);
    }

    #[test]
    fn grpc_methods() {
        assert_eq!(for_grpc("/weft.v1.TopologyService/GetTopology"), Role::Read);
        assert_eq!(for_grpc("/weft.v1.ShardService/ListShards"), Role::Read);
        assert_eq!(for_grpc("/weft.v1.ShardService/WatchEvents"), Role::Read);
        assert_eq!(
            for_grpc("/weft.v1.ShardService/AllocateAddress"),
            Role::Operate
        );
        assert_eq!(for_grpc("/weft.v1.ShardService/DeleteShard"), Role::Operate);
        assert_eq!(
            for_grpc("/weft.v1.MirrorService/GetNetworkStatus"),
            Role::Read
        );
        assert_eq!(for_grpc("/weft.v1.MirrorService/ListNetworks"), Role::Read);
        assert_eq!(
            for_grpc("/weft.v1.MirrorService/WatchNetworkEvents"),
            Role::Read
        );
        assert_eq!(
            for_grpc("/weft.v1.MirrorService/CreateMirror"),
            Role::Operate
        );
        assert_eq!(
            for_grpc("/weft.v1.MirrorService/DeleteNetwork"),
            Role::Operate
        );
        assert_eq!(for_grpc("/weft.v1.ShadowService/GetShadow"), Role::Read);
        assert_eq!(
            for_grpc("/weft.v1.ShadowService/WatchShadowEvents"),
            Role::Read
        );
        assert_eq!(
            for_grpc("/weft.v1.ShadowService/UpdateShadowPolicy"),
            Role::Operate
        );
        assert_eq!(
            for_grpc("/weft.v1.ShadowService/CreateShadow"),
            Role::Operate
        );
        assert_eq!(
            for_grpc("/weft.v1.ShadowService/RunSyntheticLoad"),
            Role::Operate
        );
        for m in ["GetWeave", "ListWeaves", "WatchWeaveEvents"] {
            assert_eq!(for_grpc(&format!("/weft.v1.WeaveService/{m}")), Role::Read);
        }
        for m in [
            "CreateWeave",
            "DeleteWeave",
            "RouteTraffic",
            "ActivateWeave",
            "SyncVolumes",
        ] {
            assert_eq!(
                for_grpc(&format!("/weft.v1.WeaveService/{m}")),
                Role::Operate
            );
        }
        assert_eq!(for_grpc("/weft.v1.Unknown/X"), Role::Admin);
        assert_eq!(for_grpc("/grpc.health.v1.Health/Check"), Role::Admin);
    }

    #[test]
    fn roles_include_the_ones_below() {
        assert!(Role::Admin > Role::Operate && Role::Operate > Role::Read);
        assert_eq!("operate".parse::<Role>(), Ok(Role::Operate));
        assert!(
            "root"
                .parse::<Role>()
                .unwrap_err()
                .contains("read, operate and admin")
        );
    }
}
