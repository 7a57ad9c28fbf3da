//! A small certificate authority for a lab or a small site: `weft certs init` makes a CA,
//! `weft certs issue` makes certificates signed by it.
//!
//! - **controller**: a server certificate for the names and addresses agents and clients
//!   dial (DNS or IP subject alternative names).
//! - **agent**: a client certificate bound to one host: its only URI SAN is
//!   `spiffe://weft/host/<host-id>`, which the controller requires to match every host id
//!   the agent speaks for.
//!
//! Keys are ECDSA P-256. Files are PEM; keys are written with mode 0600.

use std::io::Write as _;

/// The rustls of [`https_client_config`], for clients that pass its configuration on
/// (ureq's `tls_config`).
pub use rustls;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// URI prefix of an agent's host id (kept equal to the controller's check).
pub const HOST_URI_PREFIX: &str = "spiffe://weft/host/";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0}")]
    Invalid(String),
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// What a certificate is for.
#[derive(Debug, Clone)]
pub enum Kind {
    /// The controller: the DNS names and IP addresses clients dial.
    Controller { names: Vec<String> },
    /// An agent of one host.
    Agent { host_id: String },
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that are behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// The TLS configuration of an HTTPS client of the controller's REST listener: trusts
/// only the CA certificates in `ca_pem` (the CA of `weft certs init`, or whichever signed
/// the controller's certificate).
pub fn https_client_config(ca_pem: &str) -> Result<rustls::ClientConfig, PkiError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| PkiError::Invalid(format!("CA file: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| PkiError::Invalid(format!("CA file: {e}")))?;
    }
    if roots.is_empty() {
        return Err(PkiError::Invalid(
            "CA file: no CERTIFICATE in it".to_owned(),
        ));
    }
    // *ring*, as tonic's `tls-ring` on the gRPC side (aws-lc-rs is not built here).
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Invalid(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A new CA valid for `days`.
pub fn new_ca(name: &str, days: u32) -> Result<Pem, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, "weft");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, days);
    let cert = params.self_signed(&key)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// The host ids a certificate (DER) names: its URI SANs of the form
/// `spiffe://weft/host/<host-id>`. The one reading of agent identity, for the agent (its
/// own certificate) and the controller (its peers').
pub fn hosts_of_der(der: &[u8]) -> Result<Vec<String>, PkiError> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| PkiError::Invalid(format!("unreadable certificate: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::Invalid(format!("subject alternative names: {e}")))?;
    Ok(san
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => u.strip_prefix(HOST_URI_PREFIX).map(str::to_owned),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// As [`hosts_of_der`], for the first certificate of a PEM file.
pub fn hosts_of_pem(pem: &str) -> Result<Vec<String>, PkiError> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| PkiError::Invalid(format!("not a PEM certificate: {e}")))?;
    hosts_of_der(&block.contents)
}

/// Checks a host id the way the agent and the controller accept it.
pub fn check_host_id(host_id: &str) -> Result<(), PkiError> {
    let ok = !host_id.is_empty()
        && host_id.len() <= 128
        && host_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::Invalid(format!(
            "host id {host_id:?}: use 1 to 128 of A-Z a-z 0-9 - _ ."
        )))
    }
}

/// A certificate of `kind` signed by `ca`, valid for `days`.
pub fn issue(ca: &Pem, kind: &Kind, days: u32) -> Result<Pem, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "weft");
    match kind {
        Kind::Controller { names } => {
            if names.is_empty() {
                return Err(PkiError::Invalid(
                    "a controller certificate needs at least one name or address (--san)".into(),
                ));
            }
            dn.push(DnType::CommonName, names[0].as_str());
            params.subject_alt_names = CertificateParams::new(names.clone())?.subject_alt_names;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
        Kind::Agent { host_id } => {
            check_host_id(host_id)?;
            dn.push(DnType::CommonName, format!("weft agent {host_id}"));
            params.subject_alt_names = vec![SanType::URI(
                format!("{HOST_URI_PREFIX}{host_id}").try_into()?,
            )];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Reads `<dir>/<name>.pem` and `<dir>/<name>.key`.
pub fn read(dir: &Path, name: &str) -> Result<Pem, PkiError> {
    let read = |ext: &str| {
        let path = dir.join(format!("{name}.{ext}"));
        std::fs::read_to_string(&path).map_err(|source| PkiError::Io { path, source })
    };
    Ok(Pem {
        cert: read("pem")?,
        key: read("key")?,
    })
}

/// Writes `<dir>/<name>.pem` (0644) and `<dir>/<name>.key` (0600), refusing to replace
/// existing files unless `force`. Returns the two paths.
pub fn write(
    dir: &Path,
    name: &str,
    pem: &Pem,
    force: bool,
) -> Result<(PathBuf, PathBuf), PkiError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    for (path, text, mode) in [(&key_path, &pem.key, 0o600), (&cert_path, &pem.cert, 0o644)] {
        let io = |source| PkiError::Io {
            path: path.clone(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).mode(mode);
        if force {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        let mut f = options.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                PkiError::Invalid(format!(
                    "{} exists; pass --force to replace it",
                    path.display()
                ))
            } else {
                io(e)
            }
        })?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

    #[test]
    fn an_https_client_trusts_the_cas_of_the_file_and_refuses_a_file_without_one() {
        let ca = new_ca("test CA", 1).unwrap();
        let other = new_ca("other CA", 1).unwrap();
        assert!(https_client_config(&ca.cert).is_ok());
        assert!(https_client_config(&format!("{}{}", ca.cert, other.cert)).is_ok());
        for bad in ["", "not a PEM file", ca.key.as_str()] {
            let error = https_client_config(bad).unwrap_err().to_string();
            assert!(error.starts_with("CA file: "), "{error}");
        }
    }

    fn der(pem: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .unwrap()
            .1
            .contents
    }

    #[test]
    fn an_agent_certificate_names_its_host_and_is_signed_by_the_ca() {
        let ca = new_ca("weft test CA", 30).unwrap();
        let agent = issue(
            &ca,
            &Kind::Agent {
                host_id: "hv1".into(),
            },
            30,
        )
        .unwrap();
        let der = der(&agent.cert);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let uris: Vec<&str> = san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect();
        assert_eq!(uris, ["spiffe://weft/host/hv1"]);
        let ca_der = der_of_ca(&ca);
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
        assert_eq!(cert.issuer(), ca_cert.subject());
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    }

    fn der_of_ca(ca: &Pem) -> Vec<u8> {
        der(&ca.cert)
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason() {
        let ca = new_ca("weft test CA", 30).unwrap();
        let e = issue(
            &ca,
            &Kind::Agent {
                host_id: "hv 1/x".into(),
            },
            30,
        )
        .unwrap_err();
        assert!(e.to_string().contains("host id"), "{e}");
        let e = issue(&ca, &Kind::Controller { names: vec![] }, 30).unwrap_err();
        assert!(e.to_string().contains("--san"), "{e}");
    }

    #[test]
    fn files_are_not_replaced_without_force_and_keys_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("weft-pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = new_ca("weft test CA", 30).unwrap();
        let (_, key) = write(&dir, "ca", &ca, false).unwrap();
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            write(&dir, "ca", &ca, false)
                .unwrap_err()
                .to_string()
                .contains("--force")
        );
        write(&dir, "ca", &ca, true).unwrap();
        assert_eq!(read(&dir, "ca").unwrap().cert, ca.cert);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
