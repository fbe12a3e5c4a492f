//! What the kubelet does with a Secret volume: the token file is `<dir>/token -> ..data/token`,
//! and an update writes a new directory and swaps the `..data` symlink atomically.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

static GENERATION: AtomicU32 = AtomicU32::new(0);

/// Writes `value` as the mounted `token` key under `dir` (created if needed); returns the file path.
pub fn write_token(dir: &Path, value: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let generation = GENERATION.fetch_add(1, Ordering::SeqCst);
    let data = dir.join(format!("..gen{generation}"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("token"), value).unwrap();
    let tmp = dir.join(format!("..data_tmp{generation}"));
    std::os::unix::fs::symlink(&data, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let file = dir.join("token");
    if std::fs::symlink_metadata(&file).is_err() {
        std::os::unix::fs::symlink("..data/token", &file).unwrap();
    }
    file
}

/// Mirrors the Secret's `token` key into `dir` every `period` (the kubelet's sync loop), until dropped.
pub fn mirror_secret(secrets: Api<Secret>, name: &str, dir: PathBuf, period: Duration) -> Mirror {
    let name = name.to_string();
    let task = tokio::spawn(async move {
        let mut last: Option<String> = None;
        loop {
            // A request that hangs must not stop the sync loop (the kubelet retries too).
            let got = tokio::time::timeout(Duration::from_secs(2), secrets.get_opt(&name)).await;
            if let Ok(Ok(Some(s))) = got
                && let Some(v) = s.data.as_ref().and_then(|d| d.get("token"))
                && let Ok(v) = String::from_utf8(v.0.clone())
                && last.as_deref() != Some(v.as_str())
            {
                write_token(&dir, &v);
                last = Some(v);
            }
            tokio::time::sleep(period).await;
        }
    });
    Mirror(task)
}

pub struct Mirror(tokio::task::JoinHandle<()>);

impl Drop for Mirror {
    fn drop(&mut self) {
        self.0.abort();
    }
}
