//! AMQP 0-9-1 protocol header and method frames.

use crate::util::{be16, be32, slice, u8_at};
use crate::{Request, Response};

/// `AMQP` followed by a protocol id/version: 0-9-1 (`\0\0\x09\x01`), 1.0 (`\0\x01\0\0`),
/// 1.0 SASL (`\x03\x01\0\0`) or TLS (`\x02\x01\0\0`). A header cut after "AMQP" counts.
pub(crate) fn detect_client(b: &[u8]) -> bool {
    if !b.starts_with(b"AMQP") {
        return false;
    }
    match b.get(4..8) {
        Some(v) => matches!(
            v,
            [0, 0, 9, 1]
                | [0, 0, 9, 0]
                | [0, 0, 8, 0]
                | [1, 1, 0, 9]
                | [0, 1, 0, 0]
                | [2, 1, 0, 0]
                | [3, 1, 0, 0]
        ),
        None => true,
    }
}

fn method_name(class: u16, method: u16) -> String {
    let class_name = match class {
        10 => "Connection",
        20 => "Channel",
        40 => "Exchange",
        50 => "Queue",
        60 => "Basic",
        85 => "Confirm",
        90 => "Tx",
        _ => return format!("{class}.{method}"),
    };
    let m = match (class, method) {
        (10, 10) => "Start",
        (10, 11) => "StartOk",
        (10, 20) => "Secure",
        (10, 21) => "SecureOk",
        (10, 30) => "Tune",
        (10, 31) => "TuneOk",
        (10, 40) => "Open",
        (10, 41) => "OpenOk",
        (10, 50) => "Close",
        (10, 51) => "CloseOk",
        (20, 10) => "Open",
        (20, 11) => "OpenOk",
        (20, 20) => "Flow",
        (20, 21) => "FlowOk",
        (20, 40) => "Close",
        (20, 41) => "CloseOk",
        (40, 10) | (50, 10) => "Declare",
        (40, 11) | (50, 11) => "DeclareOk",
        (40, 20) | (50, 40) => "Delete",
        (40, 21) | (50, 41) => "DeleteOk",
        (40, 30) | (50, 20) => "Bind",
        (40, 31) | (50, 21) => "BindOk",
        (40, 40) | (50, 50) => "Unbind",
        (40, 51) | (50, 51) => "UnbindOk",
        (50, 30) => "Purge",
        (50, 31) => "PurgeOk",
        (60, 10) => "Qos",
        (60, 11) => "QosOk",
        (60, 20) => "Consume",
        (60, 21) => "ConsumeOk",
        (60, 30) => "Cancel",
        (60, 31) => "CancelOk",
        (60, 40) => "Publish",
        (60, 50) => "Return",
        (60, 60) => "Deliver",
        (60, 70) => "Get",
        (60, 71) => "GetOk",
        (60, 72) => "GetEmpty",
        (60, 80) => "Ack",
        (60, 90) => "Reject",
        (60, 100) => "RecoverAsync",
        (60, 110) => "Recover",
        (60, 111) => "RecoverOk",
        (60, 120) => "Nack",
        (85, 10) | (90, 10) => "Select",
        (85, 11) | (90, 11) => "SelectOk",
        (90, 20) => "Commit",
        (90, 21) => "CommitOk",
        (90, 30) => "Rollback",
        (90, 31) => "RollbackOk",
        _ => return format!("{class_name}.{method}"),
    };
    format!("{class_name}.{m}")
}

/// First method frame: (class, method, offset of the arguments).
fn method_frame(b: &[u8]) -> Option<(u16, u16, usize)> {
    let start = if b.starts_with(b"AMQP") { 8 } else { 0 };
    if u8_at(b, start)? != 1 {
        return None;
    }
    let _channel = be16(b, start + 1)?;
    let size = be32(b, start + 3)?;
    if !(4..=(1 << 27)).contains(&size) {
        return None;
    }
    let class = be16(b, start + 7)?;
    let method = be16(b, start + 9)?;
    Some((class, method, start + 11))
}

fn short_str(b: &[u8], i: usize) -> Option<(&[u8], usize)> {
    let n = usize::from(u8_at(b, i)?);
    Some((slice(b, i + 1, n)?, i + 1 + n))
}

pub(crate) fn parse_request(b: &[u8]) -> Option<Request> {
    let (class, method, args) = method_frame(b)?;
    let name = method_name(class, method);
    let path = match (class, method) {
        // Basic.Publish: reserved u16, exchange, routing-key.
        (60, 40) => short_str(b, args + 2).and_then(|(exchange, next)| {
            if exchange.is_empty() {
                short_str(b, next).map(|(rk, _)| crate::util::label(rk))
            } else {
                Some(crate::util::label(exchange))
            }
        }),
        // Queue.Declare/Bind/Purge/Delete, Basic.Consume/Get: reserved u16, queue.
        (50, 10) | (50, 20) | (50, 30) | (50, 40) | (60, 20) | (60, 70) | (40, 10) => {
            short_str(b, args + 2).map(|(q, _)| crate::util::label(q))
        }
        _ => None,
    };
    Some(Request {
        method: name,
        path: path.filter(|p| !p.is_empty()),
        operation: None,
    })
}

/// Connection.Close, Channel.Close and Basic.Return carry a reply code: >= 300 is an error.
pub(crate) fn parse_response(b: &[u8]) -> Option<Response> {
    let (class, method, args) = method_frame(b)?;
    let status = match (class, method) {
        (10, 50) | (20, 40) | (60, 50) => be16(b, args),
        _ => None,
    };
    Some(Response {
        status,
        error: status.is_some_and(|c| c >= 300),
        code: None,
    })
}
