//! Docker harness: a private `dockerd` per test ([`Engine`], started and stopped by
//! `scripts/services/docker.sh`) and a uniquely named legacy volume plugin ([`Plugin`]) that points
//! that engine at one Elara daemon.
//!
//! How each engine finds its own Elara: dockerd looks a legacy plugin NAME up as
//! `/run/docker/plugins/NAME.sock` or as a spec file `/etc/docker/plugins/NAME.spec` holding
//! `unix:///path/to/socket`. Those directories are fixed and shared by every dockerd on the
//! machine, so every test's Elara serves its plugin socket in a directory of its own
//! (`--plugin-dir`) and gets a spec file under a unique name `elara-t<pid>-<n>`; the test then
//! says `docker volume create -d elara-t<pid>-<n>`. The name `elara` of a real install is never
//! written, shadowed or asked for. Spec files are removed on drop, and stale ones left by a killed
//! test run (the test process named in them is gone) are swept when a new [`Plugin`] is made. Every dockerd scans all
//! spec files for `docker volume ls`, so tests filter listings by driver name.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::{repo_root, work_dir};

/// The image `scripts/services/docker.sh` imports: busybox-static with every applet in /bin.
pub const IMAGE: &str = "elara-test/busybox";

/// Where dockerd reads legacy plugin spec files.
pub const SPEC_DIR: &str = "/etc/docker/plugins";

/// A private dockerd (socket, data root and exec root in its own directory).
pub struct Engine {
    pub dir: PathBuf,
    /// `unix://DIR/docker.sock`.
    pub host: String,
    _tmp: tempfile::TempDir,
}

impl Engine {
    /// Start an engine with extra dockerd flags (e.g. `--live-restore`) and wait until it answers.
    pub fn start(dockerd_args: &[&str]) -> anyhow::Result<Engine> {
        let tmp = tempfile::Builder::new().prefix("docker-").tempdir_in(work_dir())?;
        let dir = tmp.path().to_path_buf();
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/services/docker.sh"))
            .arg("start")
            .arg(&dir)
            .env("DOCKERD_ARGS", dockerd_args.join(" "))
            .output()
            .context("running scripts/services/docker.sh")?;
        if !out.status.success() {
            bail!(
                "docker.sh start failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let host = stdout
            .lines()
            .find_map(|l| l.strip_prefix("DOCKER_HOST="))
            .context("docker.sh start printed no DOCKER_HOST")?
            .to_string();
        Ok(Engine { dir, host, _tmp: tmp })
    }

    fn script(&self, action: &str) -> anyhow::Result<()> {
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/services/docker.sh"))
            .arg(action)
            .arg(&self.dir)
            .output()?;
        if !out.status.success() {
            bail!(
                "docker.sh {action} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Stop dockerd (SIGTERM) and start it again; returns once it answers. With `--live-restore`
    /// running containers keep running; without it dockerd stops them on the way down.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.script("restart")
    }

    /// SIGKILL dockerd (a crash). The containers' shims live on; [`Engine::restart`] starts it again.
    pub fn crash(&self) -> anyhow::Result<()> {
        self.script("kill")
    }

    /// Run `docker ARGS...` against this engine.
    pub fn docker(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(Command::new("docker")
            .env("DOCKER_HOST", &self.host)
            .args(args)
            .output()?)
    }

    /// Run docker and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let o = self.docker(args)?;
        if !o.status.success() {
            bail!(
                "`docker {}` failed: {}{}\n{}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr),
                String::from_utf8_lossy(&o.stdout),
                self.log_tail()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Run docker expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> anyhow::Result<String> {
        let o = self.docker(args)?;
        if o.status.success() {
            bail!(
                "`docker {}` succeeded but should have failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&o.stderr).into_owned())
    }

    /// Run docker and parse its stdout as JSON (`inspect`).
    pub fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let out = self.ok(args)?;
        serde_json::from_str(&out).with_context(|| format!("parsing output of `docker {}`: {out}", args.join(" ")))
    }

    /// The last lines of dockerd's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| !l.contains("module=grpc")).collect();
        format!(
            "--- dockerd.log (tail) ---\n{}",
            lines[lines.len().saturating_sub(25)..].join("\n")
        )
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Containers go first (their volumes are unmounted through the plugin), then dockerd.
        if let Err(e) = self.script("stop") {
            eprintln!("stopping the test dockerd in {}: {e}", self.dir.display());
        }
    }
}

/// A legacy plugin registration: a unique name, the directory Elara serves `elara.sock` in
/// (pass it as [`crate::DaemonOpts::plugin_dir`]) and the spec file that tells dockerd about it.
pub struct Plugin {
    pub name: String,
    pub dir: PathBuf,
    spec: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Plugin {
    pub fn new() -> anyhow::Result<Plugin> {
        sweep_stale_specs();
        let tmp = tempfile::Builder::new().prefix("plugin-").tempdir_in(work_dir())?;
        let dir = tmp.path().to_path_buf();
        let name = crate::unique("elara-t");
        std::fs::create_dir_all(SPEC_DIR).with_context(|| format!("creating {SPEC_DIR}"))?;
        let spec = Path::new(SPEC_DIR).join(format!("{name}.spec"));
        std::fs::write(&spec, format!("unix://{}\n", dir.join("elara.sock").display()))
            .with_context(|| format!("writing {}", spec.display()))?;
        Ok(Plugin {
            name,
            dir,
            spec,
            _tmp: tmp,
        })
    }

    /// The plugin socket Elara serves.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("elara.sock")
    }

    /// One call of the plugin protocol, as dockerd makes it: `POST /METHOD` with a JSON body.
    /// Returns the JSON reply.
    pub fn call(&self, method: &str, body: &Value) -> anyhow::Result<Value> {
        plugin_call(&self.socket(), method, body)
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.spec);
    }
}

/// Remove test spec files (`elara-t-<pid>-<n>.spec`) whose test process is gone.
fn sweep_stale_specs() {
    let Ok(entries) = std::fs::read_dir(SPEC_DIR) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix("elara-t-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if name.ends_with(".spec") && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// `POST /METHOD` on a plugin socket with dockerd's Accept header; the reply body as JSON.
pub fn plugin_call(socket: &Path, method: &str, body: &Value) -> anyhow::Result<Value> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let body = body.to_string();
    // One write: a handler that ignores the body may answer and close before reading it.
    let request = format!(
        "POST /{method} HTTP/1.1\r\nHost: plugin\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let (head, payload) = reply
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP reply to {method}: {reply:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{method}: {head}\n{payload}");
    }
    serde_json::from_str(payload).with_context(|| format!("{method} replied {payload:?}"))
}
