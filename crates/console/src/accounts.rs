//! Console accounts and sessions in `DATA/console.db`.
//!
//! Passwords are stored only as Argon2id PHC strings (memory-hard: a stolen store does not
//! give passwords away cheaply). A session is 32 random bytes in an HttpOnly cookie, stored
//! as its SHA-256 (a random key needs no slow hash), with its own CSRF token and an absolute
//! expiry. Failed logins in a row lock the account for a doubling time; a locked account is
//! refused before any password work, and an unknown name costs the same hashing as a known
//! one, so timing tells nobody which names exist.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::RngCore;
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::ConsoleError;

/// What an account may do; each role can do everything the ones before it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Works the queue and decides cases.
    Reviewer,
    /// Also sees the team views, reassigns claims, exports the audit log.
    Lead,
    /// Also manages accounts.
    Admin,
}

impl Role {
    /// Every role's name.
    pub const NAMES: [&'static str; 3] = ["reviewer", "lead", "admin"];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reviewer => "reviewer",
            Role::Lead => "lead",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reviewer" => Ok(Role::Reviewer),
            "lead" => Ok(Role::Lead),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "`{other}` is not a role; use one of {}",
                Role::NAMES.join(", ")
            )),
        }
    }
}

/// One account as listed (never its password hash).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Account {
    /// The login name (also the reviewer name in the audit log).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// When it was made (UTC).
    pub created_at: String,
    /// Disabled accounts cannot log in.
    pub disabled: bool,
    /// Failed logins in a row.
    pub failed: u32,
}

/// A logged-in session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who.
    pub name: String,
    /// Their role (read at every request: a changed role applies at once).
    pub role: Role,
    /// The token every state-changing request must carry.
    pub csrf: String,
    /// When it ends (Unix time).
    pub expires_at: i64,
}

/// Why a login was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginRefused {
    /// Wrong name or password (which one is not said).
    Wrong,
    /// Too many failures in a row: locked for this many more seconds.
    Locked(i64),
}

/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// The first lock after too many failures; each further failure doubles it.
const FIRST_LOCK_SECS: i64 = 30;
/// The longest lock.
const MAX_LOCK_SECS: i64 = 15 * 60;

/// `n` random bytes from the operating system's generator, as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A password for people to type once: 20 characters from an unambiguous alphabet
/// (~115 bits).
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzACDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut b = [0u8; 20];
    rand::rng().fill_bytes(&mut b);
    b.iter()
        .map(|x| ALPHABET[*x as usize % ALPHABET.len()] as char)
        .collect()
}

fn sha256(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Argon2id PHC string of `password` with a fresh random salt.
fn hash_password(password: &str) -> Result<String, ConsoleError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| ConsoleError::Internal(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ConsoleError::Internal(format!("hashing a password: {e}")))
}

fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash no password matches, verified against for unknown names (same cost as a real one).
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| hash_password(&random_hex(16)).unwrap_or_default())
}

/// Login names: 1-64 of `a-z A-Z 0-9 . _ -` (they appear in the audit log and URLs).
pub fn check_name(name: &str) -> Result<(), ConsoleError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ConsoleError::Usage(format!(
            "`{name}` is not a valid account name: use 1-64 letters, digits, `.`, `_` or `-`"
        )))
    }
}

/// The account store of a data directory.
#[derive(Debug, Clone)]
pub struct Accounts {
    path: PathBuf,
}

impl Accounts {
    /// Open (creating) `DATA/console.db`.
    pub fn open(data: &Path) -> Result<Self, ConsoleError> {
        std::fs::create_dir_all(data).map_err(|e| ConsoleError::io(data, e))?;
        let s = Self {
            path: data.join("console.db"),
        };
        s.conn()?;
        Ok(s)
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> ConsoleError + '_ {
        move |e| ConsoleError::store(&self.path, e)
    }

    fn conn(&self) -> Result<Connection, ConsoleError> {
        let c = Connection::open(&self.path).map_err(self.err())?;
        c.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(self.err())?;
        c.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS users (
                 name TEXT PRIMARY KEY, role TEXT NOT NULL, phc TEXT NOT NULL,
                 created_at TEXT NOT NULL, disabled INTEGER NOT NULL DEFAULT 0,
                 failed INTEGER NOT NULL DEFAULT 0, locked_until INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE IF NOT EXISTS sessions (
                 id_hash BLOB PRIMARY KEY, name TEXT NOT NULL, csrf TEXT NOT NULL,
                 created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS sessions_by_name ON sessions (name);",
        )
        .map_err(self.err())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o600));
        }
        Ok(c)
    }

    /// Add an account; refused when the name is taken or the password too short.
    pub fn add(&self, name: &str, role: Role, password: &str) -> Result<Account, ConsoleError> {
        check_name(name)?;
        check_password(password)?;
        let phc = hash_password(password)?;
        let created_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let n = self
            .conn()?
            .execute(
                "INSERT OR IGNORE INTO users (name, role, phc, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![name, role.as_str(), phc, created_at],
            )
            .map_err(self.err())?;
        if n == 0 {
            return Err(ConsoleError::Usage(format!(
                "an account named `{name}` exists already (`vigil user passwd` sets a new password)"
            )));
        }
        Ok(Account {
            name: name.to_string(),
            role,
            created_at,
            disabled: false,
            failed: 0,
        })
    }

    /// Set a new password (and unlock the account); its sessions end.
    pub fn set_password(&self, name: &str, password: &str) -> Result<(), ConsoleError> {
        check_password(password)?;
        let phc = hash_password(password)?;
        let c = self.conn()?;
        let n = c
            .execute(
                "UPDATE users SET phc = ?2, failed = 0, locked_until = 0 WHERE name = ?1",
                params![name, phc],
            )
            .map_err(self.err())?;
        if n == 0 {
            return Err(unknown(name));
        }
        c.execute("DELETE FROM sessions WHERE name = ?1", [name])
            .map_err(self.err())?;
        Ok(())
    }

    /// Disable (or enable again) an account; disabling ends its sessions.
    pub fn set_disabled(&self, name: &str, disabled: bool) -> Result<(), ConsoleError> {
        let c = self.conn()?;
        let n = c
            .execute(
                "UPDATE users SET disabled = ?2, failed = 0, locked_until = 0 WHERE name = ?1",
                params![name, disabled],
            )
            .map_err(self.err())?;
        if n == 0 {
            return Err(unknown(name));
        }
        if disabled {
            c.execute("DELETE FROM sessions WHERE name = ?1", [name])
                .map_err(self.err())?;
        }
        Ok(())
    }

    /// Every account, by name.
    pub fn list(&self) -> Result<Vec<Account>, ConsoleError> {
        let c = self.conn()?;
        let mut st = c
            .prepare("SELECT name, role, created_at, disabled, failed FROM users ORDER BY name")
            .map_err(self.err())?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, bool>(3)?,
                    r.get::<_, u32>(4)?,
                ))
            })
            .map_err(self.err())?;
        let mut out = Vec::new();
        for row in rows {
            let (name, role, created_at, disabled, failed) = row.map_err(self.err())?;
            out.push(Account {
                role: self.role_of(&name, &role)?,
                name,
                created_at,
                disabled,
                failed,
            });
        }
        Ok(out)
    }

    /// How many accounts exist.
    pub fn count(&self) -> Result<usize, ConsoleError> {
        self.conn()?
            .query_row("SELECT COUNT(*) FROM users", [], |r| r.get::<_, i64>(0))
            .map(|n| n as usize)
            .map_err(self.err())
    }

    fn role_of(&self, name: &str, role: &str) -> Result<Role, ConsoleError> {
        role.parse().map_err(|e: String| ConsoleError::Corrupt {
            path: self.path.clone(),
            message: format!("account {name}: {e}"),
        })
    }

    /// Check a login at Unix time `now`; on success a new session (its cookie value and
    /// the session). Runs Argon2: call it off the async threads.
    pub fn login(
        &self,
        name: &str,
        password: &str,
        now: i64,
        ttl_secs: i64,
        max_failed: u32,
    ) -> Result<Result<(String, Session), LoginRefused>, ConsoleError> {
        let c = self.conn()?;
        let row: Option<(String, String, bool, u32, i64)> = c
            .query_row(
                "SELECT role, phc, disabled, failed, locked_until FROM users WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()
            .map_err(self.err())?;
        let Some((role, phc, disabled, _failed, locked_until)) = row else {
            verify_password(password, decoy_hash());
            return Ok(Err(LoginRefused::Wrong));
        };
        if locked_until > now {
            return Ok(Err(LoginRefused::Locked(locked_until - now)));
        }
        if !verify_password(password, &phc) || disabled {
            // One atomic increment: concurrent wrong guesses each count.
            let failed: u32 = c
                .query_row(
                    "UPDATE users SET failed = failed + 1 WHERE name = ?1 RETURNING failed",
                    [name],
                    |r| r.get(0),
                )
                .map_err(self.err())?;
            let lock = if failed >= max_failed {
                let doublings = (failed - max_failed).min(10);
                now + (FIRST_LOCK_SECS << doublings).min(MAX_LOCK_SECS)
            } else {
                0
            };
            if lock > 0 {
                c.execute(
                    "UPDATE users SET locked_until = MAX(locked_until, ?2) WHERE name = ?1",
                    params![name, lock],
                )
                .map_err(self.err())?;
            }
            if lock > 0 {
                tracing::warn!(account = name, failed, "account locked after failed logins");
                return Ok(Err(LoginRefused::Locked(lock - now)));
            }
            return Ok(Err(LoginRefused::Wrong));
        }
        c.execute(
            "UPDATE users SET failed = 0, locked_until = 0 WHERE name = ?1",
            [name],
        )
        .map_err(self.err())?;
        // Expired sessions are swept at each login.
        c.execute("DELETE FROM sessions WHERE expires_at <= ?1", [now])
            .map_err(self.err())?;
        let token = random_hex(32);
        let session = Session {
            name: name.to_string(),
            role: self.role_of(name, &role)?,
            csrf: random_hex(32),
            expires_at: now + ttl_secs,
        };
        c.execute(
            "INSERT INTO sessions (id_hash, name, csrf, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![sha256(&token), name, session.csrf, now, session.expires_at],
        )
        .map_err(self.err())?;
        Ok(Ok((token, session)))
    }

    /// The live session of a cookie value at `now` (`None`: unknown, expired or disabled).
    pub fn session(&self, token: &str, now: i64) -> Result<Option<Session>, ConsoleError> {
        let c = self.conn()?;
        let row: Option<(String, String, String, i64)> = c
            .query_row(
                "SELECT s.name, u.role, s.csrf, s.expires_at FROM sessions s \
                 JOIN users u ON u.name = s.name \
                 WHERE s.id_hash = ?1 AND s.expires_at > ?2 AND u.disabled = 0",
                params![sha256(token), now],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(self.err())?;
        match row {
            None => Ok(None),
            Some((name, role, csrf, expires_at)) => Ok(Some(Session {
                role: self.role_of(&name, &role)?,
                name,
                csrf,
                expires_at,
            })),
        }
    }

    /// End a session.
    pub fn logout(&self, token: &str) -> Result<(), ConsoleError> {
        self.conn()?
            .execute("DELETE FROM sessions WHERE id_hash = ?1", [sha256(token)])
            .map_err(self.err())?;
        Ok(())
    }

    /// The roles of `names` that exist (for checks such as "an appeal goes to another
    /// reviewer").
    pub fn role(&self, name: &str) -> Result<Option<Role>, ConsoleError> {
        let role: Option<String> = self
            .conn()?
            .query_row(
                "SELECT role FROM users WHERE name = ?1 AND disabled = 0",
                [name],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?;
        role.map(|r| self.role_of(name, &r)).transpose()
    }
}

fn unknown(name: &str) -> ConsoleError {
    ConsoleError::Usage(format!("no account named `{name}` (see `vigil user list`)"))
}

fn check_password(password: &str) -> Result<(), ConsoleError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(ConsoleError::Usage(format!(
            "a password needs at least {MIN_PASSWORD_CHARS} characters (or let `vigil user add` generate one)"
        )));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_stored_as_argon2id_and_sessions_as_hashes() {
        let d = tempfile::tempdir().unwrap();
        let a = Accounts::open(d.path()).unwrap();
        a.add("ana", Role::Reviewer, "correct horse battery")
            .unwrap();
        let (token, s) = a
            .login("ana", "correct horse battery", 1_000, 60, 5)
            .unwrap()
            .unwrap();
        assert_eq!(s.role, Role::Reviewer);
        let raw = std::fs::read(d.path().join("console.db")).unwrap();
        let text = String::from_utf8_lossy(&raw);
        assert!(text.contains("$argon2id$"), "PHC string stored");
        assert!(!text.contains("correct horse"), "no password in the store");
        assert!(!text.contains(&token), "no session token in the store");
        assert!(a.session(&token, 1_030).unwrap().is_some());
        assert!(a.session(&token, 1_060).unwrap().is_none(), "expired");
        a.logout(&token).unwrap();
        assert!(a.session(&token, 1_001).unwrap().is_none());
    }

    #[test]
    fn failed_logins_lock_the_account_for_a_doubling_time_and_unknown_names_look_the_same() {
        let d = tempfile::tempdir().unwrap();
        let a = Accounts::open(d.path()).unwrap();
        a.add("bo", Role::Lead, "a long enough password").unwrap();
        let try_at = |pw: &str, now| a.login("bo", pw, now, 60, 3).unwrap().err();
        assert_eq!(try_at("nope", 100), Some(LoginRefused::Wrong));
        assert_eq!(try_at("nope", 101), Some(LoginRefused::Wrong));
        assert_eq!(try_at("nope", 102), Some(LoginRefused::Locked(30)));
        // Locked: even the right password is refused until the lock ends.
        assert_eq!(
            try_at("a long enough password", 110),
            Some(LoginRefused::Locked(22))
        );
        assert_eq!(
            try_at("nope", 133),
            Some(LoginRefused::Locked(60)),
            "doubles"
        );
        assert_eq!(try_at("a long enough password", 194), None);
        assert_eq!(
            a.login("nobody", "whatever pw", 200, 60, 3).unwrap().err(),
            Some(LoginRefused::Wrong)
        );
        assert!(
            a.add("bo", Role::Admin, "another long one").is_err(),
            "taken"
        );
        assert!(a.add("cy", Role::Admin, "short").is_err(), "too short");
        assert!(
            a.add("c y", Role::Admin, "a long enough one").is_err(),
            "bad name"
        );
        a.set_disabled("bo", true).unwrap();
        assert_eq!(
            try_at("a long enough password", 300),
            Some(LoginRefused::Wrong)
        );
    }
}
