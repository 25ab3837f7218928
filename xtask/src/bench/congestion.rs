//! The kernel's TCP congestion control for the run: reported in every table, and settable for
//! the run alone (`--congestion`).
//!
//! It matters here because every socket of the run (members, proxies, load) takes the default
//! at creation: with BBR, the members' sockets pace each large answer at BBR's estimate of a
//! loopback "link", and that pacing, not the proxy, sets much of the 1 MiB rows' rps and tail.
//! A run under a chosen algorithm puts the old default back when it returns, with an error
//! too; a run killed by a signal (Ctrl-C) leaves it set, and says on stderr which it was.
use anyhow::{Context, Result, bail};

const DEFAULT: &str = "/proc/sys/net/ipv4/tcp_congestion_control";
const AVAILABLE: &str = "/proc/sys/net/ipv4/tcp_available_congestion_control";

fn read(path: &str) -> Result<String> {
    Ok(std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?.trim().to_owned())
}

/// The run's congestion control; puts the kernel's default back on drop when it changed it.
pub struct Congestion {
    /// The algorithm every socket of the run starts with.
    pub algorithm: String,
    /// The kernel's default before the run, when the run set another one.
    restore: Option<String>,
}

impl Congestion {
    /// Use `wanted` for the run (None: leave the kernel's default alone).
    pub fn set(wanted: Option<&str>) -> Result<Congestion> {
        let current = read(DEFAULT)?;
        let Some(wanted) = wanted.filter(|w| *w != current) else {
            return Ok(Congestion { algorithm: current, restore: None });
        };
        let available = read(AVAILABLE)?;
        if !available.split_whitespace().any(|a| a == wanted) {
            bail!("--congestion {wanted}: the kernel offers {available}");
        }
        eprintln!("congestion control {wanted} for this run; the kernel's default was {current}");
        std::fs::write(DEFAULT, wanted)
            .with_context(|| format!("writing {wanted} to {DEFAULT}"))?;
        Ok(Congestion { algorithm: wanted.to_owned(), restore: Some(current) })
    }

    /// What the report says about it.
    pub fn describe(&self) -> String {
        match &self.restore {
            None => format!("TCP congestion control: {} (the kernel's default)", self.algorithm),
            Some(d) => format!(
                "TCP congestion control: {} for this run (`--congestion`; the kernel's default is {d})",
                self.algorithm
            ),
        }
    }
}

impl Drop for Congestion {
    fn drop(&mut self) {
        if let Some(d) = &self.restore
            && let Err(e) = std::fs::write(DEFAULT, d)
        {
            eprintln!("could not put the congestion control back to {d}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // These tests read the kernel's setting and never change it: other tests on the machine
    // open sockets that would pick up a changed default.

    #[test]
    fn without_a_choice_the_kernels_default_is_named_and_left_alone() {
        let before = read(DEFAULT).unwrap();
        let c = Congestion::set(None).unwrap();
        assert_eq!(c.algorithm, before);
        assert!(c.describe().contains(&format!("{before} (the kernel's default)")));
        // Asking for the current default changes nothing either.
        let same = Congestion::set(Some(&before)).unwrap();
        assert!(same.restore.is_none());
        drop((c, same));
        assert_eq!(read(DEFAULT).unwrap(), before);
    }

    #[test]
    fn an_algorithm_the_kernel_lacks_is_refused_before_anything_changes() {
        let before = read(DEFAULT).unwrap();
        let available = read(AVAILABLE).unwrap();
        let err = Congestion::set(Some("no-such-algorithm")).err().unwrap().to_string();
        assert!(err.contains("no-such-algorithm"), "{err}");
        assert!(err.contains(&available), "{err}");
        assert_eq!(read(DEFAULT).unwrap(), before);
    }
}
