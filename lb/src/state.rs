//! What the control plane shares: the live balancers, telemetry, heartbeat records, and the way
//! to ask the runtime for a reload. The admin API and the health loop read it; only the runtime
//! writes the balancer set, by swapping it whole.
use crate::balancer::Balancer;
use crate::balancer::heartbeat::Heartbeats;
use crate::telemetry::Telemetry;
use arc_swap::ArcSwap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// A reload request: the answer is what was applied, or every reason it was refused.
pub type ReloadRequest = oneshot::Sender<Result<String, String>>;

pub struct Shared {
    pub balancers: Arc<ArcSwap<Vec<Arc<Balancer>>>>,
    pub telemetry: Arc<Telemetry>,
    pub heartbeats: Arc<Heartbeats>,
    /// Where `POST /reload` (and SIGHUP, through `runtime::Handle`) sends its request.
    pub reload: mpsc::Sender<ReloadRequest>,
    /// Each running listener's name and bound address.
    pub listeners: ArcSwap<Vec<(String, std::net::SocketAddr)>>,
}
