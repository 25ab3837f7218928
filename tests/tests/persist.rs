//! Live edits kept across a restart and a reload with `[admin] state_file` (Apache's
//! `BalancerPersist`): edits made with the CLI are written to the file, a new lb process makes
//! them again over the config file, so does a reload, and an edit whose member left the config is
//! skipped with a warning while the reload goes through.
use lb_tests::process::LbProcess;
use lb_tests::*;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn cli(words: &[&str], admin: SocketAddr) -> String {
    let out = Command::new(lb_bin())
        .args(words)
        .args(["--admin", &admin.to_string()])
        .output()
        .expect("lb cli");
    assert!(out.status.success(), "{words:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write_config(file: &Path, members: &[&str]) {
    let mut text = "[admin]\nbind = \"127.0.0.1:0\"\nstate_file = \"lb.state\"\n\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\naccess_log = false\n  [[listener.proxy_pass]]\n  path = \"/\"\n  to = \"balancer://b/\"\n\n[balancer.b]\ngrowth = 1\n".to_owned();
    for m in members {
        text.push_str(&format!("  [[balancer.b.member]]\n  url = \"{m}\"\n"));
    }
    std::fs::write(file, text).expect("write config");
}

/// (url, loadfactor, status) of every member, from `lb status --json`.
fn table(admin: SocketAddr) -> Vec<(String, f64, String)> {
    let s: serde_json::Value =
        serde_json::from_str(&cli(&["status", "--json"], admin)).expect("json");
    s["balancers"][0]["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["url"].as_str().expect("url").to_owned(),
                m["loadfactor"].as_f64().expect("loadfactor"),
                m["status"].as_str().expect("status").to_owned(),
            )
        })
        .collect()
}

fn stop(p: LbProcess) {
    let ok = Command::new("kill").args(["-TERM", &p.pid]).status().expect("kill");
    assert!(ok.success());
    let mut g = p.guard;
    let _ = g.0.wait();
}

#[tokio::test]
async fn live_edits_survive_a_restart_and_a_reload() {
    let (a, b, c) = (Member::start("a").await, Member::start("b").await, Member::start("c").await);
    let dir = std::env::temp_dir().join(format!("lb-persist-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("lb.toml");
    write_config(&file, &[&a.url(), &b.url()]);

    let lb = LbProcess::start(&file);
    let admin = lb.addr("admin listening");
    cli(&["member", "set", "b", &a.url(), "--loadfactor", "3"], admin);
    cli(&["member", "set", "b", &b.url(), "--status", "+D"], admin);
    cli(&["member", "set", "b", &a.url(), "--loadfactor", "4"], admin);
    cli(&["member", "add", "b", &c.url()], admin);
    let edited = table(admin);
    let want = vec![
        (a.url(), 4.0, "Ok".to_owned()),
        (b.url(), 1.0, "D".to_owned()),
        (c.url(), 1.0, "D".to_owned()),
    ];
    assert_eq!(edited, want);
    let state = std::fs::read_to_string(dir.join("lb.state")).expect("state file written");
    // The second loadfactor replaced the first.
    assert_eq!(state.matches("w_lf=").count(), 1, "{state}");
    stop(lb);

    // A new process: the config file says loadfactor 1, no D, no c; the state file wins.
    let lb = LbProcess::start(&file);
    let admin = lb.addr("admin listening");
    assert_eq!(table(admin), want);

    // A reload re-reads both. Member a leaves the config file: its edit is skipped, said in the
    // log, and the reload goes through with the others.
    write_config(&file, &[&b.url()]);
    let out = cli(&["reload"], admin);
    assert!(out.contains("removed"), "{out}");
    assert_eq!(table(admin), vec![(b.url(), 1.0, "D".to_owned()), (c.url(), 1.0, "D".to_owned())]);
    let warn = lb.line(&["state file", "skipped"], Duration::from_secs(5));
    assert!(warn.is_some_and(|w| w.contains(&a.url())), "no warning for the skipped edit");
    stop(lb);
    let _ = std::fs::remove_dir_all(&dir);
}
