//! TLS through a request router: real handshakes (rustls) with servers on each side,
//! routed whole by the ClientHello's server name.

use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;
use weft_reqroute::HeaderRule;

use super::proxy_tests::listen;
use super::{PortRules, RouterShared};

/// One certificate for every name the tests ask for.
fn certificate() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["shop.example".into(), "api.example".into()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    (
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    // *ring*, as the controller's (aws-lc-rs is not built here).
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS server that answers every handshake with its name and closes.
async fn tls_server(
    name: &'static str,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> SocketAddr {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(s).await {
                    let _ = tls.write_all(name.as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

/// A socket whose first write is sent in two pieces 50 ms apart: the ClientHello
/// arrives in two segments.
struct Dribble {
    s: std::net::TcpStream,
    first: bool,
}

impl std::io::Write for Dribble {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.first && b.len() > 10 {
            self.first = false;
            self.s.write_all(&b[..10])?;
            std::thread::sleep(Duration::from_millis(50));
            return Ok(10);
        }
        self.s.write(b)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.s.flush()
    }
}

impl std::io::Read for Dribble {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.s.read(b)
    }
}

/// A TLS client for `name` through `router`: what the server it reached said.
async fn ask(
    router: SocketAddr,
    name: &'static str,
    cert: CertificateDer<'static>,
    dribble: bool,
) -> String {
    tokio::task::spawn_blocking(move || {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let conn =
            rustls::ClientConnection::new(Arc::new(config), ServerName::try_from(name).unwrap())
                .unwrap();
        let s = std::net::TcpStream::connect(router).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, Dribble { s, first: dribble });
        let mut out = String::new();
        tls.read_to_string(&mut out)
            .unwrap_or_else(|e| panic!("TLS to {name}: {e}"));
        out
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn tls_connections_go_whole_to_the_side_their_server_name_says() {
    let (cert, key) = certificate();
    let shared = Arc::new(RouterShared::fixed(
        tls_server("origin", cert.clone(), key.clone_key()).await,
        tls_server("target", cert.clone(), key).await,
    ));
    let rules = |r: Vec<HeaderRule>| -> Arc<PortRules> { Arc::new(RwLock::new(Arc::new(r))) };
    let by_host = listen(
        rules(vec![
            HeaderRule::new("X-Branch", Some("w1")).unwrap(),
            HeaderRule::new("Host", Some("shop.example:443")).unwrap(),
        ]),
        shared.clone(),
    )
    .await;
    // Whole handshakes through the router: the client's bytes reach the side unchanged.
    assert_eq!(
        ask(by_host, "shop.example", cert.clone(), false).await,
        "target"
    );
    assert_eq!(
        ask(by_host, "api.example", cert.clone(), false).await,
        "origin"
    );
    // A ClientHello in two segments is waited for.
    assert_eq!(
        ask(by_host, "shop.example", cert.clone(), true).await,
        "target"
    );
    assert_eq!(
        ask(by_host, "api.example", cert.clone(), true).await,
        "origin"
    );
    // Rules on other headers cannot be seen in TLS: the origin.
    let by_header = listen(
        rules(vec![HeaderRule::new("X-Branch", Some("w1")).unwrap()]),
        shared.clone(),
    )
    .await;
    assert_eq!(
        ask(by_header, "shop.example", cert.clone(), false).await,
        "origin"
    );
    // A `host` rule without a value: every TLS connection with a server name.
    let any_host = listen(rules(vec![HeaderRule::new("host", None).unwrap()]), shared).await;
    assert_eq!(ask(any_host, "api.example", cert, false).await, "target");
}
