//! Host memory a guest makes: the heap the shim allocates on a guest's
//! behalf (HTTP fields and bodies, resource-table entries, directory and
//! socket handles, key-value replies, Wasmtime's per-store state) is charged
//! to that guest, so its memory limit bounds it as it bounds linear memory.
//!
//! How: the shim's global allocator, [`Accounting`], writes an 8-byte tag in
//! front of every block naming the [`HostBudget`] it is charged to: the
//! budget of the guest being polled on this thread when the block was made
//! ([`Charging`] sets it for the span of one poll), or none. Freeing a block
//! gives its bytes back to the budget its tag names, whichever thread frees
//! it, so a guest's figure falls again when its store is dropped. Changes
//! made by the guest on its own thread are summed in a thread-local and
//! published every [`BATCH`] bytes and at the end of each poll: the hot path
//! is a thread-local add, not a shared atomic two cores fight over.
//!
//! The budget is only counted here; `limiter` enforces it (a guest over its
//! limit traps when its host call returns, as an out-of-memory).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, Ordering};

/// Bytes of host heap charged to one guest. Lives as long as the process
/// (blocks charged to it may outlive the guest, and their frees still name
/// it): 8 bytes per guest ever created.
#[derive(Debug)]
pub struct HostBudget {
    bytes: AtomicI64,
}

/// Per-thread changes are published once they reach this many bytes either
/// way: a guest's figure is exact to within this much per thread.
pub const BATCH: i64 = 64 << 10;

thread_local! {
    /// The budget the guest being polled on this thread is charged to.
    static CURRENT: Cell<*const HostBudget> = const { Cell::new(std::ptr::null()) };
    /// Its unpublished change, in bytes.
    static PENDING: Cell<i64> = const { Cell::new(0) };
}

impl HostBudget {
    /// A new budget at zero.
    pub fn leak() -> &'static HostBudget {
        Box::leak(Box::new(HostBudget { bytes: AtomicI64::new(0) }))
    }

    /// Bytes charged now (this thread's unpublished change included).
    pub fn bytes(&'static self) -> u64 {
        let mine = if std::ptr::eq(CURRENT.get(), self) { PENDING.get() } else { 0 };
        (self.bytes.load(Ordering::Relaxed) + mine).max(0) as u64
    }
}

fn publish() {
    let pending = PENDING.replace(0);
    let current = CURRENT.get();
    if pending != 0 && !current.is_null() {
        // SAFETY: budgets are leaked, so a tag's pointer is always valid.
        unsafe { &*current }.bytes.fetch_add(pending, Ordering::Relaxed);
    }
}

fn charge(owner: *const HostBudget, delta: i64) {
    if owner.is_null() || delta == 0 {
        return;
    }
    if std::ptr::eq(owner, CURRENT.get()) {
        let p = PENDING.get() + delta;
        if p.abs() >= BATCH {
            PENDING.set(0);
            // SAFETY: as in `publish`.
            unsafe { &*owner }.bytes.fetch_add(p, Ordering::Relaxed);
        } else {
            PENDING.set(p);
        }
    } else {
        // SAFETY: as in `publish`.
        unsafe { &*owner }.bytes.fetch_add(delta, Ordering::Relaxed);
    }
}

/// While alive, blocks allocated on this thread are charged to `budget`.
/// Made at the start of a guest's poll and dropped at its end; nests.
pub struct Charging {
    prev: *const HostBudget,
}

impl Charging {
    pub fn to(budget: &'static HostBudget) -> Charging {
        publish();
        Charging { prev: CURRENT.replace(budget) }
    }
}

impl Drop for Charging {
    fn drop(&mut self) {
        publish();
        CURRENT.set(self.prev);
    }
}

/// The shim's global allocator: the system allocator with an owner tag in
/// front of each block. Install it with `#[global_allocator]` in a binary
/// that runs guests; without it nothing is charged and budgets stay at zero.
pub struct Accounting;

/// Room in front of a block of alignment `align` for its tag, keeping the
/// block aligned: 8 bytes, or the alignment when it is larger.
#[inline]
fn room(align: usize) -> usize {
    align.max(8)
}

/// Where the tag of `block` is: the 8 bytes right before it.
///
/// # Safety
/// `block` must be a block of [`Accounting`].
#[inline]
unsafe fn tag(block: *mut u8) -> *mut *const HostBudget {
    // SAFETY: every block has at least 8 bytes of room in front of it.
    unsafe { block.sub(8) as *mut *const HostBudget }
}

impl Accounting {
    #[inline]
    fn make(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        let room = room(layout.align());
        let Some(size) = layout.size().checked_add(room) else { return std::ptr::null_mut() };
        let Ok(outer) = Layout::from_size_align(size, layout.align()) else { return std::ptr::null_mut() };
        // SAFETY: `outer` is at least 8 bytes.
        let base = unsafe {
            if zeroed {
                System.alloc_zeroed(outer)
            } else {
                System.alloc(outer)
            }
        };
        if base.is_null() {
            return base;
        }
        // SAFETY: the block starts `room` bytes into what was allocated, and
        // its tag is in that room (`room` >= 8); the block stays aligned
        // because `room` is a multiple of the alignment.
        let block = unsafe { base.add(room) };
        let owner = CURRENT.get();
        // SAFETY: as above.
        unsafe { tag(block).write(owner) };
        charge(owner, layout.size() as i64);
        block
    }
}

// SAFETY: every block is the system allocator's, offset by `room`, and is
// given back to it with the same offset and an outer layout made the same
// way; the tag is written before the block is handed out and read only by
// `dealloc` and `realloc`.
unsafe impl GlobalAlloc for Accounting {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.make(layout, false)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.make(layout, true)
    }

    #[inline]
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let room = room(layout.align());
        // SAFETY: `block` is ours (the caller's contract), made by `make`
        // with this layout: its tag is in front of it, its allocation
        // `room` bytes before it with the outer layout rebuilt here.
        unsafe {
            charge(tag(block).read(), -(layout.size() as i64));
            System.dealloc(block.sub(room), Layout::from_size_align_unchecked(layout.size() + room, layout.align()));
        }
    }

    #[inline]
    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let room = room(layout.align());
        let Some(outer_new) = new_size.checked_add(room) else { return std::ptr::null_mut() };
        // SAFETY: as in `dealloc`; the system allocator copies the tag with
        // the block, and the new block keeps the offset.
        unsafe {
            let owner = tag(block).read();
            let outer = Layout::from_size_align_unchecked(layout.size() + room, layout.align());
            let base = System.realloc(block.sub(room), outer, outer_new);
            if base.is_null() {
                return base;
            }
            charge(owner, new_size as i64 - layout.size() as i64);
            base.add(room)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The engine's unit tests run with the accounting allocator, as the
    // shim does.
    #[global_allocator]
    static ALLOC: Accounting = Accounting;

    #[test]
    fn blocks_made_while_charging_count_until_freed_on_any_thread() {
        let budget = HostBudget::leak();
        let (a, b) = {
            let _c = Charging::to(budget);
            (vec![7u8; 3 << 20], Box::new([0u64; 512]))
        };
        let held = budget.bytes();
        assert!(((3 << 20) + 4096..(3 << 20) + 4096 + 1024).contains(&held), "{held}");
        // Made outside: not charged.
        let outside = vec![0u8; 1 << 20];
        assert!(budget.bytes() < held + 1024);
        // Freed on another thread: given back.
        std::thread::spawn(move || drop(a)).join().unwrap();
        assert!(budget.bytes() < 4096 + 1024, "{}", budget.bytes());
        drop((b, outside));
        assert!(budget.bytes() < 1024, "{}", budget.bytes());
    }

    #[test]
    fn growth_is_charged_to_the_blocks_owner_and_small_changes_are_published_at_the_end() {
        let budget = HostBudget::leak();
        let mut v: Vec<u8> = Vec::new();
        {
            let _c = Charging::to(budget);
            v.reserve_exact(1000);
            // Below BATCH: unpublished, yet counted on this thread.
            assert_eq!(budget.bytes(), 1000);
        }
        // Published when charging ended.
        assert_eq!(budget.bytes.load(Ordering::Relaxed), 1000);
        // Grown outside the guest's poll: still its block.
        v.reserve_exact(200_000);
        assert_eq!(budget.bytes(), 200_000);
        let other = HostBudget::leak();
        {
            let _c = Charging::to(other);
            drop(v);
            let _inner = Charging::to(budget);
        }
        assert_eq!((budget.bytes(), other.bytes()), (0, 0));
    }

    #[test]
    fn over_aligned_blocks_keep_their_alignment() {
        #[repr(align(4096))]
        struct Page([u8; 4096]);
        let budget = HostBudget::leak();
        let _c = Charging::to(budget);
        let pages: Vec<Box<Page>> = (0..8).map(|_| Box::new(Page([1; 4096]))).collect();
        assert!(pages.iter().all(|p| (p.as_ref() as *const Page as usize).is_multiple_of(4096) && p.0[4095] == 1));
        assert_eq!(budget.bytes(), 8 * 4096 + 8 * std::mem::size_of::<Box<Page>>() as u64);
    }
}
