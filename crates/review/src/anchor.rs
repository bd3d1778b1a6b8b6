//! The audit log's anchor outside `review.db`: a secret key that authenticates every record,
//! and the last head each store reached.
//!
//! The hash chain alone proves only that the records agree with each other: a chain that is
//! cut short, emptied, restored from an older copy or rewritten and rehashed whole still
//! agrees with itself. Two things kept outside the database close that:
//! - every record carries `mac` = HMAC-SHA256(key, store id, record hash); without the key a
//!   rewritten chain cannot be re-authenticated;
//! - beside the key, `anchors/<store id>` holds the record count and head hash the store last
//!   reached, so a store with fewer records, or another head, is caught.
//!
//! The key file is created on first use with owner-only permissions (0600); keep it, and the
//! anchors beside it, off the machine that serves the store if the store's host is not
//! trusted. `vigil review verify --expect-head` anchors anywhere else (a ticket, a log).

use std::io::Write;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ReviewError;

/// Where the key lives unless told otherwise: `$XDG_CONFIG_HOME/vigil/audit.key`, else
/// `$HOME/.config/vigil/audit.key`.
pub fn default_key_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("vigil").join("audit.key"))
}

/// The secret that authenticates audit records, and the directory of anchors beside it.
pub struct AuditKey {
    key: [u8; 32],
    path: PathBuf,
}

impl std::fmt::Debug for AuditKey {
    // Never the key itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKey")
            .field("path", &self.path)
            .finish()
    }
}

fn key_err(path: &Path, message: impl Into<String>) -> ReviewError {
    ReviewError::Key {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    let t = text.trim();
    if !t.len().is_multiple_of(2) {
        return None;
    }
    (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(t.get(i..i + 2)?, 16).ok())
        .collect()
}

impl AuditKey {
    /// Read the key at `path`; `None` when there is no file.
    pub fn load(path: &Path) -> Result<Option<Self>, ReviewError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(key_err(path, e.to_string())),
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|e| key_err(path, e.to_string()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(key_err(
                    path,
                    format!(
                        "is readable by others (mode {:o}); run `chmod 600 {}`",
                        mode & 0o777,
                        path.display()
                    ),
                ));
            }
        }
        let bytes = unhex(&text)
            .filter(|b| b.len() == 32)
            .ok_or_else(|| key_err(path, "is not a Vigil audit key (64 hex digits)"))?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes);
        Ok(Some(Self {
            key,
            path: path.to_path_buf(),
        }))
    }

    /// Read the key at `path`, creating it (owner-only) when there is none.
    pub fn load_or_create(path: &Path) -> Result<Self, ReviewError> {
        if let Some(k) = Self::load(path)? {
            return Ok(k);
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| key_err(dir, e.to_string()))?;
        }
        let key: [u8; 32] = rand::random();
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        match opts.open(path) {
            Ok(mut f) => {
                f.write_all(format!("{}\n", hex(&key)).as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(|e| key_err(path, e.to_string()))?;
                tracing::warn!(
                    "created the audit key {} (keep it: without it the audit log cannot be authenticated)",
                    path.display()
                );
                Ok(Self {
                    key,
                    path: path.to_path_buf(),
                })
            }
            // Another process created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Self::load(path)?.ok_or_else(|| key_err(path, "vanished while being created"))
            }
            Err(e) => Err(key_err(path, e.to_string())),
        }
    }

    /// The key file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record authenticator: HMAC-SHA256 over the store id and the record's hash.
    pub fn mac(&self, store_id: &str, record_hash: &str) -> String {
        // A 32-byte key is always a valid HMAC key; the fallback is unreachable.
        let Ok(mut m) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            return String::new();
        };
        m.update(store_id.as_bytes());
        m.update(b"\n");
        m.update(record_hash.as_bytes());
        hex(&m.finalize().into_bytes())
    }

    fn anchor_path(&self, store_id: &str) -> PathBuf {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        dir.join("anchors").join(store_id)
    }

    /// The head the store `store_id` last reached: (records, head hash), if anchored.
    pub fn anchor(&self, store_id: &str) -> Result<Option<(i64, String)>, ReviewError> {
        let path = self.anchor_path(store_id);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(key_err(&path, e.to_string())),
        };
        let mut parts = text.split_whitespace();
        match (
            parts.next().and_then(|n| n.parse::<i64>().ok()),
            parts.next(),
            parts.next(),
        ) {
            (Some(n), Some(head), Some(mac))
                if mac == self.mac(store_id, &format!("{n} {head}")) =>
            {
                Ok(Some((n, head.to_string())))
            }
            _ => Err(key_err(
                &path,
                "is not an anchor written with this key (altered, or from another key)",
            )),
        }
    }

    /// Record that `store_id` now has `records` records ending in `head` (written whole:
    /// [`vigil_core::write_atomic`]).
    pub fn set_anchor(&self, store_id: &str, records: i64, head: &str) -> Result<(), ReviewError> {
        let path = self.anchor_path(store_id);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| key_err(dir, e.to_string()))?;
        }
        let body = format!(
            "{records} {head} {}\n",
            self.mac(store_id, &format!("{records} {head}"))
        );
        vigil_core::write_atomic(&path, body.as_bytes())
            .map_err(|(p, e)| key_err(&p, e.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_is_owner_only_and_reloads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k").join("audit.key");
        let a = AuditKey::load_or_create(&path).unwrap();
        let b = AuditKey::load_or_create(&path).unwrap();
        assert_eq!(a.mac("s", "h"), b.mac("s", "h"));
        assert_ne!(a.mac("s", "h"), a.mac("t", "h"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = AuditKey::load(&path).unwrap_err().to_string();
            assert!(err.contains("chmod 600"), "{err}");
        }
        assert!(!format!("{a:?}").contains(&hex(&a.key)));
    }

    #[test]
    fn an_anchor_round_trips_and_an_edited_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = AuditKey::load_or_create(&dir.path().join("audit.key")).unwrap();
        assert_eq!(key.anchor("s1").unwrap(), None);
        key.set_anchor("s1", 3, "abc").unwrap();
        assert_eq!(key.anchor("s1").unwrap(), Some((3, "abc".into())));
        let p = dir.path().join("anchors").join("s1");
        let text = std::fs::read_to_string(&p).unwrap().replacen('3', "2", 1);
        std::fs::write(&p, text).unwrap();
        assert!(key.anchor("s1").is_err());
    }
}
