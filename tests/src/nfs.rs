//! The real NFS server the nfs driver's tests use (NFS-Ganesha, started by
//! `scripts/services/nfs.sh`), and two independent ways to check what it holds: the exported
//! directory on this machine's disk, and libnfs's `nfs-ls` / `nfs-cp` (Debian libnfs-utils), a
//! user-space NFS client. The driver's own word is never taken for what the export holds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use anyhow::{Context, bail};

/// The server from `scripts/services/nfs.sh start` (env `ELARA_TEST_NFS_*`).
#[derive(Debug, Clone)]
pub struct NfsServer {
    /// `127.0.0.1:2049`.
    pub server: String,
    pub mount_port: u16,
    /// The MOUNT path, `/export`.
    pub export: String,
    /// The exported directory on this machine.
    pub dir: PathBuf,
    /// The service script's directory, to stop and start the server.
    pub service_dir: PathBuf,
}

/// Tests that stop the server hold this exclusively; every other test holds it shared.
static SERVER_UP: RwLock<()> = RwLock::new(());

impl NfsServer {
    pub fn from_env() -> NfsServer {
        let var = |k: &str| {
            std::env::var(k).unwrap_or_else(|_| {
                panic!(
                    "{k} is not set: start the NFS server with `scripts/services/nfs.sh start .work/nfs` \
                     and export the lines it prints (scripts/test.sh does)"
                )
            })
        };
        NfsServer {
            server: var("ELARA_TEST_NFS_SERVER"),
            mount_port: var("ELARA_TEST_NFS_MOUNT_PORT")
                .parse()
                .expect("ELARA_TEST_NFS_MOUNT_PORT is a port"),
            export: var("ELARA_TEST_NFS_EXPORT"),
            dir: var("ELARA_TEST_NFS_DIR").into(),
            service_dir: var("ELARA_TEST_NFS_SERVICE").into(),
        }
    }

    /// For a test that needs the server up.
    pub fn shared(&self) -> RwLockReadGuard<'static, ()> {
        SERVER_UP.read().unwrap_or_else(|e| e.into_inner())
    }

    /// For a test that stops the server: no other test of this binary runs meanwhile.
    pub fn exclusive(&self) -> RwLockWriteGuard<'static, ()> {
        SERVER_UP.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The server's address without the port, for `--allow-host` (all its ports).
    pub fn host(&self) -> &str {
        self.server.split(':').next().unwrap_or(&self.server)
    }

    /// `elara backend add NAME --driver nfs ...` with Elara's directory `path` in the export.
    pub fn backend_add_args(&self, name: &str, path: &str, extra: &[(&str, &str)]) -> Vec<String> {
        let mut config: Vec<(String, String)> = vec![
            ("server".into(), self.server.clone()),
            ("export".into(), self.export.clone()),
            ("path".into(), path.into()),
            ("mount_port".into(), self.mount_port.to_string()),
        ];
        for (k, v) in extra {
            config.retain(|(ck, _)| ck != k);
            config.push((k.to_string(), v.to_string()));
        }
        let mut args: Vec<String> = vec![
            "backend".into(),
            "add".into(),
            name.into(),
            "--driver".into(),
            "nfs".into(),
        ];
        for (k, v) in config {
            args.push("--config".into());
            args.push(format!("{k}={v}"));
        }
        args.push("--allow-host".into());
        args.push(self.host().into());
        args
    }

    /// A libnfs URL for `rel` (relative to the export root), over NFSv3 on the server's ports.
    pub fn url(&self, rel: &str) -> String {
        let port = self.server.rsplit(':').next().unwrap_or("2049");
        format!(
            "nfs://{}{}/{}?version=3&nfsport={port}&mountport={}",
            self.host(),
            self.export,
            rel.trim_matches('/'),
            self.mount_port
        )
    }

    /// Names in the directory `rel`, as `nfs-ls` lists them (without `.` and `..`).
    pub fn ls(&self, rel: &str) -> anyhow::Result<Vec<String>> {
        let url = self.url(&format!("{}/", rel.trim_matches('/')));
        let out = Command::new("nfs-ls")
            .arg(&url)
            .output()
            .context("running nfs-ls (Debian libnfs-utils)")?;
        if !out.status.success() {
            bail!("nfs-ls {url}: {}", String::from_utf8_lossy(&out.stderr));
        }
        // `-rw-r--r--  1     0     0            6 name`: the name is the rest after 5 fields.
        let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                l.split_whitespace()
                    .nth(5)
                    .map(|_| l.split_whitespace().skip(5).collect::<Vec<_>>().join(" "))
            })
            .filter(|n| n != "." && n != "..")
            .collect();
        names.sort();
        Ok(names)
    }

    /// Copy a local file into the export with `nfs-cp`.
    pub fn put(&self, local: &Path, rel: &str) -> anyhow::Result<()> {
        self.nfs_cp(local.to_str().context("local path")?, &self.url(rel))
    }

    /// Copy a file out of the export with `nfs-cp`.
    pub fn get(&self, rel: &str, local: &Path) -> anyhow::Result<()> {
        self.nfs_cp(&self.url(rel), local.to_str().context("local path")?)
    }

    fn nfs_cp(&self, from: &str, to: &str) -> anyhow::Result<()> {
        let out = Command::new("nfs-cp")
            .args([from, to])
            .output()
            .context("running nfs-cp (Debian libnfs-utils)")?;
        if !out.status.success() {
            bail!("nfs-cp {from} {to}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Stop the server (by its pid file, through the service script).
    pub fn stop(&self) -> anyhow::Result<()> {
        self.service("stop")
    }

    /// Start it again and wait until it answers.
    pub fn start(&self) -> anyhow::Result<()> {
        self.service("start")
    }

    fn service(&self, action: &str) -> anyhow::Result<()> {
        let script = crate::repo_root().join("scripts/services/nfs.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(action)
            .arg(&self.service_dir)
            .output()?;
        if !out.status.success() {
            bail!(
                "nfs.sh {action}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

/// Whether this kernel has an NFS client (`nfs` or `nfs4` in /proc/filesystems).
pub fn kernel_has_nfs_client() -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|s| {
            s.lines()
                .any(|l| matches!(l.split_whitespace().last(), Some("nfs" | "nfs4")))
        })
        .unwrap_or(false)
}
