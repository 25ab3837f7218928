//! Relaying plain TCP with zero copy for bulk: bytes go socket → pipe → socket inside the kernel
//! with splice(2), never through a user-space buffer. Used for plain TCP on both sides (not when
//! lb terminates TLS).
//!
//! Each direction starts as a plain copy through a 64 KiB buffer: for small messages one read
//! and one write cost less than two splices. The first read that fills the buffer shows a bulk
//! transfer, and the direction moves to splice(2) for the rest of the connection. Pipes are
//! pooled: a direction takes one when it switches, and gives it back empty when it is done (a
//! pipe with bytes left in it, after an error, is closed instead). The readiness of each socket
//! comes from tokio, so a direction waits exactly like the buffered copy does.
use super::relay::{Moved, RelayError};
use crate::balancer::Member;
use crossbeam_queue::ArrayQueue;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The buffered copy's buffer: a read that fills it shows a bulk transfer.
const CHUNK: usize = 64 * 1024;
/// What a pipe is asked to hold, and so the most one splice call moves. The default (16 pages,
/// 64 KiB) took about 37 splice calls per MiB relayed; pages are referenced only while bytes are
/// in flight, so a larger pipe costs memory only under load it absorbs. Pipes keep the default
/// when the system's `fs.pipe-max-size` is lower.
const PIPE: usize = 256 * 1024;
/// Idle pipes kept for reuse.
const POOL: usize = 256;

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Its capacity: the most one splice into it can move.
    size: usize,
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
        // SAFETY: `write` is an open pipe descriptor; F_SETPIPE_SZ takes an int and returns the
        // capacity set (or -1, leaving the pipe as it was).
        let set =
            unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE as libc::c_int) };
        let size = if set > 0 { set as usize } else { CHUNK };
        Ok(Pipe { read, write, size })
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

/// Wait until `s` may be readable. The poll-based readiness keeps one waker slot per direction
/// (like `AsyncRead`), cheaper than `readable()`'s waiter list.
async fn read_ready(s: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| s.poll_read_ready(cx)).await
}

/// Wait until `s` may be writable (see [`read_ready`]).
async fn write_ready(s: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| s.poll_write_ready(cx)).await
}

/// Write all of `data` to `to`.
async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // Try first: a socket with room needs no wait (and no readiness future).
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => write_ready(to).await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Move bytes `from` → `to` until `from` ends, then half-close `to`.
async fn direction(
    from: &TcpStream,
    to: &TcpStream,
    count: impl Fn(u64),
    last: &AtomicU64,
    origin: Instant,
) -> Result<(), Side> {
    let mut buf = vec![0u8; CHUNK];
    let mut pipe: Option<Pipe> = None;
    loop {
        let n = match &pipe {
            None => match from.try_read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    read_ready(from).await.map_err(Side::From)?;
                    continue;
                }
                Err(e) => return Err(Side::From(e)),
            },
            Some(p) => match from.try_io(Interest::READABLE, || {
                splice(from.as_raw_fd(), p.write.as_raw_fd(), p.size)
            }) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    read_ready(from).await.map_err(Side::From)?;
                    continue;
                }
                Err(e) => return Err(Side::From(e)),
            },
        };
        if n == 0 {
            if let Some(p) = pipe {
                p.give_back();
            }
            let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
            return Ok(());
        }
        match &pipe {
            None => write_all(to, &buf[..n]).await.map_err(Side::To)?,
            Some(p) => {
                let mut left = n;
                while left > 0 {
                    match to.try_io(Interest::WRITABLE, || {
                        splice(p.read.as_raw_fd(), to.as_raw_fd(), left)
                    }) {
                        Ok(k) => left -= k,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            write_ready(to).await.map_err(Side::To)?
                        }
                        Err(e) => return Err(Side::To(e)),
                    }
                }
            }
        }
        count(n as u64);
        last.store(origin.elapsed().as_millis() as u64, Relaxed);
        if pipe.is_none() && n == CHUNK {
            // A full buffer: a bulk transfer. Zero copy from here on, if a pipe can be had.
            pipe = Pipe::take().ok();
        }
    }
}

/// Relay between `client` and `upstream` (a connection to `member`), zero-copy once a direction
/// carries bulk, with the same half-close, failure and idle rules as the buffered relay.
pub async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    member: Arc<Member>,
    idle: Duration,
    moved: &Moved,
) -> Result<(), RelayError> {
    let origin = Instant::now();
    let last = AtomicU64::new(0);
    let to_member = direction(client, upstream, |n| moved.to_member(&member, n), &last, origin);
    let to_client = direction(upstream, client, |n| moved.to_client(&member, n), &last, origin);
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
        r = both => r.map(|_| ()),
        e = super::relay::watchdog(origin, &last, idle) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_knows_its_capacity_and_holds_a_quarter_mib_where_allowed() {
        let p = Pipe::take().unwrap();
        // SAFETY: `p.write` is an open pipe descriptor; F_GETPIPE_SZ only reads its capacity.
        let real = unsafe { libc::fcntl(p.write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        assert_eq!(p.size, real as usize, "a splice asks for what the pipe holds");
        let max: usize = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if max >= PIPE {
            assert_eq!(p.size, PIPE);
        }
    }
}
