//! The access log: one line per request with the member picked and timings.
//!
//! Emitted as a tracing event on target `lb::access`, when the response body ends (or is
//! abandoned), so it carries the total time and the bytes actually sent to the client.
use super::sticky::Session;
use crate::balancer::Member;
use crate::config::Sticky;
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
    /// BALANCER_ROUTE_CHANGED.
    pub session_sticky: Option<String>,
    pub session_route: Option<String>,
    pub worker_route: Option<String>,
    pub route_changed: bool,
    pub start: Instant,
    /// Time to the response head.
    pub head_us: u64,
}

impl AccessRecord {
    /// Note the sticky-session values for the member picked.
    pub fn sticky(&mut self, s: Option<&Sticky>, session: Option<&Session>, member: &Member) {
        let route = member.config().route.clone();
        self.route_changed = super::sticky::route_changed(session, route.as_deref());
        self.worker_route = route;
        if let (Some(st), Some(sess)) = (s, session) {
            self.session_sticky = Some(sess.sticky(st).to_owned());
            self.session_route = Some(String::from_utf8_lossy(&sess.route).into_owned());
        }
    }

    /// Write the line. `complete` is false when the client went away before the body ended.
    pub fn emit(self, bytes: u64, complete: bool) {
        let total_us = self.start.elapsed().as_micros() as u64;
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
            route = self.worker_route.as_deref().unwrap_or("-"),
            session_sticky = self.session_sticky.as_deref().unwrap_or("-"),
            session_route = self.session_route.as_deref().unwrap_or("-"),
            route_changed = self.route_changed,
            head_us = self.head_us,
            total_us,
            bytes,
            complete,
        );
    }
}
