//! Connections from lb to its members.
//!
//! [`connect`] is the one place a member connection is opened (timeouts, socket options,
//! telemetry registration). [`pool`] keeps idle HTTP/1.1 connections (cleartext or TLS) per
//! member, newest reused first ([`idle`]), honouring Apache's `max`, `acquire`, `ttl` and
//! `disablereuse`.
pub mod connect;
mod idle;
pub mod pool;

use std::time::Duration;

/// Why lb could not get a response head from a member.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connect to {addr} timed out after {after:?}")]
    ConnectTimeout { addr: String, after: Duration },
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP handshake with {addr} failed: {source}")]
    Handshake {
        addr: String,
        #[source]
        source: hyper::Error,
    },
    #[error("no free connection to {addr} within {waited:?} (max = {max})")]
    PoolExhausted { addr: String, max: u32, waited: Duration },
    #[error("{addr} sent no response head within {after:?}")]
    ResponseTimeout { addr: String, after: Duration },
    /// The member was ejected while the request waited on it (nothing was lost: the request
    /// had not been sent, or can be replayed).
    #[error("{addr} was ejected while the request waited on it")]
    Ejected { addr: String },
    /// `ping`: no `100 Continue` (nor an answer) within the ping time; the body was not sent.
    #[error("{addr} sent no 100 Continue within {after:?} (ping)")]
    NoContinue { addr: String, after: Duration },
    /// The member's answer was ambiguous about where its body ends (never forwarded).
    #[error("{addr} answered with {why}")]
    Framing { addr: String, why: String },
    #[error("exchange with {addr} failed: {source}")]
    Exchange {
        addr: String,
        #[source]
        source: hyper::Error,
    },
}
