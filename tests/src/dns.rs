//! A DNS server for tests, on 127.0.0.1:0 (UDP and TCP): it answers A queries for the names it
//! is given, with a fixed TTL, and the answers can change while it runs. The wire format
//! (RFC 1035) is written here by hand, independent of the resolver lb uses.
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

type Records = Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>;

pub struct DnsServer {
    pub addr: SocketAddr,
    records: Records,
    /// Queries answered (any type).
    pub queries: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl DnsServer {
    /// Serve with this TTL (seconds) on every record.
    pub async fn start(ttl: u32) -> DnsServer {
        // A UDP port the kernel picks, and TCP on the same number where that is free.
        let mut pair = None;
        for _ in 0..50 {
            let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns udp");
            let addr = udp.local_addr().expect("dns addr");
            if let Ok(tcp) = TcpListener::bind(addr).await {
                pair = Some((udp, tcp, addr));
                break;
            }
        }
        let (udp, tcp, addr) = pair.expect("a port free for both UDP and TCP");
        let records: Records = Arc::default();
        let queries = Arc::new(AtomicU64::new(0));
        let (r, q) = (Arc::clone(&records), Arc::clone(&queries));
        let u = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                if let Some(resp) = answer(&buf[..n], &r, ttl) {
                    q.fetch_add(1, Ordering::Relaxed);
                    let _ = udp.send_to(&resp, from).await;
                }
            }
        });
        let (r, q) = (Arc::clone(&records), Arc::clone(&queries));
        let t = tokio::spawn(async move {
            while let Ok((mut s, _)) = tcp.accept().await {
                let (r, q) = (Arc::clone(&r), Arc::clone(&q));
                tokio::spawn(async move {
                    let mut len = [0u8; 2];
                    while s.read_exact(&mut len).await.is_ok() {
                        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
                        if s.read_exact(&mut msg).await.is_err() {
                            return;
                        }
                        let Some(resp) = answer(&msg, &r, ttl) else { return };
                        q.fetch_add(1, Ordering::Relaxed);
                        let mut out = (resp.len() as u16).to_be_bytes().to_vec();
                        out.extend(resp);
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        DnsServer { addr, records, queries, tasks: vec![u, t] }
    }

    /// From now on `name` has these addresses (none: NXDOMAIN).
    pub fn set(&self, name: &str, ips: &[Ipv4Addr]) {
        let mut r = self.records.lock().expect("records");
        if ips.is_empty() {
            r.remove(&name.to_ascii_lowercase());
        } else {
            r.insert(name.to_ascii_lowercase(), ips.to_vec());
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The response to one query: A records for a known name, no records for other types of a
/// known name, NXDOMAIN for an unknown one.
fn answer(q: &[u8], records: &Records, ttl: u32) -> Option<Vec<u8>> {
    if q.len() < 12 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    // The question: labels, then type and class.
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let n = usize::from(*q.get(i)?);
        i += 1;
        if n == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + n)?).to_ascii_lowercase());
        i += n;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question = &q[12..i + 4];
    let name = labels.join(".");
    let ips = records.lock().ok()?.get(&name).cloned();
    let rd = q[2] & 0x01;
    let rcode = if ips.is_some() { 0 } else { 3 };
    let answers: Vec<Ipv4Addr> = if qtype == 1 { ips.unwrap_or_default() } else { Vec::new() };
    let mut r = Vec::with_capacity(64);
    r.extend_from_slice(&q[0..2]);
    r.push(0x84 | rd); // QR, AA, RD as asked
    r.push(0x80 | rcode); // RA, rcode
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(question);
    for ip in answers {
        r.extend_from_slice(&[0xc0, 12]); // the name: a pointer to the question's
        r.extend_from_slice(&1u16.to_be_bytes());
        r.extend_from_slice(&1u16.to_be_bytes());
        r.extend_from_slice(&ttl.to_be_bytes());
        r.extend_from_slice(&4u16.to_be_bytes());
        r.extend_from_slice(&ip.octets());
    }
    Some(r)
}
