//! One lazily re-armed timer: a deadline that moves often (every request, every body frame)
//! without touching the timer wheel each time. The `Sleep` stays armed at an earlier time; when
//! it fires before the real deadline it is re-armed once.
use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use tokio::time::{Instant, Sleep};

#[derive(Default)]
pub struct Clock {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Clock {
    /// Whether `deadline` has passed at `now` (the caller's clock reading); if not, the task is
    /// woken by then (or earlier, to check again).
    pub fn passed(&mut self, deadline: Instant, now: Instant, cx: &mut Context<'_>) -> bool {
        if now >= deadline {
            return true;
        }
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() > deadline || sleep.is_elapsed() {
            sleep.as_mut().reset(deadline);
        }
        if sleep.as_mut().poll(cx).is_ready() {
            sleep.as_mut().reset(deadline);
            let _ = sleep.as_mut().poll(cx);
        }
        false
    }
}
