//! Shadow environments on this host: the sink (`shadow-sink`), which replays sampled
//! production connections against a shadow and compares the answers.

pub mod sink;
