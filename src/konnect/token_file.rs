//! The operator's own token, read from `--konnect-token-file` and read again when it changes.
//! The kubelet updates a mounted Secret by swapping a symlink (`..data`), so the file is compared
//! by what it resolves to (device, inode, mtime, size), not by watching one inode.
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::client::{KonnectClient, TokenSource};
use super::models::TokenValue;

/// How often the file's metadata is looked at (a stat, no read unless it changed).
pub const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    mtime: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let (dev, ino) = {
        use std::os::unix::fs::MetadataExt;
        (m.dev(), m.ino())
    };
    #[cfg(not(unix))]
    let (dev, ino) = (0, 0);
    Some(Stamp {
        dev,
        ino,
        mtime: m.modified().ok(),
        len: m.len(),
    })
}

fn hash(token: &TokenValue) -> u64 {
    let mut h = DefaultHasher::new();
    token.expose().hash(&mut h);
    h.finish()
}

/// Reads a token file; an empty file is no token.
pub fn read(path: &Path) -> std::io::Result<Option<TokenValue>> {
    let raw = std::fs::read_to_string(path)?;
    let raw = raw.trim();
    Ok((!raw.is_empty()).then(|| TokenValue::new(raw)))
}

/// The token file and what was last read from it.
pub struct TokenFile {
    path: PathBuf,
    /// (file stamp, hash of the token last handed out).
    last: Mutex<(Option<Stamp>, u64)>,
}

impl TokenFile {
    /// Reads the file once (the token to start with).
    pub fn open(path: impl Into<PathBuf>) -> std::io::Result<(Self, Option<TokenValue>)> {
        let path = path.into();
        let before = stamp(&path);
        let token = read(&path)?;
        let file = Self {
            last: Mutex::new((before, token.as_ref().map_or(0, hash))),
            path,
        };
        Ok((file, token))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `reload` when the file's stamp changed since the last look.
    pub fn reload_if_changed(&self) -> Option<TokenValue> {
        let now = stamp(&self.path);
        let changed = {
            let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            now.is_some() && last.0 != now
        };
        if changed { self.reload() } else { None }
    }

    /// Keeps `client` on the file's current token until `stop` resolves.
    pub async fn watch(
        self: std::sync::Arc<Self>,
        client: KonnectClient,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(POLL) => {}
            }
            if let Some(token) = self.reload_if_changed() {
                match client.set_token(&token) {
                    Ok(true) => tracing::info!(
                        file = %self.path.display(),
                        "the Konnect token file changed: the new token is used from the next request on"
                    ),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(file = %self.path.display(), error = %e, "the new Konnect token is not usable; keeping the previous one")
                    }
                }
            }
        }
    }
}

impl TokenSource for TokenFile {
    fn reload(&self) -> Option<TokenValue> {
        let before = stamp(&self.path);
        let token = match read(&self.path) {
            Ok(Some(t)) => t,
            // Mid-swap or emptied: keep what works until a token is there again.
            Ok(None) | Err(_) => return None,
        };
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.0 = before;
        let h = hash(&token);
        if h == last.1 {
            return None;
        }
        last.1 = h;
        Some(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `value` the way the kubelet does: a new directory, then an atomic symlink swap.
    fn kubelet_write(dir: &Path, value: &str, generation: u32) {
        let data = dir.join(format!("..{generation}"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("token"), value).unwrap();
        let tmp = dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&data, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
        if !dir.join("token").exists() {
            std::os::unix::fs::symlink("..data/token", dir.join("token")).unwrap();
        }
    }

    #[test]
    fn a_symlink_swap_is_seen_and_an_unchanged_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        kubelet_write(dir.path(), "kpat_first\n", 1);
        let (file, token) = TokenFile::open(dir.path().join("token")).unwrap();
        assert_eq!(token.unwrap().expose(), "kpat_first");
        assert!(file.reload_if_changed().is_none(), "nothing changed");
        assert!(file.reload().is_none(), "same value is no change");
        kubelet_write(dir.path(), "spat_second", 2);
        assert_eq!(file.reload_if_changed().unwrap().expose(), "spat_second");
        assert!(file.reload_if_changed().is_none());
        // A rewrite with the same value is no change; an emptied file keeps the last token.
        kubelet_write(dir.path(), "spat_second", 3);
        assert!(file.reload_if_changed().is_none());
        kubelet_write(dir.path(), "", 4);
        assert!(file.reload_if_changed().is_none());
        kubelet_write(dir.path(), "spat_third", 5);
        assert_eq!(file.reload().unwrap().expose(), "spat_third");
    }
}
