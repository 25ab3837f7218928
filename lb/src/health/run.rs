//! The control loop: step every telemetry interval (at least every [`STEP`]) and whenever a
//! probe or health check answers, start what the step orders, until stopped. Probes and checks
//! run as tasks of their own and report back over a channel; the loop itself never waits on
//! the network.
use super::checks::Done;
use super::{Monitor, ProbeOrder, STEP, What, hcheck, probe};
use crate::balancer::{Balancer, MemberId, now_ms};
use crate::telemetry::Telemetry;
use arc_swap::ArcSwap;
use std::sync::Arc;
use tokio::time::Instant;

pub async fn run(
    balancers: Arc<ArcSwap<Vec<Arc<Balancer>>>>,
    telemetry: Arc<Telemetry>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut monitor = Monitor::default();
    let mut tick = tokio::time::interval(telemetry.interval.min(STEP));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sampled: Option<Instant> = None;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(MemberId, u64, Done)>();
    loop {
        let orders = tokio::select! {
            _ = tick.tick() => {
                let now = Instant::now();
                let snap = if sampled.is_none_or(|t| now.duration_since(t) >= telemetry.interval) {
                    sampled = Some(now);
                    telemetry.sample(now.into_std())
                } else {
                    telemetry.snapshot()
                };
                monitor.evaluate(&balancers.load(), &snap, now)
            }
            Some((id, started, done)) = rx.recv() => {
                let current = balancers.load();
                match done {
                    Done::Probe(r) => monitor.probed(&current, id, started, r),
                    Done::Check(r) => monitor.checked(&current, id, r),
                }
                monitor.evaluate(&current, &telemetry.snapshot(), Instant::now())
            }
            _ = &mut stop => break,
        };
        for o in orders {
            let tx = tx.clone();
            tokio::spawn(async move {
                let started = now_ms();
                let ProbeOrder { id, addr, what } = o;
                let done = match what {
                    What::Probe { kind, timeout } => {
                        Done::Probe(probe::probe(addr, &kind, timeout).await)
                    }
                    What::Check(c) => {
                        Done::Check(hcheck::check(&c.url, addr, &c.hc, c.tls.as_ref()).await)
                    }
                };
                let _ = tx.send((id, started, done));
            });
        }
    }
}
