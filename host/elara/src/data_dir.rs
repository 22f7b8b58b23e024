//! The daemon's own files are private to root.
//!
//! The data dir holds the embedded store (every backend credential, in clear text), the pool
//! dirs with the volumes' images, the mount points and the helpers' run files. The daemon runs
//! with `umask 077`, so everything it (and the helpers it starts) creates is `0700`/`0600`, and
//! at start it checks what an earlier version, an operator or a package left: a directory or
//! file of its own that group or others can reach is logged and made private.
//!
//! Volume mount points live under the `0700` mounts dir: a container's setuid binary or device
//! node on its volume is out of reach of the node's local users by the path, as well as by the
//! `nosuid,nodev` flags ([`crate::attach::MountSecurity`]).

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::Config;

/// The modes Elara gives its own directories and files.
pub const DIR_MODE: u32 = 0o700;

/// From here on, whatever this process and its children create is private to root.
pub fn set_private_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// Create the daemon's directories (`0700`) and make private any of them, and the embedded
/// store file, that group or others can reach. Returns what it fixed, for the log and tests.
pub fn prepare(cfg: &Config) -> anyhow::Result<Vec<PathBuf>> {
    let dirs = [
        cfg.data_dir.clone(),
        cfg.pools_dir(),
        cfg.mounts_dir(),
        cfg.cache_dir(),
        cfg.run_dir(),
    ];
    for dir in &dirs {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut fixed = Vec::new();
    for path in dirs.iter().map(PathBuf::as_path).chain(embedded_store(cfg).as_deref()) {
        if make_private(path)? {
            fixed.push(path.to_path_buf());
        }
    }
    Ok(fixed)
}

/// The embedded store's file, if the store is embedded and the file exists.
fn embedded_store(cfg: &Config) -> Option<PathBuf> {
    if cfg.store.contains("://") {
        return None;
    }
    let p = PathBuf::from(&cfg.store);
    p.exists().then_some(p)
}

/// Clear the group and other bits of `path` if any is set; true if it changed anything.
/// A symlink is not followed (and not expected here): its target is not ours to change.
fn make_private(path: &Path) -> anyhow::Result<bool> {
    let meta = std::fs::symlink_metadata(path).with_context(|| format!("checking the mode of {}", path.display()))?;
    if meta.file_type().is_symlink() {
        tracing::warn!(path = %path.display(), "is a symlink; Elara's own directories should not be: its mode is left alone");
        return Ok(false);
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(false);
    }
    let private = mode & 0o700;
    tracing::warn!(
        path = %path.display(),
        "mode {mode:04o} lets other users in; making it {private:04o} (it holds credentials or volume data)"
    );
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(private))
        .with_context(|| format!("making {} private", path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_modes_are_made_private_and_private_ones_left() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.path().join("store.redb");
        std::fs::write(&file, b"").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(make_private(&open).unwrap());
        assert!(make_private(&file).unwrap());
        assert_eq!(std::fs::metadata(&open).unwrap().permissions().mode() & 0o7777, 0o700);
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o7777, 0o600);
        assert!(!make_private(&open).unwrap(), "already private: nothing to do");
    }
}
