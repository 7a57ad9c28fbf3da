//! How the agent dials its controller: the URLs (several controllers of one site, tried
//! in turn: a controller that refuses the connection or goes away sends the agent to the
//! next), and with `https://` the mutual TLS identity (its certificate names this host:
//! `spiffe://weft/host/<host-id>`) and the CA the controllers' certificates must chain to
//! (read with `weft_pki::hosts_of_pem`). Plain `http://` needs `--insecure`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// One controller: its URL and, for `https://`, the TLS settings naming it.
#[derive(Clone)]
struct Target {
    url: String,
    tls: Option<ClientTlsConfig>,
}

/// The controllers and which one is dialled now. The exporter and the control driver each
/// hold their own ([`Self::independent`]): a follower replica keeps the flow records while
/// the control stream moves on to the leader.
#[derive(Clone)]
pub struct ControllerLink {
    targets: Arc<Vec<Target>>,
    current: Arc<AtomicUsize>,
}

impl fmt::Display for ControllerLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<&str> = self.targets.iter().map(|t| t.url.as_str()).collect();
        f.write_str(&urls.join(","))
    }
}

impl fmt::Debug for ControllerLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ControllerLink({self}, tls: {}, current: {})",
            self.targets.iter().any(|t| t.tls.is_some()),
            self.current.load(Ordering::Relaxed)
        )
    }
}

fn read(flag: &str, path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{flag} {}", path.display()))
}

impl ControllerLink {
    /// From the flags: one URL or several separated by commas (the controllers of a site,
    /// tried in turn); `https://` with `ca`, `cert` and `key` (the certificate must name
    /// `host_id`), or `http://` with `insecure`.
    pub fn new(
        urls: &str,
        host_id: &str,
        ca: Option<&PathBuf>,
        cert: Option<&PathBuf>,
        key: Option<&PathBuf>,
        insecure: bool,
    ) -> anyhow::Result<Self> {
        let mut targets = Vec::new();
        for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            targets.push(Self::target(url, host_id, ca, cert, key, insecure)?);
        }
        if targets.is_empty() {
            bail!("--controller is empty: give the controller's URL (https://HOST:PORT)");
        }
        Ok(Self {
            targets: Arc::new(targets),
            current: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn target(
        url: &str,
        host_id: &str,
        ca: Option<&PathBuf>,
        cert: Option<&PathBuf>,
        key: Option<&PathBuf>,
        insecure: bool,
    ) -> anyhow::Result<Target> {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            bail!(
                "--controller {url:?}: a controller is https://HOST:PORT (or http:// with --insecure)"
            );
        }
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
            Ok(Target {
                url: url.to_owned(),
                tls: Some(tls),
            })
        } else if insecure {
            tracing::warn!(controller = %url, "--insecure: talking to the controller in plain text, unauthenticated");
            Ok(Target {
                url: url.to_owned(),
                tls: None,
            })
        } else {
            bail!(
                "--controller {url} is not https: use https:// with --ca/--cert/--key, or --insecure for a lab on one machine"
            )
        }
    }

    /// Plain text, for tests against in-process servers (URLs separated by commas).
    #[cfg(test)]
    pub fn plain(urls: &str) -> Self {
        Self {
            targets: Arc::new(
                urls.split(',')
                    .map(|url| Target {
                        url: url.to_owned(),
                        tls: None,
                    })
                    .collect(),
            ),
            current: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The same controllers, with a position of its own (starting where this one is).
    pub fn independent(&self) -> Self {
        Self {
            targets: self.targets.clone(),
            current: Arc::new(AtomicUsize::new(self.current.load(Ordering::Relaxed))),
        }
    }

    /// The URL dialled now.
    pub fn url(&self) -> &str {
        &self.targets[self.current.load(Ordering::Relaxed) % self.targets.len()].url
    }

    /// After a failed connection to `url`: the next controller is dialled from now on
    /// (unless another task moved on already).
    pub fn failed(&self, url: &str) {
        let n = self.targets.len();
        let at = self.current.load(Ordering::Relaxed);
        if n > 1
            && self.targets[at % n].url == url
            && self
                .current
                .compare_exchange(at, (at + 1) % n, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            tracing::info!(failed = url, next = %self.targets[(at + 1) % n].url, "trying the next controller");
        }
    }

    /// An endpoint of the controller dialled now, with the common connect settings
    /// (callers add their own), and its URL (for [`Self::failed`]).
    pub fn endpoint(&self) -> Result<Endpoint, String> {
        let target = &self.targets[self.current.load(Ordering::Relaxed) % self.targets.len()];
        let endpoint = Endpoint::from_shared(target.url.clone())
            .map_err(|e| format!("bad controller URL {:?}: {e}", target.url))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        match &target.tls {
            Some(tls) => endpoint
                .tls_config(tls.clone())
                .map_err(|e| format!("TLS: {e}")),
            None => Ok(endpoint),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_controller_sends_both_users_to_the_next_once() {
        let link =
            ControllerLink::plain("http://127.0.0.1:1,http://127.0.0.1:2,http://127.0.0.1:3");
        let other = link.clone();
        assert_eq!(link.url(), "http://127.0.0.1:1");
        // Both the exporter and the driver saw :1 fail: one move, not two.
        link.failed("http://127.0.0.1:1");
        other.failed("http://127.0.0.1:1");
        assert_eq!(other.url(), "http://127.0.0.1:2");
        link.failed("http://127.0.0.1:2");
        link.failed("http://127.0.0.1:3");
        assert_eq!(link.url(), "http://127.0.0.1:1", "round and round");
        let one = ControllerLink::plain("http://127.0.0.1:9");
        one.failed("http://127.0.0.1:9");
        assert_eq!(one.url(), "http://127.0.0.1:9");
    }

    #[test]
    fn every_url_of_the_list_is_checked() {
        let e = ControllerLink::new("http://a:1, ftp://b", "hv1", None, None, None, true)
            .expect_err("a bad second URL");
        assert!(format!("{e:#}").contains("ftp://b"), "{e:#}");
        let e = ControllerLink::new(" , ", "hv1", None, None, None, true).expect_err("empty");
        assert!(format!("{e:#}").contains("empty"), "{e:#}");
        let link = ControllerLink::new("http://a:1,http://b:2", "hv1", None, None, None, true)
            .expect("two plain controllers");
        assert_eq!(link.to_string(), "http://a:1,http://b:2");
    }
}
