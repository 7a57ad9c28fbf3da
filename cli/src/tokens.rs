//! `weft tokens create|list|revoke`: client tokens, through the controller's `/tokens`
//! (needs an admin token, e.g. the controller's first one in `<data-dir>/admin.token`).

use serde_json::{Value, json};

use crate::shards::call;

#[derive(Debug, clap::Subcommand)]
pub enum TokensCommand {
    /// Make a token; it is printed once and kept only as a hash.
    Create {
        /// What the token is for (e.g. `ci`, `grafana`).
        #[arg(long)]
        name: String,
        /// read (GETs), operate (changes: allocations, shards, migrations, observations),
        /// or admin (tokens and policy too).
        #[arg(long)]
        role: String,
        /// Valid for this long (e.g. 30d, 12h, 90m); without it, until revoked.
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
    },
    /// List the tokens (never their secrets).
    List,
    /// Revoke a token by id (effective at the next request).
    Revoke { id: String },
}

fn line(t: &Value) -> String {
    let s = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    let expires = match (t.get("expires").and_then(Value::as_str), t.get("expired")) {
        (None, _) => "never".to_owned(),
        (Some(at), Some(Value::Bool(true))) => format!("{at} (expired)"),
        (Some(at), _) => at.to_owned(),
    };
    format!(
        "{:<16}  {:<8}  {:<27}  {:<37}  {}\n",
        s("id"),
        s("role"),
        s("created"),
        expires,
        s("name")
    )
}

pub fn run(controller: &str, command: &TokensCommand) -> anyhow::Result<String> {
    match command {
        TokensCommand::Create {
            name,
            role,
            expires_in,
        } => {
            let mut body = json!({"name": name, "role": role});
            if let Some(d) = expires_in {
                body["expires_in"] = json!(d);
            }
            let t = call(controller, "POST", "/tokens", Some(&body))?;
            let token = t.get("token").and_then(Value::as_str).unwrap_or_default();
            Ok(format!(
                "{}token (shown once; keep it in a file readable only by its user):\n{token}\n",
                line(&t)
            ))
        }
        TokensCommand::List => {
            let all = call(controller, "GET", "/tokens", None)?;
            let mut out = format!(
                "{:<16}  {:<8}  {:<27}  {:<37}  {}\n",
                "ID", "ROLE", "CREATED", "EXPIRES", "NAME"
            );
            for t in all
                .get("tokens")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                out.push_str(&line(t));
            }
            Ok(out)
        }
        TokensCommand::Revoke { id } => {
            let t = call(controller, "DELETE", &format!("/tokens/{id}"), None)?;
            Ok(format!("revoked {}", line(&t)))
        }
    }
}
