//! Types that cross the kernel/user boundary.
//!
//! Everything here is `#[repr(C)]` plain bytes with no implicit padding, so the eBPF programs
//! (`lb-ebpf`, built for `bpfel-unknown-none`) and the daemon (`lb`) agree on every map key and
//! value byte for byte. The crate is `no_std`; the `user` feature adds conversions that need std.
//!
//! Today it holds the member endpoint key that lb uses to name a member's address; the kernel
//! telemetry maps are keyed by it.
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

#[cfg(feature = "user")]
mod user {
    extern crate std;
    use super::EndpointKey;
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
