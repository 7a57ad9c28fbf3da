//! Agent identity: the host id an agent's client certificate names.
//!
//! `weft certs issue agent --host-id HV` puts the URI `spiffe://weft/host/HV` in the
//! certificate's subject alternative names. With mutual TLS on, a request of the agent
//! services carries the certificate the TLS layer verified against the client CA; every
//! host id in the request must be the one it names (register, push flows, watch desired
//! state, report observed state and drift).

use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use tonic::Status;

/// The host id the leaf certificate names, if it names exactly one.
pub fn host_of_certificate(der: &[u8]) -> Result<String, String> {
    let hosts = weft_pki::hosts_of_der(der).map_err(|e| e.to_string())?;
    match hosts.as_slice() {
        [one] if !one.is_empty() => Ok(one.clone()),
        [] => Err(format!(
            "the certificate names no host (no {}<host-id> URI)",
            weft_pki::HOST_URI_PREFIX
        )),
        _ => Err("the certificate names more than one host".into()),
    }
}

/// Whether, and how, agents prove which host they are.
#[derive(Debug, Clone)]
pub enum AgentAuth {
    /// `--insecure`: plain text, any caller may speak for any host.
    Insecure,
    /// Mutual TLS: the verified client certificate names the host.
    Certificate,
}

impl AgentAuth {
    /// Checks that the caller of `request` may speak for `host_id`.
    pub fn check<T>(&self, request: &tonic::Request<T>, host_id: &str) -> Result<(), Status> {
        let certs = request.peer_certs();
        self.check_leaf(leaf(certs.as_ref()), host_id)
    }

    /// As [`check`](Self::check), given the caller's leaf certificate (DER), if any.
    pub fn check_leaf(&self, leaf: Option<&[u8]>, host_id: &str) -> Result<(), Status> {
        match self {
            Self::Insecure => Ok(()),
            Self::Certificate => {
                let Some(leaf) = leaf else {
                    return Err(Status::unauthenticated(
                        "agents must present a client certificate issued by the controller's CA (weft certs issue agent)",
                    ));
                };
                let named = host_of_certificate(leaf).map_err(Status::unauthenticated)?;
                if named == host_id {
                    Ok(())
                } else {
                    tracing::warn!(certificate_host = %named, claimed_host = %host_id, "agent refused: its certificate names another host");
                    Err(Status::permission_denied(format!(
                        "this certificate is for host {named:?}, not {host_id:?}"
                    )))
                }
            }
        }
    }

    /// The check as weft-control's gRPC service takes it.
    pub fn host_check(self) -> weft_control::grpc::HostCheck {
        Arc::new(move |leaf: Option<&[u8]>, host: &str| self.check_leaf(leaf, host))
    }
}

/// The first (leaf) certificate of a peer's chain.
pub fn leaf<'a>(certs: Option<&'a Arc<Vec<CertificateDer<'static>>>>) -> Option<&'a [u8]> {
    certs.and_then(|c| c.first()).map(|c| c.as_ref())
}
