//! HTTP/2 control-frame floods, caught below hyper: the frames a client sends are walked (their
//! 9-byte headers only; payloads are skipped, never copied) and the ones that cost lb work but
//! carry no request are rationed per connection.
//!
//! Why: h2 itself bounds memory (it answers one PING or SETTINGS at a time and stops reading
//! until the answer is written; it caps CONTINUATION frames and resets of streams not yet
//! accepted), but not rate. A client that cancels every stream right after opening it (rapid
//! reset, CVE-2023-44487) makes lb start a member request per stream; one that sends PINGs,
//! SETTINGS or PRIORITY frames as fast as it can costs a core. Each kind gets a token bucket
//! (a burst, then a rate per second); a client that empties one is told GOAWAY with
//! ENHANCE_YOUR_CALM and the connection is closed. Legitimate clients send a handful of these.
//! So are the streams lb itself resets (past the concurrency limit, or a header list past the
//! size limit: an HPACK bomb): a client that keeps provoking that goes the same way.
use tokio::time::Instant;

const PREFACE_LEN: u64 = 24;
const RST_STREAM: u8 = 0x3;
const PRIORITY: u8 = 0x2;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const HEADERS: u8 = 0x1;
const ACK: u8 = 0x1;
/// GOAWAY's error code for a peer that is generating excessive load (RFC 9113 §7).
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// The 9-byte header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

/// Walks frame headers through a byte stream fed in pieces of any size.
#[derive(Debug, Default)]
pub struct Frames {
    head: [u8; 9],
    have: usize,
    /// Bytes to pass over before the next frame header (a payload, or the client preface).
    skip: u64,
}

impl Frames {
    /// A client's stream: the 24-byte preface comes first.
    pub fn client() -> Frames {
        Frames { skip: PREFACE_LEN, ..Frames::default() }
    }

    /// Whether the stream stands between two frames.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.skip == 0
    }

    /// Walk `data`, calling `each` with every frame header completed in it.
    pub fn feed(&mut self, mut data: &[u8], mut each: impl FnMut(FrameHead)) {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = usize::try_from(self.skip).unwrap_or(usize::MAX).min(data.len());
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = (9 - self.have).min(data.len());
            self.head[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 9 {
                self.have = 0;
                let h = &self.head;
                let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
                let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                self.skip = u64::from(len);
                each(FrameHead { len, kind: h[3], flags: h[4], stream });
            }
        }
    }
}

/// A token bucket: `burst` at once, then `rate` per second.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    burst: f64,
    rate: f64,
    last: Option<Instant>,
}

impl Bucket {
    fn new(burst: f64, rate: f64) -> Bucket {
        Bucket { tokens: burst, burst, rate, last: None }
    }

    /// Take one token at `now`; false when there is none.
    fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// One client connection's rations.
#[derive(Debug)]
pub struct Watch {
    frames: Frames,
    resets: Bucket,
    /// Streams lb itself reset: a client that keeps provoking that (streams past the
    /// concurrency limit, header lists past the size limit) is told to go away too.
    refusals: Bucket,
    pings: Bucket,
    settings: Bucket,
    priorities: Bucket,
    /// The highest stream the client opened (GOAWAY names it).
    last_stream: u32,
    /// What the client flooded, once it has.
    pub flooded: Option<&'static str>,
}

impl Default for Watch {
    fn default() -> Watch {
        Watch {
            frames: Frames::client(),
            resets: Bucket::new(200.0, 100.0),
            refusals: Bucket::new(100.0, 10.0),
            pings: Bucket::new(50.0, 10.0),
            settings: Bucket::new(50.0, 10.0),
            priorities: Bucket::new(200.0, 100.0),
            last_stream: 0,
            flooded: None,
        }
    }
}

impl Watch {
    /// Account the client's bytes `data`.
    pub fn read(&mut self, data: &[u8]) {
        let Watch { frames, resets, pings, settings, priorities, last_stream, flooded, .. } = self;
        frames.feed(data, |f| {
            let bucket = match f.kind {
                HEADERS => {
                    *last_stream = (*last_stream).max(f.stream);
                    return;
                }
                RST_STREAM => (&mut *resets, "RST_STREAM"),
                PING if f.flags & ACK == 0 => (&mut *pings, "PING"),
                SETTINGS if f.flags & ACK == 0 => (&mut *settings, "SETTINGS"),
                PRIORITY => (&mut *priorities, "PRIORITY"),
                _ => return,
            };
            if flooded.is_none() && !bucket.0.take(Instant::now()) {
                *flooded = Some(bucket.1);
            }
        });
    }

    /// lb wrote a frame of `kind` to the client.
    pub fn wrote(&mut self, kind: u8) {
        if kind == RST_STREAM && self.flooded.is_none() && !self.refusals.take(Instant::now()) {
            self.flooded = Some("refused streams");
        }
    }

    /// The GOAWAY frame that ends a flooding client's connection.
    pub fn goaway(&self) -> [u8; 17] {
        let mut f = [0u8; 17];
        f[2] = 8; // payload length
        f[3] = 0x7; // GOAWAY
        f[9..13].copy_from_slice(&self.last_stream.to_be_bytes());
        f[13..17].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frames_are_found_whatever_the_pieces() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[0; 6]));
        bytes.extend(frame(HEADERS, 5, 3, b"abc"));
        bytes.extend(frame(PING, 0, 0, &[7; 8]));
        let want = vec![(SETTINGS, 6), (HEADERS, 3), (PING, 8)];
        for piece in 1..bytes.len() {
            let mut f = Frames::client();
            let mut seen = Vec::new();
            for chunk in bytes.chunks(piece) {
                f.feed(chunk, |h| seen.push((h.kind, h.len)));
            }
            assert_eq!(seen, want, "pieces of {piece}");
            assert!(f.at_boundary());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_passes_a_flood_does_not_and_time_refills() {
        let mut w = Watch::default();
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        for _ in 0..50 {
            bytes.extend(frame(PING, 0, 0, &[0; 8]));
        }
        w.read(&bytes);
        assert_eq!(w.flooded, None, "a burst of 50 is allowed");
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        for _ in 0..10 {
            w.read(&frame(PING, 0, 0, &[0; 8]));
        }
        assert_eq!(w.flooded, None, "ten a second is allowed");
        w.read(&frame(PING, ACK, 0, &[0; 8]));
        assert_eq!(w.flooded, None, "acks are not counted");
        w.read(&frame(PING, 0, 0, &[0; 8]));
        assert_eq!(w.flooded, Some("PING"));
        w.read(&frame(HEADERS, 4, 9, b""));
        let g = w.goaway();
        assert_eq!(&g[9..13], &9u32.to_be_bytes());
        assert_eq!(&g[13..17], &ENHANCE_YOUR_CALM.to_be_bytes());
    }
}
