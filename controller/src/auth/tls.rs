//! The listeners' TLS: the controller's certificate, and the CA whose client certificates
//! identify agents. On gRPC a client certificate is optional at the TLS layer (so
//! orchestration clients connect with a token only); the agent services refuse callers
//! without one ([`super::identity`]). The REST listener serves the same certificate and
//! asks for no client certificate (clients there carry tokens).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

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

    /// The REST listener's TLS: `--tls-cert` (with any intermediates after it) and
    /// `--tls-key`, HTTP/1.1 by ALPN, no client certificate.
    pub fn rest_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let invalid = |flag: &'static str, path: &Path, message: String| TlsError {
            flag,
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, message),
        };
        let cert = read("--tls-cert", &self.cert)?;
        let key = read("--tls-key", &self.key)?;
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("--tls-cert", &self.cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(invalid(
                "--tls-cert",
                &self.cert,
                "no CERTIFICATE in it".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
            .map_err(|e| invalid("--tls-key", &self.key, e.to_string()))?;
        // *ring*, as tonic's `tls-ring` on the gRPC side (aws-lc-rs is not built here).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("--tls-cert", &self.cert, e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| invalid("--tls-key", &self.key, e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}
