//! Bearer tokens of orchestration clients, kept hashed in the store.
//!
//! A token reads `weft_<id>_<secret>`: `id` (16 hex digits) names the record
//! (`auth/tokens/<id>` in the store), `secret` (64 hex digits, 256 random bits) is never
//! stored: only its SHA-256 is, and a presented secret is compared with it in constant
//! time. Tokens are loaded at start and kept in memory; creating and revoking write through.
//!
//! A token may expire (`expires_in` when made): from then on it is refused as expired,
//! and listed until revoked. Tokens made before expiry existed, the adopted admin token and
//! the first admin token do not expire.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
    /// When it stops being accepted; `None`: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_unix_ns: Option<u64>,
    /// Hex SHA-256 of the secret.
    sha256: String,
}

impl TokenRecord {
    /// Whether it has expired at `now_unix_ns`.
    pub fn expired(&self, now_unix_ns: u64) -> bool {
        self.expires_unix_ns.is_some_and(|at| now_unix_ns >= at)
    }
}

/// Why a presented token is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not a token of this controller (or a wrong secret).
    Unknown,
    /// The right secret of a token past its expiry.
    Expired,
}

/// The time tokens are checked against: the system clock, or one a test moves.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    pub fn system() -> Self {
        Self(Arc::new(agent_common::time::now_unix_ns))
    }

    /// A clock reading `f()` (tests).
    pub fn from_fn(f: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub fn now_unix_ns(&self) -> u64 {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token name: {0}")]
    BadName(String),
    #[error("token expiry: {0}")]
    BadExpiry(String),
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
    clock: Clock,
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
        Self::open_with_clock(store, Clock::system())
    }

    /// As [`Tokens::open`], checking expiry against `clock`.
    pub fn open_with_clock(store: Arc<dyn Store>, clock: Clock) -> Result<Self, StoreError> {
        let by_id = DashMap::new();
        for (key, value) in store.scan_prefix(PREFIX)? {
            match serde_json::from_slice::<TokenRecord>(&value) {
                Ok(r) => {
                    by_id.insert(r.id.clone(), r);
                }
                Err(e) => tracing::error!(%key, error = %e, "unreadable token record ignored"),
            }
        }
        Ok(Self {
            store,
            by_id,
            clock,
        })
    }

    /// Reads every token from the store again (a controller replica whose tokens another
    /// one creates and revokes): new ones are taken, revoked ones go.
    pub fn reload(&self) -> Result<(), StoreError> {
        let mut seen = std::collections::HashSet::new();
        for (key, value) in self.store.scan_prefix(PREFIX)? {
            match serde_json::from_slice::<TokenRecord>(&value) {
                Ok(r) => {
                    seen.insert(r.id.clone());
                    self.by_id.insert(r.id.clone(), r);
                }
                Err(e) => tracing::error!(%key, error = %e, "unreadable token record ignored"),
            }
        }
        self.by_id.retain(|id, _| seen.contains(id));
        Ok(())
    }

    /// Makes a token, valid for `expires_in` if given (else until revoked); returns its
    /// record and the token itself (shown once, kept nowhere).
    pub fn create(
        &self,
        name: &str,
        role: Role,
        expires_in: Option<Duration>,
    ) -> Result<(TokenRecord, String), TokenError> {
        let name = name.trim();
        if name.is_empty() || name.len() > NAME_MAX || name.chars().any(char::is_control) {
            return Err(TokenError::BadName(format!(
                "{name:?}: give 1 to {NAME_MAX} printable characters"
            )));
        }
        let expires_unix_ns = match expires_in {
            None => None,
            Some(d) if d.is_zero() => {
                return Err(TokenError::BadExpiry("must be more than 0".into()));
            }
            Some(d) => Some(
                u64::try_from(d.as_nanos())
                    .ok()
                    .and_then(|ns| self.clock.now_unix_ns().checked_add(ns))
                    .ok_or_else(|| TokenError::BadExpiry(format!("{d:?} is too far away")))?,
            ),
        };
        let id = random_hex(8);
        let secret = random_hex(32);
        let record = self.keep(&id, name, role, &secret, expires_unix_ns)?;
        tracing::info!(token = %id, name = %record.name, role = %role, expires_unix_ns, "token created");
        Ok((record, format!("weft_{id}_{secret}")))
    }

    /// The time expiry is checked against.
    pub fn now_unix_ns(&self) -> u64 {
        self.clock.now_unix_ns()
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

    /// The record of a presented token, if it is one of ours and has not expired. Only a
    /// token with the right secret is told apart as expired.
    pub fn verify(&self, token: &str) -> Result<TokenRecord, Rejection> {
        let (id, secret) = token
            .strip_prefix("weft_")
            .and_then(|rest| rest.split_once('_'))
            .ok_or(Rejection::Unknown)?;
        let record = self
            .by_id
            .get(id)
            .ok_or(Rejection::Unknown)?
            .value()
            .clone();
        if !constant_time_eq(sha256_hex(secret).as_bytes(), record.sha256.as_bytes()) {
            return Err(Rejection::Unknown);
        }
        if record.expired(self.clock.now_unix_ns()) {
            return Err(Rejection::Expired);
        }
        Ok(record)
    }

    /// Whether an admin token that has not expired exists.
    pub fn has_admin(&self) -> bool {
        let now = self.clock.now_unix_ns();
        self.by_id
            .iter()
            .any(|r| r.role == Role::Admin && !r.expired(now))
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
        self.keep(id, name, role, secret, None)
    }

    /// Stores (hashed) and remembers token `id` with `secret`.
    fn keep(
        &self,
        id: &str,
        name: &str,
        role: Role,
        secret: &str,
        expires_unix_ns: Option<u64>,
    ) -> Result<TokenRecord, TokenError> {
        let record = TokenRecord {
            id: id.to_owned(),
            name: name.to_owned(),
            role,
            created_unix_ns: self.clock.now_unix_ns(),
            expires_unix_ns,
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
        let (record, token) = self.create("bootstrap-admin", Role::Admin, None)?;
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
        let (record, token) = tokens.create("ci", Role::Operate, None).unwrap();
        assert_eq!(
            tokens.verify(&token).ok().map(|r| r.role),
            Some(Role::Operate)
        );
        // Kept hashed: the secret is nowhere in the store.
        let secret = token.rsplit('_').next().unwrap();
        for (_, v) in store.scan_prefix(PREFIX).unwrap() {
            assert!(!String::from_utf8_lossy(&v).contains(secret));
        }
        let reopened = Tokens::open(store.clone()).unwrap();
        assert_eq!(
            reopened.verify(&token).ok().map(|r| r.id),
            Some(record.id.clone())
        );
        assert!(reopened.revoke(&record.id).unwrap().is_some());
        assert!(reopened.verify(&token).is_err());
        assert!(Tokens::open(store).unwrap().verify(&token).is_err());
    }

    #[test]
    fn wrong_or_malformed_tokens_do_not_verify() {
        let tokens = Tokens::open(Arc::new(MemoryStore::default())).unwrap();
        let (record, token) = tokens.create("ci", Role::Read, None).unwrap();
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
            assert_eq!(tokens.verify(t).err(), Some(Rejection::Unknown), "{t:?}");
        }
        assert!(tokens.create(" ", Role::Read, None).is_err());
        assert!(tokens.create(&"x".repeat(65), Role::Read, None).is_err());
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
        assert_eq!(
            tokens.verify(&token).ok().map(|r| r.role),
            Some(Role::Admin)
        );
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
            tokens.verify(token.trim()).ok().map(|r| r.role),
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

    #[test]
    fn a_token_with_an_expiry_is_refused_as_expired_from_then_on() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let now = Arc::new(AtomicU64::new(1_000_000_000_000));
        let clock = {
            let now = now.clone();
            Clock::from_fn(move || now.load(Ordering::Relaxed))
        };
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let tokens = Tokens::open_with_clock(store.clone(), clock.clone()).unwrap();
        let day = Duration::from_secs(86_400);
        let (record, token) = tokens.create("ci", Role::Operate, Some(30 * day)).unwrap();
        let (_, forever) = tokens.create("dash", Role::Read, None).unwrap();
        assert_eq!(
            record.expires_unix_ns,
            Some(1_000_000_000_000 + 30 * 86_400 * 1_000_000_000)
        );
        now.fetch_add(30 * 86_400 * 1_000_000_000 - 1, Ordering::Relaxed);
        assert_eq!(tokens.verify(&token).map(|r| r.id), Ok(record.id.clone()));
        now.fetch_add(1, Ordering::Relaxed);
        assert_eq!(tokens.verify(&token).err(), Some(Rejection::Expired));
        // Only the right secret is told apart as expired.
        let mut wrong = token.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == '0' { '1' } else { '0' });
        assert_eq!(tokens.verify(&wrong).err(), Some(Rejection::Unknown));
        assert!(tokens.verify(&forever).is_ok());
        // The expiry is kept with the token.
        let reopened = Tokens::open_with_clock(store, clock).unwrap();
        assert_eq!(reopened.verify(&token).err(), Some(Rejection::Expired));
        let kept: Vec<(String, Option<u64>)> = reopened
            .list()
            .into_iter()
            .map(|r| (r.name, r.expires_unix_ns))
            .collect();
        assert!(
            kept.contains(&("ci".into(), record.expires_unix_ns)),
            "{kept:?}"
        );
        assert!(kept.contains(&("dash".into(), None)), "{kept:?}");
        assert!(matches!(
            tokens.create("x", Role::Read, Some(Duration::ZERO)),
            Err(TokenError::BadExpiry(_))
        ));
        assert!(matches!(
            tokens.create("x", Role::Read, Some(Duration::MAX)),
            Err(TokenError::BadExpiry(_))
        ));
    }

    #[test]
    fn an_expired_admin_token_does_not_count_as_the_admin() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let now = Arc::new(AtomicU64::new(1_000));
        let clock = {
            let now = now.clone();
            Clock::from_fn(move || now.load(Ordering::Relaxed))
        };
        let tokens = Tokens::open_with_clock(Arc::new(MemoryStore::default()), clock).unwrap();
        tokens
            .create("temp-admin", Role::Admin, Some(Duration::from_secs(1)))
            .unwrap();
        assert!(tokens.has_admin());
        now.fetch_add(1_000_000_000, Ordering::Relaxed);
        assert!(!tokens.has_admin());
    }
}
