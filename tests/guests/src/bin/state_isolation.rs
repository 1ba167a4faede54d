//! Tries to carry state from one call into the next: it reports what it finds of an earlier
//! call, then leaves marks everywhere a later call would look. Every call runs in a fresh
//! instance, so every call must find nothing: a counter in a global, a static buffer (data
//! segment), a zeroed static buffer (bss), the heap, and pages it grew past the initial memory.
//!
//! It exports the start-up hook too, which counts itself as a call: the host snapshots the
//! component after it, so every call must find exactly that one earlier "call" and no other.
use std::sync::atomic::{AtomicU64, Ordering};

use sandgraph_hostile_guests::*;

struct Case;

/// A global the previous call incremented.
static CALLS: AtomicU64 = AtomicU64::new(0);

/// Initialised data: starts as the data segment wrote it.
static mut DATA: [u8; 4096] = [7; 4096];

/// Zero-initialised: lives in bss, which nothing writes at instantiation.
static mut BSS: [u8; 64 << 10] = [0; 64 << 10];

/// The mark a call leaves.
const MARK: u8 = 0xA5;

/// A WebAssembly page.
const PAGE: usize = 64 << 10;

impl sandgraph_hostile_guests::preinit_bindings::Guest for Case {
    fn wizer_initialize() {
        CALLS.fetch_add(1, Ordering::SeqCst);
    }
    fn info() -> ToolInfo {
        info("state_isolation")
    }
    fn invoke(_input: String) -> Result<String, ToolError> {
        let calls_before = CALLS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: the guest is single-threaded; nothing else touches these statics.
        let (data_changed, bss_dirty) = unsafe {
            let data = &mut *std::ptr::addr_of_mut!(DATA);
            let bss = &mut *std::ptr::addr_of_mut!(BSS);
            let seen = (data.iter().any(|b| *b != 7), bss.iter().any(|b| *b != 0));
            data.fill(MARK);
            bss.fill(MARK);
            seen
        };
        // A fresh heap allocation: the allocator hands out memory a previous call would have
        // written through the same allocation.
        let mut heap = vec![0u8; 256 << 10];
        let heap_marked = heap_was_marked(&heap);
        heap.fill(MARK);
        std::hint::black_box(&heap);
        // Pages past what the allocator uses: grown now, they must read as zero.
        let grown_at = core::arch::wasm32::memory_grow(0, 4);
        if grown_at == usize::MAX {
            return Err(ToolError::Failed("memory.grow refused".into()));
        }
        let grown_dirty = unsafe {
            let grown = std::slice::from_raw_parts_mut((grown_at * PAGE) as *mut u8, 4 * PAGE);
            let dirty = grown.iter().any(|b| *b != 0);
            grown.fill(MARK);
            dirty
        };
        Ok(format!(
            "{{\"calls_before\":{calls_before},\"data_changed\":{data_changed},\"bss_dirty\":{bss_dirty},\"heap_marked\":{heap_marked},\"grown_dirty\":{grown_dirty},\"memory_pages\":{}}}",
            core::arch::wasm32::memory_size(0)
        ))
    }
}

/// Whether `heap` holds the mark anywhere. `vec!` asks the allocator for zeroed memory, and
/// the allocator trusts pages fresh from `memory.grow` to be zero without clearing them, so a
/// page a previous call dirtied would show through here.
fn heap_was_marked(heap: &[u8]) -> bool {
    heap.iter().any(|b| *b == MARK)
}

sandgraph_hostile_guests::preinit_bindings::export_tool_preinit!(Case);

fn main() {}
