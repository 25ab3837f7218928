//! lb's eBPF programs: the TCP health of lb's own connections to its members.
//!
//! - `lb_sockops` (sock_ops on lb's cgroup v2): for sockets lb registered in `SOCKETS` (by socket
//!   cookie, before `connect()`), it turns on the RTT, retransmit, RTO and state callbacks at
//!   connect time and counts, per member endpoint: connects, connect latency, failed connects,
//!   RTT samples, data segments sent, retransmits (SYNs apart), RTOs and closes.
//! - `lb_receive_reset` (tp_btf `tcp_receive_reset`): resets received on registered sockets.
//!
//! Every other socket on the machine costs one map lookup and is left alone. Counters live in a
//! per-CPU map, so no atomics are needed; lb sums the CPUs.
#![no_std]
#![no_main]

use aya_ebpf::bindings::{
    BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RETRANS_CB, BPF_SOCK_OPS_RETRANS_CB_FLAG,
    BPF_SOCK_OPS_RTO_CB, BPF_SOCK_OPS_RTO_CB_FLAG, BPF_SOCK_OPS_RTT_CB, BPF_SOCK_OPS_RTT_CB_FLAG,
    BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE,
    BPF_TCP_SYN_SENT,
};
use aya_ebpf::helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns};
use aya_ebpf::macros::{btf_tracepoint, map, sock_ops};
use aya_ebpf::maps::{LruHashMap, PerCpuHashMap};
use aya_ebpf::programs::{BtfTracePointContext, SockOpsContext};
use aya_log_ebpf::warn;
use lb_common::{EndpointKey, EndpointStats, SOCK_ESTABLISHED, SockInfo, lat_bucket};

/// Registered upstream sockets by cookie. LRU so a socket lb registered but never connected
/// cannot fill it.
#[map]
static SOCKETS: LruHashMap<u64, SockInfo> = LruHashMap::with_max_entries(65536, 0);

/// Counters per member endpoint, per CPU; entries are created by lb.
#[map]
static STATS: PerCpuHashMap<EndpointKey, EndpointStats> = PerCpuHashMap::with_max_entries(4096, 0);

const CALLBACKS: u32 = BPF_SOCK_OPS_RTT_CB_FLAG
    | BPF_SOCK_OPS_RETRANS_CB_FLAG
    | BPF_SOCK_OPS_RTO_CB_FLAG
    | BPF_SOCK_OPS_STATE_CB_FLAG;

#[sock_ops]
pub fn lb_sockops(ctx: SockOpsContext) -> u32 {
    let _ = try_sockops(&ctx);
    // 1 = let the operation proceed (sock_ops never vetoes anything here).
    1
}

fn stats(endpoint: &EndpointKey) -> Option<&'static mut EndpointStats> {
    // SAFETY: the pointer comes from the map and stays valid for this program run; the per-CPU
    // value is only touched by this CPU.
    STATS.get_ptr_mut(endpoint).map(|p| unsafe { &mut *p })
}

/// Add the data segments sent since the last count to the endpoint's total. The kernel reads
/// `data_segs_out` as 0 on a socket that is not a full socket; that never counts backwards.
fn count_segments(ctx: &SockOpsContext, info: &mut SockInfo, s: &mut EndpointStats) {
    // SAFETY: a u32 field of the context, read at its constant offset.
    let segs = unsafe { (*ctx.ops).data_segs_out };
    if segs > info.segs_seen {
        s.data_segs_out += u64::from(segs - info.segs_seen);
        info.segs_seen = segs;
    }
}

fn try_sockops(ctx: &SockOpsContext) -> Result<(), i64> {
    // SAFETY: the helper reads the cookie of the socket this context belongs to.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let Some(info) = SOCKETS.get_ptr_mut(&cookie) else {
        return Ok(());
    };
    // SAFETY: map value pointer, valid for this run.
    let info = unsafe { &mut *info };
    // SAFETY: reads the monotonic clock.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(s) = stats(&info.endpoint) else {
        return Ok(());
    };
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            ctx.set_cb_flags(CALLBACKS as i32).map_err(i64::from)?;
            info.connect_ns = now;
            s.connects += 1;
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            info.flags |= SOCK_ESTABLISHED;
            let us = now.saturating_sub(info.connect_ns) / 1000;
            s.established += 1;
            s.connect_lat_sum_us += us;
            if let Some(b) = s.connect_lat_hist.get_mut(lat_bucket(us)) {
                *b += 1;
            }
        }
        BPF_SOCK_OPS_RTT_CB => {
            // SAFETY: a u32 field of the context, read at its constant offset.
            let srtt = u64::from(unsafe { (*ctx.ops).srtt_us }) >> 3;
            let mrtt = u64::from(ctx.arg(0));
            count_segments(ctx, info, s);
            s.rtt_samples += 1;
            s.srtt_sum_us += srtt;
            s.mrtt_sum_us += mrtt;
            s.mrtt_sq_sum = s.mrtt_sq_sum.saturating_add(mrtt.saturating_mul(mrtt));
            s.srtt_last_us = srtt;
            s.last_sample_ns = now;
        }
        BPF_SOCK_OPS_RETRANS_CB => {
            count_segments(ctx, info, s);
            s.retransmits += 1;
            if info.flags & SOCK_ESTABLISHED == 0 {
                s.syn_retransmits += 1;
            }
        }
        BPF_SOCK_OPS_RTO_CB => s.rto += 1,
        BPF_SOCK_OPS_STATE_CB => {
            let (old, new) = (ctx.arg(0), ctx.arg(1));
            if new == BPF_TCP_CLOSE {
                count_segments(ctx, info, s);
                if old == BPF_TCP_SYN_SENT {
                    s.connect_failed += 1;
                    warn!(ctx, "connect to member port {} failed", info.endpoint.port);
                } else if info.flags & SOCK_ESTABLISHED != 0 {
                    s.closed += 1;
                }
                // The cookie is never reused, but the entry is no longer needed.
                let _ = SOCKETS.remove(&cookie);
            }
        }
        _ => {}
    }
    Ok(())
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn lb_receive_reset(ctx: BtfTracePointContext) -> u32 {
    let _ = try_receive_reset(&ctx);
    0
}

fn try_receive_reset(ctx: &BtfTracePointContext) -> Result<(), i64> {
    // Argument 0 of the tracepoint is the `struct sock *` that received the reset.
    let sk: *mut core::ffi::c_void = ctx.arg(0);
    // SAFETY: for tracing programs the helper takes a BTF `struct sock` pointer, which sk is.
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    // SAFETY: map value pointer, valid for this run.
    let Some(info) = SOCKETS.get_ptr(&cookie).map(|p| unsafe { &*p }) else {
        return Ok(());
    };
    if let Some(s) = stats(&info.endpoint) {
        s.resets += 1;
    }
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path, so this is dead code.
    unsafe { core::hint::unreachable_unchecked() }
}
