//! Measures the heap the scheduler's index uses per grant, with a counting allocator
//! (prints the number; run with `--nocapture` to see it).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use lark_auth::refresh::{DeadlineKind, RefreshIndex};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged and only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn bytes_per_grant_with_both_deadlines() {
    const GRANTS: u32 = 200_000;
    let before = LIVE.load(Ordering::Relaxed);
    let mut index = RefreshIndex::new();
    for g in 0..GRANTS {
        // Spread like real deadlines (not inserted in order).
        let base = u64::from(g.wrapping_mul(2_654_435_761) % 604_800) * 1000;
        index.set(g, DeadlineKind::KeepAlive, Some(base + 86_400_000));
        index.set(g, DeadlineKind::AccessRefresh, Some(base));
    }
    let used = LIVE.load(Ordering::Relaxed) - before;
    let per_grant = used as f64 / f64::from(GRANTS);
    println!(
        "refresh index: {used} bytes for {GRANTS} grants with two deadlines = {per_grant:.1} bytes/grant"
    );
    assert_eq!(index.len(), 2 * GRANTS as usize);
    assert!(per_grant < 100.0, "{per_grant:.1} bytes per grant");
}
