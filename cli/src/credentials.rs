//! The bearer token every request to the controller carries: `--token-file FILE`
//! (`WEFT_TOKEN_FILE`) or `--token` (`WEFT_TOKEN`; visible to other users in `ps`, so the
//! file is better). Set once at start; every HTTP agent of the CLI is built by
//! [`http_agent`], which adds it.

use std::sync::OnceLock;

use anyhow::Context as _;

static TOKEN: OnceLock<Option<String>> = OnceLock::new();

/// Reads the token from the flags (the file wins over the value).
pub fn init(token: Option<&str>, token_file: Option<&std::path::Path>) -> anyhow::Result<()> {
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
    let _ = TOKEN.set(token);
    Ok(())
}

/// An HTTP agent from `builder` whose requests carry the token, if there is one.
pub fn http_agent(builder: ureq::AgentBuilder) -> ureq::Agent {
    builder
        .middleware(|request: ureq::Request, next: ureq::MiddlewareNext<'_>| {
            let request = match TOKEN.get().and_then(Option::as_deref) {
                Some(token) => request.set("authorization", &format!("Bearer {token}")),
                None => request,
            };
            next.handle(request)
        })
        .build()
}
