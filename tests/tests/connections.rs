//! Connection limits and the cost of idle clients: `max_connections` pauses accepting instead
//! of refusing, and 10,000 idle keep-alive clients cost lb a bounded, measured amount of memory.
use lb_tests::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Send a keep-alive GET on `s` and read its answer (the member answers with its name).
async fn get_on(s: &mut TcpStream) -> String {
    try_get_on(s).await.expect("an answer")
}

/// The same, with what went wrong as an error: a failed write or read, no answer within 5 s,
/// or the connection closed before the answer's end.
async fn try_get_on(s: &mut TcpStream) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind};
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).ends_with("\r\n\r\nm") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .map_err(|_| Error::new(ErrorKind::TimedOut, "no answer within 5 s"))??;
        if n == 0 {
            let text = String::from_utf8_lossy(&got).into_owned();
            return Err(Error::new(ErrorKind::UnexpectedEof, format!("closed after {text:?}")));
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test]
async fn at_max_connections_accepting_pauses_until_one_closes() {
    let m = Member::start("m").await;
    let cfg = config(&members(&[(&m.url(), "")]))
        .replace("access_log = false\n", "access_log = false\nmax_connections = 3\n");
    let lb = Lb::start(&cfg).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(lb.addr).await.expect("connect");
        assert!(get_on(&mut s).await.starts_with("HTTP/1.1 200"));
        open.push(s);
    }
    // The fourth connects (the kernel's backlog holds it) but is not served while three are open.
    let mut fourth = TcpStream::connect(lb.addr).await.expect("connect");
    fourth.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), fourth.read(&mut buf)).await;
    assert!(early.is_err(), "served beyond max_connections");
    drop(open.pop());
    let n = tokio::time::timeout(Duration::from_secs(5), fourth.read(&mut buf))
        .await
        .expect("served once a connection closed")
        .expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    lb.stop().await;
}

/// The backlog the kernel gives the listening socket on `addr` (`ss`'s Send-Q of a listener).
fn kernel_backlog(addr: std::net::SocketAddr) -> u64 {
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{}", addr.port())])
        .output()
        .expect("run ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains(&addr.to_string()));
    let line = line.unwrap_or_else(|| panic!("{addr} not listening: {text}"));
    line.split_whitespace().nth(2).and_then(|q| q.parse().ok()).expect("Send-Q")
}

fn somaxconn() -> u64 {
    let v = std::fs::read_to_string("/proc/sys/net/core/somaxconn").expect("somaxconn");
    v.trim().parse().expect("a number")
}

#[tokio::test]
async fn the_listen_backlog_follows_max_connections_or_backlog_and_reloads() {
    let m = Member::start("m").await;
    let base = config(&members(&[(&m.url(), "")]));
    // Not set: room for max_connections (HAProxy's rule), as far as the kernel allows.
    let with_max =
        base.replace("access_log = false\n", "access_log = false\nmax_connections = 300\n");
    let lb = Lb::start(&with_max).await;
    assert_eq!(kernel_backlog(lb.addr), 300.min(somaxconn()));
    lb.stop().await;
    let lb = Lb::start(&base).await;
    assert_eq!(kernel_backlog(lb.addr), 10_000.min(somaxconn()));
    // Set, then changed by a reload: the same socket, its queue resized in place.
    let set = |n: u64| {
        base.replace("access_log = false\n", &format!("access_log = false\nbacklog = {n}\n"))
    };
    lb.handle.reload(parse_config(&set(700))).await.expect("reload");
    assert_eq!(kernel_backlog(lb.addr), 700.min(somaxconn()));
    let mut s = TcpStream::connect(lb.addr).await.expect("connect");
    assert!(get_on(&mut s).await.starts_with("HTTP/1.1 200"));
    lb.stop().await;
    let lb = Lb::start(&set(50)).await;
    assert_eq!(kernel_backlog(lb.addr), 50);
    lb.stop().await;
}

/// A `KiB` line of `/proc/PID/status` (`VmRSS`, `RssAnon`, …).
fn status_kib(pid: &str, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"))
}

fn rss_kib(pid: &str) -> u64 {
    status_kib(pid, "VmRSS")
}

/// What 10,000 idle keep-alive clients may cost lb, per connection (README: tested bound).
const IDLE_CONN_KIB_BOUND: u64 = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_keepalive_clients_cost_a_bounded_amount() {
    const CLIENTS: u64 = 10_000;
    lb::sys::raise_nofile().expect("raise NOFILE for the clients");
    let m = Member::start("m").await;
    let dir = std::env::temp_dir().join(format!("lb-conns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("lb.toml");
    let text = config(&members(&[(&m.url(), "")]))
        .replace("access_log = false\n", "access_log = false\nkeepalive_timeout = \"120s\"\n");
    std::fs::write(&file, text).expect("config");
    let mut lb = lb_tests::process::LbProcess::start(&file);
    let addr = lb.addr("listening (http)");
    // Warm up: the member pool, the allocator's arenas.
    let mut warm = Vec::new();
    for _ in 0..100 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        get_on(&mut s).await;
        warm.push(s);
    }
    drop(warm);
    let before = rss_kib(&lb.pid);
    let mut clients = Vec::new();
    let mut set = tokio::task::JoinSet::new();
    // A client that fails stops the test with what lb said and whether it still runs.
    let mut collect = |done: Result<std::io::Result<TcpStream>, tokio::task::JoinError>| match done
        .expect("client task")
    {
        Ok(s) => clients.push(s),
        Err(e) => {
            let own = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
            panic!(
                "client {}: {e} (the test holds {own} descriptors)\n{}",
                clients.len(),
                lb.report(20)
            )
        }
    };
    for i in 0..CLIENTS {
        set.spawn(async move {
            let mut s = TcpStream::connect(addr).await?;
            try_get_on(&mut s).await?;
            Ok(s)
        });
        if i % 200 == 199 {
            while let Some(done) = set.join_next().await {
                collect(done);
            }
        }
    }
    while let Some(done) = set.join_next().await {
        collect(done);
    }
    assert_eq!(clients.len() as u64, CLIENTS);
    let after = rss_kib(&lb.pid);
    let per_conn = after.saturating_sub(before) * 1024 / CLIENTS;
    println!(
        "{CLIENTS} idle keep-alive clients: lb RSS {before} KiB -> {after} KiB, {per_conn} B each"
    );
    assert!(
        per_conn <= IDLE_CONN_KIB_BOUND * 1024,
        "{per_conn} B per idle connection (bound {IDLE_CONN_KIB_BOUND} KiB)"
    );
    // Every one of them is still served.
    let mut last = clients.pop().expect("a client");
    assert!(get_on(&mut last).await.starts_with("HTTP/1.1 200"));
    drop(clients);
    drop(lb);
    let _ = std::fs::remove_dir_all(&dir);
}

/// User plus system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name (which may hold spaces): utime and stime are 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_lb_backs_off_without_spinning_and_recovers() {
    let m = Member::start("m").await;
    let dir = std::env::temp_dir().join(format!("lb-emfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("lb.toml");
    std::fs::write(&file, config(&members(&[(&m.url(), "")]))).expect("config");
    let lb = lb_tests::process::LbProcess::start_with_nofile(&file, 64, 64);
    let addr = lb.addr("listening (http)");
    // More idle connections than lb has descriptors left: the kernel completes them, lb's
    // accept runs out of descriptors.
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let said = lb.line(&["accept failed"], Duration::from_secs(10));
    assert!(said.is_some_and(|l| l.contains("Too many open files")), "lb says why");
    // Backing off, not spinning: well under half a core over a second (a spin takes all of it).
    let before = cpu_ticks(&lb.pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = cpu_ticks(&lb.pid) - before;
    assert!(spent < 50, "{spent} ticks of CPU in 1 s while out of descriptors");
    drop(idle);
    let served = eventually(Duration::from_secs(15), || async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        tokio::time::timeout(Duration::from_secs(2), get_on(&mut s)).await.ok()
    })
    .await;
    assert!(served.is_some_and(|a| a.starts_with("HTTP/1.1 200")), "served again");
    drop(lb);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lb_raises_its_open_file_limit_to_the_hard_limit() {
    let m = Member::start("m").await;
    let dir = std::env::temp_dir().join(format!("lb-nofile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("lb.toml");
    std::fs::write(&file, config(&members(&[(&m.url(), "")]))).expect("config");
    let lb = lb_tests::process::LbProcess::start_with_nofile(&file, 256, 4096);
    let said = lb.line(&["raised the open-file limit"], Duration::from_secs(10));
    assert!(said.is_some_and(|l| l.contains("from=256") && l.contains("to=4096")), "lb says so");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", lb.pid)).expect("limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("open files line");
    let soft: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(soft.get(3), Some(&"4096"), "{line}");
    drop(lb);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Anonymous resident memory of a process (its heap and stacks; not the binary's pages).
fn rss_anon_kib(pid: &str) -> u64 {
    status_kib(pid, "RssAnon")
}

/// What each connection carrying 1 MiB bodies may add to lb's memory at peak (README: tested
/// bound): the member connection's read buffer (128 KiB) and what waits to be written to the
/// client, with room for the allocator's rounding.
const LARGE_BODY_CONN_KIB_BOUND: u64 = 512;
/// How close to its idle level lb's memory must come once the load is over.
const RETURNED_KIB_BOUND: u64 = 4 * 1024;

/// 50 keep-alive clients fetch 1 MiB bodies through lb: its memory grows by a bounded amount per
/// connection, and once the load is over and its connections are closed, lb's memory goes back
/// to the kernel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_cost_bounded_memory_that_is_returned_after_load() {
    const CLIENTS: u64 = 50;
    const EACH: usize = 8;
    let mut m = Member::start_with("big", Some(1 << 20)).await;
    let dir = std::env::temp_dir().join(format!("lb-bigmem-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("lb.toml");
    std::fs::write(&file, config(&members(&[(&m.url(), "")]))).expect("config");
    let lb = lb_tests::process::LbProcess::start(&file);
    let url = format!("http://{}/", lb.addr("listening (http)"));
    assert_eq!(get(&url).await.body.len(), 1 << 20);
    let idle = rss_anon_kib(&lb.pid);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (pid, done) = (lb.pid.clone(), done.clone());
        tokio::spawn(async move {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_anon_kib(&pid));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            peak
        })
    };
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let url = url.clone();
        set.spawn(async move {
            let c = client();
            for _ in 0..EACH {
                let req = http::Request::get(&url).body(full(bytes::Bytes::new())).expect("req");
                let r = send(&c, req).await.expect("GET through lb");
                assert_eq!((r.status, r.body.len()), (200, 1 << 20));
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("client");
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.await.expect("sampler");
    let grown = peak.saturating_sub(idle);
    // The member connections lb keeps for reuse hold their buffers until they close (at the
    // member's keep-alive timeout; here the member goes away).
    m.kill().await;
    let returned = eventually(Duration::from_secs(10), || async {
        let now = rss_anon_kib(&lb.pid);
        (now <= idle + RETURNED_KIB_BOUND).then_some(now)
    })
    .await;
    println!(
        "{CLIENTS} clients x {EACH} x 1 MiB: lb anonymous RSS {idle} KiB idle, {peak} KiB at peak \
         ({} KiB per connection), after: {returned:?} KiB",
        grown / CLIENTS
    );
    assert!(
        grown <= CLIENTS * LARGE_BODY_CONN_KIB_BOUND,
        "{} KiB per connection at peak (bound {LARGE_BODY_CONN_KIB_BOUND} KiB)",
        grown / CLIENTS
    );
    assert!(
        returned.is_some(),
        "lb kept {} KiB over its idle {idle} KiB after the load",
        rss_anon_kib(&lb.pid) - idle
    );
    drop(lb);
    let _ = std::fs::remove_dir_all(&dir);
}
