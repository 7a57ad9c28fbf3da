//! What every request to the controller carries and how it travels:
//!
//! - the bearer token: `--token-file FILE` (`WEFT_TOKEN_FILE`) or `--token` (`WEFT_TOKEN`;
//!   visible to other users in `ps`, so the file is better);
//! - HTTPS trusting `--ca FILE` (`WEFT_CA`), the CA of the controller's certificate
//!   (`weft certs init`). A token is never sent over plain `http://` to another machine:
//!   only a loopback address may be plain (a controller run with `--insecure`).
//!
//! Set once at start; every HTTP agent of the CLI is built by [`http_agent`].

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use anyhow::Context as _;

struct Credentials {
    token: Option<String>,
    tls: Option<Arc<weft_pki::rustls::ClientConfig>>,
}

static CREDENTIALS: OnceLock<Credentials> = OnceLock::new();

/// Reads the token (the file wins over the value) and the CA, and checks that `controller`
/// will not see the token in clear.
pub fn init(
    token: Option<&str>,
    token_file: Option<&Path>,
    ca: Option<&Path>,
    controller: &str,
) -> anyhow::Result<()> {
    let token = match token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--token-file {}", path.display()))?;
            let t = text.trim().to_owned();
            anyhow::ensure!(!t.is_empty(), "--token-file {} is empty", path.display());
            Some(t)
        }
        None => token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()),
    };
    if token.is_some() {
        check_not_in_clear(controller)?;
    }
    let tls = match ca {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("--ca {}", path.display()))?;
            let config = weft_pki::https_client_config(&pem)
                .with_context(|| format!("--ca {}", path.display()))?;
            Some(Arc::new(config))
        }
        None => None,
    };
    let _ = CREDENTIALS.set(Credentials { token, tls });
    Ok(())
}

/// Refuses a plain `http://` controller URL whose host is not a loopback address: the
/// token would cross the network in clear.
fn check_not_in_clear(controller: &str) -> anyhow::Result<()> {
    let Some(rest) = controller.strip_prefix("http://") else {
        return Ok(());
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    anyhow::ensure!(
        loopback,
        "refusing to send the token in clear to {controller}: use https:// (with --ca, the CA of the controller's certificate); plain http:// is only for a controller on this machine (--insecure)"
    );
    Ok(())
}

/// An HTTP agent from `builder` whose requests carry the token, if there is one, and
/// trust the CA of `--ca`, if given.
// The middleware's signature is ureq's (its Error is large with TLS).
#[allow(clippy::result_large_err)]
pub fn http_agent(builder: ureq::AgentBuilder) -> ureq::Agent {
    let credentials = CREDENTIALS.get();
    let builder = match credentials.and_then(|c| c.tls.clone()) {
        Some(tls) => builder.tls_config(tls),
        None => builder,
    };
    builder
        .middleware(|request: ureq::Request, next: ureq::MiddlewareNext<'_>| {
            let token = CREDENTIALS.get().and_then(|c| c.token.as_deref());
            let request = match token {
                Some(token) => request.set("authorization", &format!("Bearer {token}")),
                None => request,
            };
            next.handle(request)
        })
        .build()
}

/// "cannot reach the controller at `base`", with a hint when it is HTTPS without `--ca`
/// (the controller's own CA is in no system store).
pub fn unreachable(base: &str) -> String {
    let no_ca = CREDENTIALS.get().is_none_or(|c| c.tls.is_none());
    if base.starts_with("https://") && no_ca {
        format!(
            "cannot reach the controller at {base} (without --ca or WEFT_CA, its certificate must be signed by a public CA)"
        )
    } else {
        format!("cannot reach the controller at {base}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_goes_in_clear_only_to_this_machine() {
        for ok in [
            "https://ctl.example:7070",
            "http://127.0.0.1:7070",
            "http://127.9.9.9",
            "http://[::1]:7070/",
            "http://localhost:7070",
        ] {
            assert!(check_not_in_clear(ok).is_ok(), "{ok}");
        }
        for refused in [
            "http://198.18.0.1:7070",
            "http://ctl.example:7070",
            "http://[fd00::1]:7070",
        ] {
            let error = check_not_in_clear(refused).unwrap_err().to_string();
            assert!(
                error.starts_with("refusing to send the token in clear"),
                "{error}"
            );
        }
    }
}
