//! The server goes away under a live mount and comes back: calls fail with EIO within the I/O
//! timeout (never hang), and the same mount works again afterwards, without remounting.
//!
//! Its own test binary: it stops the shared test server (with scripts/services/nfs.sh) and
//! cargo runs test binaries one after another, so no other test of this crate is running then.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Mount, server};

fn nfs_sh(service: &Path, action: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/services/nfs.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(action)
        .arg(service)
        .output()
        .expect("running nfs.sh");
    assert!(
        out.status.success(),
        "nfs.sh {action}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the server again if the test ends (or fails) while it is stopped.
struct Restart<'a>(&'a Path, bool);

impl Drop for Restart<'_> {
    fn drop(&mut self) {
        if self.1 {
            nfs_sh(self.0, "start");
        }
    }
}

#[test]
fn server_outage_fails_fast_and_the_mount_recovers() {
    let Some(srv) = server("outage") else { return };
    let io_timeout = Duration::from_secs(3);
    let slack = Duration::from_secs(4);
    let m = Mount::new(&srv, "outage", &["--io-timeout", "3", "--attr-timeout", "0.5"]);
    fs::write(m.p("before"), b"written before the outage").unwrap();
    fs::create_dir(m.p("dir")).unwrap();
    fs::write(m.p("dir/inner"), b"inner").unwrap();
    let big = common::random_bytes(8 << 20, 11);
    fs::write(m.p("big"), &big).unwrap();
    // A reader with the file open across the outage.
    let mut held = fs::File::open(m.p("big")).unwrap();
    // A writer whose data the server took UNSTABLE but nobody committed yet: the restart gives
    // the server a new write verifier, and the COMMIT at close must write it all again. (A child
    // holds the file: every process this test starts would close a copy of a descriptor of ours,
    // and each close is a flush, which commits.)
    let unstable = common::random_bytes(6 << 20, 12);
    let src = m.disk.with_extension("src");
    fs::write(&src, &unstable).unwrap();
    // (Not a shell with dd: dd's copy of the descriptor closes, and flushes, when dd exits.)
    let holder = "import sys\nf = open(sys.argv[1], 'wb', buffering=0)\nf.write(open(sys.argv[2], 'rb').read())\n\
                  print('written', flush=True)\nsys.stdin.readline()\nf.close()\n";
    let mut writer = Command::new("python3")
        .args(["-c", holder, m.p("unstable").to_str().unwrap(), src.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(writer.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "written\n");
    std::thread::sleep(Duration::from_secs(1)); // the WRITEs are answered, not committed

    let mut restart = Restart(&srv.service, true);
    nfs_sh(&srv.service, "stop");
    std::thread::sleep(Duration::from_millis(600)); // past the attribute cache

    // Every kind of call fails with EIO, each within the timeout (plus slack), none hangs.
    type Probe<'a> = Box<dyn Fn() -> std::io::Result<()> + 'a>;
    let probes: [(&str, Probe); 4] = [
        (
            "read of an unopened file",
            Box::new(|| fs::read(m.p("before")).map(drop)),
        ),
        (
            "stat of a new name",
            Box::new(|| fs::metadata(m.p("never-seen")).map(drop)),
        ),
        ("create", Box::new(|| fs::write(m.p("during"), b"x"))),
        (
            "listing",
            Box::new(|| {
                fs::read_dir(m.p("dir"))
                    .and_then(|d| d.collect::<Result<Vec<_>, _>>())
                    .map(drop)
            }),
        ),
    ];
    for (what, probe) in probes {
        let t = Instant::now();
        let err = probe().expect_err(what);
        let took = t.elapsed();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{what}: {err}");
        assert!(took <= io_timeout + slack, "{what} took {took:?}");
    }
    let t = Instant::now();
    let mut buf = vec![0u8; 4 << 20];
    let err = held.read_exact(&mut buf).expect_err("reading an open file");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(t.elapsed() <= io_timeout + slack, "the read took {:?}", t.elapsed());

    nfs_sh(&srv.service, "start");
    restart.1 = false;

    // The same mount works again: old handles (ganesha's VFS handles survive a restart), new files.
    let deadline = Instant::now() + Duration::from_secs(30);
    let content = loop {
        match fs::read(m.p("before")) {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "the mount did not recover: {e}\n{}", m.log());
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    assert_eq!(content, b"written before the outage");
    assert_eq!(fs::read(m.p("dir/inner")).unwrap(), b"inner");
    fs::write(m.p("after"), b"written after the outage").unwrap();
    assert_eq!(fs::read(m.d("after")).unwrap(), b"written after the outage");
    let mut again = fs::File::open(m.p("big")).unwrap();
    let mut all = Vec::new();
    again.read_to_end(&mut all).unwrap();
    assert!(all == big);
    drop(held);
    // close: COMMIT, a new verifier, the data written again
    writer.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(writer.wait().unwrap().success());
    let _ = fs::remove_file(&src);
    assert!(fs::read(m.d("unstable")).unwrap() == unstable);
    assert!(m.log().contains("connected again"), "{}", m.log());
    assert!(m.log().contains("write verifier changed"), "{}", m.log());
}
