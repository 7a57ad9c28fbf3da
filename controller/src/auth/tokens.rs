//! Bearer tokens of orchestration clients, kept hashed in the store.
//!
//! A token reads `weft_<id>_<secret>`: `id` (16 hex digits) names the record
//! (`auth/tokens/<id>` in the store), `secret` (64 hex digits, 256 random bits) is never
//! stored: only its SHA-256 is, and a presented secret is compared with it in constant
//! time. Tokens are loaded at start and kept in memory; creating and revoking write through.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use weft_store::{Store, StoreError};

use super::role::Role;

const PREFIX: &str = "auth/tokens/";
/// Longest token name accepted.
const NAME_MAX: usize = 64;

/// One token as kept (the secret's hash, never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_unix_ns: u64,
    /// Hex SHA-256 of the secret.
    sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token name: {0}")]
    BadName(String),
    #[error("token store: {0}")]
    Store(#[from] StoreError),
    #[error("writing the admin token to {path}: {source}")]
    WriteFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The tokens of this controller.
#[derive(Debug)]
pub struct Tokens {
    store: Arc<dyn Store>,
    by_id: DashMap<String, TokenRecord>,
}

fn sha256_hex(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal in time independent of where they differ (both are 64 hex digits).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

impl Tokens {
    /// Loads every token kept in `store`. A record that does not parse is skipped with an
    /// error log (it grants nothing).
    pub fn open(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let by_id = DashMap::new();
        for (key, value) in store.scan_prefix(PREFIX)? {
            match serde_json::from_slice::<TokenRecord>(&value) {
                Ok(r) => {
                    by_id.insert(r.id.clone(), r);
                }
                Err(e) => tracing::error!(%key, error = %e, "unreadable token record ignored"),
            }
        }
        Ok(Self { store, by_id })
    }

    /// Makes a token; returns its record and the token itself (shown once, kept nowhere).
    pub fn create(&self, name: &str, role: Role) -> Result<(TokenRecord, String), TokenError> {
        let name = name.trim();
        if name.is_empty() || name.len() > NAME_MAX || name.chars().any(char::is_control) {
            return Err(TokenError::BadName(format!(
                "{name:?}: give 1 to {NAME_MAX} printable characters"
            )));
        }
        let id = random_hex(8);
        let secret = random_hex(32);
        let record = self.keep(&id, name, role, &secret)?;
        tracing::info!(token = %id, name = %record.name, role = %role, "token created");
        Ok((record, format!("weft_{id}_{secret}")))
    }

    /// Every token, by creation time.
    pub fn list(&self) -> Vec<TokenRecord> {
        let mut all: Vec<TokenRecord> = self.by_id.iter().map(|r| r.value().clone()).collect();
        all.sort_by(|a, b| (a.created_unix_ns, &a.id).cmp(&(b.created_unix_ns, &b.id)));
        all
    }

    /// Revokes token `id`; `None` if there is none. Effective for the next request.
    pub fn revoke(&self, id: &str) -> Result<Option<TokenRecord>, TokenError> {
        let Some(record) = self.by_id.get(id).map(|r| r.value().clone()) else {
            return Ok(None);
        };
        self.store.delete(&format!("{PREFIX}{id}"))?;
        self.by_id.remove(id);
        tracing::info!(token = %id, name = %record.name, "token revoked");
        Ok(Some(record))
    }

    /// The record of a presented token, if it is one of ours.
    pub fn verify(&self, token: &str) -> Option<TokenRecord> {
        let rest = token.strip_prefix("weft_")?;
        let (id, secret) = rest.split_once('_')?;
        let record = self.by_id.get(id)?.value().clone();
        constant_time_eq(sha256_hex(secret).as_bytes(), record.sha256.as_bytes()).then_some(record)
    }

    pub fn has_admin(&self) -> bool {
        self.by_id.iter().any(|r| r.role == Role::Admin)
    }

    /// Keeps `token` (one of weft's form, made elsewhere, e.g. by a deployment's secret
    /// store) as a token named `name` with `role`.
    pub fn adopt(&self, name: &str, role: Role, token: &str) -> Result<TokenRecord, TokenError> {
        let parsed = token
            .strip_prefix("weft_")
            .and_then(|rest| rest.split_once('_'))
            .filter(|(id, secret)| {
                id.len() == 16
                    && secret.len() == 64
                    && id
                        .chars()
                        .chain(secret.chars())
                        .all(|c| c.is_ascii_hexdigit())
            });
        let Some((id, secret)) = parsed else {
            return Err(TokenError::BadName(
                "a token reads weft_<16 hex digits>_<64 hex digits>".into(),
            ));
        };
        self.keep(id, name, role, secret)
    }

    /// Stores (hashed) and remembers token `id` with `secret`.
    fn keep(
        &self,
        id: &str,
        name: &str,
        role: Role,
        secret: &str,
    ) -> Result<TokenRecord, TokenError> {
        let record = TokenRecord {
            id: id.to_owned(),
            name: name.to_owned(),
            role,
            created_unix_ns: agent_common::time::now_unix_ns(),
            sha256: sha256_hex(secret),
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| StoreError(e.to_string()))?;
        self.store.put(&format!("{PREFIX}{id}"), &bytes)?;
        self.by_id.insert(id.to_owned(), record.clone());
        Ok(record)
    }

    /// When there is no admin token yet (or always with `force`): if `path` holds a token
    /// of weft's form, keeps it as the admin token (a token provisioned by the
    /// deployment); otherwise makes one and writes it to `path` (mode 0600, replacing the
    /// file atomically). Returns whether an admin token was made or adopted.
    pub fn bootstrap_admin(&self, path: &Path, force: bool) -> Result<bool, TokenError> {
        if self.has_admin() && !force {
            return Ok(false);
        }
        if !force
            && let Ok(text) = std::fs::read_to_string(path)
            && let Ok(record) = self.adopt("bootstrap-admin", Role::Admin, text.trim())
        {
            tracing::warn!(path = %path.display(), token = %record.id, "admin token taken from the file");
            return Ok(true);
        }
        let (record, token) = self.create("bootstrap-admin", Role::Admin)?;
        let write = || -> std::io::Result<()> {
            use std::os::unix::fs::OpenOptionsExt as _;
            let tmp = path.with_extension("tmp");
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(format!("{token}\n").as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        if let Err(source) = write() {
            // A token nobody can read would only be a way in for whoever finds it later.
            let _ = self.revoke(&record.id);
            return Err(TokenError::WriteFile {
                path: path.to_owned(),
                source,
            });
        }
        tracing::warn!(path = %path.display(), token = %record.id, "admin token written (keep it secret; make narrower tokens with `weft tokens create`)");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_store::MemoryStore;

    #[test]
    fn a_token_verifies_until_revoked_and_survives_a_reopen() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let tokens = Tokens::open(store.clone()).unwrap();
        let (record, token) = tokens.create("ci", Role::Operate).unwrap();
        assert_eq!(tokens.verify(&token).map(|r| r.role), Some(Role::Operate));
        // Kept hashed: the secret is nowhere in the store.
        let secret = token.rsplit('_').next().unwrap();
        for (_, v) in store.scan_prefix(PREFIX).unwrap() {
            assert!(!String::from_utf8_lossy(&v).contains(secret));
        }
        let reopened = Tokens::open(store.clone()).unwrap();
        assert_eq!(
            reopened.verify(&token).map(|r| r.id),
            Some(record.id.clone())
        );
        assert!(reopened.revoke(&record.id).unwrap().is_some());
        assert!(reopened.verify(&token).is_none());
        assert!(Tokens::open(store).unwrap().verify(&token).is_none());
    }

    #[test]
    fn wrong_or_malformed_tokens_do_not_verify() {
        let tokens = Tokens::open(Arc::new(MemoryStore::default())).unwrap();
        let (record, token) = tokens.create("ci", Role::Read).unwrap();
        let mut wrong = token.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == '0' { '1' } else { '0' });
        for t in [
            wrong.as_str(),
            "",
            "weft_",
            "Bearer x",
            &format!("weft_{}_", record.id),
        ] {
            assert!(tokens.verify(t).is_none(), "{t:?}");
        }
        assert!(tokens.create(" ", Role::Read).is_err());
        assert!(tokens.create(&"x".repeat(65), Role::Read).is_err());
    }

    #[test]
    fn a_provisioned_token_file_is_adopted_not_replaced() {
        let dir = std::env::temp_dir().join(format!("weft-tokens-adopt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("admin.token");
        let token = format!("weft_{}_{}", "ab".repeat(8), "cd".repeat(32));
        std::fs::write(&path, format!("{token}\n")).unwrap();
        let tokens = Tokens::open(Arc::new(MemoryStore::default())).unwrap();
        assert!(tokens.bootstrap_admin(&path, false).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), token);
        assert_eq!(tokens.verify(&token).map(|r| r.role), Some(Role::Admin));
        assert!(tokens.adopt("x", Role::Read, "weft_short_secret").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bootstrap_writes_one_admin_token_to_a_private_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!(
            "weft-tokens-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("admin.token");
        let tokens = Tokens::open(Arc::new(MemoryStore::default())).unwrap();
        assert!(tokens.bootstrap_admin(&path, false).unwrap());
        let token = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            tokens.verify(token.trim()).map(|r| r.role),
            Some(Role::Admin)
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            !tokens.bootstrap_admin(&path, false).unwrap(),
            "one admin is enough"
        );
        assert!(tokens.bootstrap_admin(&path, true).unwrap());
        assert_ne!(std::fs::read_to_string(&path).unwrap(), token);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
