//! Keeps the process's resident memory close to what the store actually holds.
//!
//! glibc's allocator gives each thread that allocates its own arena (up to eight per
//! core) and keeps freed pages of every arena mapped. The store frees a lot at once: a
//! checkpoint drops the whole sealing set (up to `checkpoint_positions` × ~40 B) and
//! the blocks it encoded, and sled's threads churn small allocations. Without this the
//! resident size ratchets up to the sum of every arena's high-water mark. Measured with
//! `gt06 bench-store` (BENCHMARKS.md): limiting arenas, and trimming every 250,000
//! positions sealed, every 1,000,000 operations committed and after each checkpoint, is
//! what keeps RSS under the store issue's 256 MiB.
//!
//! Must never change program behaviour, only where freed memory goes; on a non-glibc
//! target both functions do nothing.

/// Caps the number of malloc arenas. Call once, first thing in `main`, before threads
/// exist (arenas created earlier stay).
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tunable; no memory is touched.
    unsafe {
        // Two arenas: the writer thread and the rest contend little at this rate.
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns freed heap pages of every arena to the kernel. Takes a few milliseconds on
/// a large heap, so the writer calls it every few hundred thousand positions, not per
/// commit.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages; live allocations are untouched.
    unsafe {
        libc::malloc_trim(0);
    }
}
