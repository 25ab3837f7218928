//! Kernel-aware ejection at any traffic level: fault × traffic, every cell with lb's default
//! configuration (three members, `bybusyness`). Faults are real: nftables `numgen` loss on one
//! member's port in either direction or both, a SYN black hole, a member that stops accepting
//! with its listen backlog full, a member behind a congested `tc tbf` link in a namespace of the
//! test's own, and a member process stopped with SIGSTOP. For each cell the test measures the
//! time from fault to ejection, the client requests that failed, and the time from repair to the
//! member's return, and prints the table; it asserts the bounds. Needs root; CI runs it.
//!
//! The cells run one at a time (a lock), so that timings are not disturbed by each other.
use lb_tests::faults::{Bulk, Freezable, Load, Process, Traffic};
use lb_tests::*;
use std::time::{Duration, Instant};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Clone, Copy, Debug)]
enum Dir {
    ToMember,
    FromMember,
    Both,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Loss(u32, Dir),
    SynBlackHole,
    AcceptOverflow,
    Congested,
    Stopped,
}

impl Fault {
    fn name(self) -> String {
        match self {
            Fault::Loss(p, d) => format!(
                "{p} % loss {}",
                match d {
                    Dir::ToMember => "to the member",
                    Dir::FromMember => "from the member",
                    Dir::Both => "both ways",
                }
            ),
            Fault::SynBlackHole => "SYN black hole".into(),
            Fault::AcceptOverflow => "accept queue full, app not accepting".into(),
            Fault::Congested => "congested tbf link".into(),
            Fault::Stopped => "member process stopped (SIGSTOP)".into(),
        }
    }
}

/// The sick member of a cell, whatever it is, and how to break and repair it.
enum Sick {
    Plain(Member, Option<Nft>),
    Frozen(Freezable),
    Stopped(Process),
    Shaped {
        _ns: Netns,
        _member: ChildGuard,
        _bulk: ChildGuard,
        addr: std::net::SocketAddr,
        bulk_url: String,
        load: Option<Bulk>,
    },
}

impl Sick {
    async fn start(f: Fault) -> Sick {
        match f {
            Fault::Loss(..) | Fault::SynBlackHole => Sick::Plain(Member::start("c").await, None),
            Fault::AcceptOverflow => Sick::Frozen(Freezable::start("c", 4).await),
            Fault::Stopped => Sick::Stopped(Process::start("c")),
            Fault::Congested => {
                let ns = Netns::create();
                let (member, addr) = ns.member("c", 100);
                let (bulk, bulk_addr) = ns.member("bulk", 1 << 20);
                // Far above what lb's traffic to the member needs; bulk downloads fill it.
                ns.tbf("100mbit", "64kb", "400ms");
                Sick::Shaped {
                    _ns: ns,
                    _member: ChildGuard(member),
                    _bulk: ChildGuard(bulk),
                    addr,
                    bulk_url: format!("http://{bulk_addr}/"),
                    load: None,
                }
            }
        }
    }

    fn url(&self) -> String {
        match self {
            Sick::Plain(m, _) => m.url(),
            Sick::Frozen(m) => m.url(),
            Sick::Stopped(p) => p.url(),
            Sick::Shaped { addr, .. } => format!("http://{addr}"),
        }
    }

    fn port(&self) -> u16 {
        match self {
            Sick::Plain(m, _) => m.addr.port(),
            Sick::Frozen(m) => m.addr.port(),
            Sick::Stopped(p) => p.addr.port(),
            Sick::Shaped { addr, .. } => addr.port(),
        }
    }

    fn break_(&mut self, f: Fault) {
        let port = self.port();
        match (self, f) {
            (Sick::Plain(_, nft), Fault::Loss(p, d)) => {
                let rule = |k: &str| format!("tcp {k} {port} numgen random mod 100 < {p} drop");
                let rules = match d {
                    Dir::ToMember => vec![rule("dport")],
                    Dir::FromMember => vec![rule("sport")],
                    Dir::Both => vec![rule("dport"), rule("sport")],
                };
                *nft = Some(Nft::new(&rules));
            }
            (Sick::Plain(_, nft), Fault::SynBlackHole) => {
                *nft = Some(Nft::new(&[format!("tcp dport {port} tcp flags syn drop")]));
            }
            (Sick::Frozen(m), _) => m.freeze(),
            (Sick::Stopped(p), _) => p.stop(),
            (Sick::Shaped { bulk_url, load, .. }, _) => {
                *load = Some(Bulk::start(bulk_url, 8, Duration::from_secs(60)));
            }
            (_, f) => panic!("no way to make {f:?}"),
        }
    }

    fn repair(&mut self) {
        match self {
            Sick::Plain(_, nft) => *nft = None,
            Sick::Frozen(m) => m.thaw(),
            Sick::Stopped(p) => p.resume(),
            Sick::Shaped { load, .. } => *load = None,
        }
    }
}

async fn health(lb: &Lb) -> serde_json::Value {
    let r = get(&format!("http://{}/health", lb.admin)).await;
    serde_json::from_slice(&r.body).expect("health json")
}

async fn member(lb: &Lb, i: usize) -> serde_json::Value {
    health(lb).await["balancers"][0]["members"][i].clone()
}

struct Row {
    fault: String,
    traffic: Traffic,
    ejected: Option<Duration>,
    reason: String,
    failed: u64,
    ok: u64,
    returned: Option<Duration>,
    errors: Vec<String>,
    others: Vec<String>,
}

/// One cell: members a, b (healthy) and the sick one behind lb; traffic; fault; repair.
async fn cell(fault: Fault, traffic: Traffic) -> Row {
    let (a, b) = (Member::start("a").await, Member::start("b").await);
    let mut sick = Sick::start(fault).await;
    let body = format!(
        "lbmethod = \"bybusyness\"\n{}",
        members(&[(&a.url(), ""), (&b.url(), ""), (&sick.url(), "")])
    );
    let lb = Lb::start(&config(&body)).await;
    let load = Load::start(traffic, &lb.url("/"), Duration::from_secs(40));
    // Before the fault: lb has probed the member, and traffic flows.
    let ready = eventually(Duration::from_secs(10), || async {
        let m = member(&lb, 2).await;
        let probed = m["evidence"]["probes"]["sent"].as_u64().unwrap_or(0) >= 1;
        let flowing =
            traffic == Traffic::Idle || load.ok.load(std::sync::atomic::Ordering::Relaxed) >= 1;
        (probed && flowing && m["state"] == "healthy").then_some(())
    })
    .await;
    assert!(ready.is_some(), "{}: never ready: {}", fault.name(), member(&lb, 2).await);
    sick.break_(fault);
    let t0 = Instant::now();
    let ejected = eventually(Duration::from_secs(30), || async {
        let m = member(&lb, 2).await;
        (m["state"] == "ejected" || m["state"] == "recovering").then_some(m)
    })
    .await;
    let ejected_after = ejected.as_ref().map(|_| t0.elapsed());
    let reason = match &ejected {
        Some(m) => m["reason"].as_str().unwrap_or("-").to_owned(),
        // Not ejected: say what lb made of the member instead.
        None => format!("not ejected: {}", member(&lb, 2).await),
    };
    // A second of traffic with the member out, then repair.
    let hold = Instant::now() + Duration::from_secs(1);
    let _ = eventually(Duration::from_secs(2), || async { (Instant::now() >= hold).then_some(()) })
        .await;
    sick.repair();
    let t1 = Instant::now();
    let back = eventually(Duration::from_secs(20), || async {
        let m = member(&lb, 2).await;
        let usable = !m["status"].as_str().unwrap_or("E").contains('E');
        (usable && (m["state"] == "probation" || m["state"] == "healthy")).then_some(())
    })
    .await;
    let returned = back.map(|_| t1.elapsed());
    let (ok, failed, errors) = load.stop().await;
    let h = health(&lb).await;
    let others = (0..2)
        .map(|i| h["balancers"][0]["members"][i]["state"].as_str().unwrap_or("?").to_owned())
        .collect();
    lb.stop().await;
    Row {
        fault: fault.name(),
        traffic,
        ejected: ejected_after,
        reason,
        failed,
        ok,
        returned,
        errors,
        others,
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("not within 30 s".into(), |d| format!("{} ms", d.as_millis()))
}

/// The bound each cell is held to: the issue's, under 1 s with traffic and under 2 s idle,
/// for every fault. (5 % loss from an idle member was the hard case: each probe request now
/// waits for the member to acknowledge each of its chunks, on a connection of its own, so that
/// the member sends lb about 89 packets a probe rather than 22, as the README counts them; see
/// `lb::health::probe`.)
fn limit(t: Traffic) -> Duration {
    match t {
        Traffic::Idle => Duration::from_secs(2),
        _ => Duration::from_secs(1),
    }
}

/// Where the rows also go, a Markdown table row per cell (appended; the file is per run of
/// the test binary only by convention: delete it first for a clean table).
fn table_file() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ejection-matrix.md")
}

/// Every traffic shape for one fault; prints the rows (and appends them to
/// [`table_file`]), then checks them.
async fn fault(f: Fault) {
    let _one_at_a_time = SERIAL.lock().await;
    let mut rows = Vec::new();
    for t in Traffic::ALL {
        let r = cell(f, t).await;
        let row = format!(
            "| {} | {} | {} | < {} ms | {} | {} of {} | {} |",
            r.fault,
            t.name(),
            ms(r.ejected),
            limit(t).as_millis(),
            r.reason,
            r.failed,
            r.ok + r.failed,
            ms(r.returned)
        );
        eprintln!("{row}");
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(table_file())
            .expect("table");
        writeln!(file, "{row}").expect("write table");
        rows.push(r);
    }
    for r in &rows {
        let limit = limit(r.traffic);
        let cell = format!("{} × {}", r.fault, r.traffic.name());
        let took = r.ejected.unwrap_or_else(|| panic!("{cell}: never ejected"));
        assert!(took < limit, "{cell}: ejected after {took:?}, limit {limit:?} ({})", r.reason);
        assert_eq!(r.failed, 0, "{cell}: failed requests: {:?}", r.errors);
        assert!(r.returned.is_some(), "{cell}: never returned after the repair");
        assert!(
            r.others.iter().all(|s| s != "ejected" && s != "recovering"),
            "{cell}: a healthy member was ejected: {:?}",
            r.others
        );
    }
}

#[tokio::test]
async fn loss_5_percent_to_the_member() {
    fault(Fault::Loss(5, Dir::ToMember)).await;
}

#[tokio::test]
async fn loss_5_percent_from_the_member() {
    fault(Fault::Loss(5, Dir::FromMember)).await;
}

#[tokio::test]
async fn loss_5_percent_both_ways() {
    fault(Fault::Loss(5, Dir::Both)).await;
}

#[tokio::test]
async fn loss_20_percent_to_the_member() {
    fault(Fault::Loss(20, Dir::ToMember)).await;
}

#[tokio::test]
async fn loss_20_percent_from_the_member() {
    fault(Fault::Loss(20, Dir::FromMember)).await;
}

#[tokio::test]
async fn loss_20_percent_both_ways() {
    fault(Fault::Loss(20, Dir::Both)).await;
}

#[tokio::test]
async fn syn_black_hole() {
    fault(Fault::SynBlackHole).await;
}

#[tokio::test]
async fn accept_queue_full() {
    fault(Fault::AcceptOverflow).await;
}

#[tokio::test]
async fn congested_link() {
    fault(Fault::Congested).await;
}

#[tokio::test]
async fn stopped_process() {
    fault(Fault::Stopped).await;
}

/// Poll every member's state for `run`, under `load`; the states seen and the highest evidence
/// score per member.
async fn watch_states(lb: &Lb, n: usize, run: Duration) -> (Vec<Vec<String>>, Vec<f64>) {
    let mut seen = vec![Vec::<String>::new(); n];
    let mut peak = vec![0f64; n];
    let end = Instant::now() + run;
    while Instant::now() < end {
        let h = health(lb).await;
        for i in 0..n {
            let m = &h["balancers"][0]["members"][i];
            let s = m["state"].as_str().unwrap_or("?").to_owned();
            if !seen[i].contains(&s) {
                // An ejection's reason and evidence go along, so a failure says why.
                if s == "ejected" {
                    seen[i].push(format!("why: {} / {}", m["reason"], m["evidence"]));
                }
                seen[i].push(s);
            }
            peak[i] = peak[i].max(m["evidence"]["score"].as_f64().unwrap_or(0.0));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (seen, peak)
}

fn never_out(seen: &[Vec<String>]) -> bool {
    seen.iter().flatten().all(|s| !["ejected", "recovering", "probation"].contains(&s.as_str()))
}

/// Healthy members under the heaviest load, with very different answers: 64 KiB bodies, a 5 ms
/// application delay, and a member on a longer path (a veth pair into a namespace). 60 s, and
/// none is ever ejected.
#[tokio::test]
async fn no_false_alarm_under_heavy_load_with_mixed_members() {
    let _one_at_a_time = SERIAL.lock().await;
    let big = Member::start_with("big", Some(64 * 1024)).await;
    let slow = Member::start_slow("slow", Duration::from_millis(5)).await;
    let ns = Netns::create();
    let (far, far_addr) = ns.member("far", 100);
    let _far = ChildGuard(far);
    let body = format!(
        "lbmethod = \"bybusyness\"\n{}",
        members(&[(&big.url(), ""), (&slow.url(), ""), (&format!("http://{far_addr}"), "")])
    );
    let lb = Lb::start(&config(&body)).await;
    let load = Load::start(Traffic::KeepAlive50, &lb.url("/"), Duration::from_secs(70));
    let (seen, peak) = watch_states(&lb, 3, Duration::from_secs(60)).await;
    let (ok, failed, errors) = load.stop().await;
    let h = health(&lb).await;
    let srtt: Vec<_> =
        (0..3).map(|i| h["balancers"][0]["members"][i]["kernel"]["srtt_us"].clone()).collect();
    eprintln!(
        "heavy mixed load, 60 s: {ok} answered, {failed} failed; states {seen:?}; peak evidence {peak:?}; srtt µs {srtt:?}"
    );
    assert_eq!(failed, 0, "{errors:?}");
    assert!(ok > 10_000, "the load never got heavy: {ok} requests");
    assert!(never_out(&seen), "a healthy member was ejected: {seen:?}");
    lb.stop().await;
}

/// Three small members whose accept queues overflow under 50 concurrent clients (a new member
/// connection per request, backlog 2, one accept per 2 ms): all show SYN retransmits at once.
/// That is load: nobody is ejected, requests queue and are answered.
#[tokio::test]
async fn overload_shared_by_every_member_ejects_nobody() {
    let _one_at_a_time = SERIAL.lock().await;
    let mut ms = Vec::new();
    for name in ["a", "b", "c"] {
        ms.push(Freezable::start_pacing(name, 2, Duration::from_millis(2)).await);
    }
    let urls: Vec<String> = ms.iter().map(Freezable::url).collect();
    let body = format!(
        "lbmethod = \"bybusyness\"\n{}",
        members(&urls.iter().map(|u| (u.as_str(), "disablereuse = true")).collect::<Vec<_>>())
    );
    let lb = Lb::start(&config(&body)).await;
    let load = Load::start(Traffic::KeepAlive50, &lb.url("/"), Duration::from_secs(70));
    let (seen, peak) = watch_states(&lb, 3, Duration::from_secs(60)).await;
    let (ok, failed, errors) = load.stop().await;
    let h = health(&lb).await;
    let syn: Vec<u64> = (0..3)
        .map(|i| h["balancers"][0]["members"][i]["kernel"]["syn_retransmits"].as_u64().unwrap_or(0))
        .collect();
    eprintln!(
        "shared overload, 60 s: {ok} answered, {failed} failed; SYN retransmits {syn:?}; states {seen:?}; peak evidence {peak:?}"
    );
    assert!(syn.iter().all(|n| *n > 0), "the accept queues never overflowed: {syn:?}");
    // Queued, not refused: lb answers no request with an error of its own. (A connect whose
    // SYNs the full queues keep dropping can outlast the clients' 10 s: the kernel's SYN
    // back-off is 1, 1, 1, 1, 1, 2, 4 s.)
    let refused: Vec<&String> = errors.iter().filter(|e| *e != "no answer within 10 s").collect();
    assert!(refused.is_empty(), "{failed} failed: {refused:?}");
    assert!(failed * 100 <= ok, "more than 1 % waited over 10 s: {failed} of {ok}");
    assert!(never_out(&seen), "an overloaded member was ejected: {seen:?}");
    lb.stop().await;
}
