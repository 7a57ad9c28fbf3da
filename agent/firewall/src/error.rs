//! Errors, each naming the namespace and the operation.

use std::io;

use crate::model::ParseError;

/// What went wrong, in which namespace (its file, or `(current namespace)`), doing what.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{netns}: opening the namespace file: {source}")]
    NetnsOpen { netns: String, source: io::Error },
    #[error("{netns}: entering the namespace: {source}")]
    NetnsEnter { netns: String, source: io::Error },
    #[error("{netns}: {op}: {source}")]
    Io {
        netns: String,
        op: String,
        source: io::Error,
    },
    /// The kernel refused a request: `errno` as it answered (positive), and its extended
    /// ack message when it gave one.
    #[error("{netns}: {op}: kernel error {errno} ({}){}", io::Error::from_raw_os_error(*errno), message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Kernel {
        netns: String,
        op: String,
        errno: i32,
        message: Option<String>,
    },
    /// A reply this crate did not expect (malformed, missing, out of order).
    #[error("{netns}: {op}: unexpected reply: {what}")]
    Protocol {
        netns: String,
        op: String,
        what: String,
    },
    /// nf_tables' generation moved during our read (or between our read and our write)
    /// every time we tried.
    #[error("{netns}: {op}: nf_tables changed under us {attempts} times in a row")]
    Contended {
        netns: String,
        op: &'static str,
        attempts: u32,
    },
    #[error("invalid ruleset: {0}")]
    Invalid(#[from] ParseError),
}

impl Error {
    /// The kernel's errno, when the kernel refused something or a socket call failed.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { errno, .. } => Some(*errno),
            Error::Io { source, .. }
            | Error::NetnsOpen { source, .. }
            | Error::NetnsEnter { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
