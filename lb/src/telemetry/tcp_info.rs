//! The fallback telemetry source: `getsockopt(TCP_INFO)` on lb's own member connections.
//!
//! Used where the eBPF programs cannot be loaded. It yields the same [`EndpointStats`] counters,
//! so the sampler, ejection and bybusyness work unchanged, from other origins:
//! connects, failures and connect latency are measured by lb around `connect()`; srtt,
//! retransmits and RTOs come from TCP_INFO of every open member connection at each sample.
//! What TCP_INFO cannot tell (resets, SYN retransmits, retransmits and segments sent after a
//! socket's last sample) stays zero or is counted at the last sample.
use lb_common::{EndpointKey, EndpointStats, lat_bucket};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;

/// What the sampler knows of one open member connection.
struct SlotState {
    /// None once the connection is closing: the descriptor must not be used any more.
    fd: Option<RawFd>,
    total_retrans: u64,
    data_segs_out: u64,
    /// The socket's current consecutive-RTO count at the last sample.
    rto_streak: u8,
}

/// One tracked member connection.
pub struct SocketSlot {
    key: EndpointKey,
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct State {
    /// Counters lb measured itself, plus what closed sockets had accumulated.
    endpoints: HashMap<EndpointKey, EndpointStats>,
    sockets: Vec<Arc<SocketSlot>>,
}

#[derive(Default)]
pub struct TcpInfoSource {
    state: Mutex<State>,
}

/// What a connection's own counters say about lost packets (the health probes' loss check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Losses {
    /// Segments it sent again: its own packets were lost (or their acknowledgements).
    pub retransmits: u32,
    /// Segments that arrived after a gap: the peer's packets were lost (loopback and one
    /// rack do not reorder).
    pub out_of_order: u32,
    /// Segments sent and not yet acknowledged.
    pub unacked: u32,
    /// Bytes of data received from the peer.
    pub received: u64,
    /// The kernel's smoothed round-trip time, µs (0: no sample yet). On a fresh connection it
    /// is its one sample so far: SYN to SYN-ACK.
    pub rtt_us: u32,
}

/// Lost packets `stream` has noticed so far, in either direction.
pub fn losses(stream: &TcpStream) -> io::Result<Losses> {
    tcp_info(stream.as_raw_fd()).map(|i| Losses {
        retransmits: i.tcpi_total_retrans,
        out_of_order: i.tcpi_rcv_ooopack,
        unacked: i.tcpi_unacked,
        received: i.tcpi_bytes_received,
        rtt_us: i.tcpi_rtt,
    })
}

/// Have the kernel stamp the time each segment `stream` receives arrived (`SO_TIMESTAMPNS`),
/// for [`recv_timed`].
///
/// The kernel stamps received packets only while some socket on the host asks for stamps: the
/// first one to ask turns a host-wide switch on, the last one to close turns it off, and each
/// turn is a static key the kernel flips by rewriting its own code, with an interrupt to every
/// CPU. A probe's socket asking on its own flipped it twice per probe (about 18 times a second
/// with three idle members). So lb first asks on one socket of its own that stays open while lb
/// runs ([`hold_stamps_on`]): the switch turns on once, and a probe's socket only counts up and
/// down. The cost is the stamp itself, one clock read per packet the host receives, as when
/// chrony or tcpdump runs.
pub fn stamp_arrivals(stream: &TcpStream) -> io::Result<()> {
    hold_stamps_on();
    set_stamps(stream.as_raw_fd())
}

/// Ask for arrival stamps on one socket of lb's own (UDP, never bound: no port, no traffic)
/// that stays open for the life of the process; best effort, at the first probe.
fn hold_stamps_on() {
    static HELD: std::sync::OnceLock<Option<socket2::Socket>> = std::sync::OnceLock::new();
    HELD.get_or_init(|| {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).ok()?;
        set_stamps(s.as_raw_fd()).ok()?;
        Some(s)
    });
}

fn set_stamps(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `fd` is an open socket its caller owns; the option value is one c_int that lives
    // for the call, and its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Read from `stream` as `read` does (non-blocking: `WouldBlock` when nothing is there), and
/// say when the kernel received what was read, on the real-time clock: lb's own clock says
/// when lb got round to reading it, which under load is later. `None` without a stamp (see
/// [`stamp_arrivals`]).
pub fn recv_timed(
    stream: &TcpStream,
    buf: &mut [u8],
) -> io::Result<(usize, Option<std::time::SystemTime>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // Room for one control message carrying a timespec, aligned as cmsghdr needs.
    let mut control = [0u64; 8];
    // SAFETY: all-zero bytes are a valid msghdr (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` points at one iovec over `buf` (valid for writes of its length) and at
    // `control` (valid for writes of `msg_controllen` bytes); both outlive the call.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &raw mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut at = None;
    // SAFETY: `msg` was filled by recvmsg above: CMSG_FIRSTHDR/CMSG_NXTHDR walk the control
    // messages within `msg_controllen` of `control` and return null at the end.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&raw const msg) };
    while !c.is_null() {
        // SAFETY: `c` is non-null and points at a cmsghdr inside `control`.
        let h = unsafe { &*c };
        if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_TIMESTAMPNS {
            // SAFETY: an SCM_TIMESTAMPNS message carries one timespec as its data; it may be
            // unaligned for timespec, so it is read unaligned.
            let ts: libc::timespec = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(c).cast()) };
            let since_epoch =
                Duration::new(ts.tv_sec.max(0) as u64, ts.tv_nsec.clamp(0, 999_999_999) as u32);
            at = Some(std::time::UNIX_EPOCH + since_epoch);
        }
        // SAFETY: as for CMSG_FIRSTHDR; `c` is a header of `msg`.
        c = unsafe { libc::CMSG_NXTHDR(&raw const msg, c) };
    }
    Ok((n as usize, at))
}

/// The kernel's TCP_INFO for `fd`. A kernel older than libc's struct fills less of it and
/// leaves the rest zero (the segment counters need Linux 4.6, `rcv_ooopack` 5.4).
fn tcp_info(fd: RawFd) -> io::Result<libc::tcp_info> {
    // SAFETY: all-zero bytes are a valid tcp_info (integers only).
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket (the caller holds the slot lock, and a slot's fd is cleared
    // under that lock before the socket closes); `info` and `len` are valid for writes of `len`
    // bytes, and the kernel writes at most `len` bytes (an older kernel writes fewer and leaves
    // the rest zero).
    let rc = unsafe {
        libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, (&raw mut info).cast(), &mut len)
    };
    if rc == 0 { Ok(info) } else { Err(io::Error::last_os_error()) }
}

impl TcpInfoSource {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> Option<T> {
        self.state.lock().ok().map(|mut s| f(&mut s))
    }

    pub fn connect_started(&self, addr: SocketAddr) {
        self.with(|s| s.endpoints.entry(addr.into()).or_insert(EndpointStats::ZERO).connects += 1);
    }

    pub fn connect_failed(&self, addr: SocketAddr) {
        self.with(|s| {
            s.endpoints.entry(addr.into()).or_insert(EndpointStats::ZERO).connect_failed += 1
        });
    }

    /// A connect succeeded after `latency`: count it and start tracking the socket.
    pub fn connected(
        &self,
        addr: SocketAddr,
        latency: Duration,
        stream: &TcpStream,
    ) -> Option<Arc<SocketSlot>> {
        let key = EndpointKey::from(addr);
        let slot = Arc::new(SocketSlot {
            key,
            state: Mutex::new(SlotState {
                fd: Some(stream.as_raw_fd()),
                total_retrans: 0,
                data_segs_out: 0,
                rto_streak: 0,
            }),
        });
        self.with(|s| {
            let e = s.endpoints.entry(key).or_insert(EndpointStats::ZERO);
            let us = latency.as_micros() as u64;
            e.established += 1;
            e.connect_lat_sum_us += us;
            if let Some(b) = e.connect_lat_hist.get_mut(lat_bucket(us)) {
                *b += 1;
            }
            s.sockets.push(Arc::clone(&slot));
            Arc::clone(&slot)
        })
    }

    /// The connection is closing: stop using its descriptor and keep what it had counted.
    fn closed(&self, slot: &SocketSlot) {
        let (retrans, segs) = match slot.state.lock() {
            Ok(mut st) => {
                st.fd = None;
                (st.total_retrans, st.data_segs_out)
            }
            Err(_) => (0, 0),
        };
        self.with(|s| {
            let e = s.endpoints.entry(slot.key).or_insert(EndpointStats::ZERO);
            e.closed += 1;
            e.retransmits += retrans;
            e.data_segs_out += segs;
            s.sockets.retain(|x| !std::ptr::eq(x.as_ref(), slot));
        });
    }

    /// Sample every open connection; cumulative counters per endpoint.
    pub fn read_all(&self, now_ns: u64) -> Vec<(EndpointKey, EndpointStats)> {
        let Some(sockets) = self.with(|s| s.sockets.clone()) else {
            return Vec::new();
        };
        // This sample, per endpoint: RTT samples and new RTOs (events, kept in the cumulative
        // counters) and the retransmits of open connections (kept only once a connection closes).
        let mut sample: HashMap<EndpointKey, EndpointStats> = HashMap::new();
        for slot in &sockets {
            let Ok(mut st) = slot.state.lock() else { continue };
            let Some(fd) = st.fd else { continue };
            let Ok(info) = tcp_info(fd) else { continue };
            let d = sample.entry(slot.key).or_insert(EndpointStats::ZERO);
            st.total_retrans = u64::from(info.tcpi_total_retrans);
            d.retransmits += st.total_retrans;
            st.data_segs_out = u64::from(info.tcpi_data_segs_out);
            d.data_segs_out += st.data_segs_out;
            d.rto += u64::from(info.tcpi_retransmits.saturating_sub(st.rto_streak));
            st.rto_streak = info.tcpi_retransmits;
            if info.tcpi_rtt > 0 {
                let rtt = u64::from(info.tcpi_rtt);
                d.rtt_samples += 1;
                d.srtt_sum_us += rtt;
                d.mrtt_sum_us += rtt;
                d.mrtt_sq_sum = d.mrtt_sq_sum.saturating_add(rtt * rtt);
                d.srtt_last_us = rtt;
                d.last_sample_ns = now_ns;
            }
        }
        self.with(|s| {
            for (k, d) in &sample {
                let kept = s.endpoints.entry(*k).or_insert(EndpointStats::ZERO);
                kept.rto += d.rto;
                kept.rtt_samples += d.rtt_samples;
                kept.srtt_sum_us += d.srtt_sum_us;
                kept.mrtt_sum_us += d.mrtt_sum_us;
                kept.mrtt_sq_sum = kept.mrtt_sq_sum.saturating_add(d.mrtt_sq_sum);
                if d.rtt_samples > 0 {
                    kept.srtt_last_us = d.srtt_last_us;
                    kept.last_sample_ns = d.last_sample_ns;
                }
            }
            s.endpoints
                .iter()
                .map(|(k, kept)| {
                    let mut e = *kept;
                    if let Some(d) = sample.get(k) {
                        e.retransmits += d.retransmits;
                        e.data_segs_out += d.data_segs_out;
                    }
                    (*k, e)
                })
                .collect()
        })
        .unwrap_or_default()
    }
}

/// A member connection, tracked for TCP_INFO while the fallback source is active.
pub struct TrackedStream {
    inner: TcpStream,
    track: Option<(Arc<SocketSlot>, Arc<TcpInfoSource>)>,
}

impl TrackedStream {
    pub fn new(inner: TcpStream, track: Option<(Arc<SocketSlot>, Arc<TcpInfoSource>)>) -> Self {
        TrackedStream { inner, track }
    }

    /// The connection itself (for zero-copy relaying, which works on the descriptor).
    pub fn get_ref(&self) -> &TcpStream {
        &self.inner
    }
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        // Runs before `inner` closes the descriptor.
        if let Some((slot, source)) = &self.track {
            source.closed(slot);
        }
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

write_through!(impl[] TrackedStream);
