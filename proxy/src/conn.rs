//! One downstream connection: codec selection (HTTP/1.1 and h2c prior knowledge on
//! one port), connection timeouts, drain.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use strait_xds::model::CodecType;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::framing::{FramingGuard, Verdict};
use crate::netfilter::Downstream;
use crate::router::{self, ConnCtx};

/// Keeps connection gauges right whichever way the connection ends.
struct Open {
    ctx: Arc<ConnCtx>,
}

impl Open {
    fn new(ctx: Arc<ConnCtx>) -> Open {
        let l = &ctx.listener;
        l.listener.downstream_cx_total.inc();
        l.listener.downstream_cx_active.inc();
        l.http.downstream_cx_total.inc();
        l.http.downstream_cx_active.inc();
        ctx.shared.connections.fetch_add(1, Ordering::Relaxed);
        Open { ctx }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let l = &self.ctx.listener;
        l.listener.downstream_cx_active.dec();
        l.http.downstream_cx_active.dec();
        self.ctx.shared.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Activity on a connection, for its idle timeout.
#[derive(Default)]
pub struct Activity {
    pub active: AtomicU64,
    pub started: AtomicU64,
}

pub async fn serve(stream: TcpStream, ctx: Arc<ConnCtx>, mut drain: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let _open = Open::new(ctx.clone());
    let hcm = &ctx.listener.config.hcm;
    let max_head = hcm.max_request_headers_kb as usize * 1024;

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(hcm.request_headers_timeout)
        .preserve_header_case(true)
        .max_buf_size(max_head.max(8192) + 4096)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(max_head as u32)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_concurrent_streams(1024);
    let builder = match hcm.codec_type {
        CodecType::Auto => builder,
        CodecType::Http1 => builder.http1_only(),
        CodecType::Http2 => builder.http2_only(),
    };
    let idle_timeout = hcm.idle_timeout;
    let activity = Arc::new(Activity::default());
    let svc_ctx = ctx.clone();
    let svc_activity = activity.clone();
    let verdict = Arc::new(Verdict::default());
    let svc_verdict = verdict.clone();
    let service = service_fn(move |req| {
        let ctx = svc_ctx.clone();
        let activity = svc_activity.clone();
        // On HTTP/1 requests arrive one at a time, so the count is this request's index.
        let index = activity.started.fetch_add(1, Ordering::Relaxed);
        let smuggling = svc_verdict.refuses(index as usize);
        activity.active.fetch_add(1, Ordering::Relaxed);
        // The request future is several KiB; hyper moves what the service returns into
        // its dispatcher (and, for HTTP/2, into a task per stream): boxed here, built
        // in its box, it is never copied, and hyper moves a pointer.
        let fut = crate::pin_in_place!(router::handle(req, ctx, smuggling));
        async move {
            let r = fut.await;
            activity.active.fetch_sub(1, Ordering::Relaxed);
            r
        }
    });
    let stream = Downstream::new(
        stream,
        &ctx.listener.network_filters,
        ctx.listener.config.per_connection_buffer_limit_bytes,
        ctx.id,
        ctx.peer,
        ctx.local,
    );
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(FramingGuard::new(stream, verdict)), service);
    tokio::pin!(conn);
    let mut idle_check = idle_timeout.map(|t| Box::pin(tokio::time::sleep(t)));
    let mut last_started = 0;
    let mut draining = *drain.borrow();
    if draining {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(peer = %ctx.peer, error = %e, "downstream connection ended with an error");
                }
                return;
            }
            changed = drain.changed(), if !draining => {
                if changed.is_err() || *drain.borrow() {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = async { idle_check.as_mut().unwrap().as_mut().await }, if idle_check.is_some() => {
                let started = activity.started.load(Ordering::Relaxed);
                let t = idle_timeout.unwrap_or(Duration::from_secs(3600));
                if started == last_started && activity.active.load(Ordering::Relaxed) == 0 && !draining {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
                last_started = started;
                idle_check = Some(Box::pin(tokio::time::sleep(t)));
            }
        }
    }
}
