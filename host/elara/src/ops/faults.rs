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
];

fn armed() -> &'static Vec<String> {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var("ELARA_CRASH_AT")
            .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    })
}

/// Die here, at once and without cleanup, if this point is armed.
pub fn point(name: &str) {
    debug_assert!(POINTS.contains(&name), "unknown crash point {name}");
    if armed().iter().any(|p| p == name) {
        tracing::warn!(point = name, "ELARA_CRASH_AT: killing the daemon");
        // SAFETY: kill(2) on our own pid.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
