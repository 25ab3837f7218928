//! Open a TCP connection to a member with its `connectiontimeout` and socket options.
use super::UpstreamError;
use crate::config::MemberConfig;
use std::net::{IpAddr, SocketAddr};
use tokio::net::TcpStream;

/// Resolve a member's address: literal IPs directly, names through the system resolver.
pub async fn resolve(cfg: &MemberConfig) -> Result<SocketAddr, UpstreamError> {
    if let Ok(ip) = cfg.url.host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, cfg.url.port));
    }
    let host = cfg.url.host.as_str();
    let mut addrs = tokio::net::lookup_host((host, cfg.url.port))
        .await
        .map_err(|source| UpstreamError::Resolve { host: host.to_owned(), source })?;
    addrs.next().ok_or_else(|| UpstreamError::Resolve {
        host: host.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
    })
}

/// Connect to the member, applying `connectiontimeout`, TCP_NODELAY and (with `keepalive`)
/// SO_KEEPALIVE.
pub async fn connect(cfg: &MemberConfig) -> Result<TcpStream, UpstreamError> {
    let addr = resolve(cfg).await?;
    let stream = match tokio::time::timeout(cfg.connectiontimeout, TcpStream::connect(addr)).await {
        Err(_) => {
            return Err(UpstreamError::ConnectTimeout {
                addr: addr.to_string(),
                after: cfg.connectiontimeout,
            });
        }
        Ok(Err(source)) => {
            return Err(UpstreamError::Connect { addr: addr.to_string(), source });
        }
        Ok(Ok(s)) => s,
    };
    // Socket options are best effort: a failure here does not make the connection unusable.
    let _ = stream.set_nodelay(true);
    if cfg.keepalive {
        let _ = socket2::SockRef::from(&stream).set_keepalive(true);
    }
    Ok(stream)
}
