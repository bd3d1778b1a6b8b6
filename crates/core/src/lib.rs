//! Vigil's ground floor: the few things every crate shares, with no dependencies, so that
//! Sentinel used alone still carries nothing heavy.
//!
//! [`ErrorKind`] says whose fault an error is. Every error type of the workspace implements
//! [`Classify`] variant by variant; the binary maps kinds to exit codes in one place
//! ([`ErrorKind::exit_code`]).

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_the_readmes() {
        assert_eq!(ErrorKind::Usage.exit_code(), 2);
        assert_eq!(ErrorKind::BadData.exit_code(), 3);
        assert_eq!(ErrorKind::Environment.exit_code(), 1);
        assert_eq!(ErrorKind::Bug.exit_code(), 1);
    }
}
