//! A driver's paths are opened once and used by fd. The attack: while a volume is mounted and
//! unmounted again and again, its image file in the pool dir is swapped, as fast as renames go,
//! with a symlink to a host file (here a victim ext4 image outside the pool). A host that checks
//! the path and then hands its *name* to `losetup` sooner or later loop-mounts the victim; a host
//! that opens it beneath the pool dir without following symlinks and configures the loop device
//! on that fd mounts the real image or refuses, never the victim.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use elara_tests::*;

fn swapped_image_race(store: StoreKind) -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let d = Daemon::start(DaemonOpts::new(store))?;
    d.ok(&["volume", "create", "legit", "--size", "64M"])?;
    let mp = PathBuf::from(d.ok(&["volume", "mount", "legit"])?.trim());
    std::fs::write(mp.join("whose"), b"legit")?;
    let att = d.json(&["volume", "inspect", "legit"])?["attachments"][0].clone();
    let image = PathBuf::from(att["host"]["backing_file"].as_str().context("backing_file")?);
    d.ok(&["volume", "unmount", "legit"])?;
    ensure!(
        image.starts_with(d.pool_dir("local")),
        "the image {} is not in the pool dir",
        image.display()
    );

    // The victim: a host file outside the pool, an ext4 image saying so.
    let victim = d.dir.join("victim.img");
    std::fs::File::create(&victim)?.set_len(64 << 20)?;
    ensure!(
        std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&victim)
            .status()?
            .success(),
        "mkfs victim"
    );
    let vm = d.dir.join("victim-mnt");
    std::fs::create_dir_all(&vm)?;
    ensure!(
        std::process::Command::new("mount")
            .arg(&victim)
            .arg(&vm)
            .status()?
            .success(),
        "mount victim"
    );
    std::fs::write(vm.join("whose"), b"victim")?;
    ensure!(
        std::process::Command::new("umount").arg(&vm).status()?.success(),
        "umount victim"
    );

    // The swapper: the real image and a symlink to the victim take turns at the image's name.
    let real = image.with_extension("real");
    std::fs::hard_link(&image, &real)?;
    let link = image.with_extension("link");
    std::os::unix::fs::symlink(&victim, &link)?;
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, image, real, link) = (stop.clone(), image.clone(), real.clone(), link.clone());
        std::thread::spawn(move || {
            let tmp = image.with_extension("tmp");
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // link → image, then the real file back (via a second hard link, so `real` stays).
                let _ = std::fs::remove_file(&tmp);
                let _ = std::os::unix::fs::symlink(std::fs::read_link(&link).unwrap(), &tmp);
                let _ = std::fs::rename(&tmp, &image);
                let _ = std::fs::hard_link(&real, &tmp);
                let _ = std::fs::rename(&tmp, &image);
                swaps += 1;
            }
            swaps
        })
    };

    let victim_s = victim.display().to_string();
    let (mut mounted, mut refused) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut breach = None;
    for _ in 0..60 {
        if Instant::now() > deadline {
            break;
        }
        match d.cli(&["volume", "mount", "legit"]) {
            Ok(out) if out.status.success() => {
                mounted += 1;
                let on_victim = loop_devices().into_iter().any(|(_, b)| b == victim_s);
                let whose = std::fs::read(Path::new(String::from_utf8_lossy(&out.stdout).trim()).join("whose"))
                    .unwrap_or_default();
                if on_victim || whose == b"victim" {
                    breach = Some(format!(
                        "mount {mounted}: the victim was attached (loop on it: {on_victim}, file says {:?})",
                        String::from_utf8_lossy(&whose)
                    ));
                }
                let _ = d.cli(&["volume", "unmount", "legit"]);
                if breach.is_some() {
                    break;
                }
            }
            Ok(out) => {
                refused += 1;
                let err = String::from_utf8_lossy(&out.stderr);
                // The host refuses the symlink, or the driver's own sandbox does when it looks at its image.
                ensure!(
                    err.contains("symlink")
                        || err.contains("not a regular file")
                        || err.contains("No such file")
                        || err.contains("permission denied"),
                    "an unexpected refusal: {err}"
                );
            }
            Err(e) => return Err(e),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().expect("swapper");
    // Put the real image back for the clean-up.
    std::fs::rename(&real, &image)?;
    let _ = std::fs::remove_file(&link);
    eprintln!("{mounted} mounts, {refused} refused, {swaps} swaps");
    ensure!(breach.is_none(), "{}", breach.unwrap_or_default());
    ensure!(
        mounted + refused >= 20,
        "too few attempts to mean anything: {mounted} mounts, {refused} refused"
    );
    ensure!(
        !loop_devices().into_iter().any(|(_, b)| b == victim_s),
        "a loop device is left on the victim"
    );
    d.ok(&["volume", "mount", "legit"])?;
    d.ok(&["volume", "unmount", "legit"])?;
    d.ok(&["volume", "delete", "legit"])?;
    Ok(())
}

#[test]
fn swapped_image_race_embedded() -> anyhow::Result<()> {
    swapped_image_race(StoreKind::Embedded)
}

#[test]
fn swapped_image_race_etcd() -> anyhow::Result<()> {
    swapped_image_race(StoreKind::Etcd)
}

/// One forged connection: the volume's name, the labels the forger builds it from, and a word
/// the refusal must contain.
type ForgedCase<'a> = (&'a str, Vec<(&'a str, String)>, &'a str);

/// `labels` with each of `extra`'s keys set to its value instead (or added).
fn overridden(
    mut labels: Vec<(&'static str, String)>,
    extra: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    for (k, v) in extra {
        labels.retain(|(lk, _)| lk != k);
        labels.push((k, v.clone()));
    }
    labels
}

/// A TCP listener on 127.0.0.1 that counts the connections it accepts (it answers none).
struct Listener {
    port: u16,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl Listener {
    fn start() -> anyhow::Result<Listener> {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let n = accepted.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                if c.is_ok() {
                    n.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Ok(Listener { port, accepted })
    }
}

/// Every connection the `forger` test driver can return that should not reach the host's
/// powers: each attach is refused naming what is wrong, nothing is mounted outside the pool,
/// no loop device is put on a host file, and no connection reaches the listener it was not
/// granted.
fn forged_connections_are_refused(store: StoreKind) -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let d = Daemon::start(DaemonOpts::new(store))?;
    let forger = repo_root().join("target/test-drivers/forger.wasm");
    d.ok(&["driver", "install", forger.to_str().context("utf-8")?])?;
    let granted = Listener::start()?;
    let other = Listener::start()?;
    d.ok(&[
        "backend",
        "add",
        "fg",
        "--driver",
        "forger",
        "--allow-host",
        &format!("127.0.0.1:{}", granted.port),
    ])?;
    let pool = d.pool_dir("fg");

    // Host things a driver must never reach: an ext4 image and a directory outside the pool.
    let victim = d.dir.join("victim.img");
    std::fs::File::create(&victim)?.set_len(32 << 20)?;
    ensure!(
        std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&victim)
            .status()?
            .success(),
        "mkfs victim"
    );
    let victim_dir = d.dir.join("victim-dir");
    std::fs::create_dir_all(&victim_dir)?;
    std::fs::write(victim_dir.join("secret"), b"host data")?;
    let (victim_s, victim_dir_s) = (victim.display().to_string(), victim_dir.display().to_string());
    let (gp, op) = (granted.port.to_string(), other.port.to_string());
    let good_nfs = |extra: &[(&'static str, String)]| {
        let l = vec![
            ("kind", "nfs".to_string()),
            ("server", "127.0.0.1".into()),
            ("port", gp.clone()),
            ("export", "/e".into()),
            ("version", "3".into()),
            ("options", format!("mountport={gp}")),
        ];
        overridden(l, extra)
    };
    let good_s3 = |extra: &[(&'static str, String)]| {
        let l = vec![
            ("kind", "s3".to_string()),
            ("endpoint", format!("http://127.0.0.1:{gp}")),
            ("region", "r1".into()),
            ("bucket", "b1".into()),
            ("access_key", "AK".into()),
            ("secret_key", "SK".into()),
        ];
        overridden(l, extra)
    };
    let good_iscsi = |extra: &[(&'static str, String)]| {
        let l = vec![
            ("kind", "iscsi".to_string()),
            ("portal", format!("127.0.0.1:{gp}")),
            ("iqn", "iqn.2026-12.test:t1".into()),
            ("lun", "1".into()),
        ];
        overridden(l, extra)
    };
    // A guest may make relative symlinks only (WASI refuses absolute targets), `..` included:
    // enough of them reach `/` from the pool dir.
    let depth = pool.components().count();
    let up = "../".repeat(depth);
    // (name, labels, a word the refusal must contain)
    let cases: Vec<ForgedCase> = vec![
        (
            "img-up",
            vec![("kind", "image-file".into()), ("path", "../../victim.img".into())],
            "image-file",
        ),
        (
            "img-abs",
            vec![("kind", "image-file".into()), ("path", victim_s.clone())],
            "image-file",
        ),
        (
            "img-link",
            vec![
                ("kind", "image-file".into()),
                ("path", "to-victim".into()),
                ("symlink", "../../victim.img".into()),
                ("link", "to-victim".into()),
            ],
            "symlink",
        ),
        (
            "img-dev",
            vec![
                ("kind", "image-file".into()),
                ("path", "to-dev".into()),
                ("symlink", format!("{up}dev/loop-control")),
                ("link", "to-dev".into()),
            ],
            "symlink",
        ),
        (
            "img-rel-dev",
            vec![
                ("kind", "image-file".into()),
                ("path", "to-dev2".into()),
                ("symlink", format!("{up}dev/null")),
                ("link", "to-dev2".into()),
            ],
            "symlink",
        ),
        (
            "dir-root",
            vec![
                ("kind", "directory".into()),
                ("path", "to-root".into()),
                ("symlink", up.clone()),
                ("link", "to-root".into()),
            ],
            "symlink",
        ),
        (
            "dir-up",
            vec![
                ("kind", "directory".into()),
                ("path", "to-up".into()),
                ("symlink", "../../..".into()),
                ("link", "to-up".into()),
            ],
            "symlink",
        ),
        (
            "dir-abs",
            vec![("kind", "directory".into()), ("path", victim_dir_s.clone())],
            "directory",
        ),
        ("nfs-host", good_nfs(&[("port", op.clone())]), "127.0.0.1"),
        ("nfs-name", good_nfs(&[("server", "localhost".into())]), "localhost"),
        (
            "iscsi-host",
            good_iscsi(&[("portal", format!("127.0.0.1:{op}"))]),
            "127.0.0.1",
        ),
        (
            "s3-host",
            good_s3(&[("endpoint", format!("http://127.0.0.1:{op}"))]),
            "127.0.0.1",
        ),
        // Option injection, one string field at a time.
        (
            "nfs-opt-key",
            good_nfs(&[("options", format!("mountport={gp};suid"))]),
            "options",
        ),
        (
            "nfs-opt-value",
            good_nfs(&[("options", format!("mountport={gp};rsize=4096,suid"))]),
            "options",
        ),
        ("nfs-version", good_nfs(&[("version", "3,suid".into())]), "version"),
        ("nfs-export", good_nfs(&[("export", "/e,suid".into())]), "export"),
        ("nfs-server", good_nfs(&[("server", "127.0.0.1,suid".into())]), "server"),
        ("s3-bucket", good_s3(&[("bucket", "b1,allow_other".into())]), "bucket"),
        (
            "s3-region",
            good_s3(&[("region", "r1,passwd_file=/etc/shadow".into())]),
            "region",
        ),
        (
            "s3-endpoint",
            good_s3(&[("endpoint", format!("http://127.0.0.1:{gp},use_cache=/"))]),
            "endpoint",
        ),
        ("s3-prefix", good_s3(&[("prefix", "p,allow_other".into())]), "prefix"),
        ("s3-key", good_s3(&[("access_key", "AK:x".into())]), "access"),
        (
            "iscsi-iqn",
            good_iscsi(&[("iqn", "iqn.2026-12.test:t1,x".into())]),
            "iqn",
        ),
        (
            "iscsi-portal",
            good_iscsi(&[("portal", format!("127.0.0.1:{gp},x"))]),
            "portal",
        ),
        // (The CHAP user and secret need no case: they reach qemu-storage-daemon as JSON and a
        // secret file, where no string can become an option.)
    ];
    let mut failures = vec![];
    for (name, labels, word) in &cases {
        let mut args = vec![
            "volume".to_string(),
            "create".into(),
            name.to_string(),
            "--backend".into(),
            "fg".into(),
            "--size".into(),
            "32M".into(),
        ];
        for (k, v) in labels {
            args.push("--label".into());
            args.push(format!("{k}={v}"));
        }
        d.ok(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        match d.cli(&["volume", "mount", name])? {
            out if out.status.success() => {
                failures.push(format!(
                    "{name}: mounted at {}",
                    String::from_utf8_lossy(&out.stdout).trim()
                ));
                let _ = d.cli(&["volume", "unmount", name]);
            }
            out => {
                let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
                if !err.contains(&word.to_lowercase()) {
                    failures.push(format!("{name}: refused, but without naming {word:?}: {err}"));
                }
            }
        }
        // Nothing is left of the refused attach.
        let v = d.json(&["volume", "inspect", name])?;
        if !v["attachments"].as_array().is_none_or(|a| a.is_empty()) {
            failures.push(format!("{name}: an attachment was left: {}", v["attachments"]));
        }
    }
    let mounts: Vec<String> = mounts_under(&d.dir)
        .into_iter()
        .filter(|m| !m.starts_with(&pool.display().to_string()))
        .collect();
    let on_victim = loop_devices().into_iter().any(|(_, b)| b == victim_s);
    let reached = other.accepted.load(Ordering::SeqCst);
    eprintln!(
        "{} forged connections tried: {} not refused as expected; non-granted listener reached {reached} times",
        cases.len(),
        failures.len()
    );
    ensure!(
        failures.is_empty(),
        "forged connections not refused:\n{}",
        failures.join("\n")
    );
    ensure!(mounts.is_empty(), "mounts left under the data dir: {mounts:?}");
    ensure!(!on_victim, "a loop device was put on the victim image");
    ensure!(reached == 0, "the non-granted listener was reached {reached} times");
    ensure!(std::fs::read(victim_dir.join("secret"))? == b"host data");
    Ok(())
}

#[test]
fn forged_connections_are_refused_embedded() -> anyhow::Result<()> {
    forged_connections_are_refused(StoreKind::Embedded)
}

#[test]
fn forged_connections_are_refused_etcd() -> anyhow::Result<()> {
    forged_connections_are_refused(StoreKind::Etcd)
}
