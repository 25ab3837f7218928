//! The lb binary as an operator runs it: `lb run --config FILE` as a child process, its log
//! (stderr) collected line by line for the test to read.
use crate::{ChildGuard, lb_bin};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct LbProcess {
    pub guard: ChildGuard,
    pub pid: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl LbProcess {
    /// Start `lb run --config file` with info logging.
    pub fn start(file: &Path) -> LbProcess {
        let mut cmd = Command::new(lb_bin());
        cmd.args(["run", "--config"]).arg(file);
        Self::spawn(cmd)
    }

    /// The same with an open-file limit of `soft` (lb may raise it up to `hard`).
    pub fn start_with_nofile(file: &Path, soft: u64, hard: u64) -> LbProcess {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={soft}:{hard}"))
            .arg(lb_bin())
            .args(["run", "--config"])
            .arg(file);
        Self::spawn(cmd)
    }

    /// Start lb as `cmd` says (its stderr is collected; stdout is left as the command set it).
    pub fn spawn(mut cmd: Command) -> LbProcess {
        let mut child =
            cmd.env("RUST_LOG", "info").stderr(Stdio::piped()).spawn().expect("start lb");
        let pid = child.id().to_string();
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log lines").push(l);
            }
        });
        LbProcess { guard: ChildGuard(child), pid, lines }
    }

    /// The first log line containing every one of `words`, waiting up to `deadline`.
    pub fn line(&self, words: &[&str], deadline: Duration) -> Option<String> {
        let end = Instant::now() + deadline;
        loop {
            let found = self
                .lines
                .lock()
                .expect("log lines")
                .iter()
                .find(|l| words.iter().all(|w| l.contains(w)))
                .cloned();
            if found.is_some() || Instant::now() > end {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// For a failure message: whether lb is still running (and how it ended if not), its open
    /// descriptors and limit, and the last `n` lines of its log.
    pub fn report(&mut self, n: usize) -> String {
        let state = match self.guard.0.try_wait() {
            Ok(None) => "running".to_owned(),
            Ok(Some(status)) => format!("exited: {status}"),
            Err(e) => format!("unknown: {e}"),
        };
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid)).map_or(0, |d| d.count());
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.pid))
            .ok()
            .and_then(|l| l.lines().find(|l| l.starts_with("Max open files")).map(str::to_owned))
            .unwrap_or_default();
        let lines = self.lines.lock().expect("log lines");
        let tail = lines[lines.len().saturating_sub(n)..].join("\n");
        format!("lb {state}; {fds} descriptors open; {limits}\nlb's last {n} log lines:\n{tail}")
    }

    /// The address logged after `marker` (`addr=IP:PORT`), waiting up to 20 s.
    pub fn addr(&self, marker: &str) -> SocketAddr {
        let line = self.line(&[marker, "addr="], Duration::from_secs(20));
        line.and_then(|l| {
            l.split_whitespace().find_map(|w| w.strip_prefix("addr=")).and_then(|a| a.parse().ok())
        })
        .unwrap_or_else(|| panic!("no {marker:?} in lb's log"))
    }
}
