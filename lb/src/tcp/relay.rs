//! Moving bytes both ways between a client and a member until both sides are done.
//!
//! Each direction is its own loop: read, write, count. When one side ends its writing (EOF), lb
//! ends writing towards the other (half-close) and keeps the opposite direction open. The whole
//! relay ends when both directions have ended, when either side fails (the other is then closed
//! with it: one client per failing member connection), or when no byte moved for `idle`.
use crate::balancer::Member;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Copy buffer per direction.
const BUF: usize = 64 * 1024;

#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub to_member: u64,
    pub to_client: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("no byte either way for {0:?}")]
    Idle(Duration),
    #[error("client side: {0}")]
    Client(std::io::Error),
    #[error("member side: {0}")]
    Member(std::io::Error),
}

/// Which way a pump moves bytes, for counting and blame.
#[derive(Clone, Copy)]
enum Dir {
    ToMember,
    ToClient,
}

struct Shared {
    origin: Instant,
    /// Milliseconds since `origin` of the last byte moved.
    last: AtomicU64,
    member: Arc<Member>,
}

async fn pump<R, W>(mut r: R, mut w: W, dir: Dir, s: &Shared) -> Result<u64, RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    let (read_err, write_err): (fn(_) -> _, fn(_) -> _) = match dir {
        Dir::ToMember => (RelayError::Client, RelayError::Member),
        Dir::ToClient => (RelayError::Member, RelayError::Client),
    };
    loop {
        let n = r.read(&mut buf).await.map_err(read_err)?;
        if n == 0 {
            // Half-close: the reading side is done; tell the writing side, keep the other way.
            let _ = w.shutdown().await;
            return Ok(total);
        }
        w.write_all(&buf[..n]).await.map_err(write_err)?;
        total += n as u64;
        s.last.store(s.origin.elapsed().as_millis() as u64, Relaxed);
        match dir {
            Dir::ToMember => s.member.add_transferred(n as u64),
            Dir::ToClient => s.member.add_read(n as u64),
        }
    }
}

/// Relay between `client` and `upstream` (a connection to `member`) until both directions end.
pub async fn relay<C, U>(
    client: C,
    upstream: U,
    member: Arc<Member>,
    idle: Duration,
) -> Result<Totals, RelayError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let s = Shared { origin: Instant::now(), last: AtomicU64::new(0), member };
    let (cr, cw) = tokio::io::split(client);
    let (ur, uw) = tokio::io::split(upstream);
    let both = async {
        tokio::try_join!(pump(cr, uw, Dir::ToMember, &s), pump(ur, cw, Dir::ToClient, &s))
    };
    tokio::select! {
        r = both => r.map(|(to_member, to_client)| Totals { to_member, to_client }),
        e = watchdog(s.origin, &s.last, idle) => Err(e),
    }
}

/// Resolves once no byte moved for `idle`; `last` holds the milliseconds since `origin` of the
/// last byte moved.
pub(super) async fn watchdog(origin: Instant, last: &AtomicU64, idle: Duration) -> RelayError {
    loop {
        let since = origin.elapsed().saturating_sub(Duration::from_millis(last.load(Relaxed)));
        if since >= idle {
            return RelayError::Idle(idle);
        }
        tokio::time::sleep(idle - since).await;
    }
}
