//! The access log: one line per request with the member picked and timings.
//!
//! Emitted as a tracing event on target `lb::access`, when the response body ends (or is
//! abandoned), so it carries the total time and the bytes actually sent to the client.
use super::sticky::Values;
use http::{Method, StatusCode};
use std::net::SocketAddr;
use std::time::Instant;

pub struct AccessRecord {
    pub listener: std::sync::Arc<str>,
    pub client: SocketAddr,
    pub method: Method,
    pub path: String,
    pub status: StatusCode,
    pub balancer: Option<std::sync::Arc<str>>,
    pub member: Option<String>,
    pub attempts: u32,
    /// BALANCER_SESSION_STICKY, BALANCER_SESSION_ROUTE, BALANCER_WORKER_ROUTE and
    /// BALANCER_ROUTE_CHANGED of the last attempt.
    pub balancer_values: Values,
    pub start: Instant,
    /// Time to the response head.
    pub head_us: u64,
}

impl AccessRecord {
    /// Write the line. `complete` is false when the client went away before the body ended.
    pub fn emit(self, bytes: u64, complete: bool) {
        let total_us = self.start.elapsed().as_micros() as u64;
        let v = &self.balancer_values;
        tracing::info!(
            target: "lb::access",
            listener = %self.listener,
            client = %self.client,
            method = %self.method,
            path = %self.path,
            status = self.status.as_u16(),
            balancer = self.balancer.as_deref().unwrap_or("-"),
            member = self.member.as_deref().unwrap_or("-"),
            attempts = self.attempts,
            route = v.worker_route.as_deref().unwrap_or("-"),
            session_sticky = v.session_sticky.as_deref().unwrap_or("-"),
            session_route = v.session_route.as_deref().unwrap_or("-"),
            route_changed = v.route_changed,
            head_us = self.head_us,
            total_us,
            bytes,
            complete,
        );
    }
}
