//! A real nginx member (Debian's, as operators run it in front of or behind a balancer): what
//! lb's probes and pooled connections meet most often, with its own ways (it answers `OPTIONS *`
//! with a 400 as soon as it has the request line, then closes).
//!
//! The test binds the listening socket on port 0 and hands it to nginx the way nginx hands its
//! sockets to a new binary (`NGINX=fd;` in the environment), so no port is chosen in advance.
use socket2::{Domain, Socket, Type};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

pub struct Nginx {
    child: std::process::Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    /// nginx (a master and one worker, not a daemon) serving `body` at every path. Without its
    /// master, nginx 1.22 crashes on an inherited socket.
    pub fn start(body: &str) -> Nginx {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lb-nginx-{}-{n}", std::process::id()));
        let www = dir.join("www");
        std::fs::create_dir_all(&www).expect("nginx dir");
        std::fs::write(www.join("index.html"), body).expect("nginx body");
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind");
        s.listen(128).expect("listen");
        s.set_cloexec(false).expect("inheritable socket");
        let addr = s.local_addr().ok().and_then(|a| a.as_socket()).expect("address");
        let d = dir.display();
        let conf = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             server {{ listen {addr}; root {d}/www; location / {{ try_files /index.html =404; }} }}\n}}\n"
        );
        let file = dir.join("nginx.conf");
        std::fs::write(&file, conf).expect("nginx.conf");
        let child = std::process::Command::new("nginx")
            .arg("-c")
            .arg(&file)
            .arg("-p")
            .arg(&dir)
            .env("NGINX", format!("{};", s.as_raw_fd()))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("run nginx (cargo xtask test installs it): {e}"));
        drop(s);
        let nginx = Nginx { child, addr, dir };
        // Started when it answers.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !nginx.answers() {
            assert!(std::time::Instant::now() < deadline, "nginx did not start: {}", nginx.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(self.addr) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let req = format!("GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.addr);
        let mut out = Vec::new();
        s.write_all(req.as_bytes()).is_ok()
            && s.read_to_end(&mut out).is_ok()
            && out.starts_with(b"HTTP/1.1 200")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    /// SIGTERM: the master stops its worker, then exits.
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
