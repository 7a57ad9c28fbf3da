//! The authentication flags of `weft-controller` (flattened into its arguments).

use std::path::PathBuf;

use std::sync::Arc;

use tonic::transport::ServerTlsConfig;

use crate::auth::tls::TlsFiles;
use crate::auth::{AgentAuth, AuthConfig, Tokens};

/// TLS of both listeners, from the same files.
pub struct ListenerTls {
    pub grpc: ServerTlsConfig,
    pub rest: Arc<rustls::ServerConfig>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// The controller's certificate (PEM) for its gRPC and REST listeners (`weft certs
    /// issue controller`). With --tls-key and --client-ca: agents must present a
    /// certificate of that CA naming their host; REST is HTTPS.
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "client_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The CA (PEM) that signs agents' certificates (`weft certs init`).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// Serve gRPC and REST in plain text and let any caller speak for any host (a lab on
    /// one machine; never across a network). Client tokens are still required.
    #[arg(long, conflicts_with = "tls_cert")]
    pub insecure: bool,
    /// Where the first admin token is written (mode 0600) when the store has none
    /// (default: `admin.token` in --data-dir). If the file already holds a token of
    /// weft's form (`weft_<16 hex>_<64 hex>`, provisioned by a deployment), that one is
    /// kept as the admin token instead.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Make a new admin token at start even if one exists (a lost token file).
    #[arg(long)]
    pub new_admin_token: bool,
    /// Serve `/metrics` without a token (`/healthz` always is).
    #[arg(long)]
    pub metrics_open: bool,
}

impl AuthArgs {
    /// The authentication rules and, with TLS, the listeners' configurations.
    pub fn config(&self) -> anyhow::Result<(AuthConfig, Option<ListenerTls>)> {
        let mut open_paths = vec!["/healthz".to_owned()];
        if self.metrics_open {
            open_paths.push("/metrics".to_owned());
        }
        let (agents, tls) = match (&self.tls_cert, &self.tls_key, &self.client_ca) {
            (Some(cert), Some(key), Some(ca)) => {
                let files = TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: ca.clone(),
                };
                let tls = ListenerTls {
                    grpc: files.server_config()?,
                    rest: files.rest_config()?,
                };
                (AgentAuth::Certificate, Some(tls))
            }
            _ if self.insecure => {
                tracing::warn!(
                    "--insecure: gRPC and REST are plain text (tokens cross in clear) and agents are not authenticated; any caller can speak for any host"
                );
                (AgentAuth::Insecure, None)
            }
            _ => anyhow::bail!(
                "give --tls-cert, --tls-key and --client-ca (make them with `weft certs init` and `weft certs issue`), or --insecure for a lab on one machine"
            ),
        };
        Ok((
            AuthConfig {
                agents,
                require_tokens: true,
                open_paths,
            },
            tls,
        ))
    }

    /// Writes a first admin token if the store has none (or --new-admin-token).
    pub fn bootstrap(&self, data_dir: &str, tokens: &Tokens) -> anyhow::Result<()> {
        let path = match (&self.admin_token_file, data_dir.is_empty()) {
            (Some(p), _) => p.clone(),
            (None, false) => PathBuf::from(data_dir).join("admin.token"),
            (None, true) if tokens.has_admin() && !self.new_admin_token => return Ok(()),
            (None, true) => anyhow::bail!(
                "with an in-memory store (--data-dir \"\"), give --admin-token-file: the first admin token is written there"
            ),
        };
        tokens.bootstrap_admin(&path, self.new_admin_token)?;
        Ok(())
    }
}
