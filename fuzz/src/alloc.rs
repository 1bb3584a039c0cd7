//! A global allocator that watches what each input costs in heap memory.
//!
//! A decoder that trusts a length read from the input (`Vec::with_capacity(len)`) shows up as
//! one allocation far larger than the input itself; a decoder that builds a value much larger
//! than its encoding (a million empty `Vec`s from a million zero bytes) shows up as a peak of
//! live heap far above the input's size. Both are measured per input.
//!
//! Without a sanitizer libFuzzer sees neither (its `-malloc_limit_mb` needs ASan's allocator
//! hooks), so each engine binary installs [`CappedAlloc::STRICT`]: an allocation that would go
//! over [`limit_for`] the current input, alone or in live heap, fails; Rust then aborts with
//! "memory allocation of N bytes failed" and the engine saves the input as a crash. The smoke
//! runner installs [`CappedAlloc::RECORD`], which only records, so that it can report the
//! input and go on.
//!
//! The only `unsafe` code of the fuzz crate: `GlobalAlloc` is an unsafe trait. Every call is
//! forwarded unchanged to [`System`]; the additions are a size check and counters.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Allowance for any input, whatever its length: covers fixed-size work buffers and the
/// largest legitimate output bound a target passes in (a 4 MiB chunk for `payload`).
pub const BASE_ALLOWANCE: usize = 8 << 20;
/// Allowance per byte of input: a decoder may copy or expand its input a few times over.
pub const PER_INPUT_BYTE: usize = 16;

static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);
static LARGEST: AtomicUsize = AtomicUsize::new(0);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static LIVE_AT_BEGIN: AtomicUsize = AtomicUsize::new(0);
static PEAK_LIVE: AtomicUsize = AtomicUsize::new(0);

/// What one input cost in heap memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// The largest single allocation.
    pub largest: usize,
    /// The most heap in use at once, above what was in use before the input.
    pub peak: usize,
}

/// The most memory (one allocation, or all of them at once) allowed while decoding an input
/// of `len` bytes.
pub fn limit_for(len: usize) -> usize {
    BASE_ALLOWANCE.saturating_add(len.saturating_mul(PER_INPUT_BYTE))
}

/// Starts watching for one input: resets the peaks and sets the limit.
pub fn begin(len: usize) {
    let live = LIVE.load(Ordering::Relaxed);
    LIVE_AT_BEGIN.store(live, Ordering::Relaxed);
    PEAK_LIVE.store(live, Ordering::Relaxed);
    LARGEST.store(0, Ordering::Relaxed);
    LIMIT.store(limit_for(len), Ordering::Relaxed);
}

/// Stops watching and returns what the input cost since [`begin`].
pub fn end() -> Usage {
    LIMIT.store(usize::MAX, Ordering::Relaxed);
    Usage {
        largest: LARGEST.load(Ordering::Relaxed),
        peak: PEAK_LIVE
            .load(Ordering::Relaxed)
            .saturating_sub(LIVE_AT_BEGIN.load(Ordering::Relaxed)),
    }
}

/// [`System`] with a size check on every allocation. See the module docs.
#[derive(Debug)]
pub struct CappedAlloc {
    strict: bool,
}

impl CappedAlloc {
    /// Fails allocations over the limit (for libFuzzer and AFL binaries).
    pub const STRICT: CappedAlloc = CappedAlloc { strict: true };
    /// Only records the peaks (for the smoke runner).
    pub const RECORD: CappedAlloc = CappedAlloc { strict: false };

    /// Records a request to grow the heap by `grow` bytes in one allocation of `size`;
    /// false when the strict limit forbids it.
    fn allowed(&self, size: usize, grow: usize) -> bool {
        LARGEST.fetch_max(size, Ordering::Relaxed);
        if !self.strict {
            return true;
        }
        let limit = LIMIT.load(Ordering::Relaxed);
        let used = LIVE
            .load(Ordering::Relaxed)
            .saturating_sub(LIVE_AT_BEGIN.load(Ordering::Relaxed));
        size <= limit && used.saturating_add(grow) <= limit
    }

    fn grew(grow: usize) {
        let now = LIVE.fetch_add(grow, Ordering::Relaxed).saturating_add(grow);
        PEAK_LIVE.fetch_max(now, Ordering::Relaxed);
    }

    fn shrank(by: usize) {
        LIVE.fetch_sub(by, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments, or returns null
// (which `GlobalAlloc` allows: it reports an allocation failure). The bookkeeping only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !self.allowed(layout.size(), layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: same contract as ours.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            Self::grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !self.allowed(layout.size(), layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: same contract as ours.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            Self::grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) };
        Self::shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if !self.allowed(new_size, new_size.saturating_sub(old)) {
            return std::ptr::null_mut();
        }
        // SAFETY: same contract as ours.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            if new_size >= old {
                Self::grew(new_size - old);
            } else {
                Self::shrank(old - new_size);
            }
        }
        new
    }
}
