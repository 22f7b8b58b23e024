//! Fault injection for crash tests: `ELARA_CRASH_AT=create:after-driver` (a comma-separated list)
//! makes the daemon SIGKILL itself when it reaches that point. Unset in production: a no-op.

use std::sync::OnceLock;

/// Every crash point, in the order an operation reaches them. The crash test iterates this list.
pub const POINTS: &[&str] = &[
    "create:after-intent",
    "create:after-driver",
    "mount:after-intent",
    "mount:after-driver-attach",
    "mount:after-host-attach",
    "unmount:after-intent",
    "unmount:after-host-detach",
    "snapshot:after-intent",
    "snapshot:after-freeze",
    "snapshot:after-driver",
    "delete:after-intent",
    "delete:after-driver",
    "snapshot-delete:after-intent",
    "snapshot-delete:after-driver",
    "restore:after-intent",
    "restore:after-driver",
    "resize:after-intent",
    "resize:after-driver",
    "backup:after-intent",
    "backup:after-snapshot",
    "backup:mid-upload",
    "backup:after-manifest",
    "backup-restore:after-intent",
    "backup-restore:mid-write",
    // Between block collection's mark (what is referenced) and its sweep (the deletes): a test
    // holds a GC here (ELARA_PAUSE_AT) to race a backup against it.
    "gc:after-mark",
];

fn armed() -> &'static Vec<String> {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var("ELARA_CRASH_AT")
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// `ELARA_PAUSE_AT=POINT=FILE`: the first time the daemon reaches POINT it creates
/// `FILE.reached` and waits (at most 5 minutes) until FILE is removed, so a test can change the
/// world at that exact moment (take a backup target away mid-upload). Blocks the calling thread.
fn pause(name: &str) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static PAUSE: OnceLock<Option<(String, std::path::PathBuf)>> = OnceLock::new();
    static DONE: AtomicBool = AtomicBool::new(false);
    let armed = PAUSE.get_or_init(|| {
        let v = std::env::var("ELARA_PAUSE_AT").ok()?;
        let (point, file) = v.split_once('=')?;
        Some((point.to_string(), file.into()))
    });
    let Some((point, file)) = armed else { return };
    if point != name || DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    tracing::warn!(point = name, file = %file.display(), "ELARA_PAUSE_AT: pausing until the file is removed");
    let _ = std::fs::write(file.with_extension("reached"), b"");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while file.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Die here, at once and without cleanup, if this point is armed (or pause, see [`pause`]).
pub fn point(name: &str) {
    debug_assert!(POINTS.contains(&name), "unknown crash point {name}");
    pause(name);
    if armed().iter().any(|p| p == name) {
        tracing::warn!(point = name, "ELARA_CRASH_AT: killing the daemon");
        // SAFETY: kill(2) on our own pid.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
