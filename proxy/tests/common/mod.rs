//! The shared integration-test kit: the proxy as a child process (`proxy`), backends
//! that misbehave on command (`backend`, `grpc`), clients (`client`) and a bootstrap
//! builder (`config`). A test reads in a few lines and no test writes its own server.
//!
//! Every wait in here is bounded by a deadline; nothing binds a fixed port.

// Each test binary uses a different part of the kit.
#![allow(dead_code, unused_imports)]

pub mod backend;
pub mod client;
pub mod config;
pub mod grpc;
pub mod mutate;
pub mod proxy;

use std::future::Future;
use std::time::Duration;

pub use backend::{Backend, Echo, Misbehave, Scripted};
pub use client::{
    count_body, empty, full, get, get_h2, send_raw, send_raw_until_close, Client, Proto, RawConn,
    Resp,
};
pub use config::{cluster_with, cluster_yaml, Bootstrap};
pub use proxy::Strait;

/// Polls `check` every 20 ms until it returns `Some`, or panics after `timeout` with
/// `what` in the message.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fails the test if `fut` takes longer than `timeout`.
pub async fn within<T>(timeout: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(timeout, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within {timeout:?}"),
    }
}

/// An access log of `%RESPONSE_CODE% %RESPONSE_FLAGS%` lines in a file of its own:
/// the file's path and the HttpConnectionManager YAML that writes it (for
/// `Bootstrap::hcm`). Read its first line with `first_log_line`.
pub fn flags_log() -> (std::path::PathBuf, String) {
    access_log("%RESPONSE_CODE% %RESPONSE_FLAGS%")
}

/// As `flags_log`, a line of `format` per request.
pub fn access_log(format: &str) -> (std::path::PathBuf, String) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let path = std::env::temp_dir().join(format!("strait-log-{}-{nanos}.log", std::process::id()));
    let hcm = format!(
        "access_log:\n- name: envoy.access_loggers.file\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n    path: {}\n    log_format: {{text_format_source: {{inline_string: \"{format}\\n\"}}}}\n",
        path.display()
    );
    (path, hcm)
}

/// The first `n` lines of an access log, once the proxy has written that many.
pub async fn log_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    eventually(
        Duration::from_secs(5),
        &format!("{n} access log lines"),
        || async {
            let text = std::fs::read_to_string(path).ok()?;
            let lines: Vec<String> = text.lines().take(n).map(str::to_owned).collect();
            (lines.len() == n).then_some(lines)
        },
    )
    .await
}

/// Waits for the access log to have `want`'s lines, and checks them in any order:
/// requests on separate connections may be served, and logged, by different
/// workers.
pub async fn assert_log(path: &std::path::Path, want: &[&str]) {
    let mut got = log_lines(path, want.len()).await;
    got.sort();
    let mut want = want.to_vec();
    want.sort();
    assert_eq!(got, want);
}

/// The first line of an access log, once the proxy has written it.
pub async fn first_log_line(path: &std::path::Path) -> String {
    eventually(Duration::from_secs(5), "an access log line", || async {
        let text = std::fs::read_to_string(path).ok()?;
        text.lines().next().map(str::to_owned)
    })
    .await
}
