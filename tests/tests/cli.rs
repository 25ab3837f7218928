//! The CLI as an operator uses it: `lb status` against a running lb, and `lb demo`.
use lb_tests::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn lb_cmd(args: &[&str]) -> std::process::Output {
    Command::new(lb_bin()).args(args).output().expect("run lb")
}

#[tokio::test]
async fn status_shows_the_balancer_like_apache() {
    let a = Member::start("a").await;
    let dead = dead_port().await;
    let body = members(&[
        (&a.url(), "route = \"r1\"\nloadfactor = 2.5"),
        (&format!("http://{dead}"), "route = \"r2\"\nlbset = 1"),
    ]);
    let lb = Lb::start(&config(&format!("maxattempts = 1\n{body}"))).await;
    for _ in 0..3 {
        assert_eq!(get(&lb.url("/")).await.status, 200);
    }
    let admin = lb.admin.to_string();
    let out =
        tokio::task::spawn_blocking(move || lb_cmd(&["status", "--admin", &admin])).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.contains("balancer://b  lbmethod=byrequests  maxattempts=1"), "{table}");
    for col in ["Worker URL", "Route", "Factor", "Set", "Status", "Elected", "Busy", "To", "From"] {
        assert!(table.contains(col), "{col} missing:\n{table}");
    }
    let row = table.lines().find(|l| l.contains(&a.url())).expect("member a row");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[..6], &[a.url().as_str(), "r1", "2.50", "0", "Ok", "3"], "{row}");

    let admin = lb.admin.to_string();
    let out = tokio::task::spawn_blocking(move || lb_cmd(&["status", "--admin", &admin, "--json"]))
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["balancers"][0]["members"][0]["elected"], 3);
    assert_eq!(v["balancers"][0]["members"][1]["route"], "r2");
    lb.stop().await;

    // No lb at that address: a clear error, exit 1.
    let gone = dead_port().await;
    let out = lb_cmd(&["status", "--admin", &gone.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach lb's admin listener"));
}

#[tokio::test]
async fn demo_runs_three_members_behind_a_balancer() {
    let mut child = Command::new(lb_bin())
        .args(["demo", "--bind", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn lb demo");
    let stdout = child.stdout.take().expect("stdout");
    let _guard = ChildGuard(child);
    // The demo prints what to try; take the addresses from there, as a user would.
    let lines = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("read");
            let done = line.starts_with("Ctrl-C");
            seen.push(line);
            if done {
                break;
            }
        }
        seen
    });
    let lines = tokio::time::timeout(Duration::from_secs(20), lines)
        .await
        .expect("demo printed its hints")
        .unwrap();
    let find = |pat: &str| {
        lines.iter().find_map(|l| {
            let i = l.find(pat)?;
            let rest = &l[i + pat.len()..];
            Some(rest.split(|c: char| c == '/' || c.is_whitespace()).next()?.to_owned())
        })
    };
    let web = find("curl -s http://").expect("curl hint");
    let admin = find("lb status --admin ").expect("status hint");
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for _ in 0..8 {
        let r = get(&format!("http://{web}/hello")).await;
        assert_eq!(r.status, 200);
        assert!(r.text().starts_with("hello from m"), "{}", r.text());
        *seen.entry(r.member()).or_default() += 1;
    }
    // m3 has loadfactor 2: half of the requests.
    assert_eq!(seen.get("m1"), Some(&2));
    assert_eq!(seen.get("m2"), Some(&2));
    assert_eq!(seen.get("m3"), Some(&4));
    let out =
        tokio::task::spawn_blocking(move || lb_cmd(&["status", "--admin", &admin])).await.unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(table.lines().filter(|l| l.contains("http://127.0.0.1:")).count(), 3, "{table}");
}

/// A tmux server of this test's own.
struct Tmux(String);

impl Tmux {
    fn new(tag: &str) -> Tmux {
        Tmux(format!("lbtest-{tag}-{}", std::process::id()))
    }
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").arg("-L").arg(&self.0).args(args).output().expect("tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    /// The visible screen of the window, once it holds `want` (within 15 s).
    async fn screen_with(&self, want: &str) -> Option<String> {
        eventually(Duration::from_secs(15), || async {
            let s = self.run(&["capture-pane", "-p", "-t", "w"]);
            s.contains(want).then_some(s)
        })
        .await
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}

#[tokio::test]
async fn health_watch_is_a_live_table_that_q_and_ctrl_c_leave_cleanly() {
    let m = Member::start("m").await;
    let lb = Lb::start(&config(&members(&[(&m.url(), "")]))).await;
    let cmd = format!(
        "clear; echo BEFORE; {} health --watch --admin {}; echo EXITED:$?; sleep 60",
        lb_bin().display(),
        lb.admin
    );
    for (tag, key) in [("q", "q"), ("ctrlc", "C-c")] {
        let t = Tmux::new(tag);
        t.run(&["new-session", "-d", "-s", "w", "-x", "200", "-y", "50", &cmd]);
        let live = t.screen_with(&m.url()).await.expect("the table, with the member");
        assert!(
            live.contains("q or Ctrl-C quits") && !live.contains("BEFORE"),
            "on its own screen:\n{live}"
        );
        t.run(&["send-keys", "-t", "w", key]);
        let after = t.screen_with("EXITED:0").await.expect("exits with status 0");
        // The shell's screen is back as it was: the line printed before, and no table.
        assert!(after.contains("BEFORE") && !after.contains("q or Ctrl-C quits"), "{after}");
    }
    lb.stop().await;
}

#[test]
fn completions_for_bash_zsh_and_fish_know_the_commands() {
    for (shell, marker) in
        [("bash", "complete -F _lb"), ("zsh", "#compdef lb"), ("fish", "complete -c lb")]
    {
        let out = lb_cmd(&["completions", shell]);
        assert!(out.status.success());
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains(marker), "{shell}: {marker}");
        for cmd in ["run", "check", "reload", "status", "health", "demo"] {
            assert!(script.contains(cmd), "{shell} completes {cmd}");
        }
    }
    // bash loads it and completes `lb st` to `status`.
    let script = String::from_utf8_lossy(&lb_cmd(&["completions", "bash"]).stdout).into_owned();
    let probe = format!(
        "{script}\nCOMP_WORDS=(lb st); COMP_CWORD=1; COMP_LINE='lb st'; COMP_POINT=5; _lb lb st lb; echo \"${{COMPREPLY[@]}}\""
    );
    let out = Command::new("bash").args(["-c", &probe]).output().expect("bash");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "status",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // --help everywhere.
    for cmd in ["run", "check", "reload", "status", "health", "demo", "completions"] {
        let out = lb_cmd(&[cmd, "--help"]);
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Usage: lb"),
            "{cmd} --help"
        );
    }
}
