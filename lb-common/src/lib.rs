//! Types that cross the kernel/user boundary.
//!
//! Everything here is `#[repr(C)]` plain bytes with no implicit padding, so the eBPF programs
//! (`lb-ebpf`, built for `bpfel-unknown-none`) and the daemon (`lb`) agree on every map key and
//! value byte for byte. The crate is `no_std`; the `user` feature adds conversions that need std.
//!
//! Maps (names are the `#[map]` statics in lb-ebpf):
//! - `SOCKETS`: socket cookie (`u64`) → [`SockInfo`]. lb registers each upstream socket here
//!   before `connect()`; only registered sockets are measured, and the kernel side forgets them
//!   when they close.
//! - `STATS`: [`EndpointKey`] → [`EndpointStats`], per CPU. lb inserts a zeroed entry for every
//!   member endpoint; the kernel side only adds to existing entries, and lb sums the CPUs.
#![no_std]

/// Address family tag stored in [`EndpointKey::family`] (values of Linux `AF_INET`/`AF_INET6`).
pub const FAMILY_INET: u16 = 2;
/// See [`FAMILY_INET`].
pub const FAMILY_INET6: u16 = 10;

/// A member endpoint: IPv4 or IPv6 address and TCP port.
///
/// IPv4 addresses are stored in the first four bytes of `addr` (network order), the rest zero,
/// so that equal endpoints are equal byte strings whatever produced them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct EndpointKey {
    /// Network-order address bytes.
    pub addr: [u8; 16],
    /// Host-order TCP port.
    pub port: u16,
    /// [`FAMILY_INET`] or [`FAMILY_INET6`].
    pub family: u16,
    /// Explicit padding so the struct has no implicit holes; always zero.
    pub _pad: u32,
}

impl EndpointKey {
    /// An IPv4 endpoint from network-order octets.
    pub const fn v4(octets: [u8; 4], port: u16) -> Self {
        let mut addr = [0u8; 16];
        addr[0] = octets[0];
        addr[1] = octets[1];
        addr[2] = octets[2];
        addr[3] = octets[3];
        Self { addr, port, family: FAMILY_INET, _pad: 0 }
    }

    /// An IPv6 endpoint from network-order octets.
    pub const fn v6(octets: [u8; 16], port: u16) -> Self {
        Self { addr: octets, port, family: FAMILY_INET6, _pad: 0 }
    }
}

/// Map names shared by both sides.
pub const SOCKETS_MAP: &str = "SOCKETS";
pub const STATS_MAP: &str = "STATS";

/// Connect-latency histogram buckets: bucket `i` counts latencies below `2^i` µs (the last
/// bucket also takes everything longer, ≈ 8.4 s and up).
pub const LAT_BUCKETS: usize = 24;

/// [`SockInfo::flags`]: the connection reached ESTABLISHED.
pub const SOCK_ESTABLISHED: u32 = 1;

/// What the kernel side keeps for one registered upstream socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockInfo {
    /// The member endpoint the socket connects to (written by lb).
    pub endpoint: EndpointKey,
    /// `bpf_ktime_get_ns` when the SYN was sent (written by the kernel side).
    pub connect_ns: u64,
    /// `SOCK_*` bits.
    pub flags: u32,
    /// The socket's `data_segs_out` already added to its endpoint's counter (kernel side).
    pub segs_seen: u32,
}

/// Counters for one member endpoint, on one CPU. Every field only grows; lb turns them into
/// rates and averages by differencing snapshots.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointStats {
    /// SYNs sent (connects attempted).
    pub connects: u64,
    /// Connects that reached ESTABLISHED.
    pub established: u64,
    /// Connects that ended before ESTABLISHED (RST, timeout).
    pub connect_failed: u64,
    /// Established connections that have closed (live = established − closed).
    pub closed: u64,
    /// Data segments sent (retransmits included): the trials retransmits are a share of.
    pub data_segs_out: u64,
    /// Retransmitted segments, SYNs included.
    pub retransmits: u64,
    /// Retransmitted SYNs (a subset of `retransmits`).
    pub syn_retransmits: u64,
    /// Retransmission timeouts fired.
    pub rto: u64,
    /// Resets received.
    pub resets: u64,
    /// Sum of connect latencies (SYN → ESTABLISHED), µs.
    pub connect_lat_sum_us: u64,
    /// Connect latency histogram, see [`LAT_BUCKETS`].
    pub connect_lat_hist: [u64; LAT_BUCKETS],
    /// RTT samples taken.
    pub rtt_samples: u64,
    /// Sum of smoothed RTT (µs) at each sample.
    pub srtt_sum_us: u64,
    /// Sum and sum of squares of the measured RTT samples (µs, µs²), for the variance.
    pub mrtt_sum_us: u64,
    pub mrtt_sq_sum: u64,
    /// Smoothed RTT at the latest sample, µs, and when it was taken (`bpf_ktime_get_ns`).
    pub srtt_last_us: u64,
    pub last_sample_ns: u64,
}

impl EndpointStats {
    pub const ZERO: EndpointStats = EndpointStats {
        connects: 0,
        established: 0,
        connect_failed: 0,
        closed: 0,
        data_segs_out: 0,
        retransmits: 0,
        syn_retransmits: 0,
        rto: 0,
        resets: 0,
        connect_lat_sum_us: 0,
        connect_lat_hist: [0; LAT_BUCKETS],
        rtt_samples: 0,
        srtt_sum_us: 0,
        mrtt_sum_us: 0,
        mrtt_sq_sum: 0,
        srtt_last_us: 0,
        last_sample_ns: 0,
    };
}

/// The histogram bucket for a latency in µs.
pub const fn lat_bucket(us: u64) -> usize {
    let b = (u64::BITS - us.leading_zeros()) as usize;
    if b >= LAT_BUCKETS { LAT_BUCKETS - 1 } else { b }
}

#[cfg(feature = "user")]
mod user {
    extern crate std;
    use super::{EndpointKey, EndpointStats, SockInfo};

    // SAFETY: all three are #[repr(C)], made only of integers, with no implicit padding (the
    // layout tests below check the sizes), so every bit pattern is a valid value.
    unsafe impl aya::Pod for EndpointKey {}
    unsafe impl aya::Pod for SockInfo {}
    unsafe impl aya::Pod for EndpointStats {}
    use std::net::{IpAddr, SocketAddr};

    impl From<SocketAddr> for EndpointKey {
        fn from(sa: SocketAddr) -> Self {
            match sa.ip() {
                // An IPv4-mapped IPv6 address is the IPv4 endpoint: the kernel reports it so.
                IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                    Some(v4) => EndpointKey::v4(v4.octets(), sa.port()),
                    None => EndpointKey::v6(v6.octets(), sa.port()),
                },
                IpAddr::V4(v4) => EndpointKey::v4(v4.octets(), sa.port()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_key_has_no_implicit_padding() {
        // 16 address bytes + 2 port + 2 family + 4 explicit pad.
        assert_eq!(core::mem::size_of::<EndpointKey>(), 24);
        assert_eq!(core::mem::align_of::<EndpointKey>(), 4);
    }

    #[test]
    fn map_values_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<SockInfo>(), 24 + 8 + 4 + 4);
        assert_eq!(core::mem::size_of::<EndpointStats>(), (16 + LAT_BUCKETS) * 8);
    }

    #[test]
    fn latency_buckets_are_log2_microseconds() {
        assert_eq!(lat_bucket(0), 0);
        assert_eq!(lat_bucket(1), 1);
        assert_eq!(lat_bucket(40), 6); // 32..64 µs
        assert_eq!(lat_bucket(1_000_000), 20); // ~1 s
        assert_eq!(lat_bucket(u64::MAX), LAT_BUCKETS - 1);
    }

    #[test]
    fn v4_endpoint_zero_fills_the_tail() {
        let k = EndpointKey::v4([127, 0, 0, 1], 8080);
        assert_eq!(&k.addr[..4], &[127, 0, 0, 1]);
        assert!(k.addr[4..].iter().all(|b| *b == 0));
        assert_eq!(k.family, FAMILY_INET);
    }

    #[cfg(feature = "user")]
    #[test]
    fn mapped_v6_is_the_v4_endpoint() {
        extern crate std;
        use std::net::SocketAddr;
        let a: SocketAddr = "[::ffff:127.0.0.1]:80".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert_eq!(EndpointKey::from(a), EndpointKey::from(b));
    }
}
