//! The deployment examples in `deploy/` are what they say: the systemd unit runs `lb run`, checks
//! the config first, reloads with SIGHUP and grants exactly the capabilities lb needs; the
//! Kubernetes example's config passes `lb check`.
use lb_tests::lb_bin;
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `Key=value` lines of a unit file.
fn unit_values(text: &str, key: &str) -> Vec<String> {
    text.lines().filter_map(|l| l.strip_prefix(&format!("{key}="))).map(str::to_owned).collect()
}

#[test]
fn the_systemd_unit_runs_checks_reloads_and_holds_the_right_capabilities() {
    let unit =
        std::fs::read_to_string(repo().join("deploy/lb.service")).expect("deploy/lb.service");
    let start = unit_values(&unit, "ExecStart");
    assert_eq!(start, ["/usr/local/bin/lb run --config /etc/lb/lb.toml"]);
    assert_eq!(
        unit_values(&unit, "ExecStartPre"),
        ["/usr/local/bin/lb check --config /etc/lb/lb.toml"]
    );
    assert_eq!(unit_values(&unit, "ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        let caps: Vec<String> =
            unit_values(&unit, key).join(" ").split_whitespace().map(str::to_owned).collect();
        let mut caps = caps;
        caps.sort();
        assert_eq!(
            caps,
            ["CAP_BPF", "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_PERFMON"],
            "{key}"
        );
    }
}

#[test]
fn the_kubernetes_example_config_passes_lb_check() {
    let yaml = std::fs::read_to_string(repo().join("deploy/kubernetes/daemonset.yaml"))
        .expect("daemonset.yaml");
    // The ConfigMap's `lb.toml: |` block, indented four spaces.
    let mut toml = String::new();
    let mut inside = false;
    for line in yaml.lines() {
        if line.trim() == "lb.toml: |" {
            inside = true;
        } else if inside {
            match line.strip_prefix("    ") {
                Some(l) => toml.push_str(l),
                None if line.trim().is_empty() => {}
                None => break,
            }
            toml.push('\n');
        }
    }
    assert!(toml.contains("[[listener]]"), "the ConfigMap holds lb.toml:\n{toml}");
    for cap in ["BPF", "PERFMON", "NET_ADMIN", "NET_BIND_SERVICE"] {
        assert!(yaml.contains(&format!("\"{cap}\"")), "the pod adds {cap}");
    }
    assert!(yaml.contains("hostNetwork: true"));
    let dir = std::env::temp_dir().join(format!("lb-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("lb.toml");
    std::fs::write(&file, &toml).expect("write");
    let out = std::process::Command::new(lb_bin())
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .expect("lb check");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
}
