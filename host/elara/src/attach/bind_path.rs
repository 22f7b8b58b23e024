//! Bind mounts at paths a REST client chooses (`POST /v1/volumes/{name}/mount {"path": …}`).
//!
//! The path is the client's, so it may aim anywhere: `/etc`, `/root/.ssh`, a symlink to either,
//! or a directory that is already a mount point (whose later unmount would take down a mount
//! that is not Elara's). A path is accepted only if it is
//! * absolute, without `.` or `..`, and strictly under one of the configured roots
//!   (`--mount-path-root`; by default only Elara's own mount root);
//! * reached from its root without a symlink or a mount point anywhere on the way
//!   (`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)`, one component at a
//!   time, making the missing ones);
//! * an empty directory (or missing).
//!
//! The bind is made onto the directory that walk opened, and the new mount's id is recorded:
//! [`unbind`] removes the mount with that id and nothing else.

use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

use super::{MountSecurity, beneath, mountinfo};

#[derive(Debug, thiserror::Error)]
pub enum BindPathError {
    /// The path breaks a rule: the REST client's mistake (or attack); nothing was changed.
    #[error("{path}: {reason}")]
    Refused { path: String, reason: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, BindPathError>;

fn refused(path: &Path, reason: impl Into<String>) -> BindPathError {
    BindPathError::Refused {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn io(what: &'static str, path: &Path, source: impl Into<std::io::Error>) -> BindPathError {
    BindPathError::Io {
        what,
        path: path.display().to_string(),
        source: source.into(),
    }
}

/// The rules that need no file system: absolute, no `.`/`..`, strictly under a root. Returns
/// the root and the path relative to it. Cheap: run before anything is recorded.
pub fn check<'r>(path: &Path, roots: &'r [PathBuf]) -> Result<(&'r Path, PathBuf)> {
    let text = path.to_string_lossy();
    if !path.is_absolute() {
        return Err(refused(path, "is not an absolute path"));
    }
    if text.split('/').any(|c| c == "." || c == "..") {
        return Err(refused(path, "has a `.` or `..` component"));
    }
    if roots.is_empty() {
        return Err(refused(
            path,
            "no mount path roots are configured (--mount-path-root), so no path is allowed",
        ));
    }
    for root in roots {
        if let Ok(rel) = path.strip_prefix(root)
            && rel.components().next().is_some()
        {
            debug_assert!(rel.components().all(|c| matches!(c, Component::Normal(_))));
            return Ok((root.as_path(), rel.to_path_buf()));
        }
    }
    let allowed: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    Err(refused(
        path,
        format!("is not under a mount path root (allowed: {})", allowed.join(", ")),
    ))
}

/// Bind `src` (a volume's own mount point) at the client's `path`, by the rules above, with
/// `security`'s flags. Returns the id of the mount made.
pub fn bind(src: &Path, path: &Path, roots: &[PathBuf], read_only: bool, security: MountSecurity) -> Result<u64> {
    let (root, rel) = check(path, roots)?;
    let dir = walk_creating(root, &rel, path)?;
    let mut entries = std::fs::read_dir(beneath::proc_path(&dir)).map_err(|e| io("list", path, e))?;
    if entries.next().is_some() {
        return Err(refused(path, "is a directory that is not empty"));
    }
    // The name the kernel has for the opened directory: the same as `path` unless it was
    // renamed since, in which case the bind still lands on the directory the walk checked.
    let real = std::fs::read_link(beneath::proc_path(&dir)).map_err(|e| io("resolve", path, e))?;
    let before: Vec<u64> = mountinfo::read()
        .map_err(|e| io("read mounts for", path, std::io::Error::other(e.to_string())))?
        .into_iter()
        .filter(|m| m.mount_point == real)
        .map(|m| m.id)
        .collect();
    super::bind_onto(src, &beneath::proc_path(&dir), &real, read_only, security)
        .map_err(|e| io("bind-mount onto", path, std::io::Error::other(e.to_string())))?;
    let made = mountinfo::read()
        .map_err(|e| io("read mounts for", path, std::io::Error::other(e.to_string())))?
        .into_iter()
        .rev()
        .find(|m| m.mount_point == real && !before.contains(&m.id));
    match made {
        Some(m) => Ok(m.id),
        None => Err(io(
            "find the bind mount at",
            &real,
            std::io::Error::other("it is not in /proc/self/mountinfo"),
        )),
    }
}

/// Remove the bind mount `mount_id` at `path`, if it is still there. A different mount at the
/// path (someone else's, or mounted over Elara's since) is left alone and reported.
pub fn unbind(path: &Path, mount_id: u64) -> Result<()> {
    let mounts = mountinfo::read().map_err(|e| io("read mounts for", path, std::io::Error::other(e.to_string())))?;
    let at_path: Vec<&mountinfo::MountEntry> = mounts.iter().filter(|m| m.mount_point == path).collect();
    let Some(top) = at_path.last() else { return Ok(()) };
    if top.id == mount_id {
        return nix::mount::umount2(path, nix::mount::MntFlags::UMOUNT_NOFOLLOW).map_err(|e| io("unmount", path, e));
    }
    if at_path.iter().any(|m| m.id == mount_id) {
        return Err(refused(
            path,
            format!(
                "another mount ({}) now covers Elara's bind mount; unmount it first",
                top.source
            ),
        ));
    }
    tracing::warn!(path = %path.display(), "Elara's bind mount is gone; the mount there now ({}) is not Elara's and is left alone", top.source);
    Ok(())
}

/// Open `rel` beneath `root` one component at a time, making missing directories (0700 under
/// the daemon's umask), with no symlink and no mount point crossed.
fn walk_creating(root: &Path, rel: &Path, shown: &Path) -> Result<OwnedFd> {
    let mut dir = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io("open the mount path root", root, e))?;
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    for comp in rel.components() {
        let Component::Normal(name) = comp else {
            return Err(refused(shown, "has a component that is not a plain name"));
        };
        let opened = match openat2(&dir, name, how) {
            Err(nix::Error::ENOENT) => {
                match nix::sys::stat::mkdirat(&dir, name, Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(nix::Error::EEXIST) => {}
                    Err(e) => return Err(io("create", shown, e)),
                }
                openat2(&dir, name, how)
            }
            r => r,
        };
        dir = opened.map_err(|e| match e {
            nix::Error::ELOOP => refused(shown, format!("{name:?} on the way is a symlink")),
            nix::Error::EXDEV => refused(shown, format!("{name:?} on the way is a mount point")),
            nix::Error::ENOTDIR => refused(shown, format!("{name:?} on the way is not a directory")),
            e => io("open", shown, e),
        })?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_rules() {
        let roots = vec![PathBuf::from("/var/lib/elara/mounts"), PathBuf::from("/srv/vols")];
        let (root, rel) = check(Path::new("/srv/vols/a/b"), &roots).unwrap();
        assert_eq!((root, rel.as_path()), (Path::new("/srv/vols"), Path::new("a/b")));
        for (bad, why) in [
            ("relative/x", "absolute"),
            ("/etc", "not under"),
            ("/srv/vols", "not under"),
            ("/srv/volsx/a", "not under"),
            ("/srv/vols/../../etc", "`..`"),
            ("/srv/vols/./a", "`.`"),
        ] {
            let e = check(Path::new(bad), &roots).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(
            check(Path::new("/srv/vols/a"), &[])
                .unwrap_err()
                .to_string()
                .contains("no mount path roots")
        );
    }

    #[test]
    fn the_walk_refuses_symlinks_and_files_and_makes_missing_dirs() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().canonicalize().unwrap();
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
        std::fs::write(root.join("file"), b"").unwrap();
        let e = walk_creating(&root, Path::new("link/x"), Path::new("shown"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("symlink"), "{e}");
        let e = walk_creating(&root, Path::new("file/x"), Path::new("shown"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a directory"), "{e}");
        walk_creating(&root, Path::new("new/deeper"), Path::new("shown")).unwrap();
        assert!(root.join("new/deeper").is_dir());
        assert!(!Path::new("/etc/x").exists());
    }
}
