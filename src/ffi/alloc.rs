//! The global allocator: the server's allocator inside redis-server, the system's elsewhere.
//!
//! Inside redis-server, module memory must come from the server's allocator so that it shows in
//! `INFO memory` and counts towards `maxmemory`. The same crate also builds the `umcluster` admin
//! tool and the unit tests, where no server exists. The choice is made once, at the first
//! allocation, and never changes: inside the module the server's API pointers are filled in by
//! `RedisModule_Init` before the module allocates anything, so every block is freed by the
//! allocator that made it.

use std::alloc::{GlobalAlloc, Layout, System};
#[cfg(debug_assertions)]
use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};

use redis_module::raw;

const UNDECIDED: u8 = 0;
const SERVER: u8 = 1;
const SYSTEM: u8 = 2;

/// The server's allocator aligns to 16 bytes (jemalloc/libc malloc on 64-bit); larger alignments
/// go to the system allocator, decided by the layout alone so alloc and dealloc always agree.
const SERVER_MAX_ALIGN: usize = 16;

static MODE: AtomicU8 = AtomicU8::new(UNDECIDED);

#[cfg(debug_assertions)]
thread_local! {
    /// Allocations made by this thread (debug builds only: the proof that the routing hot path
    /// never allocates, `tests/alloc_free.rs`). `const` and drop-free, so reading it from inside
    /// the allocator can neither allocate nor fail.
    static THREAD_ALLOCS: Cell<u64> = const { Cell::new(0) };
}

/// Heap allocations and reallocations made by the calling thread so far (debug builds only).
#[cfg(debug_assertions)]
pub fn thread_allocations() -> u64 {
    THREAD_ALLOCS.try_with(Cell::get).unwrap_or(0)
}

#[inline]
fn count_allocation() {
    #[cfg(debug_assertions)]
    let _ = THREAD_ALLOCS.try_with(|c| c.set(c.get() + 1));
}

/// Allocator that delegates to `RedisModule_Alloc` when running inside redis-server.
pub struct ServerAwareAllocator;

impl ServerAwareAllocator {
    #[inline]
    fn use_server(layout: &Layout) -> bool {
        if layout.align() > SERVER_MAX_ALIGN {
            return false;
        }
        match MODE.load(Ordering::Relaxed) {
            SERVER => true,
            SYSTEM => false,
            _ => {
                // SAFETY: reading a function pointer filled in once by RedisModule_Init.
                let (alloc, free) = unsafe { (raw::RedisModule_Alloc, raw::RedisModule_Free) };
                let available = alloc.is_some() && free.is_some();
                let mode = if available { SERVER } else { SYSTEM };
                match MODE.compare_exchange(UNDECIDED, mode, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => mode == SERVER,
                    Err(decided) => decided == SERVER,
                }
            }
        }
    }
}

unsafe impl GlobalAlloc for ServerAwareAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        if Self::use_server(&layout) {
            // SAFETY: MODE is SERVER only when the pointer was present; it never goes away.
            match raw::RedisModule_Alloc {
                Some(alloc) => alloc(layout.size()).cast(),
                None => std::ptr::null_mut(),
            }
        } else {
            System.alloc(layout)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if Self::use_server(&layout) {
            if let Some(free) = raw::RedisModule_Free {
                free(ptr.cast())
            }
        } else {
            System.dealloc(ptr, layout)
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_allocation();
        if Self::use_server(&layout) {
            match raw::RedisModule_Realloc {
                Some(realloc) => realloc(ptr.cast(), new_size).cast(),
                None => std::ptr::null_mut(),
            }
        } else {
            System.realloc(ptr, layout, new_size)
        }
    }
}
