//! lb: a layer 4 / layer 7 load balancer with Apache mod_proxy_balancer semantics and kernel-
//! sourced member health.
//!
//! # Data path (per connection / request)
//! ```text
//! client ─▶ conn          PROXY header (accept_proxy), ClientHello SNI (passthrough)
//!        ─▶ tls           TLS termination, certificate by SNI (listener [[tls]])
//!        ─▶ http::guard   HTTP/1: strict framing, limits, read timeouts; h2: flood rations
//!        ─▶ http::server  HTTP/1.1 + h2 ─▶ http::proxy  ProxyPass route, sticky session,
//!                         headers, failover; ping (body held until 100 Continue)
//!        ─▶ tcp           layer 4: pick, connect with failover, send_proxy, tcp::relay
//!        ─▶ balancer      protocol-neutral: session route, or candidate loop + byrequests |
//!                         bytraffic | bybusyness | heartbeat; pick → InFlight guard; report(Outcome)
//!        ─▶ upstream      connect (connectiontimeout, telemetry registration); HTTP pool (+ TLS)
//! ```
//! Member state on this path is atomics, each listener reads its service (routes, balancers,
//! certificates) from an `ArcSwap` slot, and the one lock is a pool's idle stack, held for one
//! push or pop.
//!
//! # Control path
//! ```text
//! telemetry (eBPF / TCP_INFO) ┐
//! request outcomes, stalls     ├▶ health: evidence per signal (SPRT) ─▶ ejection state machine
//! probes (connect, OPTIONS *) ◀┤    per MemberId ─▶ member flags; wakes requests waiting on it
//! health checks (hcmethod)    ◀┘    (the same machine: hcfails set C, hcpasses clear C and E)
//! runtime: config ─▶ Routing (members kept by balancer + URL) ─▶ swap slots  (start, reload)
//! dns: member names re-resolved at the TTL ─▶ runtime rebuilds (one member per address)
//! admin (/status, /health, /heartbeat, /reload) ─▶ state::Shared ─▶ status (reports)
//! ```
//! `import` (`lb import-apache`) stands apart: it turns Apache's config into lb's TOML text.
//! Module layering, leaves first: `config`, `errors`, `shutdown`, `import`, `memory` → `sys`, `telemetry`, `conn`,
//! `tls`, `accesslog` → `balancer` → `health`, `upstream`, `status`, `state` → `http`, `tcp`, `admin` →
//! `routing` → `runtime`.
/// `AsyncWrite` for a stream wrapper that writes straight through to its `inner` field (it only
/// watches or alters what is read): `write_through!(impl[S: AsyncWrite + Unpin] Wrapper<S>);`.
macro_rules! write_through {
    (impl[$($g:tt)*] $t:ty) => {
        impl<$($g)*> tokio::io::AsyncWrite for $t {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
            }
            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }
            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }
            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }
            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }
        }
    };
}

pub mod accesslog;
pub mod admin;
pub mod balancer;
pub mod config;
pub mod conn;
pub mod demo;
pub mod dns;
pub mod edit;
pub mod errors;
pub mod health;
pub mod http;
pub mod import;
pub mod memory;
pub mod persist;
pub mod routing;
pub mod runtime;
pub mod shutdown;
pub mod state;
pub mod status;
pub mod sys;
pub mod tcp;
pub mod telemetry;
pub mod term;
pub mod tls;
pub mod upstream;
