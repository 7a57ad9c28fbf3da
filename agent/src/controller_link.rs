//! How the agent dials its controller: the URL, and with `https://` the mutual TLS
//! identity (its certificate names this host: `spiffe://weft/host/<host-id>`) and the CA
//! the controller's certificate must chain to (read with `weft_pki::hosts_of_pem`). Plain `http://` needs `--insecure`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

#[derive(Clone)]
pub struct ControllerLink {
    pub url: String,
    tls: Option<ClientTlsConfig>,
}

impl fmt::Display for ControllerLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl fmt::Debug for ControllerLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ControllerLink({}, tls: {})",
            self.url,
            self.tls.is_some()
        )
    }
}

fn read(flag: &str, path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{flag} {}", path.display()))
}

impl ControllerLink {
    /// From the flags: `https://` with `ca`, `cert` and `key` (the certificate must name
    /// `host_id`), or `http://` with `insecure`.
    pub fn new(
        url: &str,
        host_id: &str,
        ca: Option<&PathBuf>,
        cert: Option<&PathBuf>,
        key: Option<&PathBuf>,
        insecure: bool,
    ) -> anyhow::Result<Self> {
        Endpoint::from_shared(url.to_owned()).with_context(|| format!("--controller {url:?}"))?;
        if let Some(rest) = url.strip_prefix("https://") {
            let (Some(ca), Some(cert), Some(key)) = (ca, cert, key) else {
                bail!(
                    "--controller {url} is https: give --ca, --cert and --key (made by `weft certs`)"
                );
            };
            let cert_pem = read("--cert", cert)?;
            let hosts = weft_pki::hosts_of_pem(&cert_pem)
                .with_context(|| format!("--cert {}", cert.display()))?;
            if hosts != [host_id] {
                bail!(
                    "--cert {} is for host(s) {hosts:?}, not --host-id {host_id:?}; issue one with `weft certs issue agent --host-id {host_id}`",
                    cert.display()
                );
            }
            let domain = rest
                .split('/')
                .next()
                .map(|authority| match authority.strip_prefix('[') {
                    Some(v6) => v6.split(']').next().unwrap_or(v6),
                    None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
                })
                .unwrap_or_default()
                .to_owned();
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read("--ca", ca)?))
                .identity(Identity::from_pem(cert_pem, read("--key", key)?))
                .domain_name(domain);
            Ok(Self {
                url: url.to_owned(),
                tls: Some(tls),
            })
        } else if insecure {
            tracing::warn!(controller = %url, "--insecure: talking to the controller in plain text, unauthenticated");
            Ok(Self {
                url: url.to_owned(),
                tls: None,
            })
        } else {
            bail!(
                "--controller {url} is not https: use https:// with --ca/--cert/--key, or --insecure for a lab on one machine"
            )
        }
    }

    /// Plain text, for tests against an in-process server.
    #[cfg(test)]
    pub fn plain(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            tls: None,
        }
    }

    /// An endpoint with the common connect settings (callers add their own).
    pub fn endpoint(&self) -> Result<Endpoint, String> {
        let endpoint = Endpoint::from_shared(self.url.clone())
            .map_err(|e| format!("bad controller URL {:?}: {e}", self.url))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        match &self.tls {
            Some(tls) => endpoint
                .tls_config(tls.clone())
                .map_err(|e| format!("TLS: {e}")),
            None => Ok(endpoint),
        }
    }
}
