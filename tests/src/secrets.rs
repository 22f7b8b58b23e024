//! The secrets sweep: with known secrets configured and volumes mounted, look for them
//! everywhere a secret must never be: every REST GET (and each listed item's own GET), the
//! arguments of the daemon's processes (it and every helper naming its data dir), the
//! world-readable files under its data dir, and its log.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};

use crate::Daemon;

/// `GET path` on the daemon's unix socket: (status, body).
pub fn rest_get(socket: &Path, path: &str) -> anyhow::Result<(u16, String)> {
    let out = Command::new("curl")
        .args(["-sS", "-m", "30", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(socket)
        .arg(format!("http://elara{path}"))
        .output()?;
    ensure!(
        out.status.success(),
        "GET {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').context("curl printed no status")?;
    Ok((code.trim().parse()?, body.to_string()))
}

/// Every file and directory under `root` on its file system (mounted volumes are not walked:
/// their contents are the user's), with its metadata.
pub fn walk(root: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let dev = std::fs::symlink_metadata(root).map(|m| m.dev()).unwrap_or(0);
    let mut out = vec![];
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir()
            && let Ok(rd) = std::fs::read_dir(&p)
        {
            todo.extend(rd.flatten().map(|e| e.path()));
        }
        out.push((p, meta));
    }
    out
}

/// Every GET the REST API has, with each listed item's own GET: (path, body).
pub fn every_get(socket: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = vec![];
    let mut get = |path: String| -> anyhow::Result<serde_json::Value> {
        let (code, body) = rest_get(socket, &path)?;
        ensure!(code == 200, "GET {path}: {code} {body}");
        let v = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
        out.push((path, body));
        Ok(v)
    };
    for p in [
        "/openapi.json",
        "/v1/health",
        "/v1/ready",
        "/v1/info",
        "/v1/pools",
        "/v1/ops",
        "/v1/types",
        "/v1/snapshots",
        "/v1/backups",
    ] {
        get(p.into())?;
    }
    let names = |v: &serde_json::Value, key: &str| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i[key].as_str().map(String::from))
            .collect()
    };
    let vols = get("/v1/volumes".into())?;
    for n in names(&vols, "name") {
        get(format!("/v1/volumes/{n}"))?;
        get(format!("/v1/volumes/{n}/stats"))?;
    }
    for list in ["/v1/drivers", "/v1/backends", "/v1/nodes", "/v1/backup-targets"] {
        let v = get(list.into())?;
        for n in names(&v, "name") {
            get(format!("{list}/{n}"))?;
        }
    }
    Ok(out)
}

/// The daemon's processes (it, and helpers whose arguments name its data dir): (pid, argv).
pub fn daemon_argvs(d: &Daemon) -> Vec<(u32, String)> {
    let dir = d.dir.display().to_string();
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let argv = String::from_utf8_lossy(&raw).replace('\0', " ");
        if argv.contains(&dir) {
            out.push((pid, argv));
        }
    }
    out
}

/// Where any of `secrets` shows up; empty if nowhere. Also returns how many GETs were swept.
pub fn sweep(d: &Daemon, secrets: &[&str]) -> anyhow::Result<(Vec<String>, usize)> {
    let secrets: Vec<&str> = secrets.iter().copied().filter(|s| s.len() >= 8).collect();
    ensure!(!secrets.is_empty(), "no secret long enough to sweep for");
    let found = |text: &str| secrets.iter().any(|s| text.contains(s));
    let mut leaks = vec![];
    let gets = every_get(&d.socket)?;
    for (path, body) in &gets {
        if found(body) {
            leaks.push(format!("GET {path}"));
        }
    }
    for (pid, argv) in daemon_argvs(d) {
        if found(&argv) {
            leaks.push(format!("argv of pid {pid}: {argv}"));
        }
    }
    let log = d.dir.join("daemon.log");
    for (p, m) in walk(&d.dir) {
        if m.is_file()
            && m.permissions().mode() & 0o004 != 0
            && p != log
            && std::fs::read(&p).is_ok_and(|b| found(&String::from_utf8_lossy(&b)))
        {
            leaks.push(format!("world-readable {}", p.display()));
        }
    }
    if found(&std::fs::read_to_string(&log)?) {
        leaks.push("the daemon log".into());
    }
    Ok((leaks, gets.len()))
}
