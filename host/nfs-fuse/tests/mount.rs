//! The FUSE mount against the test NFS server (NFS-Ganesha): each test mounts its own directory
//! of the export through the `elara-nfs-fuse` binary and checks what it does both through the
//! mount and on the server's disk (ELARA_TEST_NFS_DIR).

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::time::{Duration, Instant, SystemTime};

use common::{Mount, as_user, errno, mountinfo_entry, random_bytes, server};

macro_rules! srv {
    ($name:expr) => {
        match server($name) {
            Some(s) => s,
            None => return,
        }
    };
}

const MIB: usize = 1 << 20;

#[test]
fn big_random_file_round_trips_and_parallel_readers_agree() {
    let srv = srv!("big_random_file");
    let m = Mount::new(&srv, "big", &[]);
    let data = random_bytes(96 * MIB, 0x5eed);
    let mut f = File::create(m.p("big")).unwrap();
    for chunk in data.chunks(MIB) {
        f.write_all(chunk).unwrap();
    }
    drop(f); // close: written back and committed
    let on_disk = fs::read(m.d("big")).unwrap();
    assert!(on_disk == data, "the server's file differs from what was written");
    assert_eq!(fs::metadata(m.p("big")).unwrap().len(), data.len() as u64);

    // A second mount of the same directory starts with an empty page cache: what it reads comes
    // from the server. Several threads read it at once, in different orders.
    let mut m2 = Mount::at(&srv, m.disk.clone(), m.export.clone(), &[]);
    m2.keep_disk();
    let data = std::sync::Arc::new(data);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (path, data) = (m2.p("big"), data.clone());
            std::thread::spawn(move || {
                let f = File::open(path).unwrap();
                let chunks = data.len() / (4 * MIB);
                let mut buf = vec![0u8; 4 * MIB];
                for i in 0..chunks {
                    // Thread t starts at a different place and wraps around.
                    let c = (i + t * chunks / 4) % chunks;
                    f.read_exact_at(&mut buf, (c * 4 * MIB) as u64).unwrap();
                    assert!(
                        buf[..] == data[c * 4 * MIB..(c + 1) * 4 * MIB],
                        "thread {t}: chunk {c} differs"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut whole = Vec::new();
    File::open(m2.p("big")).unwrap().read_to_end(&mut whole).unwrap();
    assert!(whole == *data, "a sequential read differs");
}

#[test]
fn new_files_belong_to_the_calling_user() {
    let srv = srv!("owner");
    let m = Mount::new(&srv, "owner", &[]);
    // Through the mount: ganesha caches attributes, a chmod behind its back would show late.
    fs::set_permissions(&m.path, fs::Permissions::from_mode(0o777)).unwrap();
    let mp = m.path.display();
    as_user(&format!(
        "cd {mp} && echo hi > f && mkdir d && ln -s f l && mkfifo p && mkdir d/sub && echo x > d/sub/g && test \"$(cat f)\" = hi"
    ));
    for name in ["f", "d", "l", "p", "d/sub", "d/sub/g"] {
        let md = fs::symlink_metadata(m.d(name)).unwrap();
        assert_eq!((md.uid(), md.gid()), (1000, 1000), "{name} on disk");
        let mm = fs::symlink_metadata(m.p(name)).unwrap();
        assert_eq!((mm.uid(), mm.gid()), (1000, 1000), "{name} through the mount");
    }
    assert_eq!(
        fs::symlink_metadata(m.d("p")).unwrap().mode() & libc::S_IFMT,
        libc::S_IFIFO
    );
    assert_eq!(
        fs::metadata(m.d("f")).unwrap().mode() & 0o777,
        0o644,
        "the umask applied"
    );

    // The kernel checks permissions from the attributes: uid 1000 may not write root's 0644 file.
    fs::write(m.p("root-only"), b"root").unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid", "1000", "--regid", "1000", "--clear-groups", "sh", "-c"])
        .arg(format!("echo no >> {mp}/root-only"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    assert_eq!(fs::read(m.d("root-only")).unwrap(), b"root");

    // A set-group-ID directory passes its group (and, to directories, the bit) on.
    fs::create_dir(m.p("sg")).unwrap();
    std::os::unix::fs::chown(m.p("sg"), Some(0), Some(4321)).unwrap();
    fs::set_permissions(m.p("sg"), fs::Permissions::from_mode(0o2777)).unwrap();
    as_user(&format!("cd {mp}/sg && touch file && mkdir dir"));
    assert_eq!(fs::metadata(m.d("sg/file")).unwrap().gid(), 4321);
    let dir = fs::metadata(m.d("sg/dir")).unwrap();
    assert_eq!((dir.uid(), dir.gid()), (1000, 4321));
    assert_ne!(dir.mode() & libc::S_ISGID, 0, "the new directory is set-group-ID too");
}

#[test]
fn chmod_and_chown_reach_the_server() {
    let srv = srv!("chmod_chown");
    let m = Mount::new(&srv, "chmod", &[]);
    fs::write(m.p("f"), b"x").unwrap();
    fs::set_permissions(m.p("f"), fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(m.p("f"), Some(1234), Some(5678)).unwrap();
    let d = fs::metadata(m.d("f")).unwrap();
    assert_eq!((d.mode() & 0o7777, d.uid(), d.gid()), (0o640, 1234, 5678));
    let t = fs::metadata(m.p("f")).unwrap();
    assert_eq!((t.mode() & 0o7777, t.uid(), t.gid()), (0o640, 1234, 5678));
    fs::create_dir(m.p("dir")).unwrap();
    fs::set_permissions(m.p("dir"), fs::Permissions::from_mode(0o1750)).unwrap();
    assert_eq!(fs::metadata(m.d("dir")).unwrap().mode() & 0o7777, 0o1750);
    // Times: utimensat with a given mtime.
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    File::options()
        .write(true)
        .open(m.p("f"))
        .unwrap()
        .set_modified(when)
        .unwrap();
    assert_eq!(fs::metadata(m.d("f")).unwrap().modified().unwrap(), when);
}

#[test]
fn symlinks_and_readlink() {
    let srv = srv!("symlinks");
    let m = Mount::new(&srv, "symlink", &[]);
    fs::write(m.p("target"), b"t").unwrap();
    std::os::unix::fs::symlink("target", m.p("link")).unwrap();
    std::os::unix::fs::symlink("../nowhere/at/all", m.p("dangling")).unwrap();
    assert_eq!(fs::read_link(m.p("link")).unwrap().to_str(), Some("target"));
    assert_eq!(fs::read_link(m.d("link")).unwrap().to_str(), Some("target"));
    assert_eq!(
        fs::read_link(m.d("dangling")).unwrap().to_str(),
        Some("../nowhere/at/all")
    );
    assert_eq!(fs::read(m.p("link")).unwrap(), b"t");
    assert!(fs::symlink_metadata(m.p("link")).unwrap().file_type().is_symlink());
    assert_eq!(errno(fs::read(m.p("dangling"))), libc::ENOENT);
}

#[test]
fn rename_replaces_an_existing_file() {
    let srv = srv!("rename");
    let m = Mount::new(&srv, "rename", &[]);
    fs::write(m.p("a"), b"AAAA").unwrap();
    fs::write(m.p("b"), b"B").unwrap();
    let b_before = fs::metadata(m.p("b")).unwrap(); // the kernel knows b
    fs::rename(m.p("a"), m.p("b")).unwrap();
    assert_eq!(fs::read(m.p("b")).unwrap(), b"AAAA");
    assert_eq!(fs::read(m.d("b")).unwrap(), b"AAAA");
    assert_eq!(errno(fs::metadata(m.p("a"))), libc::ENOENT);
    assert!(!m.d("a").exists());
    assert_ne!(fs::metadata(m.p("b")).unwrap().ino(), b_before.ino());
    // Into another directory, and a directory over an empty one.
    fs::create_dir(m.p("d1")).unwrap();
    fs::create_dir(m.p("d2")).unwrap();
    fs::rename(m.p("b"), m.p("d1/b")).unwrap();
    assert_eq!(fs::read(m.d("d1/b")).unwrap(), b"AAAA");
    fs::rename(m.p("d1"), m.p("d2")).unwrap();
    assert_eq!(fs::read(m.p("d2/b")).unwrap(), b"AAAA");
    assert!(!m.d("d1").exists());
    // renameat2(RENAME_NOREPLACE) refuses an existing target.
    fs::write(m.p("x"), b"x").unwrap();
    fs::write(m.p("y"), b"y").unwrap();
    let (x, y) = (cpath(&m.p("x")), cpath(&m.p("y")));
    // SAFETY: valid paths; AT_FDCWD with absolute paths.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            x.as_ptr(),
            libc::AT_FDCWD,
            y.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    assert_eq!(rc, -1);
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EEXIST));
    assert_eq!(fs::read(m.d("y")).unwrap(), b"y");
}

fn cpath(p: &std::path::Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

#[test]
fn truncate_to_smaller_and_larger() {
    let srv = srv!("truncate");
    let m = Mount::new(&srv, "truncate", &[]);
    let data = random_bytes(100_000, 7);
    fs::write(m.p("f"), &data).unwrap();
    let f = OpenOptions::new().write(true).open(m.p("f")).unwrap();
    f.set_len(1000).unwrap();
    assert_eq!(fs::metadata(m.d("f")).unwrap().len(), 1000);
    assert_eq!(fs::read(m.p("f")).unwrap(), &data[..1000]);
    f.set_len(50_000).unwrap();
    drop(f);
    let mut want = data[..1000].to_vec();
    want.resize(50_000, 0);
    assert_eq!(fs::read(m.d("f")).unwrap(), want);
    assert_eq!(fs::read(m.p("f")).unwrap(), want);
    // truncate(2) by path, and O_TRUNC.
    let c = cpath(&m.p("f"));
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 10) }, 0);
    assert_eq!(fs::read(m.d("f")).unwrap(), &want[..10]);
    File::create(m.p("f")).unwrap();
    assert_eq!(fs::metadata(m.d("f")).unwrap().len(), 0);
}

#[test]
fn hard_links_share_the_file() {
    let srv = srv!("hard_links");
    let m = Mount::new(&srv, "link", &[]);
    fs::write(m.p("a"), b"one").unwrap();
    fs::hard_link(m.p("a"), m.p("b")).unwrap();
    let (a, b) = (fs::metadata(m.p("a")).unwrap(), fs::metadata(m.p("b")).unwrap());
    assert_eq!(a.ino(), b.ino());
    assert_eq!(b.nlink(), 2);
    assert_eq!(fs::metadata(m.d("a")).unwrap().nlink(), 2);
    assert_eq!(
        fs::metadata(m.d("a")).unwrap().ino(),
        fs::metadata(m.d("b")).unwrap().ino()
    );
    fs::write(m.p("b"), b"two").unwrap();
    assert_eq!(fs::read(m.p("a")).unwrap(), b"two");
    fs::remove_file(m.p("a")).unwrap();
    assert_eq!(fs::metadata(m.d("b")).unwrap().nlink(), 1);
    assert_eq!(fs::read(m.p("b")).unwrap(), b"two");
}

#[test]
fn directories_mkdir_rmdir_and_listing() {
    let srv = srv!("directories");
    let m = Mount::new(&srv, "dirs", &[]);
    fs::create_dir(m.p("d")).unwrap();
    assert!(m.d("d").is_dir());
    assert_eq!(errno(fs::create_dir(m.p("d"))), libc::EEXIST);
    fs::write(m.p("d/f"), b"x").unwrap();
    assert_eq!(errno(fs::remove_dir(m.p("d"))), libc::ENOTEMPTY);
    assert_eq!(errno(fs::remove_dir(m.p("d/f"))), libc::ENOTDIR);
    assert_eq!(errno(fs::remove_file(m.p("d/nope"))), libc::ENOENT);
    fs::remove_file(m.p("d/f")).unwrap();
    fs::remove_dir(m.p("d")).unwrap();
    assert!(!m.d("d").exists());
    assert_eq!(errno(fs::create_dir(m.p(&"n".repeat(300)))), libc::ENAMETOOLONG);

    // A listing longer than one READDIRPLUS (and than one FUSE reply) is whole, with types.
    fs::create_dir(m.d("many")).unwrap();
    for i in 0..700 {
        let p = m.d(&format!("many/entry-with-a-longish-name-{i:04}"));
        if i % 7 == 0 {
            fs::create_dir(p).unwrap()
        } else {
            fs::write(p, b"").unwrap()
        }
    }
    let mut names: Vec<(String, bool)> = fs::read_dir(m.p("many"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().into_string().unwrap(), e.file_type().unwrap().is_dir())
        })
        .collect();
    names.sort();
    let mut want: Vec<(String, bool)> = (0..700)
        .map(|i| (format!("entry-with-a-longish-name-{i:04}"), i % 7 == 0))
        .collect();
    want.sort();
    assert_eq!(names, want);
    // ls -la shows . and .. too
    let out = std::process::Command::new("ls")
        .arg("-a")
        .arg(m.p("many"))
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.lines().any(|l| l == ".") && listed.lines().any(|l| l == ".."),
        "{listed}"
    );
}

#[test]
fn fsync_makes_data_durable_before_close() {
    let srv = srv!("fsync");
    let m = Mount::new(&srv, "fsync", &[]);
    let data = random_bytes(3 * MIB + 123, 99);
    let mut f = File::create(m.p("f")).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    // Still open: the server has it all.
    assert!(fs::read(m.d("f")).unwrap() == data);
    f.write_all(b"tail").unwrap();
    f.sync_data().unwrap();
    assert_eq!(fs::metadata(m.d("f")).unwrap().len(), data.len() as u64 + 4);
    // O_SYNC writes are on the server when write(2) returns.
    let mut s = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_SYNC)
        .open(m.p("s"))
        .unwrap();
    s.write_all(b"synchronous").unwrap();
    assert_eq!(fs::read(m.d("s")).unwrap(), b"synchronous");
}

use std::os::unix::fs::OpenOptionsExt;

#[test]
fn another_clients_change_is_seen_at_the_next_open() {
    let srv = srv!("close_to_open");
    let a = Mount::new(&srv, "cto", &["--attr-timeout", "30"]);
    let mut b = Mount::at(&srv, a.disk.clone(), a.export.clone(), &[]);
    b.keep_disk();
    fs::write(a.p("f"), b"one").unwrap();
    assert_eq!(fs::read(a.p("f")).unwrap(), b"one"); // in a's page cache now
    // b (another client of the server) rewrites it, same size, then longer.
    fs::write(b.p("f"), b"two").unwrap();
    assert_eq!(
        fs::read(a.p("f")).unwrap(),
        b"two",
        "a reopen must see the other client's data"
    );
    fs::write(b.p("f"), b"three, longer").unwrap();
    // cat: glibc's stat does not force a GETATTR (Rust's statx asks for more and does), so this
    // checks that the open itself dropped the size the kernel cached for 30 s.
    let cat = std::process::Command::new("cat").arg(a.p("f")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "three, longer");
    assert_eq!(fs::read(a.p("f")).unwrap(), b"three, longer");
    fs::write(b.p("f"), b"4").unwrap();
    let cat = std::process::Command::new("cat").arg(a.p("f")).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&cat.stdout),
        "4",
        "a shorter file is seen shorter"
    );
    // A file kept open keeps its view until reopened (the open-time check is what counts), and
    // an unchanged file keeps its cache (no error either way).
    let mut keep = File::open(a.p("f")).unwrap();
    let mut s = String::new();
    keep.read_to_string(&mut s).unwrap();
    assert_eq!(s, "4");
}

#[test]
fn a_change_on_the_servers_disk_is_seen_after_reopen() {
    let srv = srv!("disk_change");
    let m = Mount::new(&srv, "disk", &[]);
    fs::write(m.p("f"), b"before").unwrap();
    assert_eq!(fs::read(m.p("f")).unwrap(), b"before");
    fs::write(m.d("f"), b"after, and longer").unwrap();
    // Ganesha caches attributes (its mdcache, 60 s by default) and a change behind its back is
    // invisible to every client until then; each reopen here asks the server again.
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let now = fs::read(m.p("f")).unwrap();
        if now == b"after, and longer" {
            break;
        }
        assert!(
            now == b"before" || now.starts_with(b"after"),
            "{:?}",
            String::from_utf8_lossy(&now)
        );
        assert!(Instant::now() < deadline, "the change never showed");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn statfs_reports_the_exports_file_system() {
    let srv = srv!("statfs");
    let m = Mount::new(&srv, "statfs", &[]);
    let st = |p: &std::path::Path| {
        let c = cpath(p);
        // SAFETY: a valid path and a zeroed out-struct.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
        s
    };
    let (a, b) = (st(&m.path), st(&m.disk));
    let total = |s: &libc::statvfs| s.f_blocks as f64 * s.f_frsize as f64;
    let free = |s: &libc::statvfs| s.f_bavail as f64 * s.f_frsize as f64;
    assert!(
        (total(&a) - total(&b)).abs() <= total(&b) * 0.01,
        "size {} vs {}",
        total(&a),
        total(&b)
    );
    assert!(
        (free(&a) - free(&b)).abs() <= total(&b) * 0.02,
        "available {} vs {}",
        free(&a),
        free(&b)
    );
    assert!(a.f_files > 0 && a.f_namemax >= 255);
}

#[test]
fn sparse_file_past_4_gib() {
    let srv = srv!("sparse");
    let m = Mount::new(&srv, "sparse", &[]);
    let at = 5u64 << 30;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.p("s"))
        .unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(b"past four GiB").unwrap();
    f.write_all_at(b"low", 4096).unwrap();
    drop(f);
    assert_eq!(fs::metadata(m.d("s")).unwrap().len(), at + 13);
    assert_eq!(fs::metadata(m.p("s")).unwrap().len(), at + 13);
    let f = File::open(m.p("s")).unwrap();
    let mut buf = [0u8; 13];
    f.read_exact_at(&mut buf, at).unwrap();
    assert_eq!(&buf, b"past four GiB");
    let mut hole = vec![1u8; 8192];
    f.read_exact_at(&mut hole, 3 << 30).unwrap();
    assert!(hole.iter().all(|&b| b == 0));
    let disk = File::open(m.d("s")).unwrap();
    disk.read_exact_at(&mut buf, at).unwrap();
    assert_eq!(&buf, b"past four GiB");
    let mut low = [0u8; 3];
    disk.read_exact_at(&mut low, 4096).unwrap();
    assert_eq!(&low, b"low");
    assert!(
        fs::metadata(m.d("s")).unwrap().blocks() * 512 < 16 << 20,
        "the file stayed sparse"
    );
}

#[test]
fn read_only_mount_refuses_writes() {
    let srv = srv!("read_only");
    let rw = Mount::new(&srv, "ro", &[]);
    fs::write(rw.d("f"), b"data").unwrap();
    fs::create_dir(rw.d("dir")).unwrap();
    let mut ro = Mount::at(&srv, rw.disk.clone(), rw.export.clone(), &["--ro"]);
    ro.keep_disk();
    let opts = mountinfo_entry(&ro.path).unwrap();
    assert!(
        opts.options.starts_with("ro") || opts.options.contains(",ro"),
        "{opts:?}"
    );
    assert_eq!(fs::read(ro.p("f")).unwrap(), b"data");
    assert_eq!(errno(File::create(ro.p("new"))), libc::EROFS);
    assert_eq!(errno(OpenOptions::new().write(true).open(ro.p("f"))), libc::EROFS);
    assert_eq!(errno(fs::create_dir(ro.p("d2"))), libc::EROFS);
    assert_eq!(errno(fs::remove_file(ro.p("f"))), libc::EROFS);
    assert_eq!(errno(fs::remove_dir(ro.p("dir"))), libc::EROFS);
    assert_eq!(errno(fs::rename(ro.p("f"), ro.p("g"))), libc::EROFS);
    assert_eq!(
        errno(fs::set_permissions(ro.p("f"), fs::Permissions::from_mode(0o600))),
        libc::EROFS
    );
    assert_eq!(errno(std::os::unix::fs::symlink("f", ro.p("l"))), libc::EROFS);
    assert_eq!(fs::read(rw.d("f")).unwrap(), b"data");
    assert!(!rw.d("new").exists());
}

#[test]
fn an_unlinked_open_file_stays_usable() {
    let srv = srv!("unlink_open");
    let m = Mount::new(&srv, "unlinked", &[]);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.p("tmp"))
        .unwrap();
    f.write_all(b"scratch").unwrap();
    fs::remove_file(m.p("tmp")).unwrap();
    assert_eq!(errno(fs::metadata(m.p("tmp"))), libc::ENOENT);
    assert!(!m.d("tmp").exists());
    f.write_all(b" data").unwrap();
    f.sync_all().unwrap();
    let mut s = String::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "scratch data");
    // Replacing an open file by rename keeps the old one readable as well.
    fs::write(m.p("cfg"), b"old").unwrap();
    let old = File::open(m.p("cfg")).unwrap();
    fs::write(m.p("cfg.new"), b"new").unwrap();
    fs::rename(m.p("cfg.new"), m.p("cfg")).unwrap();
    let mut s = String::new();
    (&old).read_to_string(&mut s).unwrap();
    assert_eq!(s, "old");
    assert_eq!(fs::read(m.p("cfg")).unwrap(), b"new");
    drop(f);
    drop(old);
    // The hidden names go with the last close.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<_> = fs::read_dir(&m.disk).unwrap().map(|e| e.unwrap().file_name()).collect();
        if left.iter().all(|n| n == "cfg") {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn parallel_writers_and_overlapping_rewrites() {
    let srv = srv!("parallel_writes");
    let m = Mount::new(&srv, "pwrite", &[]);
    let size = 32 * MIB;
    let data = std::sync::Arc::new(random_bytes(size, 3));
    let f = std::sync::Arc::new(File::create(m.p("f")).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (f, data) = (f.clone(), data.clone());
            std::thread::spawn(move || {
                let part = size / 4;
                for off in (t * part..(t + 1) * part).step_by(256 << 10) {
                    f.write_all_at(&data[off..off + (256 << 10)], off as u64).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(f);
    assert!(fs::read(m.d("f")).unwrap() == *data);
    // The same region written again and again right away: the last write wins on the server.
    let mut f = OpenOptions::new().write(true).open(m.p("f")).unwrap();
    let mut want = (*data).clone();
    for round in 0..20u8 {
        let block = vec![round; 1 << 20];
        f.write_all_at(&block, 1 << 20).unwrap();
        want[1 << 20..2 << 20].copy_from_slice(&block);
        f.write_all_at(&[round ^ 0xff; 100], (1 << 20) + 5000).unwrap();
        want[(1 << 20) + 5000..(1 << 20) + 5100].fill(round ^ 0xff);
    }
    f.flush().unwrap();
    drop(f);
    assert!(
        fs::read(m.d("f")).unwrap() == want,
        "overlapping writes landed out of order"
    );
    // Appends grow the file as seen through the mount while they are under way.
    let mut a = OpenOptions::new().append(true).open(m.p("f")).unwrap();
    for k in 1..=8 {
        a.write_all(&[7u8; 300_000]).unwrap();
        assert_eq!(a.metadata().unwrap().len(), (size + k * 300_000) as u64);
    }
    drop(a);
    assert_eq!(fs::metadata(m.d("f")).unwrap().len(), (size + 8 * 300_000) as u64);
}

#[test]
fn the_helper_ends_on_sigterm_and_on_unmount() {
    let srv = srv!("lifecycle");
    let mut m = Mount::new(&srv, "life", &[]);
    fs::write(m.p("f"), b"x").unwrap();
    let status = m.stop();
    assert!(status.success(), "{status}\n{}", m.log());
    assert!(m.log().contains("unmounted"), "{}", m.log());

    let mut m2 = Mount::at(&srv, m.disk.clone(), m.export.clone(), &[]);
    assert_eq!(fs::read(m2.p("f")).unwrap(), b"x");
    let c = cpath(&m2.path);
    // SAFETY: a valid path.
    assert_eq!(
        unsafe { libc::umount2(c.as_ptr(), 0) },
        0,
        "{}",
        std::io::Error::last_os_error()
    );
    let status = m2
        .wait_exit(Duration::from_secs(10))
        .expect("the helper exits after an unmount");
    assert!(status.success(), "{status}\n{}", m2.log());
}

#[test]
fn sigterm_while_busy_detaches_and_serves_open_files_to_the_end() {
    let srv = srv!("busy_sigterm");
    let mut m = Mount::new(&srv, "busy", &[]);
    fs::write(m.p("f"), b"still readable").unwrap();
    let mut f = OpenOptions::new().read(true).write(true).open(m.p("f")).unwrap();
    m.terminate();
    let deadline = Instant::now() + Duration::from_secs(10);
    while mountinfo_entry(&m.path).is_some() {
        assert!(Instant::now() < deadline, "still mounted after SIGTERM:\n{}", m.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(m.running(), "the helper left while a file was open:\n{}", m.log());
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still readable");
    f.write_all(b", and writable").unwrap();
    drop(f); // the last user: the helper ends
    let status = m
        .wait_exit(Duration::from_secs(10))
        .expect("the helper exits after the last close");
    assert!(status.success(), "{status}\n{}", m.log());
    assert_eq!(fs::read(m.d("f")).unwrap(), b"still readable, and writable");
}

#[test]
fn a_new_helper_replaces_the_dead_mount_of_a_killed_one() {
    let srv = srv!("dead_mount");
    let mut m = Mount::new(&srv, "dead", &[]);
    fs::write(m.p("f"), b"survives").unwrap();
    m.kill_and_restart();
    assert_eq!(fs::read(m.p("f")).unwrap(), b"survives");
    assert!(m.log().contains("dead mount"), "{}", m.log());
}

#[test]
fn a_failed_mount_names_the_server_and_the_cause() {
    let srv = srv!("mount_failure");
    let tmp = tempfile::tempdir().unwrap();
    let run = |export: &str, mount_port: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_elara-nfs-fuse"))
            .args([&srv.server, export])
            .arg(tmp.path())
            .args(["--mount-port", mount_port, "--io-timeout", "5"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(mountinfo_entry(tmp.path()).is_none(), "mounted despite the failure");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let host = srv.server.rsplit_once(':').unwrap().0;
    let missing = format!("{}/no-such-directory-here", srv.export);
    let err = run(&missing, &srv.mount_port);
    assert!(
        err.contains(&format!("{host}:{missing}")) && err.contains("MOUNT"),
        "{err}"
    );
    let err = run(&srv.export, "1");
    assert!(err.contains(host) && err.contains("refused"), "{err}");
}
