//! The binary's global allocator: one of two, fixed for a process's whole
//! life before its first allocation.
//!
//! - A shim uses the system allocator with every block tagged by the guest
//!   it was made for ([`Accounting`]), so the host memory a guest makes
//!   counts against its memory limit.
//! - A compiler child doing a first start's baseline compile (started with
//!   [`COMPILER_HEAP`] in its environment) uses mimalloc, untagged: it runs
//!   no guest, and the compile is what a first start waits for. On the 18 MB
//!   componentize-py component mimalloc made that compile 1.13x to 1.24x
//!   faster than glibc's malloc (2.43-2.81 s -> 2.15-2.24 s wall, 2 cores),
//!   for a higher peak (313 -> 421 MB). The optimizing compile, which runs
//!   in the background next to the guest and gained 6%, keeps glibc's
//!   smaller peak.
//!
//! A process never frees a block of the other allocator: the choice is made
//! once, at the first allocation (before `main`, when the process is still
//! single-threaded), from the environment the process was started with.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU8, Ordering};

use wasmcell_engine::hostmem::Accounting;

/// The environment variable (any value) that makes a process use mimalloc.
/// Only the compiler child may have it: a shim started with it refuses to
/// run (see [`check`]), since its guests' host memory would go uncounted.
pub const COMPILER_HEAP: &str = "WASMCELL_COMPILER_HEAP";
const COMPILER_HEAP_C: &std::ffi::CStr = c"WASMCELL_COMPILER_HEAP";

const UNDECIDED: u8 = 0;
const ACCOUNTING: u8 = 1;
const MIMALLOC: u8 = 2;

static CHOSEN: AtomicU8 = AtomicU8::new(UNDECIDED);

#[inline]
fn chosen() -> u8 {
    match CHOSEN.load(Ordering::Relaxed) {
        UNDECIDED => {
            // SAFETY: getenv reads the environment without allocating; the
            // first allocation happens before `main`, when no other thread
            // exists that could change the environment.
            let set = unsafe { !libc::getenv(COMPILER_HEAP_C.as_ptr()).is_null() };
            let c = if set { MIMALLOC } else { ACCOUNTING };
            // Two threads racing here (impossible before `main`) would agree.
            CHOSEN.store(c, Ordering::Relaxed);
            c
        }
        c => c,
    }
}

/// Whether this process allocates with mimalloc (a compiler child).
fn is_compiler_heap() -> bool {
    chosen() == MIMALLOC
}

/// Refuses a process that is not a compiler child but was started with
/// [`COMPILER_HEAP`]: the error to print, and exit with.
pub fn check(is_compiler: bool) -> Result<(), String> {
    if is_compiler_heap() && !is_compiler {
        return Err(format!(
            "{COMPILER_HEAP} is set in the environment: it is for the shim's own compiler child only \
             (a shim with it would not count its guests' host memory); remove it from containerd's environment"
        ));
    }
    Ok(())
}

/// The global allocator of `containerd-shim-wasmtime-v1` (see the module).
pub struct Heap;

// SAFETY: every call goes to the one allocator this process chose before its
// first allocation, so each block is freed or grown by the allocator that
// made it; both are sound global allocators.
unsafe impl GlobalAlloc for Heap {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe {
            if chosen() == MIMALLOC {
                mimalloc::MiMalloc.alloc(layout)
            } else {
                Accounting.alloc(layout)
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe {
            if chosen() == MIMALLOC {
                mimalloc::MiMalloc.alloc_zeroed(layout)
            } else {
                Accounting.alloc_zeroed(layout)
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract; the block is the chosen allocator's.
        unsafe {
            if chosen() == MIMALLOC {
                mimalloc::MiMalloc.dealloc(block, layout)
            } else {
                Accounting.dealloc(block, layout)
            }
        }
    }

    #[inline]
    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract; the block is the chosen allocator's.
        unsafe {
            if chosen() == MIMALLOC {
                mimalloc::MiMalloc.realloc(block, layout, new_size)
            } else {
                Accounting.realloc(block, layout, new_size)
            }
        }
    }
}
