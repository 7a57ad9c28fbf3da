//! Server-sent events of CloudEvents: one `id`/`event`/`data` frame per event, as every
//! event stream of the REST API sends them.

use axum::response::sse::Event;
use serde_json::Value;

/// A CloudEvent (its JSON) as an SSE frame: `id` and `event` from the envelope's `id` and
/// `type` (so `Last-Event-ID` and `addEventListener(type)` work), the envelope as `data`.
pub fn cloud_event(e: &Value) -> Event {
    Event::default()
        .id(e["id"].as_str().unwrap_or_default())
        .event(e["type"].as_str().unwrap_or_default())
        .json_data(e)
        .unwrap_or_else(|_| Event::default().comment("unserialisable event"))
}
