//! Who may call the controller.
//!
//! - **Agents** (`AgentService`, `AgentControlService`) prove their host with a client
//!   certificate (mutual TLS, [`identity`]); every host id in their requests must be the
//!   certificate's. `--insecure` turns this off (plain text, with a warning).
//! - **Orchestration clients** (REST, `TopologyService`, `ShardService`) present a bearer
//!   token ([`tokens`]) whose role ([`role`]) allows the request: 401 without a valid token,
//!   403 with one whose role is too low; errors never say more than that.
//!
//! `Auth::open` (no token needed, agents unchecked) exists for in-process tests; the
//! binary always requires tokens.

pub mod grpc;
pub mod http;
pub mod identity;
pub mod role;
pub mod tls;
pub mod tokens;

use std::sync::Arc;

pub use identity::AgentAuth;
pub use role::Role;
pub use tokens::{TokenRecord, Tokens};

/// How requests are authenticated (see the module docs).
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub agents: AgentAuth,
    /// Client requests need a token.
    pub require_tokens: bool,
    /// REST paths served to anyone (exact paths, e.g. `/healthz`, `/metrics`).
    pub open_paths: Vec<String>,
}

impl AuthConfig {
    /// Everything open: for tests that exercise the handlers in-process.
    pub fn open() -> Self {
        Self {
            agents: AgentAuth::Insecure,
            require_tokens: false,
            open_paths: Vec::new(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self::open()
    }
}

/// Why a client request was refused. The messages are all a client learns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this request needs a bearer token (Authorization: Bearer weft_...)")]
    NoToken,
    #[error("the bearer token is not valid")]
    BadToken,
    #[error("the bearer token has expired")]
    Expired,
    #[error("this request needs the {needed} role")]
    Forbidden { needed: Role },
}

/// The controller's authentication state.
#[derive(Debug)]
pub struct Auth {
    pub config: AuthConfig,
    pub tokens: Tokens,
}

impl Auth {
    pub fn new(config: AuthConfig, tokens: Tokens) -> Arc<Self> {
        Arc::new(Self { config, tokens })
    }

    /// Checks an `Authorization` header value against the role a request needs.
    pub fn authorize(
        &self,
        authorization: Option<&str>,
        needed: Role,
    ) -> Result<Option<TokenRecord>, Refusal> {
        if !self.config.require_tokens {
            return Ok(None);
        }
        let value = authorization.ok_or(Refusal::NoToken)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(Refusal::NoToken)?
            .trim();
        let record = self
            .tokens
            .verify(token)
            .map_err(|rejection| match rejection {
                tokens::Rejection::Unknown => Refusal::BadToken,
                tokens::Rejection::Expired => Refusal::Expired,
            })?;
        if record.role < needed {
            return Err(Refusal::Forbidden { needed });
        }
        Ok(Some(record))
    }

    /// Paths served without a token: the configured ones, and the web console's static
    /// assets (they hold no data; the console sends a token with every data call).
    pub fn is_open(&self, path: &str) -> bool {
        self.config.open_paths.iter().any(|p| p == path) || crate::api::console::is_public(path)
    }
}
