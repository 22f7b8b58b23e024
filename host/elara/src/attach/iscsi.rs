//! iSCSI LUNs as block devices on this node, by one of two initiators:
//!
//! * **kernel** (`iscsi_tcp` + open-iscsi): `iscsiadm` node record with CHAP, login, the device at
//!   `/dev/disk/by-path/ip-PORTAL-iscsi-IQN-lun-N`. A session serves every LUN of its target on
//!   this node: each attached LUN leaves a `session.json` in its attach dir, and the last one to
//!   go logs the session out.
//! * **user** (no kernel initiator, as on this project's CI machines): one `qemu-storage-daemon`
//!   per volume logs in with libiscsi and exports the LUN as a FUSE file (`<attach dir>/lun`),
//!   which is bound to a loop device. The loop keeps its buffered I/O: qemu-storage-daemon 10.0's
//!   FUSE export mixes up the data of concurrent writes (fio with `--direct=1 --iodepth=16 --verify`
//!   on the export found misplaced blocks, with a `file` node as much as with `iscsi`; at depth 1
//!   none), and a loop with `--direct-io=on` sends it exactly such concurrent writes: ext4 made
//!   and written that way failed `e2fsck`. A buffered loop writes through the FUSE file one
//!   request at a time (FUSE without writeback cache is write-through), and the same fio runs on
//!   it verify clean. The CHAP secret reaches it in a 0600 file
//!   (`--object secret,file=`), never on a command line; the block and export options are passed
//!   as JSON, so no value a driver returned can smuggle in another option. A request the target
//!   does not answer within the I/O timeout fails (EIO) instead of hanging the file system.
//!
//! Both end in a block device that the caller formats on first use and mounts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use elara_runtime::IscsiConnection;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::helper::{self, HelperState};
use super::{AttachError, Attacher, Result, cmd, mountinfo};

pub const QSD: &str = "qemu-storage-daemon";

/// What the kernel path records per attached LUN, to share and finally log out its session.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct KernelSession {
    pub portal: String,
    pub iqn: String,
    pub lun: u32,
}

/// A connection's fields, checked before any of them reaches a command.
pub struct Target<'a> {
    pub host: String,
    pub port: u16,
    pub iqn: &'a str,
    pub lun: u32,
    pub initiator: Option<&'a str>,
}

impl<'a> Target<'a> {
    pub fn parse(c: &'a IscsiConnection) -> Result<Target<'a>> {
        let bad = |field, reason: String| AttachError::BadConnection { field, reason };
        let (host, port) =
            split_portal(&c.portal).ok_or_else(|| bad("iscsi.portal", format!("{:?} is not HOST:PORT", c.portal)))?;
        // RFC 3720 names: iqn./eui./naa. followed by letters, digits, and . - : only.
        let iqn_ok = (c.iqn.starts_with("iqn.") || c.iqn.starts_with("eui.") || c.iqn.starts_with("naa."))
            && c.iqn.len() <= 223
            && c.iqn
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | ':'));
        if !iqn_ok {
            return Err(bad("iscsi.iqn", format!("{:?} is not an iSCSI qualified name", c.iqn)));
        }
        let initiator = c.extra.iter().find(|(k, _)| k == "initiator").map(|(_, v)| v.as_str());
        if let Some(i) = initiator
            && !(i.starts_with("iqn.")
                && i.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | ':')))
        {
            return Err(bad(
                "iscsi.extra.initiator",
                format!("{i:?} is not an iSCSI qualified name"),
            ));
        }
        if let Some(auth) = &c.auth
            && (auth.username.is_empty() || auth.username.chars().any(|ch| ch.is_control()))
        {
            return Err(bad(
                "iscsi.auth.username",
                "must be non-empty, without control characters".into(),
            ));
        }
        Ok(Target {
            host,
            port,
            iqn: &c.iqn,
            lun: c.lun,
            initiator,
        })
    }

    fn portal(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `host:port`, `[v6]:port` or a bare host (port 3260).
fn split_portal(portal: &str) -> Option<(String, u16)> {
    let ok_host = |h: &str| {
        !h.is_empty()
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
    };
    if let Some(rest) = portal.strip_prefix('[') {
        let (host, tail) = rest.split_once(']')?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if tail.is_empty() => 3260,
            None => return None,
        };
        return ok_host(host).then(|| (host.to_string(), port));
    }
    let (host, port) = match portal.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (portal, 3260),
    };
    (ok_host(host) && !host.contains(':')).then(|| (host.to_string(), port))
}

impl Attacher {
    /// Bring the LUN up through qemu-storage-daemon; returns the loop device over its FUSE export.
    /// Idempotent: a live helper for this volume is adopted, never doubled.
    pub(super) async fn iscsi_user_device(
        &self,
        volume_id: &str,
        c: &IscsiConnection,
        read_only: bool,
    ) -> Result<(PathBuf, HelperState)> {
        let target = Target::parse(c)?;
        let dir = self.attach_dir(volume_id);
        let lun_file = dir.join("lun");
        let helper = match helper::load(&dir) {
            Some(h) if h.alive() && mountinfo::is_fuse(&lun_file)? => {
                tracing::info!(volume = volume_id, helper = %h.describe(), "adopting the running iSCSI helper");
                h
            }
            Some(h) => {
                tracing::warn!(volume = volume_id, helper = %h.describe(), "the recorded iSCSI helper is gone or not serving: starting a new one");
                self.stop_helper_in(&dir).await?;
                self.start_qsd(&dir, &target, c, read_only).await?
            }
            None => self.start_qsd(&dir, &target, c, read_only).await?,
        };
        let export = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(&lun_file)
            .map_err(|e| AttachError::io("open", &lun_file, e))?;
        match self.loop_device(&lun_file, &export.into(), read_only).await {
            Ok(dev) => Ok((dev, helper)),
            Err(e) => {
                if let Err(undo) = self.stop_helper_in(&dir).await {
                    tracing::error!(
                        volume = volume_id,
                        "stopping the iSCSI helper after a failed attach: {undo}"
                    );
                }
                Err(e)
            }
        }
    }

    async fn start_qsd(&self, dir: &Path, t: &Target<'_>, c: &IscsiConnection, read_only: bool) -> Result<HelperState> {
        let Some(qsd) = cmd::which(QSD) else {
            return Err(AttachError::Unsupported {
                kind: "iscsi".into(),
                reason: format!("{QSD} is not installed (Debian package qemu-utils)"),
            });
        };
        super::create_private_dir(dir).await?;
        let lun_file = dir.join("lun");
        let (pid_file, qmp, log) = (dir.join("qsd.pid"), dir.join("qmp.sock"), dir.join("helper.log"));
        for stale in [&pid_file, &qmp] {
            super::remove_if_exists(stale).await?;
        }
        // The FUSE export is mounted over an existing regular file.
        std::fs::write(&lun_file, b"").map_err(|e| AttachError::io("create", &lun_file, e))?;

        let mut args: Vec<String> = vec!["--daemonize".into(), "--pidfile".into(), pid_file.display().to_string()];
        let mut blockdev = json!({
            "driver": "iscsi",
            "node-name": "lun",
            "transport": "tcp",
            "portal": t.portal(),
            "target": t.iqn,
            "lun": t.lun,
            "timeout": self.cfg.io_timeout.as_secs().max(1),
            "read-only": read_only,
            "cache": { "direct": true, "no-flush": false },
        });
        if let Some(i) = t.initiator {
            blockdev["initiator-name"] = json!(i);
        }
        if let Some(auth) = &c.auth {
            let secret = dir.join("chap.secret");
            super::write_secret(&secret, &auth.secret).await?;
            args.push("--object".into());
            args.push(json!({ "qom-type": "secret", "id": "chap", "file": secret, "format": "raw" }).to_string());
            blockdev["user"] = json!(auth.username);
            blockdev["password-secret"] = json!("chap");
        }
        args.push("--blockdev".into());
        args.push(blockdev.to_string());
        args.push("--export".into());
        args.push(
            json!({ "type": "fuse", "id": "export", "node-name": "lun", "mountpoint": lun_file, "writable": !read_only, "growable": false, "allow-other": "off" })
                .to_string(),
        );
        args.push("--chardev".into());
        args.push(format!("socket,id=qmp,path={},server=on,wait=off", qmp.display()));
        args.push("--monitor".into());
        args.push("chardev=qmp".into());

        // With --daemonize the first process exits once the export is up (0) or start-up failed
        // (its stderr says why); the daemon itself lives on in a session of its own.
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| AttachError::io("open", &log, e))?;
        let mut command = tokio::process::Command::new(&qsd);
        command.args(&args).stdout(log_file);
        let out = cmd::output_within(self.cfg.io_timeout + Duration::from_secs(30), &mut command, QSD).await;
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                self.stop_helper_in(dir).await.ok();
                return Err(e);
            }
        };
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            self.stop_helper_in(dir).await.ok();
            return Err(AttachError::Helper {
                program: QSD.into(),
                reason: format!(
                    "could not open LUN {} of {} at {}: {}",
                    t.lun,
                    t.iqn,
                    t.portal(),
                    first_line(&stderr)
                ),
            });
        }
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| AttachError::Helper {
                program: QSD.into(),
                reason: format!("started but wrote no pid to {}", pid_file.display()),
            })?;
        let state = HelperState::identify(QSD, pid, log, Some(qmp))?;
        helper::save(dir, &state)?;
        if !mountinfo::is_fuse(&lun_file)? {
            self.stop_helper_in(dir).await.ok();
            return Err(AttachError::Helper {
                program: QSD.into(),
                reason: format!("started, but no FUSE export appeared at {}", lun_file.display()),
            });
        }
        tracing::info!(helper = %state.describe(), iqn = t.iqn, portal = %t.portal(), lun = t.lun, "iSCSI LUN exported through FUSE");
        Ok(state)
    }

    /// Stop the helper recorded in `dir` (if any) and take down its FUSE export. Safe to repeat.
    pub(super) async fn stop_helper_in(&self, dir: &Path) -> Result<()> {
        if let Some(h) = helper::load(dir) {
            h.stop().await?;
        }
        // A killed helper leaves its FUSE mount behind, disconnected.
        let lun_file = dir.join("lun");
        if mountinfo::find(&lun_file)?.is_some() {
            cmd::run("umount", &["-l".into(), lun_file.display().to_string()]).await?;
        }
        super::remove_if_exists(&dir.join("helper.json")).await
    }

    /// Log in with the kernel's initiator (open-iscsi) and return the LUN's block device.
    pub(super) async fn iscsi_kernel_device(&self, volume_id: &str, c: &IscsiConnection) -> Result<PathBuf> {
        let t = Target::parse(c)?;
        let portal = t.portal();
        let _guard = self.iscsi_sessions.lock().await;
        let node = |extra: &[&str]| {
            let mut a: Vec<String> = ["-m", "node", "-T", t.iqn, "-p", &portal].map(String::from).to_vec();
            a.extend(extra.iter().map(|s| s.to_string()));
            a
        };
        if !kernel_session_exists(t.iqn, &portal).await? {
            cmd::run("iscsiadm", &node(&["-o", "new"])).await?;
            if let Some(auth) = &c.auth {
                // open-iscsi takes settings only as arguments; they stay in its node database
                // (0600, root), not in Elara's.
                for (k, v) in [
                    ("node.session.auth.authmethod", "CHAP"),
                    ("node.session.auth.username", auth.username.as_str()),
                    ("node.session.auth.password", auth.secret.as_str()),
                ] {
                    cmd::run("iscsiadm", &node(&["-o", "update", "-n", k, "-v", v])).await?;
                }
            }
            cmd::run("iscsiadm", &node(&["--login"])).await?;
        }
        let dir = self.attach_dir(volume_id);
        super::create_private_dir(&dir).await?;
        let rec = KernelSession {
            portal: portal.clone(),
            iqn: t.iqn.to_string(),
            lun: t.lun,
        };
        let path = dir.join("session.json");
        std::fs::write(&path, serde_json::to_vec(&rec).expect("json"))
            .map_err(|e| AttachError::io("write", &path, e))?;
        let by_path = PathBuf::from(format!("/dev/disk/by-path/ip-{portal}-iscsi-{}-lun-{}", t.iqn, t.lun));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !by_path.exists() {
            if tokio::time::Instant::now() >= deadline {
                return Err(AttachError::Helper {
                    program: "iscsiadm".into(),
                    reason: format!("logged in, but {} did not appear within 30 s", by_path.display()),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        std::fs::canonicalize(&by_path).map_err(|e| AttachError::io("resolve", &by_path, e))
    }

    /// Drop this volume's share of a kernel session; the last LUN of a target logs it out.
    pub(super) async fn release_kernel_session(&self, volume_id: &str) -> Result<()> {
        let dir = self.attach_dir(volume_id);
        let path = dir.join("session.json");
        let Some(mine) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<KernelSession>(&b).ok())
        else {
            return Ok(());
        };
        let _guard = self.iscsi_sessions.lock().await;
        super::remove_if_exists(&path).await?;
        let still_used = std::fs::read_dir(self.cfg.run_dir.join("attach"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read(e.path().join("session.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<KernelSession>(&b).ok())
                    .is_some_and(|s| s.portal == mine.portal && s.iqn == mine.iqn)
            });
        if still_used || !kernel_session_exists(&mine.iqn, &mine.portal).await? {
            return Ok(());
        }
        let node: Vec<String> = ["-m", "node", "-T", &mine.iqn, "-p", &mine.portal]
            .map(String::from)
            .to_vec();
        cmd::run("iscsiadm", &[node.clone(), vec!["--logout".into()]].concat()).await?;
        cmd::run("iscsiadm", &[node, vec!["-o".into(), "delete".into()]].concat())
            .await
            .map(drop)
    }
}

/// The kernel's FUSE control file system, where each FUSE connection shows its waiting requests
/// and can be aborted.
const FUSECTL: &str = "/sys/fs/fuse/connections";

impl Attacher {
    /// The stall watchdog of a user-space iSCSI attachment. libiscsi, reconnecting to a target
    /// that went away, holds every request until it comes back (qemu's `timeout` does not apply
    /// while it reconnects), and this kernel's FUSE puts no deadline on a request: a container
    /// writing to the volume would hang in the kernel. So: when the FUSE export has requests
    /// waiting and the portal refuses connections, for longer than the I/O timeout, abort the FUSE
    /// connection (every waiting request fails, the filesystem above sees EIO) and stop the
    /// helper. Returns why, once it has done so; the caller marks the attachment failed, and the
    /// next mount once the target is back brings the volume up anew.
    pub async fn iscsi_watchdog(
        &self,
        volume_id: &str,
        state: &super::AttachState,
        c: &IscsiConnection,
    ) -> Result<Option<String>> {
        let (Some(helper), Some(export)) = (&state.helper, &state.backing_file) else {
            return Ok(None);
        };
        let Some(m) = mountinfo::find(export)? else {
            return Ok(None);
        };
        let conn = Path::new(FUSECTL).join(m.dev.1.to_string());
        if std::fs::read_dir(FUSECTL)
            .map(|mut d| d.next().is_none())
            .unwrap_or(true)
        {
            // fusectl is not mounted (systemd mounts it at boot; a bare system may not).
            let _ = cmd::run("mount", &["-t".into(), "fusectl".into(), "none".into(), FUSECTL.into()]).await;
        }
        let waiting: u64 = std::fs::read_to_string(conn.join("waiting"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        let mut stalls = self.stalls.lock().await;
        if waiting == 0 || portal_answers(c).await {
            stalls.remove(volume_id);
            return Ok(None);
        }
        let since = *stalls
            .entry(volume_id.to_string())
            .or_insert_with(tokio::time::Instant::now);
        if since.elapsed() < self.cfg.io_timeout {
            return Ok(None);
        }
        stalls.remove(volume_id);
        drop(stalls);
        let why = format!(
            "the iSCSI target {} at {} did not answer for {:?} with {waiting} request(s) waiting: I/O on the volume was failed and {} stopped",
            c.iqn,
            c.portal,
            since.elapsed(),
            helper.describe()
        );
        tracing::error!(volume = volume_id, "{why}");
        let abort = conn.join("abort");
        std::fs::write(&abort, b"1").map_err(|e| AttachError::io("write", &abort, e))?;
        helper.stop().await?;
        Ok(Some(why))
    }
}

/// Whether the connection's portal accepts a TCP connection within a second.
async fn portal_answers(c: &IscsiConnection) -> bool {
    let Ok(t) = Target::parse(c) else {
        return false;
    };
    let addr = if t.host.contains(':') {
        format!("[{}]:{}", t.host, t.port)
    } else {
        format!("{}:{}", t.host, t.port)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Whether open-iscsi has a session to `iqn` at `portal`.
async fn kernel_session_exists(iqn: &str, portal: &str) -> Result<bool> {
    let out = cmd::output_within(
        cmd::QUICK,
        tokio::process::Command::new("iscsiadm").args(["-m", "session"]),
        "iscsiadm -m session",
    )
    .await?;
    // Exit 21: no sessions at all.
    if out.status.code() == Some(21) {
        return Ok(false);
    }
    if !out.status.success() {
        return Err(cmd::command_error("iscsiadm -m session", &out));
    }
    // `tcp: [1] 127.0.0.1:3260,1 iqn.2010-10.org.openstack:volume-… (non-flash)`
    Ok(String::from_utf8_lossy(&out.stdout).lines().any(|l| {
        let mut f = l.split_whitespace().skip(2);
        let p = f.next().unwrap_or("");
        f.next() == Some(iqn) && p.rsplit_once(',').map(|(a, _)| a) == Some(portal)
    }))
}

/// The first line of qemu-storage-daemon's stderr, without the option it quotes back (the whole
/// `--blockdev` JSON): `qemu-storage-daemon: --blockdev {…}: iSCSI: Failed to …` → `iSCSI: Failed to …`.
fn first_line(s: &str) -> &str {
    let line = s.lines().find(|l| !l.trim().is_empty()).unwrap_or("(no message)");
    match line.rfind("}: ") {
        Some(i) if line.contains(": --") => &line[i + 3..],
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use elara_runtime::ChapAuth;

    fn conn(portal: &str, iqn: &str) -> IscsiConnection {
        IscsiConnection {
            portal: portal.into(),
            iqn: iqn.into(),
            lun: 1,
            auth: Some(ChapAuth {
                username: "u".into(),
                secret: "s".into(),
            }),
            extra: vec![],
        }
    }

    #[test]
    fn portals_and_names_are_checked_before_any_command() {
        let ok = conn("127.0.0.1:3260", "iqn.2010-10.org.openstack:volume-1");
        let t = Target::parse(&ok).unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.portal()),
            ("127.0.0.1", 3260, "127.0.0.1:3260".to_string())
        );
        let t6 = conn("[::1]:3261", "iqn.x:y");
        assert_eq!(Target::parse(&t6).unwrap().portal(), "[::1]:3261");
        assert_eq!(Target::parse(&conn("host.example", "iqn.x")).unwrap().port, 3260);
        for (portal, iqn, field) in [
            ("127.0.0.1:99999", "iqn.x", "iscsi.portal"),
            ("a,b:3260", "iqn.x", "iscsi.portal"),
            ("", "iqn.x", "iscsi.portal"),
            ("127.0.0.1:3260", "iqn.x,file=/etc/passwd", "iscsi.iqn"),
            ("127.0.0.1:3260", "volume-1", "iscsi.iqn"),
            ("127.0.0.1:3260", "iqn.x\"}", "iscsi.iqn"),
        ] {
            match Target::parse(&conn(portal, iqn)) {
                Err(AttachError::BadConnection { field: f, .. }) => {
                    assert_eq!(f, field, "{portal} {iqn}")
                }
                other => panic!("{portal} {iqn}: {:?}", other.err()),
            }
        }
        assert_eq!(
            first_line("qemu-storage-daemon: --blockdev {\"driver\":\"iscsi\"}: iSCSI: Failed to log in\nmore"),
            "iSCSI: Failed to log in"
        );
        let mut bad_init = conn("127.0.0.1:3260", "iqn.x");
        bad_init.extra.push(("initiator".into(), "iqn.a,b".into()));
        assert!(Target::parse(&bad_init).is_err());
    }
}
