//! Layer 7: HTTP/1.1 and h2c from clients, HTTP/1.1 to members.
//!
//! [`server`] accepts connections and reads HTTP/1 through [`guard`], which holds each request
//! to [`strict`] framing, limits and read timeouts before hyper parses it; [`proxy`] routes each
//! request ([`route`]), asks the balancer for a member, points the request at it (`outgoing`),
//! sends it over a pooled connection (`exchange`) and streams the answer back ([`body`]), rewriting headers on the way ([`headers`]) and logging it
//! ([`crate::accesslog`]). A sticky session's route ([`sticky`]) is read from the request before the pick
//! and may set a cookie on the answer. A member with `ping` gets a request's body only after its
//! `100 Continue` (`ping`).
pub mod body;
mod clock;
mod exchange;
pub mod guard;
pub mod h2watch;
pub mod headers;
mod outgoing;
mod ping;
pub mod proxy;
pub mod route;
pub mod server;
pub mod sticky;
pub mod strict;
