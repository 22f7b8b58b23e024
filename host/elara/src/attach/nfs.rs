//! NFS exports as mounted directories, by one of two clients:
//!
//! * **kernel** (`mount -t nfs`), where the kernel has an NFS client. The driver's extra options
//!   pass through an allow-list, each value checked, so a driver cannot add `,` options of its own.
//! * **user** (no kernel client, as on this project's CI machines): one `elara nfs-fuse` helper per
//!   volume, an NFSv3 client serving the export as a FUSE file system (crate `elara-nfs-fuse`). It
//!   runs in its own session, so a daemon restart leaves live containers' mounts alone.

use std::path::Path;
use std::time::Duration;

use elara_runtime::NfsConnection;

use super::helper::{self, HelperState};
use super::{AttachError, Attacher, Result, cmd, mountinfo};

/// The kernel mount options a driver may ask for, and whether each takes a value.
const KERNEL_OPTIONS: &[(&str, bool)] = &[
    ("port", true),
    ("mountport", true),
    ("mountvers", true),
    ("proto", true),
    ("mountproto", true),
    ("timeo", true),
    ("retrans", true),
    ("rsize", true),
    ("wsize", true),
    ("actimeo", true),
    ("acregmin", true),
    ("acregmax", true),
    ("acdirmin", true),
    ("acdirmax", true),
    ("sec", true),
    ("hard", false),
    ("soft", false),
    ("nolock", false),
    ("noac", false),
    ("nocto", false),
    ("noatime", false),
    ("nodiratime", false),
];

/// How long the helper gets from start to a mounted file system.
const HELPER_READY: Duration = Duration::from_secs(30);

/// A connection's server and options, checked.
struct Export<'a> {
    server: &'a str,
    port: u16,
    mount_port: Option<u16>,
    export: &'a str,
}

fn check<'a>(c: &'a NfsConnection) -> Result<Export<'a>> {
    let bad = |field, reason: String| AttachError::BadConnection { field, reason };
    let server = c.server.trim_start_matches('[').trim_end_matches(']');
    if server.is_empty()
        || !server
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | ':'))
    {
        return Err(bad(
            "nfs.server",
            format!("{:?} is not a host name or address", c.server),
        ));
    }
    if !c.export.starts_with('/')
        || c.export.chars().any(|ch| ch.is_control() || ch == ',')
        || c.export.split('/').any(|p| p == "..")
    {
        return Err(bad(
            "nfs.export",
            format!(
                "{:?} must be an absolute path without `..`, commas or control characters",
                c.export
            ),
        ));
    }
    let mut mount_port = None;
    for (k, v) in &c.options {
        if k == "mountport" {
            mount_port = Some(
                v.parse()
                    .map_err(|_| bad("nfs.options", format!("mountport={v:?} is not a port")))?,
            );
        }
    }
    Ok(Export {
        server,
        port: c.port.unwrap_or(2049),
        mount_port,
        export: &c.export,
    })
}

/// The driver's options as `mount -o` text: allow-listed names, values of letters, digits and
/// `.`/`-`/`:` only.
fn kernel_options(c: &NfsConnection, read_only: bool) -> Result<String> {
    let bad = |reason: String| AttachError::BadConnection {
        field: "nfs.options",
        reason,
    };
    if !matches!(c.version.as_str(), "3" | "4" | "4.0" | "4.1" | "4.2") {
        return Err(AttachError::BadConnection {
            field: "nfs.version",
            reason: format!("{:?} is not 3, 4, 4.1 or 4.2", c.version),
        });
    }
    let mut opts = vec![format!("vers={}", c.version)];
    if let Some(port) = c.port {
        opts.push(format!("port={port}"));
    }
    for (k, v) in &c.options {
        let Some((_, takes_value)) = KERNEL_OPTIONS.iter().find(|(name, _)| name == k) else {
            return Err(bad(format!(
                "{k:?} is not a mount option Elara passes on (allowed: {})",
                KERNEL_OPTIONS.iter().map(|o| o.0).collect::<Vec<_>>().join(", ")
            )));
        };
        match (takes_value, v.is_empty()) {
            (true, true) => return Err(bad(format!("{k} needs a value"))),
            (false, false) => return Err(bad(format!("{k} takes no value"))),
            _ => {}
        }
        if !v
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | ':'))
        {
            return Err(bad(format!(
                "{k}={v:?}: a value may hold letters, digits, '.', '-' and ':' only"
            )));
        }
        if k == "port" && c.port.is_some() {
            continue;
        }
        opts.push(if v.is_empty() { k.clone() } else { format!("{k}={v}") });
    }
    opts.push(if read_only { "ro" } else { "rw" }.into());
    opts.push("nosuid".into());
    opts.push("nodev".into());
    Ok(opts.join(","))
}

impl Attacher {
    /// `mount -t nfs` with the kernel's client.
    pub(super) async fn nfs_kernel_mount(&self, c: &NfsConnection, mountpoint: &Path, read_only: bool) -> Result<()> {
        let e = check(c)?;
        let opts = kernel_options(c, read_only)?;
        let host = if e.server.contains(':') {
            format!("[{}]", e.server)
        } else {
            e.server.to_string()
        };
        let source = format!("{host}:{}", e.export);
        cmd::run(
            "mount",
            &[
                "-t".into(),
                "nfs".into(),
                "-o".into(),
                opts,
                source,
                mountpoint.display().to_string(),
            ],
        )
        .await
        .map(drop)
    }

    /// Serve the export at `mountpoint` through an `elara nfs-fuse` helper. Idempotent: a live
    /// helper for this volume is adopted.
    pub(super) async fn nfs_user_mount(
        &self,
        volume_id: &str,
        c: &NfsConnection,
        mountpoint: &Path,
        read_only: bool,
    ) -> Result<HelperState> {
        let e = check(c)?;
        // The helper takes only the endpoint and export, but a driver's options are held to
        // the same allow-list on both paths: what is refused on one is refused on the other.
        kernel_options(c, read_only)?;
        let dir = self.attach_dir(volume_id);
        if let Some(h) = helper::load(&dir) {
            if h.alive() && mountinfo::is_fuse(mountpoint)? {
                tracing::info!(volume = volume_id, helper = %h.describe(), "adopting the running NFS helper");
                return Ok(h);
            }
            tracing::warn!(volume = volume_id, helper = %h.describe(), "the recorded NFS helper is gone or not serving: starting a new one");
            h.stop().await?;
            super::remove_if_exists(&dir.join("helper.json")).await?;
        }
        if mountinfo::find(mountpoint)?.is_some() {
            // A mount left by a helper that died: disconnected, and in the way.
            cmd::run("umount", &["-l".into(), mountpoint.display().to_string()]).await?;
        }
        super::create_private_dir(&dir).await?;
        let log = dir.join("helper.log");
        let mut args: Vec<String> = vec![
            "nfs-fuse".into(),
            "--server".into(),
            e.server.to_string(),
            "--port".into(),
            e.port.to_string(),
            "--export".into(),
            e.export.to_string(),
            "--mountpoint".into(),
            mountpoint.display().to_string(),
            "--io-timeout".into(),
            self.cfg.io_timeout.as_secs().max(1).to_string(),
            "--pid-file".into(),
            dir.join("helper.pid").display().to_string(),
        ];
        if let Some(p) = e.mount_port {
            args.push("--mount-port".into());
            args.push(p.to_string());
        }
        if read_only {
            args.push("--read-only".into());
        }
        let mut child = helper::spawn_session(&self.cfg.helper_exe, &args, &log)?;
        let pid = child.id().ok_or_else(|| AttachError::Helper {
            program: "elara nfs-fuse".into(),
            reason: "exited at once".into(),
        })?;
        let state = HelperState::identify("elara nfs-fuse", pid, log.clone(), None)?;
        helper::save(&dir, &state)?;
        // Ready when its FUSE mount appears; if it exits first, its log says why.
        let deadline = tokio::time::Instant::now() + HELPER_READY;
        loop {
            if mountinfo::is_fuse(mountpoint)? {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                super::remove_if_exists(&dir.join("helper.json")).await?;
                return Err(AttachError::Helper {
                    program: "elara nfs-fuse".into(),
                    reason: format!(
                        "could not mount {}:{} ({status}): {}",
                        e.server,
                        e.export,
                        helper::log_tail(&log)
                    ),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                state.stop().await.ok();
                super::remove_if_exists(&dir.join("helper.json")).await?;
                return Err(AttachError::Timeout {
                    command: format!("elara nfs-fuse for {}:{}", e.server, e.export),
                    after: HELPER_READY,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The daemon does not wait for it: tokio reaps it if it exits while the daemon runs.
        drop(child);
        tracing::info!(helper = %state.describe(), server = e.server, export = e.export, "NFS export mounted through FUSE");
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(options: &[(&str, &str)]) -> NfsConnection {
        NfsConnection {
            server: "127.0.0.1".into(),
            port: Some(2049),
            export: "/export/volumes/v1".into(),
            version: "3".into(),
            options: options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn kernel_options_are_allow_listed_and_checked() {
        assert_eq!(
            kernel_options(&conn(&[("mountport", "20048"), ("hard", "")]), false).unwrap(),
            "vers=3,port=2049,mountport=20048,hard,rw,nosuid,nodev"
        );
        for opts in [
            vec![("exec", "")],
            vec![("mountport", "1,exec")],
            vec![("timeo", "")],
            vec![("hard", "yes")],
            vec![("sec", "sys\nx")],
            vec![("context", "x")],
        ] {
            let err = kernel_options(&conn(&opts), false).unwrap_err();
            assert!(
                matches!(
                    err,
                    AttachError::BadConnection {
                        field: "nfs.options",
                        ..
                    }
                ),
                "{opts:?}: {err}"
            );
        }
        let mut v = conn(&[]);
        v.version = "3,exec".into();
        assert!(kernel_options(&v, false).is_err());
    }

    #[test]
    fn servers_and_exports_are_checked() {
        let mut c = conn(&[]);
        c.export = "/export/a,b".into();
        assert!(check(&c).is_err());
        c.export = "/export/../etc".into();
        assert!(check(&c).is_err());
        c.export = "relative".into();
        assert!(check(&c).is_err());
        let mut s = conn(&[]);
        s.server = "h -o x".into();
        assert!(check(&s).is_err());
        assert_eq!(check(&conn(&[("mountport", "20048")])).unwrap().mount_port, Some(20048));
    }
}
