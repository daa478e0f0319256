//! Errors with a stable code prefix (`EINVAL`, `ECORRUPT`, `EIO`) that the TypeScript side maps to codes.
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Bad arguments: ranges out of bounds, invalid chunker parameters.
    Invalid(String),
    /// Corrupt compressed data or a size mismatch.
    Corrupt(String),
    /// An operating-system call failed.
    Io(String),
    /// Hostile input: a path escaping the root, a link to a directory, a target not empty.
    Unsafe(String),
    /// A format version or feature this reader does not know.
    Unsupported(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid(m) => write!(f, "EINVAL: {m}"),
            Error::Corrupt(m) => write!(f, "ECORRUPT: {m}"),
            Error::Io(m) => write!(f, "EIO: {m}"),
            Error::Unsafe(m) => write!(f, "EUNSAFE: {m}"),
            Error::Unsupported(m) => write!(f, "EUNSUPPORTED: {m}"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
