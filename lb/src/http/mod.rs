//! Layer 7: HTTP/1.1 and h2c from clients, HTTP/1.1 to members.
//!
//! [`server`] accepts connections; [`proxy`] routes each request ([`route`]), asks the balancer for
//! a member, sends it over a pooled connection and streams the answer back ([`body`]), rewriting
//! headers on the way ([`headers`]) and logging it ([`access`]).
pub mod access;
pub mod body;
pub mod headers;
pub mod proxy;
pub mod route;
pub mod server;
