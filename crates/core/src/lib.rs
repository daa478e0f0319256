//! ocichunk's native core: content-defined chunking, SHA-256, independent zstd frames and the
//! filesystem calls Node lacks. Pure Rust with no Node dependency; `crates/napi` is the binding.

pub mod batch;
pub mod cache;
pub mod chunker;
pub mod error;
pub mod format;
pub mod frame;
pub mod fsx;
pub mod lazyfs;
pub mod mem;
pub mod restore;
pub mod tarscan;

pub use error::{Code, Error, IoCause, Result};

/// Version of the core, reported by `coreVersion()`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
