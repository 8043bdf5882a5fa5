//! Reload triggers (the config file changing, SIGHUP) and the other signals.

use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
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
        // Editors and config managers replace files (rename over), so watch the
        // directory and pick out our file.
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        let dir = path
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_else(|| ".".into());
        let file_name = path.file_name().map(|f| f.to_os_string());
        let fs_tx = tx.clone();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(ev) = ev {
                let ours = ev
                    .paths
                    .iter()
                    .any(|p| p.file_name().map(|f| f.to_os_string()) == file_name);
                if ours && !ev.kind.is_access() {
                    let _ = fs_tx.send(());
                }
            }
        })?;
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        // The watcher must outlive this function; it lives until the process exits.
        std::mem::forget(watcher);
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
