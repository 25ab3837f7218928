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

/// Bytes moved so far each way; the caller keeps it, so it holds the count however the relay
/// ends.
#[derive(Debug, Default)]
pub struct Moved {
    pub to_member: AtomicU64,
    pub to_client: AtomicU64,
}

impl Moved {
    /// Count `n` bytes towards the member (on the member's `transferred` too).
    pub fn to_member(&self, member: &Member, n: u64) {
        member.add_transferred(n);
        self.to_member.fetch_add(n, Relaxed);
    }
    /// Count `n` bytes towards the client (on the member's `read` too).
    pub fn to_client(&self, member: &Member, n: u64) {
        member.add_read(n);
        self.to_client.fetch_add(n, Relaxed);
    }
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

struct Shared<'a> {
    origin: Instant,
    /// Milliseconds since `origin` of the last byte moved.
    last: AtomicU64,
    member: Arc<Member>,
    moved: &'a Moved,
}

async fn pump<R, W>(mut r: R, mut w: W, dir: Dir, s: &Shared<'_>) -> Result<(), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    let (read_err, write_err): (fn(_) -> _, fn(_) -> _) = match dir {
        Dir::ToMember => (RelayError::Client, RelayError::Member),
        Dir::ToClient => (RelayError::Member, RelayError::Client),
    };
    loop {
        let n = r.read(&mut buf).await.map_err(read_err)?;
        if n == 0 {
            // Half-close: the reading side is done; tell the writing side, keep the other way.
            let _ = w.shutdown().await;
            return Ok(());
        }
        w.write_all(&buf[..n]).await.map_err(write_err)?;
        s.last.store(s.origin.elapsed().as_millis() as u64, Relaxed);
        match dir {
            Dir::ToMember => s.moved.to_member(&s.member, n as u64),
            Dir::ToClient => s.moved.to_client(&s.member, n as u64),
        }
    }
}

/// Relay between `client` and `upstream` (a connection to `member`) until both directions end,
/// counting into `moved`.
pub async fn relay<C, U>(
    client: C,
    upstream: U,
    member: Arc<Member>,
    idle: Duration,
    moved: &Moved,
) -> Result<(), RelayError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let s = Shared { origin: Instant::now(), last: AtomicU64::new(0), member, moved };
    let (cr, cw) = tokio::io::split(client);
    let (ur, uw) = tokio::io::split(upstream);
    let both = async {
        tokio::try_join!(pump(cr, uw, Dir::ToMember, &s), pump(ur, cw, Dir::ToClient, &s))
    };
    tokio::select! {
        r = both => r.map(|_| ()),
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
