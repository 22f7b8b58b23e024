//! What the tests share: the test NFS server's coordinates, a mount served by the
//! `elara-nfs-fuse` binary in a child process (unmounted by its guard, also when a test fails),
//! and small helpers.

#![allow(dead_code)]

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The test NFS server (scripts/services/nfs.sh prints these variables).
pub struct Server {
    /// host:port of NFS.
    pub server: String,
    pub mount_port: String,
    /// The MOUNT path of the export.
    pub export: String,
    /// The exported directory on this machine's disk.
    pub dir: PathBuf,
    /// The service directory (for nfs.sh stop/start).
    pub service: PathBuf,
}

/// The server from the environment, or `None` after printing why the test is skipped.
pub fn server(test: &str) -> Option<Server> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (Some(server), Some(mount_port), Some(export), Some(dir), Some(service)) = (
        var("ELARA_TEST_NFS_SERVER"),
        var("ELARA_TEST_NFS_MOUNT_PORT"),
        var("ELARA_TEST_NFS_EXPORT"),
        var("ELARA_TEST_NFS_DIR"),
        var("ELARA_TEST_NFS_SERVICE"),
    ) else {
        println!(
            "SKIP {test}: no test NFS server; start one with `bash scripts/services/nfs.sh start .work/nfs` \
             and export the ELARA_TEST_NFS_* lines it prints"
        );
        return None;
    };
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/fuse").exists() {
        println!("SKIP {test}: mounting FUSE needs root and /dev/fuse");
        return None;
    }
    Some(Server {
        server,
        mount_port,
        export,
        dir: dir.into(),
        service: service.into(),
    })
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A mounted subdirectory of the export, served by a helper process.
pub struct Mount {
    /// Where it is mounted.
    pub path: PathBuf,
    /// The same directory on the server's disk.
    pub disk: PathBuf,
    /// Its MOUNT path and the source the mount shows.
    pub export: String,
    pub source: String,
    child: Option<Child>,
    log: PathBuf,
    _tmp: tempfile::TempDir,
    keep_disk: bool,
    /// How the helper was started (server, MOUNT port, extra arguments).
    server: String,
    mount_port: String,
    args: Vec<String>,
}

impl Mount {
    /// Make a fresh directory for `test` on the export and mount it with `args` added.
    pub fn new(srv: &Server, test: &str, args: &[&str]) -> Mount {
        let name = format!(
            "nfs-fuse-{test}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let disk = srv.dir.join(&name);
        let _ = std::fs::remove_dir_all(&disk);
        std::fs::create_dir_all(&disk).expect("making the test directory on the export");
        let export = format!("{}/{name}", srv.export.trim_end_matches('/'));
        Mount::at(srv, disk, export, args)
    }

    /// Mount `export` (whose directory on disk is `disk`) again, e.g. read-only.
    pub fn at(srv: &Server, disk: PathBuf, export: String, args: &[&str]) -> Mount {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        let log = tmp.path().join("helper.log");
        let host = srv.server.rsplit_once(':').map_or(srv.server.as_str(), |(h, _)| h);
        let source = format!("{host}:{export}");
        let mut m = Mount {
            path,
            disk,
            export,
            source,
            child: None,
            log,
            _tmp: tmp,
            keep_disk: false,
            server: srv.server.clone(),
            mount_port: srv.mount_port.clone(),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        m.spawn(false);
        m
    }

    /// Start the helper and wait for its mount.
    fn spawn(&mut self, replacing: bool) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_elara-nfs-fuse"))
            .arg(&self.server)
            .arg(&self.export)
            .arg(&self.path)
            .args(["--mount-port", &self.mount_port])
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("NFS_FUSE_TEST_LOG").unwrap_or_else(|_| "info,elara_nfs_fuse=debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting elara-nfs-fuse");
        self.child = Some(child);
        self.wait_mounted(Duration::from_secs(30), replacing);
    }

    /// Kill the helper with SIGKILL (it leaves a dead mount behind) and start a new one at the
    /// same mount point.
    pub fn kill_and_restart(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
        let err = std::fs::metadata(&self.path).expect_err("a dead mount");
        assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
        self.spawn(true);
    }

    /// Wait until the mount shows in mountinfo (the helper's readiness signal).
    /// With `replacing`, a mount is there already (dead): wait until one answers.
    fn wait_mounted(&mut self, limit: Duration, replacing: bool) {
        let deadline = Instant::now() + limit;
        loop {
            let answers = || std::fs::metadata(&self.path).is_ok();
            if let Some(entry) = mountinfo_entry(&self.path).filter(|_| !replacing || answers()) {
                assert_eq!(entry.fs_type, "fuse.elara-nfs", "{entry:?}");
                assert_eq!(entry.source, self.source, "{entry:?}");
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("elara-nfs-fuse exited ({status}) before mounting:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "no mount at {} after {limit:?}:\n{}",
                self.path.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    pub fn d(&self, rel: &str) -> PathBuf {
        self.disk.join(rel)
    }

    /// Stop the helper with SIGTERM and return its exit status; the mount must be gone.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = wait_timeout(&mut child, Duration::from_secs(20)).unwrap_or_else(|| {
            let _ = child.kill();
            panic!("elara-nfs-fuse ignored SIGTERM for 20 s:\n{}", self.log())
        });
        assert!(
            mountinfo_entry(&self.path).is_none(),
            "still mounted after the helper exited"
        );
        status
    }

    /// Send SIGTERM to the helper without waiting.
    pub fn terminate(&self) {
        if let Some(c) = &self.child {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
    }

    /// Whether the helper still runs.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Wait for the helper to exit by itself (after an unmount from outside).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let st = wait_timeout(child, limit);
        if st.is_some() {
            self.child = None;
        }
        st
    }

    /// Keep the directory on the server's disk (it is handed to another mount).
    pub fn keep_disk(&mut self) {
        self.keep_disk = true;
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- elara-nfs-fuse log ({}) ---\n{}", self.path.display(), self.log());
        }
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            if wait_timeout(&mut child, Duration::from_secs(20)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if mountinfo_entry(&self.path).is_some() {
            let c = std::ffi::CString::new(self.path.as_os_str().as_bytes()).unwrap();
            // SAFETY: a valid path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        if !self.keep_disk {
            let _ = std::fs::remove_dir_all(&self.disk);
        }
    }
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Debug)]
pub struct MountInfo {
    pub fs_type: String,
    pub source: String,
    pub options: String,
}

/// The newest mountinfo entry at `path`.
pub fn mountinfo_entry(path: &Path) -> Option<MountInfo> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy().replace(' ', "\\040");
    info.lines().rev().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let point = left.split(' ').nth(4)?;
        if point != want {
            return None;
        }
        let mut r = right.split(' ');
        Some(MountInfo {
            fs_type: r.next()?.to_string(),
            source: r.next()?.to_string(),
            options: r.next().unwrap_or("").to_string(),
        })
    })
}

/// `n` pseudo-random bytes (xorshift64*, seeded).
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Run `script` with `sh -c` as uid/gid 1000 (no supplementary groups); panics unless it
/// succeeds.
pub fn as_user(script: &str) {
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "1000",
            "--regid",
            "1000",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .output()
        .expect("running setpriv (util-linux)");
    assert!(
        out.status.success(),
        "as uid 1000: {script}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The errno of an I/O result's error.
pub fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("expected an error").raw_os_error().expect("an OS error")
}
