//! A global allocator for tests that catches secrets left in freed memory: every
//! block freed (or moved away from by a reallocation) while it is armed is
//! searched for the armed pattern, such as a private key's hex.
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: wireseal_netns::WipeCheck = wireseal_netns::WipeCheck;
//! ```
#![allow(
    unsafe_code,
    reason = "a global allocator is unsafe by definition; it only forwards to System"
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

const MAX_PATTERN: usize = 128;

static ARMED: AtomicBool = AtomicBool::new(false);
static FOUND: AtomicUsize = AtomicUsize::new(0);
static PATTERN_LEN: AtomicUsize = AtomicUsize::new(0);
static PATTERN: [AtomicU8; MAX_PATTERN] = [const { AtomicU8::new(0) }; MAX_PATTERN];

/// Forwards to the system allocator; while armed, counts freed blocks that
/// still hold the pattern.
pub struct WipeCheck;

/// Starts looking for `pattern` (at most 128 bytes) in freed memory.
///
/// # Panics
/// When the pattern is longer than 128 bytes or a check is already armed.
pub fn arm(pattern: &[u8]) {
    assert!(pattern.len() <= MAX_PATTERN, "pattern too long");
    assert!(!ARMED.load(Ordering::SeqCst), "already armed");
    for (slot, byte) in PATTERN.iter().zip(pattern) {
        slot.store(*byte, Ordering::SeqCst);
    }
    PATTERN_LEN.store(pattern.len(), Ordering::SeqCst);
    FOUND.store(0, Ordering::SeqCst);
    ARMED.store(true, Ordering::SeqCst);
}

/// Stops looking; how many freed blocks held the pattern.
pub fn disarm() -> usize {
    ARMED.store(false, Ordering::SeqCst);
    FOUND.load(Ordering::SeqCst)
}

fn check(ptr: *const u8, len: usize) {
    if !ARMED.load(Ordering::SeqCst) {
        return;
    }
    let n = PATTERN_LEN.load(Ordering::SeqCst);
    if n == 0 || len < n {
        return;
    }
    let mut pattern = [0u8; MAX_PATTERN];
    for (byte, slot) in pattern.iter_mut().zip(&PATTERN) {
        *byte = slot.load(Ordering::Relaxed);
    }
    let pattern = &pattern[..n];
    // SAFETY: `ptr` points to `len` bytes the caller still owns (it is about to
    // free or move them).
    let block = unsafe { std::slice::from_raw_parts(ptr, len) };
    if block.windows(n).any(|w| w == pattern) {
        FOUND.fetch_add(1, Ordering::SeqCst);
    }
}

// SAFETY: every call is forwarded to System with the same arguments; `check`
// only reads the block before it is released.
unsafe impl GlobalAlloc for WipeCheck {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        check(ptr, layout.size());
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A reallocation may move the block and free the old one unwiped.
        check(ptr, layout.size());
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
