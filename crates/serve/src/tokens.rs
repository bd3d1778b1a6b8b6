//! API tokens: random bearer tokens with a scope, stored only as SHA-256 hashes.
//!
//! A token is 32 random bytes from a cryptographically secure generator, shown once. Because it
//! carries 256 bits of entropy, a fast hash is the right storage (a memory-hard KDF guards
//! low-entropy passwords, not random keys). Presented tokens are compared against every
//! stored hash in constant time.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rand::RngCore;
use rusqlite::{Connection, params};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ServeError;

/// What a token may do. `admin` may do everything; `review` also reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// `POST /v1/events`.
    Ingest,
    /// `GET /v1/users/{id}`, `POST /v1/score`, `GET /metrics`.
    Read,
    /// The reviewer's endpoints (and read).
    Review,
    /// Everything, including reload.
    Admin,
}

impl Scope {
    /// Every scope's name.
    pub const NAMES: [&'static str; 4] = ["ingest", "read", "review", "admin"];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Review => "review",
            Scope::Admin => "admin",
        }
    }

    /// Does a token of this scope grant `needed`?
    pub fn grants(self, needed: Scope) -> bool {
        self == needed || self == Scope::Admin || (self == Scope::Review && needed == Scope::Read)
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ingest" => Ok(Scope::Ingest),
            "read" => Ok(Scope::Read),
            "review" => Ok(Scope::Review),
            "admin" => Ok(Scope::Admin),
            other => Err(format!(
                "`{other}` is not a scope; use one of {}",
                Scope::NAMES.join(", ")
            )),
        }
    }
}

/// `n` random bytes from a cryptographically secure generator seeded by the operating
/// system (`rand`'s thread generator), as lowercase hex.
pub(crate) fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// One token as listed (never the token itself).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenInfo {
    /// The public id (also the token's first characters after the prefix).
    pub id: String,
    /// A name for people.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// When it was made (UTC).
    pub created_at: String,
    /// When it was revoked, if it was.
    pub revoked_at: Option<String>,
}

/// The token store of a data directory (`DATA/tokens.db`).
#[derive(Debug)]
pub struct TokenStore {
    path: PathBuf,
}

impl TokenStore {
    /// Open (creating) the store of data directory `data`.
    pub fn open(data: &Path) -> Result<Self, ServeError> {
        std::fs::create_dir_all(data).map_err(|e| ServeError::io(data, e))?;
        let s = Self {
            path: data.join("tokens.db"),
        };
        s.conn()?;
        Ok(s)
    }

    fn conn(&self) -> Result<Connection, ServeError> {
        let c = Connection::open(&self.path).map_err(|e| ServeError::store(&self.path, e))?;
        c.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS tokens (
                 id TEXT PRIMARY KEY, name TEXT NOT NULL, scope TEXT NOT NULL,
                 hash BLOB NOT NULL UNIQUE, created_at TEXT NOT NULL, revoked_at TEXT);",
        )
        .map_err(|e| ServeError::store(&self.path, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o600));
        }
        Ok(c)
    }

    /// Make a token; returns it (the only time it is seen) and its info.
    pub fn create(&self, scope: Scope, name: &str) -> Result<(String, TokenInfo), ServeError> {
        let secret = random_hex(32);
        let id = secret[..12].to_string();
        let token = format!("vgl_{}_{secret}", scope.as_str());
        let created_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let name = if name.is_empty() {
            scope.as_str()
        } else {
            name
        };
        self.conn()?
            .execute(
                "INSERT INTO tokens (id, name, scope, hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, name, scope.as_str(), hash(&token).to_vec(), created_at],
            )
            .map_err(|e| ServeError::store(&self.path, e))?;
        Ok((
            token,
            TokenInfo {
                id,
                name: name.to_string(),
                scope,
                created_at,
                revoked_at: None,
            },
        ))
    }

    /// Every token, oldest first.
    pub fn list(&self) -> Result<Vec<TokenInfo>, ServeError> {
        let c = self.conn()?;
        let sql = |e| ServeError::store(&self.path, e);
        let mut stmt = c
            .prepare("SELECT id, name, scope, created_at, revoked_at FROM tokens ORDER BY created_at, id")
            .map_err(sql)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ))
            })
            .map_err(sql)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, name, scope, created_at, revoked_at) = row.map_err(sql)?;
            let scope = scope.parse().map_err(|e: String| ServeError::Corrupt {
                path: self.path.clone(),
                message: format!("token {id}: {e}"),
            })?;
            out.push(TokenInfo {
                id,
                name,
                scope,
                created_at,
                revoked_at,
            });
        }
        Ok(out)
    }

    /// Revoke a token by id; false when there is no such live token.
    pub fn revoke(&self, id: &str) -> Result<bool, ServeError> {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let n = self
            .conn()?
            .execute(
                "UPDATE tokens SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
                params![now, id],
            )
            .map_err(|e| ServeError::store(&self.path, e))?;
        Ok(n == 1)
    }

    /// The live tokens' hashes and scopes.
    fn live(&self) -> Result<Vec<([u8; 32], Scope)>, ServeError> {
        let c = self.conn()?;
        let sql = |e| ServeError::store(&self.path, e);
        let mut stmt = c
            .prepare("SELECT hash, scope FROM tokens WHERE revoked_at IS NULL")
            .map_err(sql)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(sql)?;
        let mut out = Vec::new();
        for row in rows {
            let (h, scope) = row.map_err(sql)?;
            if let (Ok(h), Ok(scope)) = (<[u8; 32]>::try_from(h.as_slice()), scope.parse()) {
                out.push((h, scope));
            }
        }
        Ok(out)
    }
}

/// Live tokens: (SHA-256 of the token, scope).
type Live = Arc<Vec<([u8; 32], Scope)>>;

/// The live tokens in memory, refreshed from the store (so a `vigil token revoke` takes
/// effect within the refresh interval without a restart).
#[derive(Debug, Clone)]
pub struct Authenticator {
    store: Arc<TokenStore>,
    live: Arc<RwLock<Live>>,
}

impl Authenticator {
    /// Load the live tokens of `store`.
    pub fn new(store: TokenStore) -> Result<Self, ServeError> {
        let live = store.live()?;
        Ok(Self {
            store: Arc::new(store),
            live: Arc::new(RwLock::new(Arc::new(live))),
        })
    }

    /// Re-read the store.
    pub fn refresh(&self) -> Result<(), ServeError> {
        let live = Arc::new(self.store.live()?);
        *self
            .live
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = live;
        Ok(())
    }

    /// The scope of a presented token, if it is live.
    pub fn scope_of(&self, token: &str) -> Option<Scope> {
        let h = hash(token);
        let live = self
            .live
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        // Compare with every token, so the time taken does not say which one matched.
        let mut found = None;
        for (stored, scope) in live.iter() {
            if bool::from(stored.ct_eq(&h)) {
                found = Some(*scope);
            }
        }
        found
    }

    /// How many live tokens there are.
    pub fn count(&self) -> usize {
        self.live
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stored_hashed_scoped_and_revocable() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap();
        let (ingest, info) = store.create(Scope::Ingest, "collector").unwrap();
        let (admin, _) = store.create(Scope::Admin, "").unwrap();
        let raw = std::fs::read(dir.path().join("tokens.db")).unwrap();
        let secret = ingest.rsplit('_').next().unwrap();
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the token itself must not be stored"
        );
        let auth = Authenticator::new(TokenStore::open(dir.path()).unwrap()).unwrap();
        assert_eq!(auth.scope_of(&ingest), Some(Scope::Ingest));
        assert_eq!(auth.scope_of(&admin), Some(Scope::Admin));
        assert_eq!(auth.scope_of("vgl_ingest_0000"), None);
        assert!(!Scope::Ingest.grants(Scope::Read));
        assert!(Scope::Admin.grants(Scope::Ingest));
        assert!(Scope::Review.grants(Scope::Read));
        assert!(store.revoke(&info.id).unwrap());
        assert!(!store.revoke(&info.id).unwrap());
        auth.refresh().unwrap();
        assert_eq!(auth.scope_of(&ingest), None);
        assert_eq!(store.list().unwrap().len(), 2);
    }
}
