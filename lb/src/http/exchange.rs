//! One attempt on one member: check out a pooled connection, send, and wait for the response
//! head within the member's timeout, with what may interrupt it (the member ejected while the
//! request waits; `ping`'s 100 Continue; a stale keep-alive connection, retried once on a fresh
//! one). The answer's framing is checked before anything is forwarded.
use super::body::RequestBody;
use super::headers;
use super::outgoing::Outgoing;
use super::route::MemberConn;
use crate::balancer::Member;
use crate::upstream::UpstreamError;
use crate::upstream::pool::Lease;
use http::Request;
use http::Response;
use hyper::body::{Body, Incoming};
use std::sync::Arc;

/// An attempt that failed.
pub struct Failed {
    pub error: UpstreamError,
    /// The request, when nothing of it reached the member.
    pub back: Option<Request<RequestBody>>,
}

/// Send to one member over a pooled connection, retrying once on a fresh connection when a
/// reused keep-alive connection turned out dead.
pub async fn exchange(
    out: &Outgoing<'_>,
    member: &Arc<Member>,
    conn: &MemberConn,
    mut req: Request<RequestBody>,
) -> Result<(Response<Incoming>, Lease<RequestBody>), Failed> {
    let pool = &conn.pool;
    let mut fresh = false;
    // A request waiting on a member that gets ejected goes elsewhere: before it is sent
    // always, after only when it can be replayed.
    let _waiting = member.vitals.wait();
    let ejected = member.vitals.ejected();
    tokio::pin!(ejected);
    // The member's `host:port`, formatted only when an error needs it (never on success).
    let addr = || member.url.authority();
    let gone = || UpstreamError::Ejected { addr: addr() };
    // Apache's `ping`: the body waits for the member's `100 Continue`.
    let ping = match member.config().ping {
        Some(after) if !req.body().is_end_stream() => super::ping::prepare(&mut req, after),
        _ => None,
    };
    loop {
        let checkout = tokio::select! {
            r = pool.checkout(fresh) => r,
            _ = &mut ejected => {
                return Err(Failed { error: gone(), back: Some(req) });
            }
        };
        let mut lease = match checkout {
            Ok(l) => l,
            Err(error) => {
                return Err(Failed { error, back: Some(req) });
            }
        };
        let stale_may_retry = lease.reused && !fresh;
        let wait = lease.response_timeout();
        let mut spend = false;
        // Pinned where it is made and polled through `&mut` in every branch, so that the
        // exchange's state holds one copy of the send (each move into a `select!` or a
        // `pin!` of its own took another).
        let sent = {
            let mut send = std::pin::pin!(tokio::time::timeout(wait, lease.send(req)));
            if let Some(p) = ping.as_ref().filter(|p| !p.gate.is_open()) {
                let sent = tokio::select! {
                    r = &mut send => r,
                    _ = p.gate.continued.notified() => send.await,
                    _ = tokio::time::sleep(p.after) => match p.take_back() {
                        Some(back) => {
                            let error = UpstreamError::NoContinue { addr: addr(), after: p.after };
                            return Err(Failed { error, back: Some(back) });
                        }
                        None => send.await,
                    },
                };
                // A final answer without `100 Continue`: the body follows, and the connection
                // is not reused.
                if !p.gate.is_open() {
                    p.gate.open();
                    spend = true;
                }
                sent
            } else if out.replay.is_some() {
                tokio::select! {
                    r = &mut send => r,
                    _ = &mut ejected => return Err(Failed { error: gone(), back: None }),
                }
            } else {
                send.await
            }
        };
        if spend {
            lease.spend();
        }
        match sent {
            Err(_) => {
                return Err(Failed {
                    error: UpstreamError::ResponseTimeout { addr: addr(), after: wait },
                    back: None,
                });
            }
            Ok(Ok(resp)) => {
                // Never forwarded; dropping the lease closes the connection.
                if let Some(why) = headers::ambiguous_framing(resp.headers()) {
                    let error = UpstreamError::Framing { addr: addr(), why };
                    return Err(Failed { error, back: None });
                }
                return Ok((resp, lease));
            }
            Ok(Err(mut e)) => {
                let back = e.take_message();
                let source = e.into_error();
                match back {
                    Some(r) if stale_may_retry => req = r,
                    back @ Some(_) => {
                        return Err(Failed {
                            error: UpstreamError::Exchange { addr: addr(), source },
                            back,
                        });
                    }
                    None => match out.rebuild(member, conn) {
                        Some(r) if stale_may_retry && !source.is_parse() => req = r,
                        _ => {
                            return Err(Failed {
                                error: UpstreamError::Exchange { addr: addr(), source },
                                back: None,
                            });
                        }
                    },
                }
                tracing::debug!(member = %member.url, "stale pooled connection; retrying on a fresh one");
                fresh = true;
            }
        }
    }
}
