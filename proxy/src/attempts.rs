//! The upstream attempts of one request: the first, its retries and, with
//! `hedge_on_per_try_timeout`, hedged attempts that race the ones still running.
//!
//! As Envoy's router: a retry happens only before any response byte went downstream;
//! a per-try timeout (or per-try idle timeout) resets the attempt and counts as a reset
//! for `retry_on`, unless the route hedges, when the attempt keeps running, another
//! starts (whenever retries are left, whatever `retry_on` says), and the first
//! response that is not retried wins while the others are reset. A retriable response
//! that can no longer be retried, or a reset, is dropped while another attempt may
//! still answer. The stream's timers (route timeout, max stream duration, ...) bound
//! them all.
//!
//! A route without retries or per-try timers takes the short path: one attempt, no
//! allocation beyond the request itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri};
use strait_filters::LocalReply;
use strait_xds::model::{RouteTarget, RoutingPriority};
use tokio::time::Sleep;

use crate::body::{Expiry, ReplayHandle, RequestBody, StreamTimers};
use crate::breaker::Slot;
use crate::chain::ChainId;
use crate::cluster::{ClusterRuntime, Host, HostSet};
use crate::error::ProxyError;
use crate::pool::{self, Lease, UpstreamBody, UpstreamRequest};
use crate::retry::{self, Decision, RetryState};
use crate::stream::StreamGuard;

static X_ENVOY_ATTEMPT_COUNT: http::HeaderName =
    http::HeaderName::from_static("x-envoy-attempt-count");
static X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: http::HeaderName =
    http::HeaderName::from_static("x-envoy-expected-rq-timeout-ms");

/// What the attempts need besides the request.
pub struct Plan<'a> {
    pub cluster: &'a Arc<ClusterRuntime>,
    pub hosts: &'a Arc<HostSet>,
    pub h2: bool,
    pub upgrade: bool,
    /// The request head each retry starts from (`None` when nothing is retried).
    pub template: Option<UpstreamRequest>,
    /// The request body kept for replay, when it has one and may be retried.
    pub replay: Option<ReplayHandle>,
    pub per_try: Option<Duration>,
    pub per_try_idle: Option<Duration>,
    pub hedge: bool,
    /// `include_request_attempt_count`.
    pub attempt_count_header: bool,
    /// `x-envoy-expected-rq-timeout-ms` of the first attempt, the route timeout, and
    /// when the route timeout started: a retry's header says what time is left.
    pub expected_timeout: Option<Duration>,
    pub global_timeout: Option<Duration>,
    pub routed_at: tokio::time::Instant,
    /// The route and the downstream authority, for `auto_host_rewrite` on retries.
    pub target: &'a RouteTarget,
    pub authority: &'a str,
    pub chain: Option<ChainId>,
}

/// How the attempts ended.
pub enum Answer {
    /// The winning response, its pooled connection and its place under `max_requests`.
    Response(Response<UpstreamBody>, Option<Lease>, Option<Slot>),
    /// No attempt produced a usable response.
    Failed(ProxyError),
    /// An HTTP filter answered from the request body.
    FilterReplied(LocalReply),
}

use crate::pool::Sent;
type SendFuture<'a> = Pin<Box<dyn Future<Output = Sent> + Send + 'a>>;

/// One attempt under way.
struct Attempt<'a> {
    host: Arc<Host>,
    send: SendFuture<'a>,
    request_slot: Option<Slot>,
    /// The per-try timer (the shorter of `per_try_timeout` and `per_try_idle_timeout`
    /// while the head is awaited) and the error it stands for.
    timer: Option<PerTry>,
    /// Set when the attempt's connection is ready for it.
    ready: Arc<AtomicBool>,
    /// A hedged attempt whose per-try timer fired: it is never retried itself.
    retried: bool,
}

/// A hedged attempt's per-try timer: as Envoy's, it starts when the attempt's
/// connection is ready and the request is complete (`sleep` is `None` until then).
struct PerTry {
    sleep: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    error: ProxyError,
}

// One event per turn of the loop, moved once: boxing the response would cost an
// allocation per attempt for nothing.
#[allow(clippy::large_enum_variant)]
enum Event {
    Sent(usize, Sent),
    TimerFired(usize),
    BackoffDone,
    StreamTimer(Expiry),
}

/// Runs the attempts and returns the answer. `first` is the first attempt's request
/// and `host` its host (already counted by `guard.begin_upstream`).
pub async fn run(
    plan: Plan<'_>,
    first: UpstreamRequest,
    host: Arc<Host>,
    retry: Option<RetryState<'_>>,
    timers: &mut Option<StreamTimers>,
    guard: &mut StreamGuard,
) -> Answer {
    if retry.is_none() && plan.per_try.is_none() && plan.per_try_idle.is_none() {
        return single(&plan, first, host, timers, guard).await;
    }
    // The retry loop stays inline: its state (the attempt's send future is boxed)
    // is no larger than the single path's, so it costs the plain route nothing and
    // saves a retrying one an allocation. Hedging's is boxed: the request future is
    // as large as its largest await and is copied whole into its box per request.
    if !plan.hedge {
        let mut sent_head = None;
        let answer = sequential(&plan, first, host, retry, timers, guard, &mut sent_head).await;
        keep_sent(&plan, sent_head);
        return answer;
    }
    // Hedged attempts overlap, and none hands its head back: `on_log` gets a copy
    // of the first.
    if let Some(chain) = plan.chain {
        chain.keep_request(&first);
    }
    Box::pin(hedged(plan, first, host, retry, timers, guard)).await
}

/// Sends `request` to `host` as the plan says (protocol, upgrade, priority).
fn send<'a>(
    plan: &'a Plan<'_>,
    host: &'a Arc<Host>,
    request: UpstreamRequest,
    signals: pool::Signals<'a>,
) -> impl Future<Output = Sent> + 'a {
    let (h2, upgrade, priority) = (plan.h2, plan.upgrade, plan.target.priority);
    pool::send_signalled(plan.cluster, host, h2, upgrade, priority, request, signals)
}

/// Hands the head the last attempt sent (back from the pool) to the stream's
/// plugins, whose `on_log` sees it as Envoy's access-log context does.
fn keep_sent(plan: &Plan<'_>, head: Option<UpstreamRequest>) {
    match (plan.chain, head) {
        (Some(chain), Some(head)) => chain.keep_sent_request(head),
        // Without plugins to log it.
        (None, Some(head)) => head.recycle(),
        (_, None) => {}
    }
}

/// Attempts that may overlap: a per-try timeout starts another attempt while the
/// late one keeps running (`hedge_on_per_try_timeout`); the first usable answer wins.
async fn hedged(
    plan: Plan<'_>,
    first: UpstreamRequest,
    host: Arc<Host>,
    mut retry: Option<RetryState<'_>>,
    timers: &mut Option<StreamTimers>,
    guard: &mut StreamGuard,
) -> Answer {
    let cluster = plan.cluster;
    let mut first = Some(first);
    let mut attempts: Vec<Attempt<'_>> = Vec::with_capacity(1);
    let mut tried: Vec<Arc<Host>> = Vec::new();
    let mut attempt_number: u32 = 1;
    let mut backoff: Option<Pin<Box<Sleep>>> = None;
    // Holds a place under `max_retries` (or the retry budget) while a retry is armed,
    // as Envoy's retry state does: until the next outcome is in.
    let mut retry_slot: Option<Slot> = None;
    attempts.push(start(&plan, first.take(), &host, attempt_number));
    tried.push(host);
    // The request body's progress: per-try timers wait for its end.
    let body = guard.received.clone();
    loop {
        let event = std::future::poll_fn(|cx| {
            for (i, a) in attempts.iter_mut().enumerate() {
                if let Poll::Ready(sent) = a.send.as_mut().poll(cx) {
                    return Poll::Ready(Event::Sent(i, sent));
                }
                if let Some(timer) = &mut a.timer {
                    if timer.sleep.is_none()
                        && a.ready.load(Ordering::Relaxed)
                        && body.as_ref().is_none_or(|b| b.poll_ended(cx))
                    {
                        timer.sleep = Some(Box::pin(tokio::time::sleep(timer.timeout)));
                    }
                    if let Some(sleep) = &mut timer.sleep {
                        if sleep.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Event::TimerFired(i));
                        }
                    }
                }
            }
            if let Some(b) = &mut backoff {
                if b.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::BackoffDone);
                }
            }
            if let Some(t) = timers {
                if let Poll::Ready(expiry) = t.poll_expiry(cx) {
                    return Poll::Ready(Event::StreamTimer(expiry));
                }
            }
            Poll::Pending
        })
        .await;
        let (index, sent) = match event {
            Event::StreamTimer(expiry) => {
                let t = timers.as_mut().expect("a stream timer fired");
                guard.timed_out(expiry);
                return Answer::Failed(t.error(expiry));
            }
            Event::BackoffDone => {
                backoff = None;
                let previous_hosts = retry
                    .as_ref()
                    .and_then(RetryState::policy)
                    .filter(|p| p.previous_hosts);
                let Some(next) = retry_host(cluster, plan.hosts, previous_hosts, &tried) else {
                    cluster.stats.upstream_cx_none_healthy.inc();
                    if attempts.is_empty() {
                        return Answer::Failed(ProxyError::NoHealthyUpstream);
                    }
                    continue;
                };
                guard.next_attempt(next.clone());
                attempt_number += 1;
                attempts.push(start(&plan, None, &next, attempt_number));
                tried.push(next);
                continue;
            }
            Event::TimerFired(i) if plan.hedge => {
                // A soft timeout: the attempt runs on and another one starts.
                let a = &mut attempts[i];
                a.timer = None;
                if a.retried {
                    continue;
                }
                a.retried = true;
                drop(retry_slot.take());
                if let Some(state) = &mut retry {
                    if plan.replay.as_ref().is_none_or(ReplayHandle::replayable) {
                        let decision = state.decide_hedge(rand::random());
                        if let Some(wait) = account(
                            decision,
                            cluster,
                            plan.target.priority,
                            guard,
                            &mut retry_slot,
                        ) {
                            backoff = Some(Box::pin(tokio::time::sleep(wait)));
                        }
                    }
                }
                continue;
            }
            Event::TimerFired(i) => {
                // The attempt is reset: its future (and connection) dropped.
                let a = attempts.swap_remove(i);
                let error = a.timer.expect("the timer that fired").error;
                match error {
                    ProxyError::PerTryIdleTimeout => {
                        cluster.stats.upstream_rq_per_try_idle_timeout.inc()
                    }
                    _ => cluster.stats.upstream_rq_per_try_timeout.inc(),
                }
                attempts.push(Attempt {
                    timer: None,
                    send: Box::pin(std::future::ready(Err(error))),
                    ..a
                });
                continue;
            }
            Event::Sent(i, sent) => (i, sent),
        };
        let attempt = attempts.swap_remove(index);
        let others = !attempts.is_empty() || backoff.is_some();
        let settled = settle(
            &plan,
            &mut retry,
            &mut retry_slot,
            guard,
            &sent,
            attempt.retried,
            others,
        );
        match settled {
            Settled::Retry(wait) => backoff = Some(Box::pin(tokio::time::sleep(wait))),
            Settled::Dropped => {}
            Settled::FilterReplied(reply) => return Answer::FilterReplied(reply),
            Settled::Answer => {
                // The winner: every other attempt is reset.
                drop(attempts);
                return finish(sent, &attempt.host, attempt.request_slot, guard);
            }
        }
    }
}

/// What became of an attempt's outcome.
enum Settled {
    /// Retry after this backoff (the outcome is dropped).
    Retry(Duration),
    /// Dropped: another attempt under way may still answer.
    Dropped,
    /// This is the answer.
    Answer,
    /// An HTTP filter answered from the request body.
    FilterReplied(LocalReply),
}

/// Envoy's handling of an attempt's outcome: counts it, decides whether to retry
/// (`retried`: a hedged attempt, never retried itself), and whether it answers. A
/// response that would have been retried, or a reset, does not answer while `others`
/// (attempts under way or a retry armed) may still do better.
fn settle(
    plan: &Plan<'_>,
    retry: &mut Option<RetryState<'_>>,
    retry_slot: &mut Option<Slot>,
    guard: &mut StreamGuard,
    sent: &Sent,
    retried: bool,
    others: bool,
) -> Settled {
    // This attempt's outcome is in: an armed retry no longer counts as under way.
    drop(retry_slot.take());
    if let Ok((resp, _)) = sent {
        guard.upstream_responded(resp.status().as_u16(), resp.headers());
    }
    // A filter that answered from the request body ended the upstream leg.
    if sent.is_err() {
        if let Some(reply) = plan.chain.and_then(ChainId::take_pending_reply) {
            return Settled::FilterReplied(reply);
        }
    }
    // Envoy gives up retrying once the body outgrew the buffer.
    if plan.replay.as_ref().is_some_and(|r| !r.replayable()) {
        *retry = None;
    }
    let outcome = retry::outcome(sent);
    let (decision, retriable) = match (retry.as_mut(), outcome) {
        (Some(state), Some(outcome)) if retried => (
            Decision::Done { after_retry: false },
            state.is_retriable(outcome),
        ),
        (Some(state), Some(outcome)) => {
            let decision = state.decide(outcome, rand::random());
            let retriable = !matches!(decision, Decision::Done { .. });
            (decision, retriable)
        }
        _ => (Decision::Done { after_retry: false }, false),
    };
    if let Some(wait) = account(
        decision,
        plan.cluster,
        plan.target.priority,
        guard,
        retry_slot,
    ) {
        // The failed attempt's response (and its connection) is dropped unread, and
        // its place under `max_requests` given back.
        return Settled::Retry(wait);
    }
    if others && (retriable || sent.is_err()) {
        return Settled::Dropped;
    }
    Settled::Answer
}

/// The answer from the winning attempt's outcome.
fn finish(
    sent: Sent,
    host: &Arc<Host>,
    request_slot: Option<Slot>,
    guard: &mut StreamGuard,
) -> Answer {
    match sent {
        Ok((resp, lease)) => {
            guard.answered_by(host);
            Answer::Response(resp, lease, request_slot)
        }
        Err(error) => Answer::Failed(error),
    }
}

/// Attempts one at a time (no hedging): one timer serves the stream and the current
/// attempt's per-try deadline, and nothing is allocated per attempt.
async fn sequential(
    plan: &Plan<'_>,
    first: UpstreamRequest,
    host: Arc<Host>,
    mut retry: Option<RetryState<'_>>,
    timers: &mut Option<StreamTimers>,
    guard: &mut StreamGuard,
    sent_head: &mut Option<UpstreamRequest>,
) -> Answer {
    let cluster = plan.cluster;
    let mut first = Some(first);
    let mut host = host;
    let mut tried: Vec<Arc<Host>> = Vec::new();
    let mut number: u32 = 1;
    let mut retry_slot: Option<Slot> = None;
    let per_try = per_try_timer(plan);
    // Each attempt's head (in `sent_head`) comes back from the pool for the next
    // attempt (no copy made up front): the head itself when Strait's codec sent it.
    loop {
        let request = request(plan, first.take(), sent_head.take(), &host, number);
        // Each attempt holds a place under `max_requests` until its response ends.
        let request_slot = cluster
            .breakers(plan.target.priority)
            .requests
            .try_acquire();
        if request_slot.is_none() {
            cluster.stats.upstream_rq_pending_overflow.inc();
        }
        // Set when the attempt's connection is ready: its per-try timer starts then.
        let ready = AtomicBool::new(false);
        // Boxed: the attempt future is large, and this keeps every enclosing future
        // (and each move of one) small; one allocation per attempt is cheaper. Built
        // in its box (`pin_in_place`): the ~2.4 KiB state is not copied.
        let back = &mut *sent_head;
        let send = crate::pin_in_place!(async {
            match request_slot {
                None => {
                    *back = Some(request);
                    Err(ProxyError::Overflow)
                }
                Some(_) => {
                    let signals = pool::Signals {
                        ready: Some(&ready),
                        back: Some(back),
                    };
                    send(plan, &host, request, signals).await
                }
            }
        });
        // The first attempt's per-try timeout came with the stream's timers.
        if let (Some((d, _)), true) = (&per_try, number > 1) {
            StreamTimers::set_attempt(timers, *d);
        }
        let sent = match until(send, timers, Some(&ready)).await {
            Ok(sent) => sent,
            Err(Expiry::Attempt) => {
                // The attempt is reset: its future (and connection) dropped.
                let error = per_try
                    .as_ref()
                    .map_or(ProxyError::PerTryTimeout, |(_, e)| e.clone());
                match error {
                    ProxyError::PerTryIdleTimeout => {
                        cluster.stats.upstream_rq_per_try_idle_timeout.inc()
                    }
                    _ => cluster.stats.upstream_rq_per_try_timeout.inc(),
                }
                Err(error)
            }
            Err(expiry) => return expired(expiry, timers, guard),
        };
        StreamTimers::clear_attempt(timers);
        match settle(
            plan,
            &mut retry,
            &mut retry_slot,
            guard,
            &sent,
            false,
            false,
        ) {
            Settled::Answer => return finish(sent, &host, request_slot, guard),
            Settled::FilterReplied(reply) => return Answer::FilterReplied(reply),
            // Nothing else is under way: `settle` drops nothing.
            Settled::Dropped => return Answer::Failed(ProxyError::NoHealthyUpstream),
            Settled::Retry(wait) => {
                // The failed attempt's response (and its connection) is dropped unread,
                // and its place under `max_requests` given back.
                drop(sent);
                drop(request_slot);
                let sleep = tokio::time::sleep(wait);
                tokio::pin!(sleep);
                if let Err(expiry) = until(sleep.as_mut(), timers, None).await {
                    return expired(expiry, timers, guard);
                }
            }
        }
        tried.push(host.clone());
        let previous_hosts = retry
            .as_ref()
            .and_then(RetryState::policy)
            .filter(|p| p.previous_hosts);
        let Some(next) = retry_host(cluster, plan.hosts, previous_hosts, &tried) else {
            cluster.stats.upstream_cx_none_healthy.inc();
            return Answer::Failed(ProxyError::NoHealthyUpstream);
        };
        host = next;
        guard.next_attempt(host.clone());
        number += 1;
    }
}

/// Awaits `fut` unless one of the stream's timers ends the wait first.
fn until<'a, F: Future + Unpin + 'a>(
    mut fut: F,
    timers: &'a mut Option<StreamTimers>,
    ready: Option<&'a AtomicBool>,
) -> impl Future<Output = Result<F::Output, Expiry>> + 'a {
    // A plain poll function over a pinned borrow, not an `async fn`: an async fn
    // would hold `fut` twice (argument and pinned local), and its caller's state
    // holds that again — kilobytes copied with every request future.
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(output) = Pin::new(&mut fut).poll(cx) {
            return Poll::Ready(Ok(output));
        }
        if let Some(t) = timers.as_mut() {
            // The attempt's connection is ready and the request complete: its
            // per-try timer starts now (Envoy's `onPoolReady`, or the request's end).
            if t.attempt_pending()
                && ready.is_some_and(|r| r.load(Ordering::Relaxed))
                && t.request_ended()
            {
                t.arm_attempt();
            }
            if let Poll::Ready(expiry) = t.poll_expiry(cx) {
                return Poll::Ready(Err(expiry));
            }
        }
        Poll::Pending
    })
}

/// The answer when a stream timer ended the wait.
fn expired(expiry: Expiry, timers: &Option<StreamTimers>, guard: &mut StreamGuard) -> Answer {
    guard.timed_out(expiry);
    let error = timers
        .as_ref()
        .map_or(ProxyError::UpstreamTimeout, |t| t.error(expiry));
    Answer::Failed(error)
}

/// The short path: one attempt, bounded by the stream's timers only.
async fn single(
    plan: &Plan<'_>,
    request: UpstreamRequest,
    host: Arc<Host>,
    timers: &mut Option<StreamTimers>,
    guard: &mut StreamGuard,
) -> Answer {
    let cluster = plan.cluster;
    let mut request = request;
    if plan.attempt_count_header {
        request
            .headers_mut()
            .insert(&X_ENVOY_ATTEMPT_COUNT, HeaderValue::from_static("1"));
    }
    let request_slot = cluster
        .breakers(plan.target.priority)
        .requests
        .try_acquire();
    if request_slot.is_none() {
        cluster.stats.upstream_rq_pending_overflow.inc();
        keep_sent(plan, Some(request));
        return Answer::Failed(ProxyError::Overflow);
    }
    // With plugins, the pool hands the head back once the exchange is over, for
    // their `on_log`.
    let mut sent_head = None;
    let sent = {
        let signals = pool::Signals {
            ready: None,
            back: plan.chain.and(Some(&mut sent_head)),
        };
        let send = send(plan, &host, request, signals);
        tokio::pin!(send);
        until(send.as_mut(), timers, None).await
    };
    keep_sent(plan, sent_head);
    let sent = match sent {
        Ok(sent) => sent,
        Err(expiry) => return expired(expiry, timers, guard),
    };
    match sent {
        Ok((resp, lease)) => {
            guard.upstream_responded(resp.status().as_u16(), resp.headers());
            Answer::Response(resp, lease, request_slot)
        }
        Err(error) => match plan.chain.and_then(ChainId::take_pending_reply) {
            Some(reply) => Answer::FilterReplied(reply),
            None => Answer::Failed(error),
        },
    }
}

/// The per-try timer of each attempt while its head is awaited: the shorter of
/// `per_try_timeout` and `per_try_idle_timeout`, and the error it stands for.
fn per_try_timer(plan: &Plan<'_>) -> Option<(Duration, ProxyError)> {
    per_try_first(plan.per_try, plan.per_try_idle)
}

/// The shorter of the per-try timeouts, and the error it stands for.
pub fn per_try_first(
    per_try: Option<Duration>,
    per_try_idle: Option<Duration>,
) -> Option<(Duration, ProxyError)> {
    match (per_try, per_try_idle) {
        (Some(t), Some(idle)) if idle < t => Some((idle, ProxyError::PerTryIdleTimeout)),
        (Some(t), _) => Some((t, ProxyError::PerTryTimeout)),
        (None, Some(idle)) => Some((idle, ProxyError::PerTryIdleTimeout)),
        (None, None) => None,
    }
}

/// The request of attempt number `number` on `host`: `first` for the first, else the
/// head the last attempt sent (`sent`, handed back by the pool) or, when hedging, a
/// copy of the template; with the replayed body.
fn request(
    plan: &Plan<'_>,
    first: Option<UpstreamRequest>,
    sent: Option<UpstreamRequest>,
    host: &Arc<Host>,
    number: u32,
) -> UpstreamRequest {
    let mut request = match first {
        Some(request) => request,
        None => {
            let mut request = sent.unwrap_or_else(|| {
                let template = plan
                    .template
                    .as_ref()
                    .expect("a retry has the last attempt's head or a template");
                Box::new(template.copy_head())
            });
            if plan.target.auto_host_rewrite {
                let authority =
                    crate::router::upstream_authority(plan.target, plan.authority, host);
                set_authority(&mut request, plan.h2, authority);
            }
            if let Some(expected) = plan.expected_timeout {
                // Envoy's `setTimeoutHeaders` with the time elapsed: what is left of the
                // route timeout, at least 1 ms.
                let left = match plan.global_timeout {
                    Some(global) => {
                        let elapsed = plan.routed_at.elapsed();
                        expected
                            .min(global.saturating_sub(elapsed))
                            .max(Duration::from_millis(1))
                    }
                    None => expected,
                };
                request.headers_mut().insert(
                    &X_ENVOY_EXPECTED_RQ_TIMEOUT_MS,
                    HeaderValue::from(left.as_millis() as u64),
                );
            }
            *request.body_mut() = plan
                .replay
                .as_ref()
                .map_or(RequestBody::Empty, ReplayHandle::next_attempt);
            request
        }
    };
    if plan.attempt_count_header {
        request.headers_mut().insert(
            &X_ENVOY_ATTEMPT_COUNT,
            crate::headers::number(number.into()),
        );
    }
    request
}

/// Starts attempt number `number` on `host`, boxed to run beside others (hedging).
fn start<'a>(
    plan: &Plan<'a>,
    first: Option<UpstreamRequest>,
    host: &Arc<Host>,
    number: u32,
) -> Attempt<'a> {
    let request = request(plan, first, None, host, number);
    // Each attempt holds a place under `max_requests` until its response ends.
    let cluster = plan.cluster;
    let request_slot = cluster
        .breakers(plan.target.priority)
        .requests
        .try_acquire();
    let ready = Arc::new(AtomicBool::new(false));
    let send: SendFuture<'a> = match request_slot {
        None => {
            cluster.stats.upstream_rq_pending_overflow.inc();
            Box::pin(std::future::ready(Err(ProxyError::Overflow)))
        }
        Some(_) => {
            let (h2, upgrade, host) = (plan.h2, plan.upgrade, host.clone());
            let priority = plan.target.priority;
            let ready = ready.clone();
            Box::pin(async move {
                let ready = Some(&*ready);
                let signals = pool::Signals { ready, back: None };
                pool::send_signalled(cluster, &host, h2, upgrade, priority, request, signals).await
            })
        }
    };
    let timer = per_try_timer(plan).map(|(timeout, error)| PerTry {
        sleep: None,
        timeout,
        error,
    });
    Attempt {
        host: host.clone(),
        send,
        request_slot,
        timer,
        ready,
        retried: false,
    }
}

/// Counts a retry decision where Envoy does and returns the backoff when the request
/// is to be retried, holding a place under the cluster's retry breaker (`max_retries`
/// or its `retry_budget`) in `retry_slot`.
fn account(
    decision: Decision,
    cluster: &ClusterRuntime,
    priority: RoutingPriority,
    guard: &mut StreamGuard,
    retry_slot: &mut Option<Slot>,
) -> Option<Duration> {
    let stats = &cluster.stats;
    match decision {
        Decision::Retry { backoff } => match cluster.breakers(priority).try_acquire_retry() {
            Some(slot) => {
                *retry_slot = Some(slot);
                stats.upstream_rq_retry.inc();
                Some(backoff)
            }
            None => {
                stats.upstream_rq_retry_overflow.inc();
                guard.set_flag("UO");
                None
            }
        },
        Decision::LimitExceeded => {
            stats.upstream_rq_retry_limit_exceeded.inc();
            guard.set_flag("URX");
            None
        }
        Decision::Done { after_retry } => {
            if after_retry {
                stats.upstream_rq_retry_success.inc();
            }
            None
        }
    }
}

/// The host for a retry. With the `previous_hosts` predicate the load balancer picks
/// again, up to `host_selection_retry_max_attempts` times, while it lands on a host
/// already tried; then the last pick stands, as in Envoy.
fn retry_host(
    cluster: &Arc<ClusterRuntime>,
    hosts: &Arc<HostSet>,
    previous_hosts: Option<&strait_xds::model::RetryPolicy>,
    tried: &[Arc<Host>],
) -> Option<Arc<Host>> {
    let picks = previous_hosts.map_or(1, |p| p.host_selection_retry_max_attempts.saturating_add(1));
    let mut host = None;
    for _ in 0..picks {
        host = crate::router::pick_host(cluster, hosts, rand::random());
        match &host {
            Some(h) if previous_hosts.is_some() && tried.iter().any(|t| Arc::ptr_eq(t, h)) => {}
            _ => break,
        }
    }
    host
}

/// Points a retry at another host's name (`auto_host_rewrite`).
fn set_authority(request: &mut Request<RequestBody>, h2: bool, authority: &str) {
    if !h2 {
        if let Ok(v) = HeaderValue::from_str(authority) {
            request.headers_mut().insert(header::HOST, v);
        }
        return;
    }
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    if let Ok(uri) = Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
    {
        *request.uri_mut() = uri;
    }
}
