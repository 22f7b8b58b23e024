//! Helper processes that serve one attached volume from user space: `qemu-storage-daemon` (the
//! user-space iSCSI initiator, exporting the LUN as a FUSE file) and `elara nfs-fuse` (the
//! user-space NFS client). Each runs in its own session, so a daemon that is killed or restarted
//! leaves it and the containers using its mount alone.
//!
//! A helper is named by its pid *and* its start time (`/proc/PID/stat`), so a recycled pid is
//! never taken for it. Its identity lives in `helper.json` in the volume's attach dir (written as
//! soon as it runs, before the store hears of it), so whoever finds that dir — the same daemon, a
//! restarted one, the reconciler undoing a half attach — adopts or stops exactly that process and
//! never starts a second one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{AttachError, Result};

/// How long a helper gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// One running helper process.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct HelperState {
    /// What runs: `qemu-storage-daemon` or `elara nfs-fuse`.
    pub program: String,
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_time: u64,
    /// Its QMP socket (qemu-storage-daemon), for live changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qmp: Option<PathBuf>,
    /// Where its own messages go.
    pub log: PathBuf,
}

impl HelperState {
    /// The running process `pid`, identified by its start time now.
    pub fn identify(program: &str, pid: u32, log: PathBuf, qmp: Option<PathBuf>) -> Result<HelperState> {
        let (_, start_time) = proc_stat(pid).ok_or_else(|| AttachError::Helper {
            program: program.to_string(),
            reason: format!(
                "pid {pid} exited right after it started; its log {}: {}",
                log.display(),
                log_tail(&log)
            ),
        })?;
        Ok(HelperState {
            program: program.to_string(),
            pid,
            start_time,
            qmp,
            log,
        })
    }

    /// Whether this very process still runs (not a zombie, not another process on a reused pid).
    pub fn alive(&self) -> bool {
        matches!(proc_stat(self.pid), Some((state, start)) if start == self.start_time && state != 'Z' && state != 'X')
    }

    pub fn describe(&self) -> String {
        format!("{} (pid {})", self.program, self.pid)
    }

    /// Stop it: SIGTERM (a helper unmounts what it serves and exits), then SIGKILL after a grace.
    /// Returns once the process is gone. Safe to repeat.
    pub async fn stop(&self) -> Result<()> {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        if !self.alive() {
            return Ok(());
        }
        let pid = Pid::from_raw(self.pid as i32);
        let _ = kill(pid, Signal::SIGTERM);
        if self.wait_gone(STOP_GRACE).await {
            return Ok(());
        }
        tracing::warn!(helper = %self.describe(), "still running {STOP_GRACE:?} after SIGTERM: SIGKILL");
        if self.alive() {
            let _ = kill(pid, Signal::SIGKILL);
        }
        if self.wait_gone(Duration::from_secs(10)).await {
            return Ok(());
        }
        Err(AttachError::Helper {
            program: self.program.clone(),
            reason: format!("pid {} survives SIGKILL (stuck in the kernel?)", self.pid),
        })
    }

    async fn wait_gone(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.alive() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }
}

/// `(state, start time)` of `pid` from `/proc/PID/stat`, or `None` if there is no such process.
pub fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`: comm may hold spaces and parentheses, so split at the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 22 overall; `rest` starts at field 3.
    let start = fields.get(22 - 3)?.parse().ok()?;
    Some((state, start))
}

/// The helper recorded in `dir`, if any. Without a record (the daemon died between starting the
/// helper and recording it), the pid file the helper wrote itself (`qsd.pid`, `helper.pid`)
/// names it, if that process is still one serving this dir (its command line names the dir).
pub fn load(dir: &Path) -> Option<HelperState> {
    if let Some(state) = std::fs::read(dir.join("helper.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
    {
        return Some(state);
    }
    let dir_s = dir.display().to_string();
    for (file, program) in [("qsd.pid", "qemu-storage-daemon"), ("helper.pid", "elara nfs-fuse")] {
        let Some(pid) = std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&dir_s)
            && let Ok(state) = HelperState::identify(
                program,
                pid,
                dir.join("helper.log"),
                (file == "qsd.pid").then(|| dir.join("qmp.sock")),
            )
        {
            return Some(state);
        }
    }
    None
}

/// Record `state` in `dir` (write a temp file, then rename: never a torn record).
pub fn save(dir: &Path, state: &HelperState) -> Result<()> {
    let tmp = dir.join("helper.json.tmp");
    let json = serde_json::to_vec_pretty(state).expect("helper state serialises");
    std::fs::write(&tmp, json).map_err(|e| AttachError::io("write", &tmp, e))?;
    let path = dir.join("helper.json");
    std::fs::rename(&tmp, &path).map_err(|e| AttachError::io("write", &path, e))
}

/// The last lines of a helper's log, for an error message.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if tail.is_empty() { "(empty)".into() } else { tail }
}

/// Start `program args` in a session of its own (so it outlives this daemon), with stdin from
/// /dev/null and stdout and stderr appended to `log`.
pub fn spawn_session(program: &Path, args: &[String], log: &Path) -> Result<tokio::process::Child> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| AttachError::io("open", log, e))?;
    let err = out.try_clone().map_err(|e| AttachError::io("open", log, e))?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(std::io::Error::from));
    }
    let child = tokio::process::Command::from(cmd)
        .spawn()
        .map_err(|e| AttachError::io("start", program, e))?;
    Ok(child)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_of_this_process_and_of_none() {
        let (state, start) = proc_stat(std::process::id()).expect("own stat");
        assert!(matches!(state, 'R' | 'S'), "{state}");
        assert!(start > 0);
        assert!(proc_stat(u32::MAX / 2).is_none());
    }

    #[tokio::test]
    async fn a_helper_is_identified_stopped_and_not_confused_with_a_reused_pid() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let child = spawn_session(Path::new("sleep"), &["60".into()], &log).unwrap();
        let pid = child.id().unwrap();
        let h = HelperState::identify("sleep", pid, log.clone(), None).unwrap();
        assert!(h.alive());
        save(dir.path(), &h).unwrap();
        assert_eq!(load(dir.path()).as_ref(), Some(&h));
        // The same pid with another start time is another process.
        let other = HelperState {
            start_time: h.start_time + 1,
            ..h.clone()
        };
        assert!(!other.alive());
        h.stop().await.unwrap();
        assert!(!h.alive());
        // Stopping again is a no-op.
        h.stop().await.unwrap();
    }
}
