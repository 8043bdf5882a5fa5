//! Reload triggers (the config file changing, SIGHUP) and the other signals.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use inotify::{EventMask, Inotify, WatchMask};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::app::{Proxy, ShutdownKind, Source};

/// Starts the watchers. They live as long as the main runtime.
pub fn watch(
    proxy: Arc<Proxy>,
    shutdown: mpsc::UnboundedSender<ShutdownKind>,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    if let Source::File(path) = &proxy.options.source {
        // Out of inotify instances or watches (`fs.inotify.max_user_instances`, often
        // 128, shared by every process of the user): the proxy runs, unwatched.
        if let Err(e) = watch_file(path, tx.clone()) {
            tracing::warn!(config = %path.display(), error = %e,
                "config file not watched; SIGHUP or POST /reload re-reads it");
        }
    }

    let mut hup = signal(SignalKind::hangup())?;
    let hup_tx = tx.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = hup_tx.send(());
        }
    });
    let reload_proxy = proxy.clone();
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: a save is often several events; read once they settle.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while rx.try_recv().is_ok() {}
            let _ = reload_proxy.reload().await;
        }
    });

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let writers = proxy.shared.writers.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { let _ = shutdown.send(ShutdownKind::Graceful); }
                _ = int.recv() => { let _ = shutdown.send(ShutdownKind::Graceful); }
                // Log rotation: reopen access-log files.
                _ = usr1.recv() => writers.reopen(),
            }
        }
    });
    Ok(())
}

/// Watches the config file's directory (editors and config managers rename a new file
/// over the old one, and a watch on the old file's inode ends with it) on the main
/// runtime, with no thread of its own.
///
/// Only the events that end a change are asked for: a file closed after writing, a
/// file renamed into the directory, an entry created (a symlink swapped in with `ln -sf`
/// makes no other). Not every write: with `IN_MODIFY` a program writing a log into the
/// same directory (h2load's `--log-file` in `perf/run`'s) woke the watcher on each
/// write, 0.19 times per proxied request, pre-empting the worker it shared a CPU with
/// (43,259 times in a 4 s run). A writer that keeps the file open is seen when it
/// closes it; SIGHUP and `POST /reload` re-read it at any time.
///
/// The path is watched as given, symlinks kept: a config reached through links
/// (Kubernetes mounts a ConfigMap as `<name>` -> `..data/<name>` and updates it by
/// renaming a new `..data` link over the old one) changes without an event naming it.
/// So an entry renamed or created under another name is a change when the config now
/// resolves to another file.
fn watch_file(path: &std::path::Path, tx: mpsc::UnboundedSender<()>) -> anyhow::Result<()> {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => ".".into(),
    };
    let Some(file_name) = path.file_name().map(|f| f.to_os_string()) else {
        return Ok(());
    };
    let inotify =
        Inotify::init().map_err(|e| anyhow::anyhow!("cannot start an inotify watch: {e}"))?;
    inotify
        .watches()
        .add(
            &dir,
            WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO | WatchMask::CREATE,
        )
        .map_err(|e| anyhow::anyhow!("cannot watch {} for config changes: {e}", dir.display()))?;
    let mut events = inotify.into_event_stream(vec![0u8; 4096])?;
    let mut resolved = std::fs::canonicalize(&path).ok();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    tracing::error!(dir = %dir.display(), error = %e,
                        "config watch failed; SIGHUP or POST /reload re-reads it");
                    return;
                }
            };
            let ours = event.name.as_deref() == Some(file_name.as_os_str());
            let relinked = !ours
                && event
                    .mask
                    .intersects(EventMask::MOVED_TO | EventMask::CREATE)
                && std::fs::canonicalize(&path).ok() != resolved;
            if ours || relinked {
                resolved = std::fs::canonicalize(&path).ok();
                let _ = tx.send(());
            }
        }
    });
    Ok(())
}
