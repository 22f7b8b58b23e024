//! Host commands with a deadline. A dead NFS server, iSCSI portal or FUSE helper can make `mount`,
//! `umount`, `losetup` or `mkfs` block in the kernel; no attach or detach may wait on one forever,
//! or the Docker plugin and the CLI hang with it. A command past its deadline is killed (its
//! process, not a stuck kernel call, which the caller then reports) and fails with
//! [`AttachError::Timeout`].

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::Command;

use super::{AttachError, Result};

/// Quick host commands: mount, umount, losetup, blkid, iscsiadm.
pub const QUICK: Duration = Duration::from_secs(60);
/// Commands that walk a whole device: mkfs, e2fsck, resize2fs.
pub const LONG: Duration = Duration::from_secs(30 * 60);

/// Run `cmd args` within [`QUICK`]; a non-zero exit is an error carrying its stderr.
pub async fn run(cmd: &str, args: &[String]) -> Result<Output> {
    run_within(QUICK, cmd, args).await
}

/// Run `cmd args` within `limit`; a non-zero exit is an error carrying its stderr.
pub async fn run_within(limit: Duration, cmd: &str, args: &[String]) -> Result<Output> {
    let out = output_within(
        limit,
        Command::new(cmd).args(args),
        &format!("{cmd} {}", args.join(" ")),
    )
    .await?;
    if !out.status.success() {
        return Err(command_error(&format!("{cmd} {}", args.join(" ")), &out));
    }
    Ok(out)
}

/// The output of `command` (whatever its exit status), or a timeout after `limit`.
pub async fn output_within(limit: Duration, command: &mut Command, shown: &str) -> Result<Output> {
    command.stdin(Stdio::null()).kill_on_drop(true);
    let program = command.as_std().get_program().to_owned();
    let child = command.output();
    match tokio::time::timeout(limit, child).await {
        Ok(out) => out.map_err(|e| AttachError::io("run", Path::new(&program), e)),
        Err(_) => Err(AttachError::Timeout {
            command: shown.to_string(),
            after: limit,
        }),
    }
}

pub fn command_error(command: &str, out: &Output) -> AttachError {
    AttachError::Command {
        command: command.to_string(),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }
}

/// The first executable named `cmd` on `PATH`.
pub fn which(cmd: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(cmd)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_command_past_its_deadline_is_killed_and_reported() {
        let t = std::time::Instant::now();
        let err = run_within(Duration::from_millis(300), "sleep", &["30".into()])
            .await
            .unwrap_err();
        assert!(matches!(err, AttachError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("sleep 30"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_failing_command_carries_its_stderr() {
        let err = run("sh", &["-c".into(), "echo nope >&2; exit 3".into()])
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("nope") && err.to_string().contains("3"),
            "{err}"
        );
    }
}
