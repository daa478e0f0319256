//! Errors with a stable [`Code`] kept apart from the message, so the binding can hand the code to
//! JavaScript as `err.code` instead of writing it into the text. Errors from the operating system
//! keep their [`std::io::ErrorKind`] and raw errno.
use std::fmt;
use std::io;

/// What went wrong, as a stable code (`Code::as_str`) callers can switch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// Bad arguments: ranges out of bounds, invalid chunker parameters, calls out of order (EINVAL).
    Invalid,
    /// Corrupt compressed data or tar, a malformed TOC, a size mismatch (ECORRUPT).
    Corrupt,
    /// An operating-system call or a resource (thread, decoder) failed (EIO).
    Io,
    /// A file the call needed does not exist (ENOTFOUND).
    NotFound,
    /// Hostile input: a path escaping the root, a link to a directory, a target not empty (EUNSAFE).
    Unsafe,
    /// A format version, feature or entry type this reader does not know (EUNSUPPORTED).
    Unsupported,
}

impl Code {
    pub const ALL: [Code; 6] = [Code::Invalid, Code::Corrupt, Code::Io, Code::NotFound, Code::Unsafe, Code::Unsupported];

    /// The code as JavaScript sees it (`err.code`); never changes for a given variant.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Invalid => "EINVAL",
            Code::Corrupt => "ECORRUPT",
            Code::Io => "EIO",
            Code::NotFound => "ENOTFOUND",
            Code::Unsafe => "EUNSAFE",
            Code::Unsupported => "EUNSUPPORTED",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an I/O error came from: the kind Rust gives it and the OS error number, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoCause {
    pub kind: io::ErrorKind,
    pub errno: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    code: Code,
    message: String,
    io: Option<IoCause>,
}

impl Error {
    /// An error of `code`; the message says what and where, without the code.
    pub fn new(code: Code, message: impl Into<String>) -> Error {
        Error { code, message: message.into(), io: None }
    }

    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(Code::Invalid, message)
    }

    pub fn corrupt(message: impl Into<String>) -> Error {
        Error::new(Code::Corrupt, message)
    }

    pub fn unsupported(message: impl Into<String>) -> Error {
        Error::new(Code::Unsupported, message)
    }

    /// Hostile input ([`Code::Unsafe`]).
    pub fn unsafe_input(message: impl Into<String>) -> Error {
        Error::new(Code::Unsafe, message)
    }

    /// An operating-system error, `context` saying what was being done ("open /x"): code
    /// [`Code::NotFound`] for a missing file, else [`Code::Io`]; the kind and errno are kept.
    pub fn io(context: impl fmt::Display, e: &io::Error) -> Error {
        let code = if e.kind() == io::ErrorKind::NotFound { Code::NotFound } else { Code::Io };
        Error { code, message: format!("{context}: {e}"), io: Some(IoCause { kind: e.kind(), errno: e.raw_os_error() }) }
    }

    /// [`Error::io`] of the calling thread's last OS error (after a failed libc call).
    pub fn last_os(context: impl fmt::Display) -> Error {
        Error::io(context, &io::Error::last_os_error())
    }

    pub fn code(&self) -> Code {
        self.code
    }

    /// The stable code as a string ("ECORRUPT").
    pub fn code_str(&self) -> &'static str {
        self.code.as_str()
    }

    /// The message alone (what `Display` shows).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The OS error behind this one, if it came from one.
    pub fn io_cause(&self) -> Option<IoCause> {
        self.io
    }

    /// The same error, its message prefixed with `context` ("frame 3: ...").
    pub fn context(mut self, context: impl fmt::Display) -> Error {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_distinct() {
        let s: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(s, ["EINVAL", "ECORRUPT", "EIO", "ENOTFOUND", "EUNSAFE", "EUNSUPPORTED"]);
        assert_eq!(Error::invalid("x").code_str(), "EINVAL");
        assert_eq!(Error::corrupt("x").code(), Code::Corrupt);
        assert_eq!(Error::unsupported("x").code(), Code::Unsupported);
        assert_eq!(Error::unsafe_input("x").code(), Code::Unsafe);
    }

    #[test]
    fn display_is_the_message_without_a_code() {
        let e = Error::corrupt("zstd: bad frame");
        assert_eq!(e.to_string(), "zstd: bad frame");
        assert_eq!(e.context("frame 2").to_string(), "frame 2: zstd: bad frame");
    }

    #[test]
    fn io_errors_keep_kind_and_errno() {
        let e = Error::io("open /nowhere", &io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(e.code(), Code::NotFound);
        assert_eq!(e.io_cause(), Some(IoCause { kind: io::ErrorKind::NotFound, errno: Some(libc::ENOENT) }));
        assert!(e.message().starts_with("open /nowhere: "), "{e}");

        let e = Error::io("write x", &io::Error::from_raw_os_error(libc::ENOSPC)).context("restore");
        assert_eq!(e.code(), Code::Io);
        assert_eq!(e.io_cause().unwrap().errno, Some(libc::ENOSPC));
        assert!(e.to_string().starts_with("restore: write x: "), "{e}");

        let e = Error::io("scan thread", &io::Error::other("no threads"));
        assert_eq!((e.code(), e.io_cause().unwrap().kind, e.io_cause().unwrap().errno), (Code::Io, io::ErrorKind::Other, None));
        assert_eq!(Error::new(Code::Io, "chunk hashing stopped").io_cause(), None);
    }

    #[test]
    fn last_os_reads_errno() {
        // SAFETY: close(-1) only sets errno
        assert_eq!(unsafe { libc::close(-1) }, -1);
        let e = Error::last_os("close -1");
        assert_eq!((e.code(), e.io_cause().unwrap().errno), (Code::Io, Some(libc::EBADF)));
    }

    /// The core's own calls give the codes the binding hands to JavaScript, messages without them.
    mod sites {
        use super::super::*;
        use crate::{batch, chunker::ChunkerParams, format, frame, fsx, restore};
        use std::sync::Arc;

        fn no_prefix(e: &Error) {
            let m = e.to_string();
            assert!(!Code::ALL.iter().any(|c| m.contains(&format!("{c}: "))), "{m}");
        }

        fn toc(entries: serde_json::Value, version: u32) -> Vec<u8> {
            let t = serde_json::json!({
                "version": version, "chunker": { "kind": "cdc" }, "packs": [], "frames": [], "chunks": [],
                "layers": [{ "entries": entries }],
            });
            frame::compress_frame(&[t.to_string().as_bytes()], 3).unwrap()
        }

        fn open(blob: &[u8]) -> std::result::Result<Arc<format::Checked>, Error> {
            format::Checked::open(blob).map(Arc::new).map_err(|r| restore::report_error(&r))
        }

        #[test]
        fn corrupt_and_invalid_input() {
            let e = frame::decompress_bytes(b"not zstd at all", 100).unwrap_err();
            assert_eq!(e.code(), Code::Corrupt);
            no_prefix(&e);
            let e = batch::decompress_frames(b"not zstd at all", &[(0, 15, 10)], &[], 1).unwrap_err();
            assert!(e.code() == Code::Corrupt && e.message().starts_with("frame 0: zstd: "), "{e}");
            assert_eq!(batch::hash_ranges(b"abc", &[(2, 2)], 1).unwrap_err().code(), Code::Invalid);
            assert_eq!(ChunkerParams::Cdc { min: 1, avg: 2, max: 3 }.validate().unwrap_err().code(), Code::Invalid);
            assert_eq!(frame::compress_frame(&[b"x"], 1000).unwrap_err().code(), Code::Invalid);
        }

        #[test]
        fn missing_files_and_failed_calls() {
            let dir = tempfile::tempdir().unwrap();
            let missing = dir.path().join("missing");
            for e in [batch::hash_file(&missing).unwrap_err(), fsx::lgetxattr(&missing, "user.x").unwrap_err(), fsx::llistxattr(&missing).unwrap_err()] {
                assert_eq!((e.code(), e.io_cause()), (Code::NotFound, Some(IoCause { kind: io::ErrorKind::NotFound, errno: Some(libc::ENOENT) })), "{e}");
                no_prefix(&e);
            }
            std::fs::write(dir.path().join("f"), b"x").unwrap();
            let e = fsx::mknod(&dir.path().join("f"), fsx::NodeKind::Fifo, 0o644, 0, 0).unwrap_err();
            assert_eq!((e.code(), e.io_cause().unwrap().kind, e.io_cause().unwrap().errno), (Code::Io, io::ErrorKind::AlreadyExists, Some(libc::EEXIST)));
            assert!(e.message().starts_with("mknod "), "{e}");
        }

        #[test]
        fn toc_violations_keep_their_class() {
            let dir = serde_json::json!([{ "path": "d", "type": "dir", "mode": 0o755 }]);
            assert!(open(&toc(dir.clone(), 1)).is_ok());
            let e = open(&toc(dir, 99)).unwrap_err();
            assert_eq!(e.code(), Code::Unsupported, "{e}");
            let e = open(&toc(serde_json::json!([{ "path": "../x", "type": "dir", "mode": 0o755 }]), 1)).unwrap_err();
            assert_eq!(e.code(), Code::Unsafe, "{e}");
            let e = open(b"garbage").unwrap_err();
            assert!(e.code() == Code::Corrupt && e.message().starts_with("TOC: zstd: "), "{e}");
            no_prefix(&e);
        }

        #[test]
        fn unsafe_restore_targets() {
            let img = open(&toc(serde_json::json!([{ "path": "d", "type": "dir", "mode": 0o755 }]), 1)).unwrap();
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("f"), b"x").unwrap();
            for target in [dir.path().to_path_buf(), dir.path().join("f")] {
                let e = restore::Writer::open(&target, img.clone()).err().unwrap();
                assert_eq!(e.code(), Code::Unsafe, "{e}");
                no_prefix(&e);
            }
            assert!(restore::Writer::open(&dir.path().join("new"), img).is_ok());
        }
    }
}
