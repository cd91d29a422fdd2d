//! Watching the config file for changes (the `notify` crate), debounced:
//! editors write files in several steps (or replace them), so a reload runs
//! once the file has been quiet for 500 ms. The directory is watched, not the
//! file, so atomic replaces are seen too.

use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;

/// A channel that yields `()` once per burst of changes to `path`.
pub fn watch(path: &Path) -> mpsc::Receiver<()> {
    let (out_tx, out_rx) = mpsc::channel(1);
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel();
    let file = path.file_name().map(|f| f.to_owned());
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            let ours = ev.paths.iter().any(|p| p.file_name() == file.as_deref());
            if ours && (ev.kind.is_modify() || ev.kind.is_create()) {
                let _ = raw_tx.send(());
            }
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP or POST /-/reload");
            return out_rx;
        }
    };
    use notify::Watcher;
    if let Err(e) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the config directory");
        return out_rx;
    }
    tokio::spawn(async move {
        let _keep = watcher;
        while raw_rx.recv().await.is_some() {
            // debounce: wait for 500 ms without events
            loop {
                match tokio::time::timeout(Duration::from_millis(500), raw_rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if out_tx.send(()).await.is_err() {
                return;
            }
        }
    });
    out_rx
}
