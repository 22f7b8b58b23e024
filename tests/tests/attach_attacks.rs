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
    let image = PathBuf::from(
        att["host"]["backing_file"]
            .as_str()
            .context("backing_file")?,
    );
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
        std::process::Command::new("umount")
            .arg(&vm)
            .status()?
            .success(),
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
                let whose = std::fs::read(
                    Path::new(String::from_utf8_lossy(&out.stdout).trim()).join("whose"),
                )
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
