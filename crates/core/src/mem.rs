//! Memory whose pages go back to the system when a stage of a conversion is done with them, at a
//! known time: large buffers JavaScript would free only when V8 collects them (it does not count
//! their memory and has no reason to), and what glibc's arenas keep after a free.

use crate::{Error, Result};
use std::io;

/// A private anonymous mapping: zero-filled, its pages made when first written and handed back by
/// [`Pages::release`] (after which it reads as zeros and can be written again). Unmapped on drop.
pub struct Pages {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: plain memory; who writes or reads it when is up to its users (see BufferPool, the binding)
unsafe impl Send for Pages {}
unsafe impl Sync for Pages {}

impl Pages {
    pub fn new(len: usize) -> Result<Pages> {
        let len = len.max(1);
        // SAFETY: a new private anonymous mapping
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
        if p == libc::MAP_FAILED {
            return Err(Error::io(format_args!("a buffer of {len} bytes"), &io::Error::last_os_error()));
        }
        Ok(Pages { ptr: p as *mut u8, len })
    }
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Give the pages back to the system; the memory reads as zeros from then on. Nobody may be
    /// reading or writing it meanwhile (what they see is unspecified, but memory safe).
    pub fn release(&self) {
        // SAFETY: our mapping, of this length
        unsafe { libc::madvise(self.ptr as *mut libc::c_void, self.len, libc::MADV_DONTNEED) };
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: mapped in new() with this length; the owner is gone
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// Give the system back the free memory of every malloc arena (glibc keeps what is freed below an
/// arena's top, and each thread that allocates gets an arena of its own): called between the stages
/// of a conversion, so that what a stage freed is not counted while the next one peaks.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_pages_read_as_zeros_and_can_be_written_again() {
        let p = Pages::new(3 << 20).unwrap();
        let s = unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), p.len()) };
        s.fill(7);
        p.release();
        assert!(s.iter().all(|&b| b == 0));
        s[5] = 1;
        assert_eq!(s[5], 1);
        release_free_memory();
    }
}
