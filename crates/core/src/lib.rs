//! Vigil's ground floor: the few things every crate shares, with no dependencies, so that
//! Sentinel used alone still carries nothing heavy.
//!
//! [`ErrorKind`] says whose fault an error is. Every error type of the workspace implements
//! [`Classify`] variant by variant; the binary maps kinds to exit codes in one place
//! ([`ErrorKind::exit_code`]). [`write_atomic`] is the one way a whole file is replaced.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Whose fault an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The user's arguments or configuration (a bad flag, rule, bundle choice): exit 2.
    Usage,
    /// The input data, a stored artifact or the audit chain is bad or damaged: exit 3.
    BadData,
    /// The machine: I/O, permissions, a missing file, a runtime that would not start: exit 1.
    Environment,
    /// A bug in Vigil: exit 1.
    Bug,
}

impl ErrorKind {
    /// The process exit code for this kind, as the README documents.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Usage => 2,
            ErrorKind::BadData => 3,
            ErrorKind::Environment | ErrorKind::Bug => 1,
        }
    }
}

/// An error that knows whose fault it is.
pub trait Classify {
    /// The kind of this error (a wrapping variant answers with the kind of what it wraps).
    fn kind(&self) -> ErrorKind;
}

/// A closed vocabulary: an enum whose every variant has one lowercase name, parsed from and
/// printed as it. The names are what configuration, bundles and the audit log store.
macro_rules! vocabulary {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, in order.
            pub const ALL: [$name; [$($text),+].len()] = [$($name::$variant),+];
            /// Every value's name, in order.
            pub const NAMES: [&'static str; [$($text),+].len()] = [$($text),+];

            /// The stored name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            /// Exactly a name (no case folding: `High` is not `high`).
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "`{other}` is not one of {}",
                        $name::NAMES.join(", ")
                    )),
                }
            }
        }
    };
}

vocabulary! {
    /// What an enforcement rule or a reviewer does about a case.
    Action {
        /// Nothing.
        Allow = "allow",
        /// Warn the user.
        Warn = "warn",
        /// Slow the user down.
        RateLimit = "rate_limit",
        /// Block the user.
        Block = "block",
        /// Hand the case to a lead.
        Escalate = "escalate",
    }
}

vocabulary! {
    /// How serious an alert is; a `high` one opens an incident.
    Severity {
        /// Low.
        Low = "low",
        /// Medium.
        Medium = "medium",
        /// High: opens an incident.
        High = "high",
    }
}

vocabulary! {
    /// Why a reviewer decided as they did.
    ReasonCode {
        /// Spam.
        Spam = "spam",
        /// Evading the policy.
        PolicyEvasion = "policy_evasion",
        /// Coordinated abuse (rings).
        CoordinatedAbuse = "coordinated_abuse",
        /// Not abuse after all.
        FalsePositive = "false_positive",
    }
}

/// Replace `path` with `bytes` so that a reader (or a crash) sees the old file or the new
/// one, never part of either: written to a temporary name beside it (`.NAME.tmp`), flushed
/// to disk, renamed over it, then the directory flushed. The temporary file is removed on
/// an error. Returns the I/O error with the path it concerns.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), (PathBuf, std::io::Error)> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .map_err(|e| (tmp.clone(), e))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| (path.to_path_buf(), e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return written;
    }
    // A directory that cannot be opened for syncing (some file systems) still has the file.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn vocabularies_parse_exactly_their_names_and_print_them_back() {
        for a in Action::ALL {
            assert_eq!(a.as_str().parse::<Action>(), Ok(a));
        }
        assert_eq!(
            Action::NAMES,
            ["allow", "warn", "rate_limit", "block", "escalate"]
        );
        assert_eq!(Severity::High.to_string(), "high");
        let err = "High".parse::<Severity>().unwrap_err();
        assert!(err.contains("low, medium, high"), "{err}");
        assert!("nuke".parse::<Action>().is_err());
        assert_eq!("spam".parse::<ReasonCode>(), Ok(ReasonCode::Spam));
    }

    #[test]
    fn write_atomic_replaces_the_whole_file_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("vigil-core-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.json");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert!(!dir.join(".a.json.tmp").exists());
        // Into a directory that does not exist: the error names the temporary path.
        let (p, _) = write_atomic(&dir.join("missing").join("b"), b"x").unwrap_err();
        assert!(p.ends_with(".b.tmp"), "{}", p.display());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn exit_codes_are_the_readmes() {
        assert_eq!(ErrorKind::Usage.exit_code(), 2);
        assert_eq!(ErrorKind::BadData.exit_code(), 3);
        assert_eq!(ErrorKind::Environment.exit_code(), 1);
        assert_eq!(ErrorKind::Bug.exit_code(), 1);
    }
}
