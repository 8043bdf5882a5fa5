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
use std::time::{Duration, Instant, SystemTime};

thread_local! {
    /// Inside a scoped poll: `Some(None)` until the clock is first read in it.
    static NOW: Cell<Option<Option<Instant>>> = const { Cell::new(None) };
    /// The wall clock at one reading of the monotonic clock (see [`system_now`]).
    static WALL: Cell<Option<(Instant, SystemTime)>> = const { Cell::new(None) };
}

/// How long [`system_now`] advances the wall clock it read by the monotonic one.
const WALL_REFRESH: Duration = Duration::from_secs(1);

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

/// The wall-clock time of [`now`]: the system clock read at most once a second per
/// thread and advanced by the monotonic clock in between, so a request's start
/// time (access logs, `request.time`) costs no second clock read. A step of the
/// system clock (NTP, an operator) shows within a second.
pub fn system_now() -> SystemTime {
    let now = now();
    WALL.with(|wall| {
        if let Some((at, wall_at)) = wall.get() {
            let fresh = now.checked_duration_since(at).filter(|d| *d < WALL_REFRESH);
            if let Some(since) = fresh {
                return wall_at + since;
            }
        }
        let wall_now = SystemTime::now();
        wall.set(Some((now, wall_now)));
        wall_now
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
    fn wall_time_follows_the_monotonic_clock_and_is_read_again_each_second() {
        let first = system_now();
        let real = SystemTime::now();
        let skew =
            |a: SystemTime, b: SystemTime| a.duration_since(b).unwrap_or_else(|e| e.duration());
        assert!(skew(first, real) < Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(20));
        let later = system_now();
        assert!(later.duration_since(first).unwrap() >= Duration::from_millis(20));
        assert!(skew(later, SystemTime::now()) < Duration::from_millis(50));
        // A reading past the refresh anchors again on the system clock.
        WALL.with(|wall| {
            let (at, wall_at) = wall.get().unwrap();
            wall.set(Some((
                at - WALL_REFRESH,
                wall_at - Duration::from_secs(3600),
            )));
        });
        assert!(skew(system_now(), SystemTime::now()) < Duration::from_millis(50));
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
