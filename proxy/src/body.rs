//! Bodies on both legs, streamed frame by frame with nothing buffered.
//!
//! `RequestBody` is what goes upstream; `ResponseBody` is what goes downstream: an
//! upstream body (with the pooled connection to give back and the stream's timers), or
//! a local reply. The stream guard inside finishes the stream's stats and access log
//! exactly once: at end of stream, on error, or when hyper drops the body.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::error::ProxyError;
use crate::pool::Lease;
use crate::stream::StreamGuard;

/// Bytes received from downstream, shared between the request body and its guard.
#[derive(Default, Debug)]
pub struct ByteCount(AtomicU64);

impl ByteCount {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

pub enum RequestBody {
    Empty,
    Streaming {
        inner: Incoming,
        received: Arc<ByteCount>,
    },
}

impl RequestBody {
    pub fn empty() -> RequestBody {
        RequestBody::Empty
    }

    /// Whether the body is known to have no bytes (so the request can be replayed).
    pub fn is_empty(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Streaming { inner, .. } => inner.is_end_stream(),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Streaming { inner, received } => {
                let frame = ready!(Pin::new(inner).poll_frame(cx));
                if let Some(Ok(f)) = &frame {
                    if let Some(d) = f.data_ref() {
                        received.0.fetch_add(d.len() as u64, Ordering::Relaxed);
                    }
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Streaming { inner, .. } => inner.size_hint(),
        }
    }
}

/// Which of a stream's timers fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// The route's `timeout` (504, `UT`).
    Route,
    /// The connection manager's `request_timeout` (408).
    Request,
    /// `stream_idle_timeout` / the route's `idle_timeout` (`SI`).
    Idle,
}

impl Expiry {
    pub fn error(self) -> ProxyError {
        match self {
            Expiry::Route => ProxyError::UpstreamTimeout,
            Expiry::Request => ProxyError::RequestTimeout,
            Expiry::Idle => ProxyError::StreamIdleTimeout,
        }
    }
}

/// A stream's timers (route timeout, request timeout, idle timeout) folded into one
/// `Sleep`, which serves the wait for the response head and then the body.
pub struct StreamTimers {
    route: Option<Instant>,
    request: Option<Instant>,
    idle: Option<Duration>,
    pub sleep: Pin<Box<Sleep>>,
}

impl StreamTimers {
    pub fn new(
        route: Option<Instant>,
        request: Option<Instant>,
        idle: Option<Duration>,
    ) -> Option<StreamTimers> {
        let mut timers = StreamTimers {
            route,
            request,
            idle,
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
        };
        let next = timers.next_wake()?;
        timers.sleep.as_mut().reset(next);
        Some(timers)
    }

    fn next_wake(&self) -> Option<Instant> {
        [
            self.route,
            self.request,
            self.idle.map(|d| Instant::now() + d),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Activity on the stream: pushes the idle deadline back.
    pub fn touch(&mut self) {
        if self.idle.is_some() {
            if let Some(next) = self.next_wake() {
                self.sleep.as_mut().reset(next);
            }
        }
    }

    /// Which timer fired, once `sleep` has.
    pub fn expired(&self) -> Expiry {
        let now = Instant::now();
        if self.route.is_some_and(|d| now >= d) {
            Expiry::Route
        } else if self.request.is_some_and(|d| now >= d) {
            Expiry::Request
        } else {
            Expiry::Idle
        }
    }
}

pub struct ResponseBody {
    kind: Kind,
    lease: Option<Lease>,
    timers: Option<StreamTimers>,
    guard: Option<StreamGuard>,
}

enum Kind {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

impl ResponseBody {
    pub fn upstream(
        inner: Incoming,
        lease: Option<Lease>,
        timers: Option<StreamTimers>,
        guard: StreamGuard,
    ) -> ResponseBody {
        ResponseBody {
            kind: Kind::Upstream(inner),
            lease,
            timers,
            guard: Some(guard),
        }
    }

    pub fn full(bytes: Bytes, guard: Option<StreamGuard>) -> ResponseBody {
        let data = (!bytes.is_empty()).then_some(bytes);
        ResponseBody {
            kind: Kind::Full(data),
            lease: None,
            timers: None,
            guard,
        }
    }

    fn finish(&mut self, flag: Option<&'static str>) {
        if flag.is_none() {
            if let Some(lease) = self.lease.take() {
                lease.release();
            }
        } else {
            self.lease = None;
        }
        if let Some(mut g) = self.guard.take() {
            if let Some(f) = flag {
                g.set_flag(f);
            }
            g.finish();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Upstream(inner) => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(r) => Poll::Ready(r.map(|r| r.map_err(Into::into))),
                Poll::Pending => {
                    if let Some(t) = &mut this.timers {
                        if t.sleep.as_mut().poll(cx).is_ready() {
                            // Headers are gone already: the stream is reset.
                            let expiry = t.expired();
                            if let Some(g) = &mut this.guard {
                                g.timed_out(expiry);
                            }
                            let err = expiry.error();
                            this.finish(Some(err.flag()));
                            return Poll::Ready(Some(Err(Box::new(err))));
                        }
                    }
                    Poll::Pending
                }
            },
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(t) = &mut this.timers {
                    t.touch();
                }
                if let (Some(g), Some(d)) = (&mut this.guard, frame.data_ref()) {
                    g.bytes_sent += d.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(Some("UR")),
            Poll::Ready(None) => this.finish(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(d) => d.is_none(),
            Kind::Upstream(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream(inner) => inner.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if self.guard.is_some() {
            // hyper stops polling once `is_end_stream` says so; anything else dropped
            // early means the downstream went away (Envoy's `DC`).
            let flag = (!self.is_end_stream()).then_some("DC");
            self.finish(flag);
        }
    }
}
