//! A member's idle connections, most recently used on top.
//!
//! A checkout takes the top one: the connection most likely still open, whose state in lb, in
//! the kernel and at the member is warm (a congestion window in use, a pacing rate measured
//! moments ago, buffers in cache). Under a steady load the ones at the bottom go unused, so the
//! pool's purge finds them and closes them. A first-in-first-out queue, which the pool had
//! before, handed every idle connection out in turn: all of them stayed in use and none stayed
//! warm, and under BBR (which paces each connection at what it measured on it) requests
//! through lb were up to a fifth slower (README, "Member connections reused newest first").
//!
//! The data path holds the lock for one push or one pop; the purge (control path) holds it to
//! take the whole stack out and, after looking at each connection without it, to put the
//! survivors back. Never across I/O or an `.await`, and never contended on a current-thread
//! runtime.
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

pub struct IdleStack<T> {
    cap: usize,
    /// Front: the oldest; back: the newest.
    items: Mutex<VecDeque<T>>,
}

impl<T> IdleStack<T> {
    pub fn new(cap: usize) -> IdleStack<T> {
        IdleStack { cap, items: Mutex::new(VecDeque::new()) }
    }

    fn items(&self) -> MutexGuard<'_, VecDeque<T>> {
        // Nothing panics while holding it; a poisoned stack is still a valid stack.
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Put one on top; a full stack gives it back.
    pub fn push(&self, item: T) -> Result<(), T> {
        let mut items = self.items();
        if items.len() >= self.cap {
            return Err(item);
        }
        items.push_back(item);
        Ok(())
    }

    /// The most recently pushed, and how many are left under it (one lock for both: a checkout
    /// needs the two).
    pub fn pop_newest(&self) -> Option<(T, usize)> {
        let mut items = self.items();
        items.pop_back().map(|item| (item, items.len()))
    }

    /// The least recently pushed.
    pub fn pop_oldest(&self) -> Option<T> {
        self.items().pop_front()
    }

    pub fn len(&self) -> usize {
        self.items().len()
    }

    /// Everything, oldest first, leaving the stack empty.
    pub fn take_all(&self) -> VecDeque<T> {
        std::mem::take(&mut *self.items())
    }

    /// Put back what [`take_all`](Self::take_all) took (oldest first), below anything pushed
    /// since; what no longer fits is dropped.
    pub fn restore(&self, taken: impl DoubleEndedIterator<Item = T>) {
        let mut items = self.items();
        for item in taken.rev() {
            if items.len() >= self.cap {
                break;
            }
            items.push_front(item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_comes_out_first_and_the_oldest_from_the_bottom() {
        let s = IdleStack::new(4);
        for i in 1..=3 {
            assert!(s.push(i).is_ok());
        }
        assert_eq!(s.pop_newest(), Some((3, 2)));
        assert!(s.push(4).is_ok());
        assert_eq!(s.pop_newest(), Some((4, 2)));
        assert_eq!(s.pop_oldest(), Some(1));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_full_stack_gives_the_item_back() {
        let s = IdleStack::new(2);
        assert!(s.push(1).is_ok());
        assert!(s.push(2).is_ok());
        assert_eq!(s.push(3), Err(3));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn what_was_taken_goes_back_below_what_came_since() {
        let s = IdleStack::new(4);
        for i in 1..=3 {
            assert!(s.push(i).is_ok());
        }
        let taken = s.take_all();
        assert_eq!(s.len(), 0);
        assert!(s.push(9).is_ok());
        // 2 did not survive the look; 1 and 3 go back under 9, in their order.
        s.restore(taken.into_iter().filter(|&i| i != 2));
        assert_eq!(s.pop_newest(), Some((9, 2)));
        assert_eq!(s.pop_newest(), Some((3, 1)));
        assert_eq!(s.pop_newest(), Some((1, 0)));
        // Restoring into a full stack drops the oldest of what was taken.
        for i in 1..=3 {
            assert!(s.push(i).is_ok());
        }
        let taken = s.take_all();
        assert!(s.push(7).is_ok());
        assert!(s.push(8).is_ok());
        s.restore(taken.into_iter());
        assert_eq!(s.len(), 4);
        assert_eq!(s.pop_oldest(), Some(2));
    }
}
