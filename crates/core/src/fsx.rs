//! Filesystem calls Node does not offer: device nodes, FIFOs and extended attributes (no symlink following).

use crate::{Error, Result};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstr(s: &[u8], what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::invalid(format!("{what} contains a NUL byte")))
}

fn errno(call: &str, path: &Path) -> Error {
    Error::last_os(format_args!("{call} {}", path.display()))
}

#[derive(Debug, Clone, Copy)]
pub enum NodeKind {
    Char,
    Block,
    Fifo,
}

pub fn mknod(path: &Path, kind: NodeKind, mode: u32, major: u32, minor: u32) -> Result<()> {
    let p = cstr(path.as_os_str().as_bytes(), "path")?;
    let fmt = match kind {
        NodeKind::Char => libc::S_IFCHR,
        NodeKind::Block => libc::S_IFBLK,
        NodeKind::Fifo => libc::S_IFIFO,
    };
    let dev = match kind {
        NodeKind::Fifo => 0,
        _ => libc::makedev(major, minor),
    };
    // SAFETY: p is a valid NUL-terminated string for the duration of the call.
    if unsafe { libc::mknod(p.as_ptr(), fmt | (mode & 0o7777) as libc::mode_t, dev) } != 0 {
        return Err(errno("mknod", path));
    }
    Ok(())
}

pub fn lsetxattr(path: &Path, name: &str, value: &[u8]) -> Result<()> {
    let p = cstr(path.as_os_str().as_bytes(), "path")?;
    let n = cstr(name.as_bytes(), "xattr name")?;
    // SAFETY: valid C strings and a valid (ptr, len) for value.
    if unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) } != 0 {
        return Err(errno(&format!("lsetxattr {name}"), path));
    }
    Ok(())
}

pub fn llistxattr(path: &Path) -> Result<Vec<String>> {
    let p = cstr(path.as_os_str().as_bytes(), "path")?;
    loop {
        // SAFETY: a NULL buffer with size 0 asks for the needed size.
        let n = unsafe { libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOTSUP) {
                return Ok(vec![]);
            }
            return Err(errno("llistxattr", path));
        }
        let mut buf = vec![0u8; n as usize];
        // SAFETY: buf has n bytes.
        let m = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if m < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(errno("llistxattr", path));
        }
        buf.truncate(m as usize);
        return Ok(buf.split(|&b| b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect());
    }
}

pub fn lgetxattr(path: &Path, name: &str) -> Result<Vec<u8>> {
    let p = cstr(path.as_os_str().as_bytes(), "path")?;
    let n = cstr(name.as_bytes(), "xattr name")?;
    loop {
        // SAFETY: size query with a NULL buffer.
        let len = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            return Err(errno(&format!("lgetxattr {name}"), path));
        }
        let mut buf = vec![0u8; len as usize];
        // SAFETY: buf has len bytes.
        let m = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if m < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(errno(&format!("lgetxattr {name}"), path));
        }
        buf.truncate(m as usize);
        return Ok(buf);
    }
}

/// Make glibc return large buffers to the system when they are freed. By default its mmap threshold
/// grows with every large free, after which multi-MiB batch buffers come from per-thread arenas
/// and stay mapped: a process converting image after image (analyze) grew by ~25 MiB per image.
/// With a fixed 1 MiB threshold peak RSS of analyzing 9 images fell from 485 to 326 MiB.
pub fn return_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_and_xattrs() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("fifo");
        mknod(&f, NodeKind::Fifo, 0o640, 0, 0).unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(&f).unwrap().file_type().is_fifo());
        assert!(mknod(&f, NodeKind::Fifo, 0o640, 0, 0).is_err()); // exists
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        match lsetxattr(&file, "user.ocichunk", &[0, 1, 2, 255]) {
            Ok(()) => {
                assert_eq!(llistxattr(&file).unwrap(), vec!["user.ocichunk".to_string()]);
                assert_eq!(lgetxattr(&file, "user.ocichunk").unwrap(), vec![0, 1, 2, 255]);
            }
            Err(e) if e.io_cause().and_then(|c| c.errno) == Some(libc::ENOTSUP) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(lgetxattr(&file, "user.missing").is_err());
    }
}
