//! Which data paths this node has: what `elara info` shows, and what `auto` picks.
//!
//! Probed once at start (files and `PATH` only, no command runs): loop devices, the kernel's and
//! the user-space iSCSI initiator, the kernel's and the user-space NFS client, s3fs. Each says why
//! where it is missing.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cmd::which;

/// Which client brings a protocol up: `auto` takes the kernel's where this node has it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PathChoice {
    #[default]
    Auto,
    Kernel,
    User,
}

/// One way of bringing a protocol up on this node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DataPath {
    /// `loop`, `iscsi`, `nfs`, `s3`.
    pub protocol: String,
    /// `kernel` or `user`.
    pub mode: String,
    pub available: bool,
    /// What serves it, or why it is missing.
    pub detail: String,
    /// Whether attaches of this protocol use it (the configured choice, `auto` resolved).
    pub selected: bool,
}

/// The probe's findings.
#[derive(Clone, Debug)]
pub struct DataPaths {
    pub all: Vec<DataPath>,
}

impl DataPaths {
    pub fn probe(iscsi: PathChoice, nfs: PathChoice, helper_exe: &Path) -> DataPaths {
        let fuse = Path::new("/dev/fuse").exists();
        let no_fuse = "/dev/fuse is missing: this kernel or container has no FUSE";
        let mut all = vec![];
        let loop_ok = Path::new("/dev/loop-control").exists();
        let loop_detail = if loop_ok {
            "/dev/loop-control"
        } else {
            "/dev/loop-control is missing: no loop devices"
        };
        all.push(DataPath {
            selected: loop_ok,
            ..path("loop", "kernel", loop_ok, loop_detail)
        });

        let iscsi_tcp = Path::new("/sys/module/iscsi_tcp").exists();
        let iscsiadm = which("iscsiadm");
        let (k_ok, k_detail) = match (iscsi_tcp, &iscsiadm) {
            (true, Some(p)) => (true, format!("iscsi_tcp with {}", p.display())),
            (false, _) => (
                false,
                "this kernel has no iSCSI initiator (no /sys/module/iscsi_tcp)".to_string(),
            ),
            (true, None) => (
                false,
                "iscsiadm is not installed (Debian package open-iscsi)".to_string(),
            ),
        };
        let qsd = which(super::iscsi::QSD);
        let iscsi_module = qsd_has_iscsi();
        let (u_ok, u_detail) = match (&qsd, iscsi_module, fuse) {
            (Some(p), Some(m), true) => (true, format!("{} ({}) over FUSE and loop", p.display(), m.display())),
            (None, _, _) => (
                false,
                "qemu-storage-daemon is not installed (Debian package qemu-utils)".to_string(),
            ),
            (Some(_), None, _) => (
                false,
                "qemu-storage-daemon has no iscsi driver (Debian package qemu-block-extra)".to_string(),
            ),
            (Some(_), Some(_), false) => (false, no_fuse.to_string()),
        };
        let iscsi_pick = pick(iscsi, k_ok, u_ok);
        all.push(DataPath {
            selected: iscsi_pick == Some("kernel"),
            ..path("iscsi", "kernel", k_ok, &k_detail)
        });
        all.push(DataPath {
            selected: iscsi_pick == Some("user"),
            ..path("iscsi", "user", u_ok, &u_detail)
        });

        let nfs_k = kernel_has_fs("nfs") || kernel_has_fs("nfs4");
        let nk_detail = if nfs_k {
            "nfs in /proc/filesystems"
        } else {
            "this kernel has no NFS client (nfs is not in /proc/filesystems)"
        };
        let nfs_u = fuse && helper_exe.is_file();
        let nu_detail = if !fuse {
            no_fuse.to_string()
        } else if nfs_u {
            format!("{} nfs-fuse (NFSv3 over FUSE)", helper_exe.display())
        } else {
            format!("the helper binary {} is missing", helper_exe.display())
        };
        let nfs_pick = pick(nfs, nfs_k, nfs_u);
        all.push(DataPath {
            selected: nfs_pick == Some("kernel"),
            ..path("nfs", "kernel", nfs_k, nk_detail)
        });
        all.push(DataPath {
            selected: nfs_pick == Some("user"),
            ..path("nfs", "user", nfs_u, &nu_detail)
        });

        let s3fs = which("s3fs");
        let (s_ok, s_detail) = match (&s3fs, fuse) {
            (Some(p), true) => (true, format!("{} (FUSE)", p.display())),
            (None, _) => (false, "s3fs is not installed (Debian package s3fs)".to_string()),
            (Some(_), false) => (false, no_fuse.to_string()),
        };
        all.push(DataPath {
            selected: s_ok,
            ..path("s3", "user", s_ok, &s_detail)
        });
        DataPaths { all }
    }

    /// The mode attaches of `protocol` use, or why there is none.
    pub fn selected(&self, protocol: &str, choice: PathChoice) -> Result<&'static str, String> {
        let of = |mode: &str| self.all.iter().find(|p| p.protocol == protocol && p.mode == mode);
        if let Some(p) = self.all.iter().find(|p| p.protocol == protocol && p.selected) {
            return Ok(if p.mode == "kernel" { "kernel" } else { "user" });
        }
        let why: Vec<String> = match choice {
            PathChoice::Auto => ["kernel", "user"]
                .iter()
                .filter_map(|m| of(m))
                .map(|p| format!("{}: {}", p.mode, p.detail))
                .collect(),
            PathChoice::Kernel => of("kernel")
                .map(|p| format!("attach.{protocol} = kernel, but {}", p.detail))
                .into_iter()
                .collect(),
            PathChoice::User => of("user")
                .map(|p| format!("attach.{protocol} = user, but {}", p.detail))
                .into_iter()
                .collect(),
        };
        Err(why.join("; "))
    }
}

fn pick(choice: PathChoice, kernel: bool, user: bool) -> Option<&'static str> {
    match choice {
        PathChoice::Auto if kernel => Some("kernel"),
        PathChoice::Auto if user => Some("user"),
        PathChoice::Kernel if kernel => Some("kernel"),
        PathChoice::User if user => Some("user"),
        _ => None,
    }
}

fn path(protocol: &str, mode: &str, available: bool, detail: &str) -> DataPath {
    DataPath {
        protocol: protocol.into(),
        mode: mode.into(),
        available,
        detail: detail.into(),
        selected: false,
    }
}

pub fn kernel_has_fs(name: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .is_ok_and(|t| t.lines().any(|l| l.split_whitespace().last() == Some(name)))
}

/// qemu's iscsi block driver is a loadable module (Debian: qemu-block-extra), in qemu's module
/// directory next to its other block modules.
fn qsd_has_iscsi() -> Option<PathBuf> {
    let lib = Path::new("/usr/lib");
    let mut dirs = vec![lib.join("qemu")];
    for e in std::fs::read_dir(lib).into_iter().flatten().flatten() {
        dirs.push(e.path().join("qemu"));
    }
    dirs.into_iter().map(|d| d.join("block-iscsi.so")).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_prefers_the_kernel_and_an_explicit_choice_says_why_it_is_missing() {
        assert_eq!(pick(PathChoice::Auto, true, true), Some("kernel"));
        assert_eq!(pick(PathChoice::Auto, false, true), Some("user"));
        assert_eq!(pick(PathChoice::User, true, true), Some("user"));
        assert_eq!(pick(PathChoice::Kernel, false, true), None);
        let paths = DataPaths {
            all: vec![
                path("nfs", "kernel", false, "no client"),
                DataPath {
                    selected: false,
                    ..path("nfs", "user", true, "helper")
                },
            ],
        };
        assert_eq!(
            paths.selected("nfs", PathChoice::Kernel).unwrap_err(),
            "attach.nfs = kernel, but no client"
        );
    }
}
