//! The reviewer console: the web pages where people work the review queue, served by
//! `vigil serve` from the same process and over the same `review.db` (cases, claims, the
//! hash-chained audit log) that `vigil review` uses.
//!
//! - [`accounts`]: accounts (Argon2id), sessions, lockout, in `DATA/console.db`.
//! - [`web`]: the routes: login, the queue, "next case", the case page, deciding, lead and
//!   admin views, the audit export. Pages are rendered on the server ([`html`]); the one
//!   script and style sheet are compiled into the binary, so the console works offline and
//!   its Content-Security-Policy allows nothing from elsewhere.
//!
//! The live service supplies what only it knows (a user's features, scores and recent
//! messages with their rare-harm scores) through [`LiveView`].

pub mod accounts;
pub mod bench;
mod groups;
mod html;
pub mod web;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use vigil_core::{Classify, ErrorKind};

pub use accounts::{Account, Accounts, Role};
pub use web::{Console, router};

/// Errors of the console, by whose fault they are.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// User: a bad argument (name, role, password).
    #[error("{0}")]
    Usage(String),
    /// Environment: a file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Environment: the SQLite store failed.
    #[error("{path}: {source}")]
    Store {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// Data: a stored value is damaged.
    #[error("{path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The review store.
    #[error(transparent)]
    Review(#[from] vigil_review::ReviewError),
    /// Bug.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ConsoleError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn store(path: &Path, source: rusqlite::Error) -> Self {
        Self::Store {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl Classify for ConsoleError {
    fn kind(&self) -> ErrorKind {
        match self {
            ConsoleError::Usage(_) => ErrorKind::Usage,
            ConsoleError::Io { .. } | ConsoleError::Store { .. } => ErrorKind::Environment,
            ConsoleError::Corrupt { .. } => ErrorKind::BadData,
            ConsoleError::Review(e) => e.kind(),
            ConsoleError::Internal(_) => ErrorKind::Bug,
        }
    }
}

/// One recent message of a user, as the case page shows it.
#[derive(Debug, Clone)]
pub struct Message {
    /// The text.
    pub text: String,
    /// Its rare-harm score, when the service scores messages.
    pub score: Option<f64>,
    /// The harmful index examples nearest to it, with their similarity (scored messages
    /// above 0 only).
    pub nearest: Vec<(String, f64)>,
}

/// What the live service knows about a case's user beyond the stored case.
#[derive(Debug, Clone, Default)]
pub struct LiveCase {
    /// The user-day's features, by name.
    pub features: Vec<(String, String)>,
    /// The model's and heuristic's view of the user-day, by name.
    pub scores: Vec<(String, String)>,
    /// The user's recent messages (oldest first).
    pub messages: Vec<Message>,
    /// The user's rare-harm affinity, when the service scores messages.
    pub affinity: Option<f64>,
}

/// The live service's view of a user-day, for the case page.
pub trait LiveView: Send + Sync + std::fmt::Debug {
    /// The user's state for `day` (`YYYY-MM-DD`); `None` when the service holds none.
    fn case<'a>(
        &'a self,
        user_id: &'a str,
        day: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<LiveCase>> + Send + 'a>>;

    /// The identifiers each user has used (IPs, devices, payment tokens: opaque keys, equal
    /// for equal identifiers), in the order given; a user the service does not hold has
    /// none. Entity resolution links the queue's users through them.
    fn identifiers(&self, users: &[String]) -> Vec<vigil_automate::er::UserKeys>;

    /// The service's API tokens (never the tokens themselves), oldest first.
    fn tokens(&self) -> Result<Vec<TokenRow>, String>;

    /// Make a token of `scope` (ingest, read, review or admin); returns it (the only time
    /// it is seen) and its id. It is live at once.
    fn create_token(&self, scope: &str, name: &str) -> Result<(String, String), String>;

    /// Revoke a token by id (false: no such live token). It is refused at once.
    fn revoke_token(&self, id: &str) -> Result<bool, String>;
}

/// One API token as the admin page lists it.
#[derive(Debug, Clone)]
pub struct TokenRow {
    /// Public id.
    pub id: String,
    /// A name for people.
    pub name: String,
    /// What it may do.
    pub scope: String,
    /// When it was made (UTC).
    pub created_at: String,
    /// When it was revoked, if it was.
    pub revoked_at: Option<String>,
}
