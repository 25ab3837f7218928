//! HTTP/2 abuse, sent as raw frames (and with the h2 client crate for rapid reset): each flood
//! ends the offending connection with GOAWAY (ENHANCE_YOUR_CALM) or is refused stream by stream,
//! never reaches a member in bulk, and other clients keep being served.
use lb_tests::*;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const REFUSED_STREAM: u32 = 0x7;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK block for `GET path` (static-table method and scheme, literal path and authority).
fn get_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x04, path.len() as u8];
    b.extend_from_slice(path.as_bytes());
    b.extend_from_slice(&[0x01, 1, b'x']);
    b
}

struct Frame {
    kind: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    /// The error code of a GOAWAY or RST_STREAM.
    fn code(&self) -> Option<u32> {
        let at = match self.kind {
            GOAWAY => 4,
            RST_STREAM => 0,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Read frames until the connection closes, `done` holds, or `limit` passes.
async fn read_frames(
    s: &mut TcpStream,
    limit: Duration,
    done: impl Fn(&[Frame]) -> bool,
) -> (Vec<Frame>, bool) {
    let end = Instant::now() + limit;
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let mut closed = false;
    while !done(&frames) {
        let mut chunk = [0u8; 16384];
        let Some(left) = end.checked_duration_since(Instant::now()) else { break };
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            frames.push(Frame { kind: buf[3], stream, payload: buf[9..9 + len].to_vec() });
            buf.drain(..9 + len);
        }
    }
    (frames, closed)
}

fn goaway(frames: &[Frame]) -> Option<u32> {
    frames.iter().find(|f| f.kind == GOAWAY).and_then(Frame::code)
}

async fn setup() -> (Member, Lb) {
    let m = Member::start("m").await;
    let lb = Lb::start(&config(&members(&[(&m.url(), "")]))).await;
    (m, lb)
}

/// Open an h2c connection and send `frames` after the preface and an empty SETTINGS.
async fn send(lb: &Lb, frames: &[Vec<u8>]) -> TcpStream {
    let mut s = TcpStream::connect(lb.addr).await.expect("connect");
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    for f in frames {
        out.extend_from_slice(f);
    }
    s.write_all(&out).await.expect("write frames");
    s
}

/// Another client is served while and after the flood.
async fn others_are_served(lb: &Lb) {
    assert_eq!(get(&lb.url("/")).await.status, 200);
}

#[tokio::test]
async fn ping_and_settings_floods_end_with_goaway_enhance_your_calm() {
    let (m, lb) = setup().await;
    for (what, f) in
        [("PING", frame(PING, 0, 0, &[1; 8])), ("SETTINGS", frame(SETTINGS, 0, 0, &[]))]
    {
        let flood = vec![f; 2000];
        let mut s = send(&lb, &flood).await;
        let (frames, closed) = read_frames(&mut s, Duration::from_secs(10), |_| false).await;
        assert_eq!(goaway(&frames), Some(ENHANCE_YOUR_CALM), "{what}: GOAWAY(ENHANCE_YOUR_CALM)");
        assert!(closed, "{what}: the connection is closed");
        others_are_served(&lb).await;
    }
    assert_eq!(m.hits.load(Relaxed), 2, "only the other clients' requests");
    lb.stop().await;
}

#[tokio::test]
async fn rapid_reset_ends_the_connection_before_the_member_sees_the_flood() {
    let (m, lb) = setup().await;
    let tcp = TcpStream::connect(lb.addr).await.expect("connect");
    let (mut client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let mut sent = 0;
    for _ in 0..20_000 {
        let Ok(c) = client.ready().await else { break };
        client = c;
        let req =
            http::Request::get(format!("http://{}/sleep/100", lb.addr)).body(()).expect("req");
        let Ok((_resp, mut stream)) = client.send_request(req, false) else { break };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
    }
    let err = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the connection ends")
        .expect("join")
        .expect_err("ended by lb");
    assert!(err.is_go_away() && err.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM), "{err:?}");
    let hits = m.hits.load(Relaxed);
    assert!(sent > 200 && hits < 400, "{sent} streams opened and reset, {hits} reached the member");
    others_are_served(&lb).await;
    lb.stop().await;
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off() {
    let (m, lb) = setup().await;
    let mut frames = vec![frame(HEADERS, END_STREAM, 1, &get_block("/"))];
    let field = [0x00, 3, b'x', b'-', b'a', 1, b'b'];
    frames.extend(std::iter::repeat_n(frame(CONTINUATION, 0, 1, &field), 20_000));
    let mut s = TcpStream::connect(lb.addr).await.expect("connect");
    // Written as it is read: lb closes the connection long before the end.
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frames.concat());
    let _ = tokio::time::timeout(Duration::from_secs(10), s.write_all(&out)).await;
    let (got, closed) = read_frames(&mut s, Duration::from_secs(10), |_| false).await;
    assert!(goaway(&got).is_some() && closed, "GOAWAY, then closed");
    assert_eq!(m.hits.load(Relaxed), 0);
    others_are_served(&lb).await;
    lb.stop().await;
}

#[tokio::test]
async fn an_hpack_bomb_is_refused_without_reaching_a_member() {
    let (m, lb) = setup().await;
    // One 4000-byte entry in the dynamic table, then 3000 one-byte references to it: 12 MB of
    // headers from 7 KB.
    let mut block = get_block("/");
    block.extend_from_slice(&[0x40, 1, b'b', 0x7f]);
    let mut n = 4000 - 127;
    while n >= 128 {
        block.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    block.push(n as u8);
    block.extend(std::iter::repeat_n(b'a', 4000));
    block.extend(std::iter::repeat_n(0xbe, 3000));
    let mut s = send(&lb, &[frame(HEADERS, END_STREAM | END_HEADERS, 1, &block)]).await;
    let (got, _) = read_frames(&mut s, Duration::from_secs(10), |f| {
        f.iter()
            .any(|f| f.kind == GOAWAY || (f.stream == 1 && matches!(f.kind, HEADERS | RST_STREAM)))
    })
    .await;
    let answered = got.iter().any(|f| f.kind == GOAWAY || f.stream == 1);
    assert!(answered, "the stream is refused or the connection told to go away");
    assert_eq!(m.hits.load(Relaxed), 0, "no member sees the request");
    others_are_served(&lb).await;
    lb.stop().await;
}

#[tokio::test]
async fn streams_beyond_the_concurrency_limit_are_refused_and_a_client_that_insists_is_sent_away() {
    let (m, lb) = setup().await;
    let opened = |n: u32| -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| frame(HEADERS, END_STREAM | END_HEADERS, 2 * i + 1, &get_block("/sleep/2000")))
            .collect()
    };
    let refused = |f: &[Frame]| {
        f.iter().filter(|f| f.kind == RST_STREAM && f.code() == Some(REFUSED_STREAM)).count()
    };
    // 150 at once: the 50 past the limit of 100 are refused, the connection stays.
    let mut s = send(&lb, &opened(150)).await;
    let (got, closed) = read_frames(&mut s, Duration::from_secs(10), |f| refused(f) >= 50).await;
    assert!(refused(&got) >= 50 && !closed, "streams past 100 are refused");
    assert!(goaway(&got).is_none());
    assert!(m.hits.load(Relaxed) <= 100, "at most 100 at once reach the member");
    // 400 at once: more refusals than a client provokes by accident; it is sent away.
    let mut s = send(&lb, &opened(400)).await;
    let (got, closed) = read_frames(&mut s, Duration::from_secs(10), |_| false).await;
    assert_eq!(goaway(&got), Some(ENHANCE_YOUR_CALM), "GOAWAY(ENHANCE_YOUR_CALM)");
    assert!(closed);
    others_are_served(&lb).await;
    lb.stop().await;
}
