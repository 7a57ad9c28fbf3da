//! Kafka request/response headers.

use crate::util::{be16, be32, slice};
use crate::{Request, Response};

/// API names by key (0..=75).
const API_KEYS: [&str; 76] = [
    "Produce",
    "Fetch",
    "ListOffsets",
    "Metadata",
    "LeaderAndIsr",
    "StopReplica",
    "UpdateMetadata",
    "ControlledShutdown",
    "OffsetCommit",
    "OffsetFetch",
    "FindCoordinator",
    "JoinGroup",
    "Heartbeat",
    "LeaveGroup",
    "SyncGroup",
    "DescribeGroups",
    "ListGroups",
    "SaslHandshake",
    "ApiVersions",
    "CreateTopics",
    "DeleteTopics",
    "DeleteRecords",
    "InitProducerId",
    "OffsetForLeaderEpoch",
    "AddPartitionsToTxn",
    "AddOffsetsToTxn",
    "EndTxn",
    "WriteTxnMarkers",
    "TxnOffsetCommit",
    "DescribeAcls",
    "CreateAcls",
    "DeleteAcls",
    "DescribeConfigs",
    "AlterConfigs",
    "AlterReplicaLogDirs",
    "DescribeLogDirs",
    "SaslAuthenticate",
    "CreatePartitions",
    "CreateDelegationToken",
    "RenewDelegationToken",
    "ExpireDelegationToken",
    "DescribeDelegationToken",
    "DeleteGroups",
    "ElectLeaders",
    "IncrementalAlterConfigs",
    "AlterPartitionReassignments",
    "ListPartitionReassignments",
    "OffsetDelete",
    "DescribeClientQuotas",
    "AlterClientQuotas",
    "DescribeUserScramCredentials",
    "AlterUserScramCredentials",
    "Vote",
    "BeginQuorumEpoch",
    "EndQuorumEpoch",
    "DescribeQuorum",
    "AlterPartition",
    "UpdateFeatures",
    "Envelope",
    "FetchSnapshot",
    "DescribeCluster",
    "DescribeProducers",
    "BrokerRegistration",
    "BrokerHeartbeat",
    "UnregisterBroker",
    "DescribeTransactions",
    "ListTransactions",
    "AllocateProducerIds",
    "ConsumerGroupHeartbeat",
    "ConsumerGroupDescribe",
    "ControllerRegistration",
    "GetTelemetrySubscriptions",
    "PushTelemetry",
    "AssignReplicasToDirs",
    "ListClientMetricsResources",
    "DescribeTopicPartitions",
];

/// Request header v1/v2: size(i32) api_key(i16) api_version(i16) correlation_id(i32)
/// client_id(nullable string, i16 length). Returns the API key.
fn header(b: &[u8]) -> Option<u16> {
    let size = be32(b, 0)?;
    let key = be16(b, 4)?;
    let version = be16(b, 6)?;
    let _corr = be32(b, 8)?;
    if !(10..=100 * 1024 * 1024).contains(&size)
        || usize::from(key) >= API_KEYS.len()
        || version > 20
    {
        return None;
    }
    // client_id: -1 (null) or a short printable string (the part within the bytes).
    if let Some(id_len) = be16(b, 12) {
        if id_len != 0xffff {
            if id_len > 512 || u32::from(id_len) + 10 > size {
                return None;
            }
            let visible = slice(b, 14, usize::from(id_len)).or_else(|| b.get(14..))?;
            if !visible.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
                return None;
            }
        }
    } else if b.len() < 14 {
        // Too short to see the client id: not enough evidence on its own.
        return None;
    }
    Some(key)
}

pub(crate) fn detect_client(b: &[u8]) -> bool {
    header(b).is_some()
}

pub(crate) fn parse_request(b: &[u8]) -> Option<Request> {
    let key = header(b)?;
    let name = API_KEYS.get(usize::from(key))?;
    Some(Request {
        method: (*name).to_string(),
        path: None,
        operation: None,
    })
}

/// Response header: size and correlation id. The error code's position depends on the API
/// of the request, which is not visible in the response bytes, so only framing is checked.
pub(crate) fn parse_response(b: &[u8]) -> Option<Response> {
    let size = be32(b, 0)?;
    be32(b, 4)?;
    (4..=100 * 1024 * 1024).contains(&size).then_some(Response {
        status: None,
        error: false,
        code: None,
    })
}
