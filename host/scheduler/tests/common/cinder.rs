//! Running Cinder's real scheduler (tests/scheduler/cinder_compare.py) from Rust tests and benches.

#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

/// The harness script (in the repository's tests/scheduler/).
pub fn harness() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/scheduler/cinder_compare.py")
}

/// The venv python from `ELARA_CINDER_PY`. When it is not set: `None`, after saying on the terminal that the
/// comparison with Cinder is skipped and how to get the venv — unless `ELARA_REQUIRE_CINDER=1`, then it panics.
pub fn python(what: &str) -> Option<PathBuf> {
    if let Some(py) = std::env::var_os("ELARA_CINDER_PY").filter(|p| !p.is_empty()) {
        let py = PathBuf::from(py);
        assert!(
            py.exists(),
            "ELARA_CINDER_PY={} does not exist; create the venv with `scripts/scheduler-cinder-venv.sh`",
            py.display()
        );
        return Some(py);
    }
    let why = format!(
        "SKIPPED {what}: ELARA_CINDER_PY is not set, so Cinder's real scheduler cannot be run to compare with. \
         Set it with `export ELARA_CINDER_PY=$(scripts/scheduler-cinder-venv.sh)` (scripts/test.sh does)."
    );
    if std::env::var("ELARA_REQUIRE_CINDER").as_deref() == Ok("1") {
        panic!("ELARA_REQUIRE_CINDER=1 but {why}");
    }
    // Straight to the process's stderr: libtest captures `eprintln!` of passing tests, and a skip must be seen.
    let _ = writeln!(std::io::stderr(), "\n{why}");
    None
}

/// Runs the harness with `input` on stdin and returns its JSON answer.
pub fn run(python: &PathBuf, args: &[&str], input: &Value) -> Value {
    let mut child = Command::new(python)
        .arg(harness())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let body = serde_json::to_vec(input).expect("serialise cases");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(&body));
    let out = child.wait_with_output().expect("harness output");
    writer
        .join()
        .expect("writer thread")
        .expect("write cases to the harness");
    assert!(
        out.status.success(),
        "cinder_compare.py failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "harness printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
