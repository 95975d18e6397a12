//! Gives freed heap memory back to the operating system.
//!
//! Thousands of idle blocking queries each hold hyper's connection buffers and a parked
//! handler (about 30 KiB, see `bench/run.sh blocking`). When they end, glibc's allocator
//! keeps the freed chunks: they sit between live ones all over the heap, so its own
//! trimming, which only shrinks the top of the heap, returns next to nothing and the
//! agent's RSS stays at its peak. Every few seconds this looks at how much of the heap is
//! free and, when that is a lot, asks glibc to release the free pages (`malloc_trim`,
//! which since glibc 2.8 `madvise`s free pages anywhere in every arena). The check is one
//! `mallinfo2` call; the trim runs only after a large drop, so a busy agent does not pay
//! for it on every tick.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often the free heap is looked at.
const TICK: Duration = Duration::from_secs(5);
/// Free heap above this is worth a trim.
const FREE_WORTH_TRIMMING: usize = 32 * 1024 * 1024;

/// Metric: bytes a trim gave back (from RSS before and after).
const METRIC_RELEASED: &str = "cairn_memory_released_bytes_total";

/// Releases free heap pages until `shutdown`.
pub async fn release_loop(shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if free_heap() > FREE_WORTH_TRIMMING {
            // The trim walks the arenas; keep it off the async workers.
            let released = tokio::task::spawn_blocking(trim).await.unwrap_or(0);
            metrics::counter!(METRIC_RELEASED).increment(released);
            tracing::debug!(released, "gave freed heap memory back");
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn free_heap() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let info = unsafe { libc::mallinfo2() };
    info.fordblks
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> u64 {
    let before = rss_bytes();
    // SAFETY: malloc_trim only returns free pages to the kernel; live allocations stay.
    unsafe { libc::malloc_trim(0) };
    before.saturating_sub(rss_bytes())
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn free_heap() -> usize {
    0
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> u64 {
    0
}

/// Resident memory from `/proc/self/statm` (0 where it cannot be read).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Memory freed between live allocations comes back after a trim.
    #[test]
    fn freed_memory_between_live_allocations_is_given_back() {
        let mut blocks: Vec<Vec<u8>> = (0..20_000).map(|_| vec![1u8; 16 * 1024]).collect();
        // Keep every tenth block alive, so the free ones are all over the heap.
        let mut kept = Vec::new();
        for (i, b) in blocks.drain(..).enumerate() {
            if i % 10 == 0 {
                kept.push(b);
            }
        }
        assert!(free_heap() > FREE_WORTH_TRIMMING, "{}", free_heap());
        let released = trim();
        assert!(
            released > 100 * 1024 * 1024,
            "released only {released} bytes"
        );
        assert_eq!(kept.len(), 2_000);
    }
}
