//! What the data path tells the health monitor about a member, beyond the kernel's view: how
//! many requests it answered or failed, whether a request is waiting on it and since when, and a
//! wake-up for requests waiting on a member that has just been ejected.
//!
//! All atomics (and one `Notify`): the data path pays a few relaxed increments per request.
use super::member::now_ms;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Vitals {
    /// Requests (L7) or connections (L4) the member answered, and that failed, ever.
    answered: AtomicU64,
    failed: AtomicU64,
    /// Requests now waiting for the member's answer (connect + response head).
    waiting: AtomicU64,
    /// When `waiting` last went from 0 to 1 (`now_ms`).
    waiting_since_ms: AtomicU64,
    /// When the member last answered anything (`now_ms`).
    last_answer_ms: AtomicU64,
    /// Woken when the member is ejected.
    ejected: Notify,
}

impl Vitals {
    pub(crate) fn count(&self, answered: bool) {
        if answered {
            self.answered.fetch_add(1, Relaxed);
            self.last_answer_ms.store(now_ms(), Relaxed);
        } else {
            self.failed.fetch_add(1, Relaxed);
        }
    }

    /// When the member last answered a request (`now_ms`; 0 never).
    pub fn last_answer_ms(&self) -> u64 {
        self.last_answer_ms.load(Relaxed)
    }

    /// (answered, failed) so far.
    pub fn outcomes(&self) -> (u64, u64) {
        (self.answered.load(Relaxed), self.failed.load(Relaxed))
    }

    /// A request starts waiting for the member's answer until the guard drops.
    pub fn wait(&self) -> Waiting<'_> {
        if self.waiting.fetch_add(1, Relaxed) == 0 {
            self.waiting_since_ms.store(now_ms(), Relaxed);
        }
        Waiting(self)
    }

    /// How long requests have been waiting on the member with no answer from it at all, in ms
    /// (0 when nothing is waiting).
    pub fn stalled_ms(&self, now_ms: u64) -> u64 {
        if self.waiting.load(Relaxed) == 0 {
            return 0;
        }
        let since = self.waiting_since_ms.load(Relaxed).max(self.last_answer_ms.load(Relaxed));
        now_ms.saturating_sub(since)
    }

    /// Resolves when the member is next ejected. Created before the wait starts, it cannot miss
    /// an ejection that happens after its creation.
    pub fn ejected(&self) -> tokio::sync::futures::Notified<'_> {
        self.ejected.notified()
    }

    pub(crate) fn wake_ejected(&self) {
        self.ejected.notify_waiters();
    }
}

/// One request waiting on a member (see [`Vitals::wait`]).
pub struct Waiting<'a>(&'a Vitals);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_with_no_answer_is_a_stall_and_an_answer_ends_it() {
        let v = Vitals::default();
        assert_eq!(v.stalled_ms(now_ms() + 10_000), 0, "nothing waiting");
        let w = v.wait();
        let t0 = now_ms();
        assert!(v.stalled_ms(t0 + 500) >= 499);
        v.count(true);
        assert!(v.stalled_ms(now_ms()) <= 1, "an answer is progress");
        drop(w);
        assert_eq!(v.stalled_ms(now_ms() + 10_000), 0);
        v.count(false);
        assert_eq!(v.outcomes(), (1, 1));
    }
}
