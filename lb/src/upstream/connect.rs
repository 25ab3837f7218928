//! Open a TCP connection to a member with its `connectiontimeout` and socket options. HTTP pools
//! and TCP listeners both connect here, so kernel telemetry sees every member connection.
use super::UpstreamError;
use crate::balancer::Member;
use crate::config::MemberUrl;
use crate::telemetry::Telemetry;
use crate::telemetry::tcp_info::TrackedStream;
use std::net::{IpAddr, SocketAddr};
use tokio::net::TcpSocket;

/// Resolve a member's address: the address a DNS-named member stands for, literal IPs
/// directly, other names through the system resolver (until lb's own resolver has answered).
pub async fn resolve(url: &MemberUrl) -> Result<SocketAddr, UpstreamError> {
    if let Some(ip) = url.pin {
        return Ok(SocketAddr::new(ip, url.port));
    }
    if let Ok(ip) = url.host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, url.port));
    }
    let host = url.host.as_str();
    let mut addrs = tokio::net::lookup_host((host, url.port))
        .await
        .map_err(|source| UpstreamError::Resolve { host: host.to_owned(), source })?;
    addrs.next().ok_or_else(|| UpstreamError::Resolve {
        host: host.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
    })
}

/// Connect to the member, applying `connectiontimeout`, TCP_NODELAY and (with `keepalive`)
/// SO_KEEPALIVE. The socket is registered with kernel telemetry before the SYN goes out.
pub async fn connect(
    member: &Member,
    telemetry: &Telemetry,
) -> Result<TrackedStream, UpstreamError> {
    let cfg = member.config();
    let addr = resolve(&member.url).await?;
    member.set_endpoint(addr);
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
        .map_err(|source| UpstreamError::Connect { addr: addr.to_string(), source })?;
    telemetry.register(&socket, addr);
    telemetry.connect_started(addr);
    let started = std::time::Instant::now();
    let stream = match tokio::time::timeout(cfg.connectiontimeout, socket.connect(addr)).await {
        Err(_) => {
            telemetry.connect_failed(addr);
            return Err(UpstreamError::ConnectTimeout {
                addr: addr.to_string(),
                after: cfg.connectiontimeout,
            });
        }
        Ok(Err(source)) => {
            telemetry.connect_failed(addr);
            return Err(UpstreamError::Connect { addr: addr.to_string(), source });
        }
        Ok(Ok(s)) => s,
    };
    // Socket options are best effort: a failure here does not make the connection unusable.
    let _ = stream.set_nodelay(true);
    if cfg.keepalive {
        let _ = socket2::SockRef::from(&stream).set_keepalive(true);
    }
    Ok(telemetry.connected(addr, started.elapsed(), stream))
}
