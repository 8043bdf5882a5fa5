//! The worker's clock, read at most once per poll of a connection's task.
//!
//! A proxied request takes a dozen timestamps (its start, its route and idle
//! deadlines, the upstream's answer, the connection's return to the pool), most of
//! them in the same poll of the same task. Each `clock_gettime` costs ~32 ns here
//! (vDSO, TSC) — ~0.4 µs per request, 2% of a worker's CPU in `perf record`. NGINX
//! (`ngx_current_msec`), HAProxy (`now_ms`) and Envoy (`approximateMonotonicTime`)
//! read the clock once per event-loop pass for the same reason; Strait reads it once
//! per task poll: [`Scoped`] wraps a connection's task, and [`now`] inside one of its
//! polls returns the time first read in that poll.
//!
//! So a timestamp is at most one poll old: microseconds, or a plugin callback's run
//! time. Deadlines set from it fall due that much early, durations are that much
//! shorter. A decision that a deadline has passed is made with the real clock
//! (`Instant::now`), never with [`now`]: a stale "now" there could re-arm a timer that
//! already fired, again and again within one poll.
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

thread_local! {
    /// Inside a scoped poll: `Some(None)` until the clock is first read in it.
    static NOW: Cell<Option<Option<Instant>>> = const { Cell::new(None) };
}

/// The time, read once per poll of a [`Scoped`] task; outside one, the clock.
pub fn now() -> Instant {
    NOW.with(|cell| match cell.get() {
        Some(Some(now)) => now,
        Some(None) => {
            let now = Instant::now();
            cell.set(Some(Some(now)));
            now
        }
        None => Instant::now(),
    })
}

/// [`now`] as tokio's `Instant`, for its timers.
pub fn tokio_now() -> tokio::time::Instant {
    tokio::time::Instant::from_std(now())
}

/// A task whose polls share one reading of the clock (see the module docs).
pub struct Scoped<F>(pub F);

impl<F: Future + Unpin> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        /// Leaves the scope however the poll ends (a panicking task must not leave
        /// its time cached for every later read on this thread).
        struct Leave(Option<Option<Instant>>);
        impl Drop for Leave {
            fn drop(&mut self) {
                NOW.with(|cell| cell.set(self.0));
            }
        }
        let _leave = Leave(NOW.with(|cell| cell.replace(Some(None))));
        Pin::new(&mut self.0).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_reading_per_poll_and_none_outside() {
        let mut polls = 0;
        let mut seen = Vec::new();
        let mut task = Scoped(Box::pin(std::future::poll_fn(|cx| {
            let first = now();
            std::thread::sleep(Duration::from_millis(2));
            assert_eq!(now(), first, "a second reading in the same poll");
            seen.push(first);
            polls += 1;
            if polls < 2 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(())
        })));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut task).poll(&mut cx).is_pending());
        // Outside a poll the clock is read each time.
        let outside = now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(now() > outside);
        assert!(Pin::new(&mut task).poll(&mut cx).is_ready());
        drop(task);
        assert!(seen[1] >= seen[0] + Duration::from_millis(2), "{seen:?}");
    }

    #[test]
    fn a_panicking_poll_leaves_the_scope() {
        let mut task = Scoped(Box::pin(std::future::poll_fn(|_| -> Poll<()> {
            now();
            panic!("task panics");
        })));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = Pin::new(&mut task).poll(&mut cx);
        }));
        assert!(polled.is_err());
        let before = now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(now() > before);
    }
}
