//! Zero-copy relaying with splice(2): bytes go socket → pipe → socket inside the kernel, never
//! through a user-space buffer. Used for plain TCP on both sides (not when lb terminates TLS).
//!
//! Pipes are pooled: a relay direction takes one, and gives it back empty when it is done (a
//! pipe with bytes left in it, after an error, is closed instead). The readiness of each socket
//! comes from tokio, so a direction waits exactly like the buffered copy does.
use super::relay::{RelayError, Totals};
use crate::balancer::Member;
use crossbeam_queue::ArrayQueue;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per splice call (the pipe's default capacity).
const CHUNK: usize = 64 * 1024;
/// Idle pipes kept for reuse.
const POOL: usize = 256;

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

fn pool() -> &'static ArrayQueue<Pipe> {
    static P: OnceLock<ArrayQueue<Pipe>> = OnceLock::new();
    P.get_or_init(|| ArrayQueue::new(POOL))
}

impl Pipe {
    fn take() -> io::Result<Pipe> {
        if let Some(p) = pool().pop() {
            return Ok(p);
        }
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid array of two descriptors for pipe2 to fill.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Pipe { read, write })
    }

    /// Back to the pool (only ever called when the pipe is empty).
    fn give_back(self) {
        let _ = pool().push(self);
    }
}

/// One splice(2) call between two descriptors, non-blocking.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call (the caller borrows the
    // sockets and owns the pipe); null offsets are what splice takes for sockets and pipes.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// Which side an error happened on.
enum Side {
    From(io::Error),
    To(io::Error),
}

/// Move bytes `from` → `to` until `from` ends, then half-close `to`.
async fn direction(
    from: &TcpStream,
    to: &TcpStream,
    count: impl Fn(u64),
    last: &AtomicU64,
    origin: Instant,
) -> Result<u64, Side> {
    let pipe = Pipe::take().map_err(Side::From)?;
    let mut total = 0u64;
    loop {
        from.readable().await.map_err(Side::From)?;
        let n = match from
            .try_io(Interest::READABLE, || splice(from.as_raw_fd(), pipe.write.as_raw_fd(), CHUNK))
        {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(Side::From(e)),
        };
        if n == 0 {
            pipe.give_back();
            let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
            return Ok(total);
        }
        let mut left = n;
        while left > 0 {
            to.writable().await.map_err(Side::To)?;
            match to
                .try_io(Interest::WRITABLE, || splice(pipe.read.as_raw_fd(), to.as_raw_fd(), left))
            {
                Ok(k) => left -= k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(Side::To(e)),
            }
        }
        total += n as u64;
        count(n as u64);
        last.store(origin.elapsed().as_millis() as u64, Relaxed);
    }
}

/// Relay between `client` and `upstream` (a connection to `member`) with splice(2), with the
/// same half-close, failure and idle rules as the buffered relay.
pub async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    member: Arc<Member>,
    idle: Duration,
) -> Result<Totals, RelayError> {
    let origin = Instant::now();
    let last = AtomicU64::new(0);
    let to_member = direction(client, upstream, |n| member.add_transferred(n), &last, origin);
    let to_client = direction(upstream, client, |n| member.add_read(n), &last, origin);
    let both = async {
        tokio::try_join!(
            async {
                to_member.await.map_err(|e| match e {
                    Side::From(e) => RelayError::Client(e),
                    Side::To(e) => RelayError::Member(e),
                })
            },
            async {
                to_client.await.map_err(|e| match e {
                    Side::From(e) => RelayError::Member(e),
                    Side::To(e) => RelayError::Client(e),
                })
            }
        )
    };
    tokio::select! {
        r = both => r.map(|(to_member, to_client)| Totals { to_member, to_client }),
        e = super::relay::watchdog(origin, &last, idle) => Err(e),
    }
}
