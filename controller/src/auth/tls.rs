//! The gRPC listener's TLS: the controller's certificate, and the CA whose client
//! certificates identify agents. A client certificate is optional at the TLS layer (so
//! orchestration clients connect with a token only); the agent services refuse callers
//! without one ([`super::identity`]).

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// Files of `--tls-cert`, `--tls-key` and `--client-ca`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("{flag} {path}: {source}")]
pub struct TlsError {
    flag: &'static str,
    path: PathBuf,
    source: std::io::Error,
}

fn read(flag: &'static str, path: &Path) -> Result<String, TlsError> {
    let text = std::fs::read_to_string(path).map_err(|source| TlsError {
        flag,
        path: path.to_owned(),
        source,
    })?;
    if !text.contains("-----BEGIN ") {
        return Err(TlsError {
            flag,
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not a PEM file"),
        });
    }
    Ok(text)
}

impl TlsFiles {
    pub fn server_config(&self) -> Result<ServerTlsConfig, TlsError> {
        let cert = read("--tls-cert", &self.cert)?;
        let key = read("--tls-key", &self.key)?;
        let ca = read("--client-ca", &self.client_ca)?;
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .client_ca_root(Certificate::from_pem(ca))
            .client_auth_optional(true))
    }
}
