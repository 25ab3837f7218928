//! lb: a load balancer with Apache mod_proxy_balancer semantics.
//!
//! # Data path (per request)
//! ```text
//! client ─▶ http::server  (accept, HTTP/1.1 + h2c, one span per connection)
//!        ─▶ http::proxy   (ProxyPass route, header rewriting, failover loop)
//!        ─▶ balancer      (candidate loop + byrequests | bytraffic | bybusyness)
//!        ─▶ upstream::pool (pooled keep-alive connection to the member)
//!        ─▶ member        (upstream::connect opens new connections)
//! ```
//! Nothing on this path takes a lock: member state is atomics, pools are lock-free queues, and
//! the balancer set is an `ArcSwap` snapshot.
//!
//! # Control path
//! ```text
//! request outcomes ─▶ balancer::member (E flag, retry timer, counters)
//!                  ─▶ status / admin   (JSON for `lb status`)
//! ```
//! Kernel telemetry (eBPF maps → telemetry → health state machine → scheduler inputs) joins this
//! path next, feeding the same member state the data path reads.
pub mod admin;
pub mod balancer;
pub mod config;
pub mod demo;
pub mod health;
pub mod http;
pub mod runtime;
pub mod status;
pub mod telemetry;
pub mod upstream;
