//! Process-level setup: the open-file limit. Every client connection and every member connection
//! is a descriptor, and the soft limit most shells and units start with (1024) would cap lb far
//! below its listeners' `max_connections`; lb raises it to the hard limit at start and says when
//! the listeners could still outgrow it.
use crate::config::Config;

/// Raise the soft NOFILE limit to the hard one; the limit in force afterwards.
pub fn raise_nofile() -> std::io::Result<u64> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the struct we own and pass by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if r.rlim_cur < r.rlim_max {
        let raised = libc::rlimit { rlim_cur: r.rlim_max, rlim_max: r.rlim_max };
        // SAFETY: setrlimit reads one rlimit from the struct we own and pass by pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        tracing::info!(from = r.rlim_cur, to = r.rlim_max, "raised the open-file limit (NOFILE)");
        return Ok(r.rlim_max);
    }
    Ok(r.rlim_cur)
}

/// Descriptors the listeners may need at their limits: each client connection may hold a
/// member connection too.
pub fn descriptors_wanted(cfg: &Config) -> u64 {
    cfg.listeners.iter().map(|l| 2 * l.max_connections as u64).sum::<u64>() + 256
}

/// Raise NOFILE and warn when the listeners' `max_connections` could still run out of it; start
/// returning free memory after load ([`crate::memory`]).
pub fn prepare(cfg: &Config) {
    crate::memory::start();
    match raise_nofile() {
        Ok(limit) if limit < descriptors_wanted(cfg) => tracing::warn!(
            limit,
            wanted = descriptors_wanted(cfg),
            "the open-file limit is below what the listeners' max_connections may need; \
             accepts will back off when it runs out (raise LimitNOFILE or lower max_connections)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
}
