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

/// A config to apply (a live edit), with where to send the answer.
pub type ApplyRequest = (Box<crate::config::Config>, ReloadRequest);

pub struct Shared {
    pub balancers: Arc<ArcSwap<Vec<Arc<Balancer>>>>,
    pub telemetry: Arc<Telemetry>,
    pub heartbeats: Arc<Heartbeats>,
    /// Where `POST /reload` (and SIGHUP, through `runtime::Handle`) sends its request.
    pub reload: mpsc::Sender<ReloadRequest>,
    /// Each running listener's name and bound address.
    pub listeners: ArcSwap<Vec<(String, std::net::SocketAddr)>>,
    /// The config running now (after every reload and live edit).
    pub config: ArcSwap<crate::config::Config>,
    /// Where a live edit (balancer-manager) sends the config it made.
    pub apply: mpsc::Sender<ApplyRequest>,
}
