//! Allocator tuning for the control plane process: glibc's mmap threshold and a periodic trim
//! that hands freed heap pages back to the system.
//!
//! Reconnect storms allocate and free a TLS session, broker buffers and channels per
//! connection, interleaved with long-lived allocations (logged messages, configs). glibc
//! keeps the freed pages between them resident: with the heap itself flat (heaptrack), RSS
//! still rose by 20 MiB over 80 storms of 100 reconnects, levelling off slowly.
//! `malloc_trim(0)` releases free pages anywhere in every arena (not only at the top of the
//! heap) and brings RSS back to the live heap (BENCHMARKS.md, config churn). It is not free:
//! each trim holds the allocator's locks for 5–16 ms on a 300 MiB control plane, and every
//! page it released is faulted in again when reused. So it runs only after agents logged in
//! (the churn that leaves freed pages behind), at most once per `--heap-trim-interval-ms`,
//! and never in a steady state.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::counters::Counters;

/// Buffers of this size and more (desired configs, MQTT packets, batches) are mapped on their
/// own and returned to the system when freed.
const MMAP_THRESHOLD_BYTES: i32 = 64 * 1024;

/// Fixes glibc's mmap threshold. Call before any other thread exists.
pub fn tune_allocator() {
    // glibc raises its mmap threshold after each large free, after which large buffers come
    // from the heap arenas and fragment them. A fixed threshold keeps large buffers out of
    // the arenas.
    // SAFETY: mallopt only changes allocator parameters; the caller runs it before any other
    // thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
    }
}

/// Logins since the last trim that make the next one worth its cost.
const LOGINS_PER_TRIM: u64 = 16;

/// Starts a thread that calls `malloc_trim(0)` at most once per `interval`, when at least
/// [`LOGINS_PER_TRIM`] logins were counted in `logins` since the last trim. A trim that takes a
/// millisecond or more is logged at debug level.
pub fn spawn_trimmer(interval: Duration, logins: Arc<Counters>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("vantage-trim".into())
        .spawn(move || {
            let mut trimmed_at_logins = 0;
            loop {
                std::thread::sleep(interval);
                let now = logins.frontdoor_logins.load(Ordering::Relaxed);
                if now.saturating_sub(trimmed_at_logins) < LOGINS_PER_TRIM {
                    continue;
                }
                trimmed_at_logins = now;
                let started = Instant::now();
                // SAFETY: malloc_trim only returns free memory to the system; it takes the
                // arena locks itself and is safe to call from any thread at any time.
                let released = unsafe { libc::malloc_trim(0) } == 1;
                let took = started.elapsed();
                if took >= Duration::from_millis(1) {
                    tracing::debug!(released, ?took, "Heap trim was slow");
                }
            }
        })
        .map(|_| ())
}
