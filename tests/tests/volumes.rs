//! Volume lifecycle through the real CLI and daemon, on both stores: create, inspect, list, mount,
//! write, snapshot, restore, resize, delete — and bad input that must change nothing.

use elara_tests::*;
use serde_json::Value;

fn lifecycle(store: StoreKind) -> anyhow::Result<()> {
    let d = Daemon::start(DaemonOpts::new(store))?;
    let info = d.json(&["info"])?;
    assert_eq!(
        info["store"],
        if store == StoreKind::Etcd { "etcd" } else { "embedded" }
    );
    assert!(
        info["drivers"].as_array().unwrap().iter().any(|x| x["name"] == "local"),
        "local driver installed: {info}"
    );
    assert!(
        info["backends"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == "local"),
        "local backend exists: {info}"
    );

    let v = d.json(&["volume", "create", "vol1", "--size", "64M", "--label", "app=db"])?;
    assert_eq!(v["state"], "available");
    assert_eq!(v["size_bytes"], 64 << 20);
    let id = v["id"].as_str().unwrap().to_string();
    let image = d.pool_dir("local").join("volumes").join(format!("{id}.img"));
    assert!(image.exists(), "image file {} exists", image.display());

    // list: JSON and table, filters.
    let list = d.json(&["volume", "list", "--label", "app=db"])?;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(
        d.json(&["volume", "list", "--label", "app=web"])?
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let table = d.ok(&["volume", "list"])?;
    assert!(table.lines().next().unwrap().starts_with("NAME"), "{table}");
    assert!(table.contains("vol1"), "{table}");

    // mount, write, read back through the filesystem.
    let mp = d.ok(&["volume", "mount", "vol1"])?.trim().to_string();
    assert!(mounts_under(&d.dir).contains(&mp), "{mp} is mounted");
    std::fs::write(format!("{mp}/hello.txt"), b"hello elara")?;
    nix_sync();
    assert_eq!(d.json(&["volume", "inspect", "vol1"])?["status"], "in-use");
    let err = d.fails(&["volume", "delete", "vol1"])?;
    assert!(err.contains("mounted"), "delete refused while mounted: {err}");

    // snapshot while mounted (frozen during the copy), then restore into a new volume.
    d.ok(&["snapshot", "create", "vol1", "--name", "snap1"])?;
    std::fs::write(format!("{mp}/after.txt"), b"written after the snapshot")?;
    d.ok(&["snapshot", "restore", "snap1", "--to", "vol2"])?;
    let mp2 = d.ok(&["volume", "mount", "vol2"])?.trim().to_string();
    assert_eq!(std::fs::read(format!("{mp2}/hello.txt"))?, b"hello elara");
    assert!(
        !std::path::Path::new(&format!("{mp2}/after.txt")).exists(),
        "the snapshot predates after.txt"
    );

    // resize a mounted volume. ext4 grows online where the kernel lets it (CAP_SYS_RESOURCE),
    // else at the next mount (checked below); xfs grows online.
    d.ok(&["volume", "resize", "vol1", "--size", "128M"])?;
    let v = d.json(&["volume", "inspect", "vol1"])?;
    assert_eq!(v["size_bytes"], 128 << 20);
    assert!(
        d.fails(&["volume", "resize", "vol1", "--size", "64M"])?
            .contains("size")
    );
    d.ok(&["volume", "create", "xfs1", "--size", "320M", "--fs", "xfs"])?;
    let mpx = d.ok(&["volume", "mount", "xfs1"])?.trim().to_string();
    assert_eq!(mount_fs_type(&mpx).as_deref(), Some("xfs"));
    let before = fs_size(&mpx)?;
    d.ok(&["volume", "resize", "xfs1", "--size", "640M"])?;
    let after = fs_size(&mpx)?;
    assert!(after > before + (200 << 20), "xfs grew online: {before} -> {after}");
    d.ok(&["volume", "unmount", "xfs1"])?;
    d.ok(&["volume", "delete", "xfs1"])?;

    // teardown: exact.
    d.ok(&["volume", "unmount", "vol1"])?;
    d.ok(&["volume", "unmount", "vol2"])?;
    assert!(
        mounts_under(&d.dir).is_empty(),
        "no mounts left: {:?}",
        mounts_under(&d.dir)
    );
    let pool = d.pool_dir("local").display().to_string();
    assert!(
        loop_devices().iter().all(|(_, b)| !b.starts_with(&pool)),
        "no loop devices left"
    );
    // re-mount does not reformat: the data is still there.
    let mp = d.ok(&["volume", "mount", "vol1"])?.trim().to_string();
    assert_eq!(std::fs::read(format!("{mp}/hello.txt"))?, b"hello elara");
    let grown = fs_size(&mp)?;
    assert!(grown > 100 << 20, "ext4 filesystem grew to fill 128M: {grown}");
    d.ok(&["volume", "unmount", "vol1"])?;

    assert!(
        d.fails(&["volume", "delete", "vol1"])?.contains("snapshot"),
        "delete refused while snapshots exist"
    );
    d.ok(&["snapshot", "delete", "snap1"])?;
    d.ok(&["volume", "delete", "vol1"])?;
    d.ok(&["volume", "delete", "vol2"])?;
    assert!(!image.exists(), "image file removed");
    assert_eq!(d.json(&["volume", "list"])?.as_array().unwrap().len(), 0);
    let vols: Vec<_> = std::fs::read_dir(d.pool_dir("local").join("volumes"))?.collect();
    assert!(vols.is_empty(), "pool dir empty: {vols:?}");
    Ok(())
}

#[test]
fn lifecycle_embedded() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    lifecycle(StoreKind::Embedded)
}

#[test]
fn lifecycle_etcd() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    lifecycle(StoreKind::Etcd)
}

fn nix_sync() {
    let _ = std::process::Command::new("sync").status();
}

/// Bad input: a 4xx naming the field, and nothing stored or created.
fn bad_input(store: StoreKind) -> anyhow::Result<()> {
    let d = Daemon::start(DaemonOpts::new(store))?;
    let cases: &[(&[&str], &str)] = &[
        (&["volume", "create", "v1", "--size", "0"], "size"),
        (&["volume", "create", "v1", "--size", "-5G"], "size"),
        (&["volume", "create", "v1", "--size", "10X"], "size"),
        (&["volume", "create", "v1", "--size", "99999999999999999999P"], "size"),
        (&["volume", "create", "v1", "--size", "9E"], "size"),
        (&["volume", "create", "--size", "1G", "--", "-bad"], "name"),
        (&["volume", "create", "a", "--size", "1G"], "name"),
        (&["volume", "create", "has space", "--size", "1G"], "name"),
        (&["volume", "create", "v1", "--backend", "nope"], "backend"),
        (&["volume", "create", "v1", "--fs", "ntfs"], "fs"),
        (&["volume", "create", "v1", "--iops", "500"], "iops"),
        (&["volume", "create", "v1", "--snapshot", "missing"], "snapshot"),
        (&["volume", "create", "v1", "--size", "1P"], "no valid pool"),
        (&["backend", "add", "b1", "--driver", "nope"], "driver"),
        (
            &["backend", "add", "b1", "--driver", "local", "--config", "bogus=1"],
            "bogus",
        ),
        (
            &["backend", "add", "b1", "--driver", "local", "--memory", "1K"],
            "memory",
        ),
        (
            &[
                "backend",
                "add",
                "b1",
                "--driver",
                "local",
                "--allow-host",
                "bad host:x",
            ],
            "allow-host",
        ),
    ];
    for (args, field) in cases {
        let err = d.fails(args)?;
        assert!(
            err.contains(field),
            "`elara {}` error names {field:?}: {err}",
            args.join(" ")
        );
    }
    assert_eq!(
        d.json(&["volume", "list"])?.as_array().unwrap().len(),
        0,
        "nothing stored"
    );
    assert_eq!(
        d.json(&["backend", "list"])?.as_array().unwrap().len(),
        1,
        "only the local backend"
    );
    let vols = d.pool_dir("local").join("volumes");
    let files: Vec<_> = std::fs::read_dir(&vols)
        .map(|r| r.flatten().collect())
        .unwrap_or_default();
    assert!(files.is_empty(), "nothing created in the pool: {files:?}");
    assert_eq!(d.json(&["op", "list"])?.as_array().unwrap().len(), 0, "no op left");

    // Duplicate names are refused naming the field, and the first volume is untouched.
    let v = d.json(&["volume", "create", "dup", "--size", "16M"])?;
    let err = d.fails(&["volume", "create", "dup", "--size", "32M"])?;
    assert!(err.contains("name") && err.contains("already exists"), "{err}");
    let again = d.json(&["volume", "inspect", "dup"])?;
    assert_eq!(again["id"], v["id"]);
    assert_eq!(again["size_bytes"], 16 << 20);
    d.ok(&["volume", "delete", "dup"])?;

    // The REST API answers bad JSON with the field too.
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--unix-socket",
            &d.socket.display().to_string(),
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
        ])
        .args(["-d", r#"{"name": "v9", "size": 12}"#, "http://x/v1/volumes"])
        .output()?;
    let body: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(body["error"]["field"], "size", "{body}");
    Ok(())
}

#[test]
fn bad_input_embedded() -> anyhow::Result<()> {
    bad_input(StoreKind::Embedded)
}

#[test]
fn bad_input_etcd() -> anyhow::Result<()> {
    bad_input(StoreKind::Etcd)
}

/// Nodes: liveness by lease; a killed daemon shows as down; register/rename/unregister.
fn nodes(store: StoreKind) -> anyhow::Result<()> {
    let mut d = Daemon::start(DaemonOpts::new(store))?;
    let me = d.json(&["node", "info"])?;
    assert_eq!(me["name"], "node1");
    assert_eq!(me["status"], "up");
    d.ok(&["node", "register", "spare1"])?;
    assert!(d.fails(&["node", "register", "spare1"])?.contains("name"));
    assert_eq!(d.json(&["node", "info", "spare1"])?["status"], "down");
    d.ok(&["node", "rename", "spare1", "spare2"])?;
    assert!(
        d.fails(&["node", "rename", "node1", "other"])?.contains("up"),
        "a live node cannot be renamed"
    );
    d.ok(&["node", "unregister", "spare2"])?;
    assert!(d.fails(&["node", "info", "spare2"])?.contains("does not exist"));

    if store == StoreKind::Etcd {
        // A second daemon sees the first go down when it is killed (lease TTL 3 s).
        let mut peer = d.start_peer("node2")?;
        assert_eq!(peer.json(&["node", "info", "node1"])?["status"], "up");
        d.kill9();
        let start = std::time::Instant::now();
        loop {
            if peer.json(&["node", "info", "node1"])?["status"] == "down" {
                break;
            }
            assert!(start.elapsed().as_secs() < 15, "node1 still up 15 s after SIGKILL");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        peer.kill9();
    }
    Ok(())
}

#[test]
fn nodes_embedded() -> anyhow::Result<()> {
    nodes(StoreKind::Embedded)
}

#[test]
fn nodes_etcd() -> anyhow::Result<()> {
    nodes(StoreKind::Etcd)
}

/// Size of the filesystem mounted at `mp`, from df.
fn fs_size(mp: &str) -> anyhow::Result<u64> {
    let df = std::process::Command::new("df")
        .args(["-B1", "--output=size", mp])
        .output()?;
    Ok(String::from_utf8_lossy(&df.stdout)
        .lines()
        .nth(1)
        .unwrap_or_default()
        .trim()
        .parse()?)
}

/// Filesystem type mounted at `mp`, from findmnt.
fn mount_fs_type(mp: &str) -> Option<String> {
    let out = std::process::Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE", mp])
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|s| !s.is_empty())
}
