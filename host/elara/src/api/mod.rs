//! The daemon's doors: REST (unix socket and optional TLS TCP) and Docker's volume plugin API.

pub mod backups;
pub mod docker;
pub mod rest;
pub mod tcp;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, bail};
use tokio::net::UnixListener;

/// Bind a unix socket (mode 0660), replacing a stale socket file but refusing to steal a live one.
/// A directory made for it is 0755 (not the daemon's 077 umask): the socket's group must reach it.
pub fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("{} is in use by another running daemon", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}
