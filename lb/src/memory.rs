//! Giving memory back after load. glibc's malloc keeps what lb frees in its heaps for reuse,
//! and once large buffers have been freed it raises its own mmap threshold, so that later ones
//! come from the heaps too: after a run of 1 MiB bodies lb's resident memory stayed at its peak
//! (65 MiB) for good.
//!
//! - [`one_arena`]: every thread allocates from malloc's main arena. `malloc_trim` returns the
//!   free pages inside any arena's heap, but the free top of a thread's own arena only when
//!   malloc decides to on a later free: with the runtime's worker threads on their own arenas,
//!   17 MiB stayed resident after a test's load was over; with one arena, 0.4 MiB. lb's hot
//!   allocations are small and come from each thread's cache without the arena's lock.
//! - [`start`]: a thread of its own looks twice a second at how much of malloc's heaps is free
//!   (`mallinfo2`) and, past [`TRIM_ABOVE`], hands the free pages back to the kernel
//!   (`malloc_trim`) once lb is quiet: it used under 5 % of a core over the last half second.
//!   Under load it leaves the heaps alone: what load freed, load reuses, and pages returned
//!   then would only come back as page faults (trimming every second under 1 MiB bodies, in
//!   one run, raised lb's system time per request from about 330 to 525 µs). The thread runs
//!   beside the data path, never on it.
//! - [`boxed`]: a large future boxed where it is made, not copied into its box.
use std::pin::Pin;
use std::time::Duration;

/// How often the heaps are looked at.
pub const EVERY: Duration = Duration::from_millis(500);
/// Free bytes inside malloc's heaps from which lb returns them.
pub const TRIM_ABOVE: usize = 4 << 20;
/// CPU time per [`EVERY`] under which lb counts as quiet: 5 % of a core. Idle, the health loop,
/// its probes and telemetry use about 1 % with one member, 2–3 % with three.
pub const QUIET_CPU: Duration = Duration::from_millis(25);

/// `make()`'s value, built inside a fresh allocation. `Box::pin(value)` makes the value first
/// and then copies all of it into the box: for a request's handler (4.7 KiB, of which a new
/// request has set 300 bytes) that copy was the largest single memcpy per request, and wrote
/// 4.7 KiB of cache lines the request never used. Built after the allocation, the value is
/// written in place (rustc and LLVM do not elide the copy in `Box::pin`, and do here).
#[inline(always)]
pub fn boxed<T>(make: impl FnOnce() -> T) -> Pin<Box<T>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// One malloc arena for every thread, unless `MALLOC_ARENA_MAX` in the environment says
/// otherwise. Call it before any other thread starts (a thread keeps the arena it first used).
pub fn one_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt sets one of malloc's tunables and touches no memory of ours.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    }
}

/// Start the thread that returns free heap memory (glibc only; elsewhere nothing to do).
pub fn start() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let spawned = std::thread::Builder::new().name("lb-memory".into()).spawn(|| {
            let mut before = cpu_time();
            loop {
                std::thread::sleep(EVERY);
                let now = cpu_time();
                let quiet = now.zip(before).is_some_and(|(n, b)| n.saturating_sub(b) < QUIET_CPU);
                before = now;
                if quiet && free_in_heaps() > TRIM_ABOVE {
                    trim();
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the thread that returns free memory");
        }
    }
}

/// Bytes malloc holds free in its heaps, all arenas together.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn free_in_heaps() -> usize {
    // SAFETY: mallinfo2 takes no arguments and returns a plain struct by value; it only reads
    // malloc's own bookkeeping, under malloc's locks.
    unsafe { libc::mallinfo2() }.fordblks
}

/// Return every free page of malloc's heaps to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim takes a byte count to keep at the top of the heap (0: none) and
    // only releases memory malloc holds free; no pointer lb holds is touched.
    unsafe { libc::malloc_trim(0) };
}

/// User and system CPU time of the whole process so far.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn cpu_time() -> Option<Duration> {
    // SAFETY: rusage is plain integers, for which all zeroes is a valid value.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage into the struct we own and pass by pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return None;
    }
    let t = |v: libc::timeval| Duration::new(v.tv_sec as u64, v.tv_usec as u32 * 1000);
    Some(t(u.ru_utime) + t(u.ru_stime))
}

/// The address range of a `/proc/self/maps` (or `smaps` header) line that maps `exe`
/// read-only: its code and constants, not its writable data.
#[cfg(target_os = "linux")]
fn read_only_code(line: &str, exe: &std::path::Path) -> Option<(usize, usize)> {
    let mut f = line.split_whitespace();
    let (range, perms) = (f.next()?, f.next()?);
    if f.nth(3).map(std::path::Path::new) != Some(exe) || perms.contains('w') {
        return None;
    }
    let (a, b) = range.split_once('-')?;
    Some((usize::from_str_radix(a, 16).ok()?, usize::from_str_radix(b, 16).ok()?))
}

/// Hand back the pages of lb's own code and constants that startup read. Start-up runs code
/// that serving never does again (config parsing, the eBPF loader, the command line), and the
/// kernel maps each page of the binary it touches along with its neighbours; those pages stay
/// resident, counted in lb's RSS, until memory runs short. Paged out once serving starts, only
/// what serving runs comes back. Best effort: nothing changes where the kernel refuses.
pub fn drop_startup_pages() {
    #[cfg(target_os = "linux")]
    {
        let Ok(exe) = std::fs::read_link("/proc/self/exe") else { return };
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return };
        for (a, b) in maps.lines().filter_map(|l| read_only_code(l, &exe)) {
            // SAFETY: MADV_PAGEOUT on a read-only mapping of the executable drops clean
            // file-backed pages; their contents are unchanged and fault back in on next use.
            unsafe { libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_PAGEOUT) };
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::drop_startup_pages;

    /// KiB of this process's executable that are resident, read-only mappings only.
    fn resident_code_kib() -> u64 {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut ours = false;
        let mut kib = 0;
        for line in smaps.lines() {
            let mut f = line.split_whitespace();
            match f.next() {
                Some(field) if field.ends_with(':') => {
                    if ours && field == "Rss:" {
                        kib += f.next().and_then(|v| v.parse::<u64>().ok()).unwrap();
                    }
                }
                _ => ours = super::read_only_code(line, &exe).is_some(),
            }
        }
        kib
    }

    #[test]
    fn startup_pages_of_the_executable_are_given_back() {
        let before = resident_code_kib();
        drop_startup_pages();
        let after = resident_code_kib();
        // The test binary has run the harness and other tests by now: megabytes of its code
        // are resident. Paged out, only what runs meanwhile (this test, tests in parallel)
        // comes back.
        assert!(before > 1024, "only {before} KiB of code resident to begin with");
        assert!(after < before / 2, "{before} KiB of code resident before, {after} KiB after");
    }
}
