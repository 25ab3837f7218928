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
    let gone = dead_port().await.to_string();
    let out = lb_cmd(&["status", "--admin", &gone]);
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
